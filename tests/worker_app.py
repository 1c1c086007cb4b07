"""A TaskIQ application for tests that run a real `taskiq worker` process.

Configured from the environment so each test gets its own queue and database:
``TEST_REDIS_URL``, ``TEST_QUEUE``, ``TASKMON_DSN``; ``TEST_RECORD_ENQUEUED=1`` records
each sent task as ``pending``.
"""

from __future__ import annotations

import asyncio
import os

from taskiq import SimpleRetryMiddleware
from taskiq_redis import ListQueueBroker

from taskmon import MonitoringMiddleware

broker = ListQueueBroker(
    os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    queue_name=os.environ.get("TEST_QUEUE", "taskmon-test"),
).with_middlewares(
    SimpleRetryMiddleware(default_retry_count=3),
    MonitoringMiddleware(
        flush_interval=0.05, record_enqueued=os.environ.get("TEST_RECORD_ENQUEUED") == "1"
    ),
)


@broker.task(task_name="tests:add")
async def add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


@broker.task(task_name="tests:fail")
async def fail(reason: str) -> None:
    raise ValueError(reason)


@broker.task(task_name="tests:flaky", retry_on_error=True, max_retries=3)
async def flaky(marker: str) -> str:
    # fails on attempts 0 and 1, succeeds on attempt 2, across worker processes
    path = os.path.join(os.environ.get("TEST_STATE_DIR", "/tmp"), marker)
    with open(path, "a") as fh:
        fh.write("x")
    with open(path) as fh:
        tries = len(fh.read())
    if tries < 3:
        raise ConnectionError(f"try {tries}")
    return "ok"


@broker.task(task_name="tests:sleep")
async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)
