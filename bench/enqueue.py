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
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncGenerator
from typing import Any

from common import REDIS_URL, drop_database, interleaved, scratch_database, spread

from taskmon import MonitoringMiddleware

KINDS = ("bare", "stamp", "record")


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


async def _run(kind_of_broker: str, kind: str, n: int, dsn: str, queue: str) -> tuple[float, float]:
    """Seconds of CPU and of wall time per ``kiq()`` for one configuration."""
    broker = _broker(kind_of_broker, queue)
    middleware: MonitoringMiddleware | None = None
    if kind != "bare":
        middleware = MonitoringMiddleware(
            dsn, publish_events=False, record_enqueued=kind == "record", auto_migrate=False
        )
        broker = broker.with_middlewares(middleware)

    @broker.task(task_name="bench:noop")
    async def noop(i: int) -> None:
        return None

    await broker.startup()
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(n):
            await noop.kiq(i)
        if middleware is not None and middleware.recorder is not None:
            await middleware.recorder.flush()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await broker.shutdown()
    return cpu / n, wall / n


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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--broker", choices=("redis", "null", "both"), default="both")
    args = parser.parse_args()
    brokers = ("redis", "null") if args.broker == "both" else (args.broker,)
    dsn = await scratch_database("taskmon_bench_enqueue")
    queue = "taskmon-bench-enqueue"
    try:
        for kind_of_broker in brokers:
            cpu: dict[str, list[float]] = {k: [] for k in KINDS}
            wall: dict[str, list[float]] = {k: [] for k in KINDS}
            for round_ in range(args.rounds + 1):
                for kind in interleaved(KINDS):
                    c, w = await _run(kind_of_broker, kind, args.tasks, dsn, queue)
                    written = await _clear(dsn, queue)
                    expected = args.tasks if kind == "record" else 0
                    if written != expected:
                        sys.exit(f"{kind}: {written} rows written, {expected} expected")
                    if round_:  # the first round warms up
                        cpu[kind].append(c * 1e6)
                        wall[kind].append(w * 1e6)
            print(f"\n{kind_of_broker} broker, {args.tasks} kiq() per run, {args.rounds} rounds")
            print(f"{'':8} {'CPU µs/kiq':>24} {'wall µs/kiq':>24}")
            for kind in KINDS:
                cpu_text, wall_text = spread(cpu[kind], ">10.2f"), spread(wall[kind], ">10.2f")
                print(f"{kind:8} {cpu_text:>24} {wall_text:>24}")
            base = statistics.median(cpu["stamp"])
            extra = statistics.median(cpu["record"]) - base
            print(
                f"record_enqueued adds {extra:.2f} µs CPU per kiq(): "
                f"{100 * extra / base:+.1f} % of the default middleware's kiq(), "
                f"{100 * extra / statistics.median(cpu['bare']):+.1f} % of a kiq() without it"
            )
    finally:
        await drop_database("taskmon_bench_enqueue")


if __name__ == "__main__":
    asyncio.run(main())
