"""The app `bench/overhead.py` runs under a real `taskiq worker`: one no-op task.

``BENCH_MONITOR_DSN`` (set by ``overhead.py`` to its scratch database for the
monitored runs, empty for the bare ones) adds MonitoringMiddleware writing
there. The broker is on ``TASKMON_BENCH_REDIS_URL`` (see ``bench/common.py``).
Each worker process adds what it finished to the Redis counter ``bench:done``
every 5 ms, so the bench sees the last task end without a round trip per task.

    python bench/overhead_app.py kick N    # queue N tasks, then exit
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any

from common import REDIS_URL
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import TaskiqEvents, TaskiqState
from taskiq_redis import ListQueueBroker

# the README's settings: without them an idle worker dies every 5 s with a
# TimeoutError, and counts not yet reported die with it
broker: Any = ListQueueBroker(
    REDIS_URL,
    queue_name="bench:queue",
    socket_timeout=2,
    retry=Retry(ExponentialBackoff(cap=1, base=0.05), -1, supported_errors=(RedisTimeoutError,)),
)
if os.environ.get("BENCH_MONITOR_DSN"):
    from taskmon import MonitoringMiddleware

    broker = broker.with_middlewares(MonitoringMiddleware(dsn=os.environ["BENCH_MONITOR_DSN"]))

_done = 0


@broker.task(task_name="bench:noop")
async def noop(i: int, payload: dict[str, str]) -> int:
    global _done
    _done += 1
    return i


async def _report() -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(REDIS_URL)
    sent = 0
    while True:
        await asyncio.sleep(0.005)
        if _done > sent:
            delta, sent = _done - sent, _done
            await client.incrby("bench:done", delta)


_reporter: set[asyncio.Task[None]] = set()


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _start_reporting(state: TaskiqState) -> None:
    _reporter.add(asyncio.create_task(_report()))


@broker.on_event(TaskiqEvents.WORKER_SHUTDOWN)
async def _stop_reporting(state: TaskiqState) -> None:
    for task in _reporter:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def kick(n: int) -> None:
    await broker.startup()
    payload = {"user": "alice", "password": "x", "body": "y" * 200}
    for start in range(0, n, 500):
        await asyncio.gather(*(noop.kiq(i, payload) for i in range(start, min(n, start + 500))))
    await broker.shutdown()


if __name__ == "__main__":
    if sys.argv[1:2] == ["kick"]:
        asyncio.run(kick(int(sys.argv[2])))
