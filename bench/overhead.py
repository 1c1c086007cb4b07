"""What MonitoringMiddleware adds to each task, all in: hooks and the writer together.

Part 1, in one process: N no-op tasks on an ``InMemoryBroker(await_inplace=True)``,
a loop shaped like a worker's (each task yields to the event loop, so the writer
runs meanwhile, not only after the loop), with and without the middleware. A run
ends when every attempt is written, so the writer's whole cost is inside it.
Runs are interleaved A-B-B-A after a warm-up; the figures are the median and
the range of the per-task CPU time (``time.process_time``) and wall time.

With ``--floor``, two reference middlewares join the rotation, to show what
any recorder pays before it writes anything: ``empty`` has the three hooks and
does nothing in them (TaskIQ's cost of calling a middleware); ``capture`` does
only what a recorder cannot leave for later (stamps the enqueue time on the
message, reads the clocks, copies the arguments as JSON, keeps the attempt in
a list that is emptied every 1000 tasks) and writes nothing.

Part 2, a real worker: ``taskiq worker --workers 2`` on a taskiq-redis
``ListQueueBroker`` drains M no-op tasks queued beforehand, with and without the
middleware (A-B-B-A); tasks/s from the first task to the last, and the ratio.
It also prints the CPU time per task of the worker processes, PostgreSQL and
Redis (all their processes, from /proc), to show where the monitored runs'
extra time goes on a machine whose cores they share. With ``--pin``, the
services get the last core and ``taskiq worker --workers 1`` the first, as if
PostgreSQL and Redis ran on another host: the ratio is then the recorder's own
cost (Linux only; affinities are restored at the end).

    python bench/overhead.py [--tasks 20000] [--rounds 3] [--worker-tasks 50000]
        [--skip-worker] [--skip-loop] [--floor] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from common import (
    REDIS_URL,
    ROOT,
    SERVER_DSN,
    child_env,
    interleaved,
    scratch_database,
    spread,
)
from taskiq import InMemoryBroker, TaskiqMessage, TaskiqMiddleware, TaskiqResult

from taskmon.worker.middleware import ENQUEUED_LABEL, MonitoringMiddleware

HERE = Path(__file__).resolve().parent
DB = "taskmon_bench_overhead"
PAYLOAD = {"user": "alice", "password": "x", "body": "y" * 200}


class EmptyHooks(TaskiqMiddleware):
    """The floor of any middleware: TaskIQ calls the three hooks, which do nothing."""

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        return message

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        return message

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        return None


class CaptureOnly(EmptyHooks):
    """What a recorder must capture inside the hooks, and nothing else (nothing is written)."""

    def __init__(self) -> None:
        super().__init__()
        self.running: dict[int, list[Any]] = {}
        self.done: list[list[Any]] = []

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        message.labels[ENQUEUED_LABEL] = int(time.time() * 1000 + 0.5) / 1000
        return message

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        labels = dict(message.labels)
        self.running[id(message)] = [
            message.task_id, message.task_name, labels, labels.pop(ENQUEUED_LABEL, None),
            time.time(), time.perf_counter(), orjson.dumps([message.args, message.kwargs]),
        ]  # fmt: skip
        return message

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        attempt = self.running.pop(id(message))
        attempt.append(time.perf_counter() - attempt[5])
        attempt.append(result.is_err)
        self.done.append(attempt)
        if len(self.done) >= 1000:
            self.done.clear()


FLOORS: dict[str, type[TaskiqMiddleware]] = {"empty": EmptyHooks, "capture": CaptureOnly}


async def _loop_run(n: int, dsn: str | None, floor: str | None = None) -> tuple[float, float]:
    """CPU and wall seconds for `n` tasks, with the middleware when `dsn` is given.

    `floor` names one of :data:`FLOORS` to run instead of the middleware.
    """
    monitor = MonitoringMiddleware(dsn=dsn) if dsn and floor is None else None
    broker = InMemoryBroker(await_inplace=True)
    if monitor is not None:
        broker = broker.with_middlewares(monitor)
    elif floor is not None:
        broker = broker.with_middlewares(FLOORS[floor]())

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
    """A new empty database for the runs (the warm-up runs migrate it)."""
    return await scratch_database(DB, migrate=False, server=server_dsn)


def _summary(values: list[float]) -> str:
    return spread(values, "7.1f")


def loop_bench(server_dsn: str, n: int, rounds: int, floor: bool) -> None:
    dsn = asyncio.run(_reset(server_dsn))
    kinds = ["bare", "monitored", *(FLOORS if floor else ())]
    print(f"\n1. in-process loop: {n} no-op tasks per run, A-B-B-A x {rounds}, after a warm-up")
    asyncio.run(_loop_run(n // 4, None))
    asyncio.run(_loop_run(n // 4, dsn))
    runs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind in interleaved(kinds):
            runs[kind].append(
                asyncio.run(
                    _loop_run(
                        n,
                        None if kind == "bare" else dsn,
                        kind if kind in FLOORS else None,
                    )
                )
            )
    cpu = {k: [c * 1e6 / n for c, _ in v] for k, v in runs.items()}
    wall = {k: [w * 1e6 / n for _, w in v] for k, v in runs.items()}
    names = {
        "bare": "without the middleware",
        "monitored": "with the middleware",
        "empty": "empty hooks (floor)",
        "capture": "capture only (floor)",
    }
    print(f"   {'µs per task, median (min-max)':34} {'CPU':>22} {'wall':>22}")
    for kind in kinds:
        print(f"   {names[kind]:34} {_summary(cpu[kind]):>22} {_summary(wall[kind]):>22}")
    # pair each run with the bare run of the same position in its round (A-B-B-A),
    # so drift cancels
    for kind in kinds[1:]:
        added_cpu = [m - b for m, b in zip(cpu[kind], cpu["bare"], strict=True)]
        added_wall = [m - b for m, b in zip(wall[kind], wall["bare"], strict=True)]
        label = "added (paired runs)" if kind == "monitored" else f"added by {kind}"
        print(f"   {label:34} {_summary(added_cpu):>22} {_summary(added_wall):>22}")


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_WHO = (("postgres", "postgres"), ("redis-server", "redis"), ("taskiq worker", "workers"))


def _cpu_by_kind() -> dict[str, float]:
    """CPU seconds used so far by the worker processes, PostgreSQL and Redis (from /proc)."""
    totals = dict.fromkeys((kind for _, kind in _WHO), 0.0)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        for needle, kind in _WHO:
            if needle in cmdline:
                totals[kind] += (int(stat[11]) + int(stat[12])) / _CLOCK_TICKS
                break
    return totals


def _service_pids() -> list[int]:
    """The PostgreSQL and Redis processes (a backend forked later takes its postmaster's CPUs)."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().decode(errors="replace")
            except OSError:
                continue
            if "postgres" in cmdline or "redis-server" in cmdline:
                pids.append(int(pid))
    return pids


@contextlib.contextmanager
def _pinned_services(cpus: set[int]) -> Iterator[None]:
    """Run PostgreSQL and Redis (every thread) on `cpus` meanwhile."""
    everything = os.sched_getaffinity(0)

    def pin(to: set[int]) -> None:
        for pid in _service_pids():
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(int(tid), to)

    pin(cpus)
    try:
        yield
    finally:
        pin(everything)


def _worker_run(
    n: int, monitored: bool, dsn: str, redis_url: str, workers: int = 2, cpu: int | None = None
) -> tuple[float, dict[str, float]]:
    """Tasks/s of a `taskiq worker` (2 processes, or `workers`) draining `n` queued no-op tasks.

    `cpu`: the one CPU the worker's processes may use (None: any).

    Also the CPU µs per task of each kind of process (see :func:`_cpu_by_kind`),
    over the same span as the rate.
    """
    env = child_env(
        PYTHONPATH=f"{HERE}{os.pathsep}{ROOT}",  # overhead_app, and this checkout's taskmon
        TASKMON_BENCH_REDIS_URL=redis_url,
        BENCH_MONITOR_DSN=dsn if monitored else "",
    )
    r = _redis(redis_url)
    r.flushdb()
    subprocess.run(
        [sys.executable, str(HERE / "overhead_app.py"), "kick", str(n)], env=env, check=True
    )
    # its log goes to a file: a pipe nobody reads fills up and blocks the worker.
    # WARNING, not TaskIQ's default INFO line per task: the bare worker is faster
    # without it, so the ratio is the harder one
    pin = [] if cpu is None else ["taskset", "-c", str(cpu)]
    with tempfile.TemporaryFile() as log:
        worker = subprocess.Popen(
            [
                *pin, sys.executable, "-m", "taskiq", "worker", "overhead_app:broker",
                "--workers", str(workers), "--log-level", "WARNING",
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


def _drained(
    r: Any, worker: subprocess.Popen[bytes], log: Any, n: int
) -> tuple[float, dict[str, float]]:
    """Tasks/s from the first task reported done to the last, and CPU µs per task meanwhile."""
    first = last = None
    cpu0: dict[str, float] = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = int(r.get("bench:done") or 0)
        now = time.perf_counter()
        if done and first is None:
            first = (now, done)
            cpu0 = _cpu_by_kind()  # the workers' start-up (imports) is left out
        if done >= n:
            last = now
            break
        if worker.poll() is not None:
            log.seek(0)
            raise RuntimeError(log.read().decode(errors="replace") or "the worker died")
        time.sleep(0.005)
    assert first is not None and last is not None, "the worker did not finish"
    cpu1 = _cpu_by_kind()
    tasks = n - first[1]
    return tasks / (last - first[0]), {k: (cpu1[k] - cpu0[k]) * 1e6 / tasks for k in cpu1}


def worker_bench(server_dsn: str, n: int, rounds: int, redis_url: str, pin: bool) -> None:
    dsn = asyncio.run(_reset(server_dsn))
    with contextlib.ExitStack() as stack:
        workers, cpu = 2, None
        if pin:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) < 2:
                raise SystemExit("--pin needs two CPUs")
            stack.enter_context(_pinned_services({cpus[-1]}))
            workers, cpu = 1, cpus[0]
        where = f", pinned to CPU {cpu}, services on the other" if pin else ""
        print(
            f"\n2. taskiq worker --workers {workers}{where}, ListQueueBroker: "
            f"{n} queued no-op tasks per run"
        )
        _worker_bench(dsn, n, rounds, redis_url, workers, cpu)


def _worker_bench(
    dsn: str, n: int, rounds: int, redis_url: str, workers: int, cpu: int | None
) -> None:
    _worker_run(n // 10, False, dsn, redis_url, workers, cpu)  # warm-up (and migrations)
    _worker_run(n // 10, True, dsn, redis_url, workers, cpu)
    rates: dict[str, list[float]] = {"bare": [], "monitored": []}
    used: dict[str, dict[str, list[float]]] = {"bare": {}, "monitored": {}}
    for _ in range(rounds):
        for kind in interleaved(("bare", "monitored")):
            rate, split = _worker_run(n, kind == "monitored", dsn, redis_url, workers, cpu)
            rates[kind].append(rate)
            for who, us in split.items():
                used[kind].setdefault(who, []).append(us)
    ratios = [m / b for m, b in zip(rates["monitored"], rates["bare"], strict=True)]
    print(f"   {'tasks/s, median (min-max)':34}")
    print(f"   {'without the middleware':34} {_summary(rates['bare'])}")
    print(f"   {'with the middleware':34} {_summary(rates['monitored'])}")
    print(f"   {'monitored / bare (paired runs)':34} {spread(ratios, '7.1%')}")
    whos = [kind for _, kind in _WHO]
    print(f"\n   {'CPU µs per task, median (min-max)':34} " + " ".join(f"{w:>22}" for w in whos))
    for kind in ("bare", "monitored"):
        print(f"   {kind:34} " + " ".join(f"{_summary(used[kind][w]):>22}" for w in whos))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="A-B-B-A rounds (2 runs of each)")
    parser.add_argument("--worker-tasks", type=int, default=50_000)
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-worker", action="store_true")
    parser.add_argument(
        "--floor", action="store_true", help="also run the empty and capture-only middlewares"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="one worker process on the first CPU, PostgreSQL and Redis on the other",
    )
    parser.add_argument("--dsn", default=SERVER_DSN, help="the server (TASKMON_BENCH_DSN)")
    parser.add_argument("--redis-url", default=REDIS_URL, help="flushed (TASKMON_BENCH_REDIS_URL)")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    if not args.skip_loop:
        loop_bench(args.dsn, args.tasks, args.rounds, args.floor)
    if not args.skip_worker:
        worker_bench(args.dsn, args.worker_tasks, args.rounds, args.redis_url, args.pin)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
