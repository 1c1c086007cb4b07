"""Per-task cost of MonitoringMiddleware's hooks, and the writer's throughput.

Runs N no-op tasks on an InMemoryBroker with and without the middleware and
prints the added time per task (the hooks run inline; the writer runs in the
background), then how long the writer takes to land every row.

    python bench/middleware.py [N] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from taskiq import InMemoryBroker

from taskmon.middleware import MonitoringMiddleware
from taskmon.store.db import connect


async def run(n: int, monitor: MonitoringMiddleware | None) -> float:
    broker = InMemoryBroker(await_inplace=True)
    if monitor is not None:
        broker = broker.with_middlewares(monitor)
    await broker.startup()

    @broker.task(task_name="bench:noop")
    async def noop(i: int, payload: dict[str, str]) -> int:
        return i

    payload = {"user": "alice", "password": "x", "body": "y" * 200}
    started = time.perf_counter()
    for i in range(n):
        await noop.kiq(i, payload)
    elapsed = time.perf_counter() - started
    if monitor is not None:
        assert monitor.recorder is not None
        t0 = time.perf_counter()
        await monitor.recorder.flush(timeout=120)
        print(f"  writer drained the rest in {time.perf_counter() - t0:.2f} s")
        print(f"  writer stats: {monitor.recorder.stats}")
    await broker.shutdown()
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=20_000)
    parser.add_argument("--dsn", default=os.environ.get("TASKMON_DSN"))
    args = parser.parse_args()
    dsn = args.dsn or "postgresql://postgres@127.0.0.1:5432/postgres"
    conn = await connect(dsn)
    await conn.execute("DROP DATABASE IF EXISTS taskmon_bench_mw")
    await conn.execute("CREATE DATABASE taskmon_bench_mw")
    await conn.close()
    bench_dsn = dsn.rsplit("/", 1)[0] + "/taskmon_bench_mw"

    bare, monitored = [], []
    for _ in range(3):
        bare.append(await run(args.n, None))
        monitored.append(await run(args.n, MonitoringMiddleware(dsn=bench_dsn)))
    b, m = statistics.median(bare), statistics.median(monitored)
    print(f"{args.n} tasks, median of 3 runs")
    print(f"  without middleware: {b * 1e6 / args.n:8.1f} µs/task")
    print(f"  with middleware:    {m * 1e6 / args.n:8.1f} µs/task")
    print(f"  added by the hooks: {(m - b) * 1e6 / args.n:8.1f} µs/task")


if __name__ == "__main__":
    asyncio.run(main())
