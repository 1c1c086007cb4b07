"""What MonitoringMiddleware adds to each task, all in: hooks and the writer together.

Part 1, in one process: N no-op tasks on an ``InMemoryBroker(await_inplace=True)``,
a loop shaped like a worker's (each task yields to the event loop, so the writer
runs meanwhile, not only after the loop), with and without the middleware. A run
ends when every attempt is written, so the writer's whole cost is inside it.
Runs are interleaved A-B-B-A after a warm-up; the figures are the median and
the range of the per-task CPU time (``time.process_time``) and wall time.

Part 2, a real worker: ``taskiq worker --workers 2`` on a taskiq-redis
``ListQueueBroker`` drains M no-op tasks queued beforehand, with and without the
middleware (A-B-B-A); tasks/s from the first task to the last, and the ratio.

    python bench/overhead.py [--tasks 20000] [--rounds 3] [--worker-tasks 50000]
        [--skip-worker] [--skip-loop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from taskiq import InMemoryBroker

from taskmon.middleware import MonitoringMiddleware
from taskmon.store.db import connect

HERE = Path(__file__).resolve().parent
DB = "taskmon_bench_overhead"
PAYLOAD = {"user": "alice", "password": "x", "body": "y" * 200}


async def _loop_run(n: int, dsn: str | None) -> tuple[float, float]:
    """CPU and wall seconds for `n` tasks, with the middleware when `dsn` is given."""
    monitor = MonitoringMiddleware(dsn=dsn) if dsn else None
    broker = InMemoryBroker(await_inplace=True)
    if monitor is not None:
        broker = broker.with_middlewares(monitor)

    @broker.task(task_name="bench:noop")
    async def noop(i: int, payload: dict[str, str]) -> int:
        return i

    await broker.startup()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        await noop.kiq(i, PAYLOAD)
        await asyncio.sleep(0)  # a worker's loop yields between tasks
    if monitor is not None:
        assert monitor.recorder is not None
        await monitor.recorder.flush(timeout=300)
        assert monitor.recorder.stats.written >= n, monitor.recorder.stats
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    await broker.shutdown()
    return cpu, wall


async def _reset(server_dsn: str) -> str:
    conn = await connect(server_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {DB}")
    finally:
        await conn.close()
    return server_dsn.rsplit("/", 1)[0] + "/" + DB


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def loop_bench(server_dsn: str, n: int, rounds: int) -> None:
    dsn = asyncio.run(_reset(server_dsn))
    print(f"\n1. in-process loop: {n} no-op tasks per run, A-B-B-A x {rounds}, after a warm-up")
    asyncio.run(_loop_run(n // 4, None))
    asyncio.run(_loop_run(n // 4, dsn))
    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "monitored": []}
    for _ in range(rounds):
        for kind in ("bare", "monitored", "monitored", "bare"):
            runs[kind].append(asyncio.run(_loop_run(n, dsn if kind == "monitored" else None)))
    cpu = {k: [c * 1e6 / n for c, _ in v] for k, v in runs.items()}
    wall = {k: [w * 1e6 / n for _, w in v] for k, v in runs.items()}
    # pair each monitored run with the bare run next to it (A-B-B-A), so drift cancels
    added_cpu = [m - b for m, b in zip(cpu["monitored"], cpu["bare"], strict=True)]
    added_wall = [m - b for m, b in zip(wall["monitored"], wall["bare"], strict=True)]
    print(f"   {'µs per task, median (min-max)':34} {'CPU':>22} {'wall':>22}")
    print(
        f"   {'without the middleware':34} {_summary(cpu['bare']):>22} {_summary(wall['bare']):>22}"
    )
    print(
        f"   {'with the middleware':34} "
        f"{_summary(cpu['monitored']):>22} {_summary(wall['monitored']):>22}"
    )
    print(f"   {'added (paired runs)':34} {_summary(added_cpu):>22} {_summary(added_wall):>22}")


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def _worker_run(n: int, monitored: bool, dsn: str, redis_url: str) -> float:
    """Tasks/s of a 2-process `taskiq worker` draining `n` queued no-op tasks."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "BENCH_REDIS_URL": redis_url,
        "BENCH_DSN": dsn,
        "BENCH_MONITOR": "1" if monitored else "",
    }
    r = _redis(redis_url)
    r.flushdb()
    subprocess.run(
        [sys.executable, str(HERE / "overhead_app.py"), "kick", str(n)], env=env, check=True
    )
    # its log goes to a file: a pipe nobody reads fills up and blocks the worker.
    # WARNING, not TaskIQ's default INFO line per task: the bare worker is faster
    # without it, so the ratio is the harder one
    with tempfile.TemporaryFile() as log:
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "taskiq", "worker", "overhead_app:broker",
                "--workers", "2", "--log-level", "WARNING",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        try:
            return _drained(r, worker, log, n)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()


def _drained(r: Any, worker: subprocess.Popen[bytes], log: Any, n: int) -> float:
    """Tasks/s from the first task reported done to the last."""
    first = last = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = int(r.get("bench:done") or 0)
        now = time.perf_counter()
        if done and first is None:
            first = (now, done)
        if done >= n:
            last = now
            break
        if worker.poll() is not None:
            log.seek(0)
            raise RuntimeError(log.read().decode(errors="replace") or "the worker died")
        time.sleep(0.005)
    assert first is not None and last is not None, "the worker did not finish"
    return (n - first[1]) / (last - first[0])


def worker_bench(server_dsn: str, n: int, rounds: int, redis_url: str) -> None:
    dsn = asyncio.run(_reset(server_dsn))
    print(f"\n2. taskiq worker --workers 2, ListQueueBroker: {n} queued no-op tasks per run")
    _worker_run(n // 10, False, dsn, redis_url)  # warm-up (and migrations)
    _worker_run(n // 10, True, dsn, redis_url)
    rates: dict[str, list[float]] = {"bare": [], "monitored": []}
    for _ in range(rounds):
        for kind in ("bare", "monitored", "monitored", "bare"):
            rates[kind].append(_worker_run(n, kind == "monitored", dsn, redis_url))
    ratios = [m / b for m, b in zip(rates["monitored"], rates["bare"], strict=True)]
    print(f"   {'tasks/s, median (min-max)':34}")
    print(f"   {'without the middleware':34} {_summary(rates['bare'])}")
    print(f"   {'with the middleware':34} {_summary(rates['monitored'])}")
    print(
        f"   {'monitored / bare (paired runs)':34} {statistics.median(ratios):7.1%} "
        f"({min(ratios):.1%}-{max(ratios):.1%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="A-B-B-A rounds (2 runs of each)")
    parser.add_argument("--worker-tasks", type=int, default=50_000)
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-worker", action="store_true")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("TASKMON_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
    )
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    if not args.skip_loop:
        loop_bench(args.dsn, args.tasks, args.rounds)
    if not args.skip_worker:
        worker_bench(args.dsn, args.worker_tasks, args.rounds, args.redis_url)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
