"""What ``record_enqueued`` adds to a client's ``kiq()`` (run by hand).

A client sends N tasks with ``await task.kiq(i)``, one after the other, through
three configurations of the same broker:

* ``bare``: no middleware at all;
* ``stamp``: ``MonitoringMiddleware()`` as installed by default (``pre_send``
  stamps the enqueue time; nothing is written client side);
* ``record``: ``MonitoringMiddleware(record_enqueued=True)``: each send is also
  recorded ``pending`` by the client's batching writer, into PostgreSQL.

A run ends when the writer has written every pending row, so its whole cost is
inside the run (it shares the process, as it does in a user's client). Figures
are the CPU time (``time.process_time``) and wall time per ``kiq()``, median
and range over the rounds; each round runs the configurations A-B-C-C-B-A
after a warm-up round that is not counted.

Two brokers: ``redis``, taskiq-redis's ``ListQueueBroker`` (a real send, an
``LPUSH`` per task), and ``null``, a broker whose ``kick`` does nothing (the
cost of ``kiq()`` itself, taskiq's floor: the harshest denominator).

    python bench/enqueue.py [--tasks 5000] [--rounds 5] [--broker redis|null|both]
    python bench/enqueue.py --instructions [--tasks 1000]   # needs valgrind
    python bench/enqueue.py --hook                          # pre_send alone

With ``--instructions``, each configuration's client runs under ``valgrind
--tool=callgrind`` with N and 3N sends, and the difference divided by 2N is
its instructions per ``kiq()``, start-up excluded: a figure the noise of a
shared machine does not move (only the client process is counted, not Redis
or PostgreSQL).

With ``--hook``, ``pre_send`` alone is timed on prepared messages, for
``stamp`` and ``record`` (A-B-B-A), with a writer that is never started: the
part of the cost a task's sender waits for, without the writer's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from common import (
    REDIS_URL,
    callgrind_total,
    child_env,
    drop_database,
    interleaved,
    scratch_database,
    spread,
)

from taskmon import MonitoringMiddleware

KINDS = ("bare", "stamp", "record")
BATCH = 500
HERE = Path(__file__).resolve().parent


def _null_broker() -> Any:
    """An ``AsyncBroker`` whose ``kick`` sends nothing anywhere."""
    from taskiq import AsyncBroker
    from taskiq.message import BrokerMessage

    class _Null(AsyncBroker):
        async def kick(self, message: BrokerMessage) -> None:
            return None

        async def listen(self) -> AsyncGenerator[bytes, None]:
            raise NotImplementedError
            yield b""

    return _Null()


def _broker(kind_of_broker: str, queue: str) -> Any:
    if kind_of_broker == "null":
        return _null_broker()
    from taskiq_redis import ListQueueBroker

    return ListQueueBroker(REDIS_URL, queue_name=queue)


async def _run(
    kind_of_broker: str, kind: str, n: int, dsn: str, queue: str, flush_interval: float = 0.1
) -> tuple[float, float, float, float]:
    """Seconds of CPU and of wall time per ``kiq()`` for one configuration, all in,
    and the median and 99th percentile of one ``kiq()`` call's own duration."""
    broker = _broker(kind_of_broker, queue)
    middleware: MonitoringMiddleware | None = None
    if kind != "bare":
        # as installed by default otherwise (events on: a client announces no pending rows)
        middleware = MonitoringMiddleware(
            dsn, record_enqueued=kind == "record", auto_migrate=False, flush_interval=flush_interval
        )
        broker = broker.with_middlewares(middleware)

    @broker.task(task_name="bench:noop")
    async def noop(i: int) -> None:
        return None

    await broker.startup()
    try:
        calls = [0.0] * n
        clock = time.perf_counter
        cpu0, wall0 = time.process_time(), clock()
        for i in range(n):
            t = clock()
            await noop.kiq(i)
            calls[i] = clock() - t
        if middleware is not None and middleware.recorder is not None:
            await middleware.recorder.flush()
        cpu, wall = time.process_time() - cpu0, clock() - wall0
    finally:
        await broker.shutdown()
    calls.sort()
    return cpu / n, wall / n, calls[n // 2], calls[min(n - 1, n * 99 // 100)]


async def _clear(dsn: str, queue: str) -> int:
    """Empty the table and the queue between runs; how many pending rows were written."""
    from redis.asyncio import Redis

    from taskmon.store.db import connect

    conn = await connect(dsn)
    try:
        written = int(await conn.fetchval("SELECT count(*) FROM task_execution_logs"))
        await conn.execute("TRUNCATE task_execution_logs")
    finally:
        await conn.close()
    redis = Redis.from_url(REDIS_URL)
    try:
        await redis.delete(queue)
    finally:
        await redis.aclose()
    return written


CHILD = """
import asyncio, sys
sys.path.insert(0, {here!r})
from enqueue import _run
asyncio.run(
    _run(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], float(sys.argv[6]))
)
"""


async def _instructions(kind_of_broker: str, kind: str, n: int, dsn: str, queue: str) -> int:
    """Instructions per ``kiq()`` of one configuration: (3N run - N run) / 2N."""
    totals = []
    for count in (n, 3 * n):
        with tempfile.TemporaryDirectory() as tmp:
            child = CHILD.format(here=str(HERE))
            # callgrind runs the client ~50 times slower: the writer flushes on a
            # longer interval so that its batches fill (500 rows) as at a real send rate
            cmd = [sys.executable, "-c", child, kind_of_broker, kind, str(count), dsn, queue, "30"]
            totals.append(
                await asyncio.to_thread(
                    callgrind_total, cmd, child_env(), Path(tmp) / "callgrind.out"
                )
            )
        written = await _clear(dsn, queue)
        expected = count if kind == "record" else 0
        if written != expected:
            sys.exit(f"{kind}: {written} rows written, {expected} expected")
    return (totals[1] - totals[0]) // (2 * n)


async def _hook(n: int, rounds: int) -> None:
    from taskiq import TaskiqMessage
    from taskiq_redis import ListQueueBroker

    times: dict[str, list[float]] = {"stamp": [], "record": []}
    for kind in interleaved(list(times)):
        middleware = MonitoringMiddleware(
            "postgresql://nobody@127.0.0.1:1/none",  # never connected: the writer is not started
            record_enqueued=kind == "record",
            auto_migrate=False,
        )
        broker = ListQueueBroker(REDIS_URL).with_middlewares(middleware)

        @broker.task(task_name="bench:noop")
        async def noop(i: int) -> None:
            return None

        recorder = middleware.recorder = middleware._make_recorder()
        for round_ in range(rounds + 1):
            messages = [
                TaskiqMessage(
                    task_id=str(i), task_name="bench:noop", labels={}, args=[i], kwargs={}
                )
                for i in range(n)
            ]
            took = 0.0
            # in batches of the writer's size, emptied between them as the writer would
            for start in range(0, n, BATCH):
                t0 = time.perf_counter()
                for message in messages[start : start + BATCH]:
                    await middleware.pre_send(message)
                took += time.perf_counter() - t0
                getattr(recorder, "_sent", []).clear()
                recorder._pending.clear()
            if round_:
                times[kind].append(took / n * 1e6)
    for kind, values in times.items():
        print(f"pre_send, {kind:7} µs per message: {spread(values, '.2f')}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--broker", choices=("redis", "null", "both"), default="both")
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    parser.add_argument("--hook", action="store_true", help="time pre_send alone")
    args = parser.parse_args()
    if args.hook:
        await _hook(50_000, args.rounds)
        return
    brokers = ("redis", "null") if args.broker == "both" else (args.broker,)
    dsn = await scratch_database("taskmon_bench_enqueue")
    queue = "taskmon-bench-enqueue"
    try:
        if args.instructions:
            for kind_of_broker in brokers:
                counts = {
                    k: await _instructions(kind_of_broker, k, args.tasks, dsn, queue) for k in KINDS
                }
                print(
                    f"\n{kind_of_broker} broker, instructions per kiq() ({args.tasks} and "
                    f"{3 * args.tasks} sends, start-up excluded)"
                )
                for kind in KINDS:
                    print(f"{kind:8} {counts[kind]:>12,}")
                extra = counts["record"] - counts["stamp"]
                print(
                    f"record_enqueued adds {extra:,}: {100 * extra / counts['stamp']:+.1f} % "
                    f"of the default middleware's kiq()"
                )
            return
        for kind_of_broker in brokers:
            cpu: dict[str, list[float]] = {k: [] for k in KINDS}
            wall: dict[str, list[float]] = {k: [] for k in KINDS}
            p50: dict[str, list[float]] = {k: [] for k in KINDS}
            p99: dict[str, list[float]] = {k: [] for k in KINDS}
            for round_ in range(args.rounds + 1):
                for kind in interleaved(KINDS):
                    c, w, m, t = await _run(kind_of_broker, kind, args.tasks, dsn, queue)
                    written = await _clear(dsn, queue)
                    expected = args.tasks if kind == "record" else 0
                    if written != expected:
                        sys.exit(f"{kind}: {written} rows written, {expected} expected")
                    if round_:  # the first round warms up
                        cpu[kind].append(c * 1e6)
                        wall[kind].append(w * 1e6)
                        p50[kind].append(m * 1e6)
                        p99[kind].append(t * 1e6)
            print(f"\n{kind_of_broker} broker, {args.tasks} kiq() per run, {args.rounds} rounds")
            print("all in, per kiq() (the writer's work included), and one kiq() call's own time:")
            print(
                f"{'':8} {'CPU µs/kiq':>24} {'wall µs/kiq':>24}"
                f" {'call p50 µs':>24} {'call p99 µs':>24}"
            )
            for kind in KINDS:
                cells = [spread(d[kind], ">10.2f") for d in (cpu, wall, p50, p99)]
                print(f"{kind:8} " + " ".join(f"{c:>24}" for c in cells))
            for words, d in (("CPU per kiq()", cpu), ("a call's p50", p50), ("its p99", p99)):
                base = statistics.median(d["stamp"])
                extra = statistics.median(d["record"]) - base
                print(
                    f"record_enqueued adds {extra:.2f} µs to {words}: "
                    f"{100 * extra / base:+.1f} % of the default middleware's, "
                    f"{100 * extra / statistics.median(d['bare']):+.1f} % of a kiq() without it"
                )
    finally:
        await drop_database("taskmon_bench_enqueue")


if __name__ == "__main__":
    asyncio.run(main())
