"""A TaskIQ application whose worker beats fast: heartbeats, lost attempts and backlog tests.

Configured from the environment like ``worker_app``: ``TEST_REDIS_URL``,
``TEST_QUEUE``, ``TASKMON_DSN``, and ``TEST_HEARTBEAT`` (seconds, default 0.3).
"""

from __future__ import annotations

import asyncio
import os

from taskiq import InMemoryBroker
from taskiq_redis import ListQueueBroker

from taskmon import MonitoringMiddleware

HEARTBEAT_S = float(os.environ.get("TEST_HEARTBEAT", "0.3"))

monitoring = MonitoringMiddleware(flush_interval=0.05, heartbeat_interval=HEARTBEAT_S)

broker = ListQueueBroker(
    os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    queue_name=os.environ.get("TEST_QUEUE", "taskmon-heartbeat-test"),
).with_middlewares(monitoring)


@broker.task(task_name="tests:sleep_forever")
async def sleep_forever() -> None:
    # no timeout label: only the worker's heartbeat can tell that it died
    await asyncio.sleep(3600)


@broker.task(task_name="tests:double")
async def double(x: int) -> int:
    return 2 * x


memory = InMemoryBroker()
"""A broker taskmon cannot inspect (``taskmon queues --broker heartbeat_app:memory``)."""
