"""Sustained ingest: attempts per second that land in PostgreSQL, and the writer's CPU.

Each attempt is submitted the way the middleware does it: once running (labels,
arguments captured as JSON), then finished, the same record mutated in place.
Events are on (PostgreSQL NOTIFY, or a Redis stream with --bus redis). A
producer keeps the buffer fed without overflowing it; the run ends when every
attempt is written. Then the table is counted: every attempt must be there, in
its final state (zero loss), and announced: each batch of the producer submits
its attempts running and finished before the writer can run, so each attempt
is written once and announced once, finished (a state replaced before it was
written is not announced on its own; see docs/protocol.md).

Client CPU per attempt is the process's CPU time minus what the producer itself
spent building and submitting the records: the writer's share (encoding,
asyncpg, publishing), which is what a worker pays in the background.

    python bench/ingest.py [--attempts 200000] [--processes 1 4] [--bus postgres redis]
    python bench/ingest.py --layout plain partitioned   # partitioning side by side
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from common import REDIS_URL, SERVER_DSN, interleaved, scratch_database, spread

from taskmon.bus import Publisher
from taskmon.domain.events import AttemptRecord, Status
from taskmon.domain.params import CallSpec, capture_call
from taskmon.store import migrations
from taskmon.store.db import connect
from taskmon.worker.recorder import Recorder

DB = "taskmon_bench_ingest"


@dataclass
class Result:
    attempts: int
    wall: float
    cpu: float
    producer_cpu: float
    written: int
    events: int
    dropped: int
    rejected: int


def _publisher(bus: str, redis_url: str) -> Publisher:
    if bus == "redis":
        from taskmon.bus.redis import RedisStreamPublisher

        return RedisStreamPublisher(redis_url, maxlen=1_000_000)
    from taskmon.bus.postgres import PgNotifyPublisher

    return PgNotifyPublisher()


async def _produce(dsn: str, bus: str, redis_url: str, attempts: int, tag: str) -> Result:
    # the schema is migrated once by _reset (--layout plain stops before partitioning)
    recorder = Recorder(
        dsn, publisher=_publisher(bus, redis_url), max_pending=100_000, auto_migrate=False
    )
    await recorder.start(wait_connected=10)
    payload = {"user": "alice", "password": "x", "body": "y" * 200}
    labels = {"_retries": 0, "timeout": 30}
    spec = CallSpec(("i", "payload"))
    producer_cpu = 0.0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    chunk = 200
    for start in range(0, attempts, chunk):
        while recorder.pending > 20_000:  # noqa: ASYNC110 -- sustained, not a burst
            await asyncio.sleep(0.001)
        c0 = time.process_time()
        records = []
        for i in range(start, min(start + chunk, attempts)):
            now = datetime.now(UTC)
            record = AttemptRecord(
                task_id=f"{tag}-{i}",
                attempt=0,
                task_name="bench:noop",
                status=Status.RUNNING,
                worker="bench:1",
                queue="taskiq",
                labels=dict(labels),
                enqueued_at=now,
                started_at=now,
                queue_wait_ms=1.0,
                raw_params=capture_call([i, payload], {}, spec),
            )
            recorder.submit(record)
            records.append(record)
        for record in records:
            record.status = Status.SUCCESS
            record.finished_at = datetime.now(UTC)
            record.duration_ms = 0.5
            recorder.submit(record)
        producer_cpu += time.process_time() - c0
        await asyncio.sleep(0)
    await recorder.flush(timeout=300)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stats = recorder.stats
    await recorder.stop()
    return Result(
        attempts,
        wall,
        cpu,
        producer_cpu,
        stats.written,
        stats.events_published,
        stats.dropped,
        stats.rejected,
    )


def _child(args: tuple[str, str, str, int, str, Any, Any]) -> None:
    dsn, bus, redis_url, attempts, tag, start, done = args
    barrier_at = start.get()  # every process starts at the same moment
    time.sleep(max(0.0, barrier_at - time.time()))
    done.put(asyncio.run(_produce(dsn, bus, redis_url, attempts, tag)))


def run_processes(dsn: str, bus: str, redis_url: str, attempts: int, processes: int) -> Result:
    ctx = mp.get_context("spawn")
    # a queue each way: a child slower to start than the parent to ask for results
    # would otherwise leave its start time to be read back by the parent
    starts = [ctx.Queue() for _ in range(processes)]
    dones = [ctx.Queue() for _ in range(processes)]
    per = attempts // processes
    tag = uuid.uuid4().hex[:8]
    procs = [
        ctx.Process(target=_child, args=((dsn, bus, redis_url, per, f"{tag}-{p}", s, d),))
        for p, (s, d) in enumerate(zip(starts, dones, strict=True))
    ]
    for proc in procs:
        proc.start()
    start_at = time.time() + 3.0  # time for every child to import and connect
    for q in starts:
        q.put(start_at)
    results: list[Result] = [q.get(timeout=600) for q in dones]
    for proc in procs:
        proc.join()
    return Result(
        per * processes,
        max(r.wall for r in results),
        sum(r.cpu for r in results),
        sum(r.producer_cpu for r in results),
        sum(r.written for r in results),
        sum(r.events for r in results),
        sum(r.dropped for r in results),
        sum(r.rejected for r in results),
    )


async def _count(dsn: str) -> tuple[int, int]:
    conn = await connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(*) FILTER (WHERE status = 'success') AS ok "
            "FROM task_execution_logs"
        )
        assert row is not None
        return row["n"], row["ok"]
    finally:
        await conn.close()


async def _reset(server_dsn: str, layout: str = "partitioned") -> str:
    dsn = await scratch_database(DB, migrate=False, server=server_dsn)
    # migrate once, outside the measured runs
    conn = await connect(dsn)
    try:
        source = migrations.available()
        if layout == "plain":  # the table as it was before sql/0008_partitions.sql
            source = [m for m in source if m.version < 8]
        await migrations.upgrade(conn, source=source)
    finally:
        await conn.close()
    return dsn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=200_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--bus", nargs="+", default=["postgres", "redis"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--layout",
        nargs="+",
        choices=("partitioned", "plain"),
        default=["partitioned"],
        help="the table partitioned by day (today's schema) and/or plain, as before "
        "partitioning; with both, runs alternate plain, partitioned, partitioned, plain",
    )
    parser.add_argument("--dsn", default=SERVER_DSN, help="the server (TASKMON_BENCH_DSN)")
    parser.add_argument("--redis-url", default=REDIS_URL, help="(TASKMON_BENCH_REDIS_URL)")
    args = parser.parse_args()

    print(f"{args.attempts} attempts per run (running, then finished), events on")
    print(
        f"{'bus':9} {'procs':>5} {'layout':>11} {'attempts/s (median, min-max)':>30} "
        f"{'writer CPU µs/attempt':>24} {'loss':>5}"
    )
    for bus in args.bus:
        for processes in args.processes:
            rates: dict[str, list[float]] = {layout: [] for layout in args.layout}
            cpus: dict[str, list[float]] = {layout: [] for layout in args.layout}
            lost = dict.fromkeys(args.layout, 0)
            # interleaved A-B-B-A: a slow spell of this shared machine hits both alike
            order = interleaved(args.layout)
            for _ in range(args.repeat):
                for layout in order if len(args.layout) > 1 else [args.layout[0]]:
                    dsn = asyncio.run(_reset(args.dsn, layout))
                    r = run_processes(dsn, bus, args.redis_url, args.attempts, processes)
                    n, ok = asyncio.run(_count(dsn))
                    lost[layout] += (r.attempts - n) + (r.attempts - ok) + (r.attempts - r.events)
                    lost[layout] += r.dropped + r.rejected
                    rates[layout].append(r.attempts / r.wall)
                    cpus[layout].append((r.cpu - r.producer_cpu) * 1e6 / r.attempts)
            for layout in args.layout:
                rs, cs = rates[layout], cpus[layout]
                print(
                    f"{bus:9} {processes:>5} {layout:>11} "
                    f"{spread(rs, '>12,.0f')}{'':>4}{spread(cs, '>12.1f')}"
                    f"{lost[layout]:>6}"
                )


if __name__ == "__main__":
    main()
