"""What one writer batch costs the client and the PostgreSQL server, by batch size.

Each batch is written the way the recorder writes it (staging COPY, the upsert,
the event sequence, NOTIFY, in one transaction). Client CPU is this process's;
server CPU is that of the connection's backend process (psutil), so nothing
else on the machine is counted. A small batch is what a worker that is not busy
writes every flush interval; a large one is what a busy one writes.

    python bench/batch_cost.py [--sizes 33 500] [--batches 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

import psutil

from taskmon.bus.postgres import PgNotifyPublisher
from taskmon.encode import prepare, row_of
from taskmon.events import AttemptRecord, Status
from taskmon.params import CallSpec, ParamsPolicy, capture_call
from taskmon.recorder import Recorder
from taskmon.store import ingest
from taskmon.store.db import connect

DB = "taskmon_bench_batch"


async def _reset(server_dsn: str) -> str:
    conn = await connect(server_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {DB}")
    finally:
        await conn.close()
    dsn = server_dsn.rsplit("/", 1)[0] + "/" + DB
    recorder = Recorder(dsn)  # migrate once, outside the measured runs
    await recorder.start(wait_connected=30)
    await recorder.stop()
    return dsn


def _rows(tag: str, size: int, policy: ParamsPolicy) -> list[tuple[object, ...]]:
    now = datetime.now(UTC)
    spec = CallSpec(("i", "payload"))
    rows = []
    for i in range(size):
        record = AttemptRecord(
            task_id=f"{tag}-{i}", attempt=0, task_name="bench:noop", status=Status.SUCCESS,
            worker="bench:1", queue="taskiq", labels={"_retries": 0}, enqueued_at=now,
            started_at=now, finished_at=now, duration_ms=0.5, queue_wait_ms=1.0,
            raw_params=capture_call([i, {"user": "alice"}], {}, spec),
        )  # fmt: skip
        rows.append(row_of(prepare(record, policy), 4096))
    return rows


async def run(dsn: str, sizes: list[int], batches: int, repeat: int) -> None:
    conn = await connect(dsn)
    await ingest.prepare_connection(conn)
    server = psutil.Process(conn.get_server_pid())
    publisher = PgNotifyPublisher()
    policy = ParamsPolicy()
    print(
        f"{'rows/batch':>10} {'client ms/batch':>18} {'server ms/batch':>18} {'server µs/row':>14}"
    )
    try:
        for size in sizes:
            client: list[float] = []
            backend: list[float] = []
            for _ in range(repeat):
                work = [_rows(uuid.uuid4().hex, size, policy) for _ in range(batches)]
                c0 = time.process_time()
                s0 = sum(server.cpu_times()[:2])
                for rows in work:
                    async with conn.transaction():
                        await ingest.upsert(conn, rows)
                        await ingest.next_seqs(conn, 2 * size)
                        await publisher.in_transaction(conn, [b'{"v":1}'] * (2 * size))
                client.append((time.process_time() - c0) / batches * 1e3)
                backend.append((sum(server.cpu_times()[:2]) - s0) / batches * 1e3)
            c, s = statistics.median(client), statistics.median(backend)
            print(
                f"{size:>10} {c:>9.2f} ({min(client):.2f}-{max(client):.2f})"
                f" {s:>9.2f} ({min(backend):.2f}-{max(backend):.2f}) {s / size * 1e3:>14.1f}"
            )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[33, 500])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--dsn",
        default=os.environ.get("TASKMON_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    dsn = asyncio.run(_reset(args.dsn))
    asyncio.run(run(dsn, args.sizes, args.batches, args.repeat))


if __name__ == "__main__":
    main()
