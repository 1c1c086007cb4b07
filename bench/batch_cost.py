"""What one writer batch costs the client and the PostgreSQL server, by batch size.

Each batch is written the way the recorder writes it (staging COPY, the upsert
taking the event seqs, one NOTIFY'd event per attempt, in one transaction).
Client CPU is this process's; server CPU is that of the connection's backend
process (psutil), so nothing else on the machine is counted. A small batch is
what a worker that is not busy writes every flush interval; a large one is what
a busy one writes.

With ``--split``, the same batches are also written without the rollup
triggers (``session_replication_role = replica``) and without the NOTIFY, runs
interleaved, to show what each costs the server per row.

    python bench/batch_cost.py [--sizes 33 500] [--batches 60] [--repeat 3] [--split]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import psutil
from common import SERVER_DSN, interleaved, scratch_database, spread

from taskmon.bus.postgres import PgNotifyPublisher
from taskmon.domain.events import AttemptRecord, Status
from taskmon.domain.params import CallSpec, ParamsPolicy, capture_call
from taskmon.store import ingest
from taskmon.store.db import connect
from taskmon.worker.encode import prepare, row_of

DB = "taskmon_bench_batch"
PAYLOAD = {"user": "alice", "password": "x", "body": "y" * 200}


def _rows(tag: str, size: int, policy: ParamsPolicy) -> list[tuple[object, ...]]:
    now = datetime.now(UTC)
    spec = CallSpec(("i", "payload"))
    rows = []
    for i in range(size):
        record = AttemptRecord(
            task_id=f"{tag}-{i}", attempt=0, task_name="bench:noop", status=Status.SUCCESS,
            worker="bench:1", queue="taskiq", labels={"_retries": 0}, enqueued_at=now,
            started_at=now, finished_at=now, duration_ms=0.5, queue_wait_ms=1.0,
            raw_params=capture_call([i, PAYLOAD], {}, spec),
        )  # fmt: skip
        rows.append(row_of(prepare(record, policy), 4096))
    return rows


_EVENT = orjson.dumps(
    {
        "v": 1, "seq": 1, "type": "task_completed", "task_name": "bench:noop",
        "status": "success", "timestamp": "2026-12-01T10:00:00.123456+00:00",
        "data": {
            "task_id": uuid.uuid4().hex, "attempt": 0, "worker": "bench:1",
            "duration_ms": 0.5, "queue_wait_ms": 1.0, "error_type": None,
            "error_message": None, "params": {"args": [], "kwargs": {"i": 1, "payload": PAYLOAD}},
        },
    }
)  # fmt: skip


async def _batches(
    conn: Any, work: list[list[tuple[object, ...]]], statement: str, notify: bool
) -> None:
    publisher = PgNotifyPublisher()
    for rows in work:
        async with conn.transaction():
            await ingest.upsert_taking_seqs(conn, rows, len(rows), statement)
            if notify:
                await publisher.in_transaction(conn, [_EVENT] * len(rows))


async def run(dsn: str, sizes: list[int], batches: int, repeat: int, split: bool) -> None:
    conn = await connect(dsn)
    statement = await ingest.prepare_connection(conn)
    server = psutil.Process(conn.get_server_pid())
    policy = ParamsPolicy()
    kinds = ["as written", "no triggers", "no notify"] if split else ["as written"]
    print(
        f"{'rows/batch':>10} {'':12} {'client ms/batch':>18} {'server ms/batch':>18} "
        f"{'server µs/row':>14}"
    )
    try:
        for size in sizes:
            client: dict[str, list[float]] = {kind: [] for kind in kinds}
            backend: dict[str, list[float]] = {kind: [] for kind in kinds}
            for _ in range(repeat):
                # A-B-C-C-B-A: a slow spell of this shared machine hits each alike
                for kind in interleaved(kinds):
                    work = [_rows(uuid.uuid4().hex, size, policy) for _ in range(batches)]
                    replica = kind == "no triggers"
                    if replica:
                        await conn.execute("SET session_replication_role = replica")
                    c0 = time.process_time()
                    s0 = sum(server.cpu_times()[:2])
                    await _batches(conn, work, statement, notify=kind != "no notify")
                    client[kind].append((time.process_time() - c0) / batches * 1e3)
                    backend[kind].append((sum(server.cpu_times()[:2]) - s0) / batches * 1e3)
                    if replica:
                        await conn.execute("RESET session_replication_role")
            for kind in kinds:
                s = statistics.median(backend[kind])
                print(
                    f"{size:>10} {kind:12} {spread(client[kind], '>9.2f')} "
                    f"{spread(backend[kind], '>9.2f')} {s / size * 1e3:>14.1f}"
                )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[33, 500])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dsn", default=SERVER_DSN, help="the server (TASKMON_BENCH_DSN)")
    parser.add_argument(
        "--split", action="store_true", help="also without the rollup triggers, without NOTIFY"
    )
    args = parser.parse_args()
    # migrated once, outside the measured runs
    dsn = asyncio.run(scratch_database(DB, server=args.dsn))
    asyncio.run(run(dsn, args.sizes, args.batches, args.repeat, args.split))


if __name__ == "__main__":
    main()
