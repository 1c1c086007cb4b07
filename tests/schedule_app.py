"""A TaskIQ application with schedules, for tests that run `taskiq scheduler` and `taskiq worker`.

Configured from the environment like ``worker_app``: ``TEST_REDIS_URL``,
``TEST_QUEUE``, ``TASKMON_DSN``; ``TEST_SCHEDULE_PREFIX`` names the Redis keys
of its ``RedisScheduleSource``.
"""

from __future__ import annotations

import os
from typing import Any

from taskiq import ScheduleSource, TaskiqScheduler
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import ListQueueBroker, ListRedisScheduleSource

from taskmon import MonitoringMiddleware

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

broker = ListQueueBroker(
    REDIS_URL, queue_name=os.environ.get("TEST_QUEUE", "taskmon-test")
).with_middlewares(MonitoringMiddleware(flush_interval=0.05))


@broker.task(
    task_name="tests:tick",
    schedule=[{"interval": int(os.environ.get("TEST_TICK_S", "2")), "schedule_id": "tick"}],
)
async def tick() -> str:
    return "tock"


@broker.task(task_name="tests:nightly", schedule=[{"cron": "0 3 * * *"}])
async def nightly() -> None:
    return None


@broker.task(task_name="tests:report")
async def report(day: str) -> str:
    return day


class FileSource(ScheduleSource):
    """A schedule source taskmon does not know how to list."""

    async def get_schedules(self) -> list[Any]:
        return []


redis_source = ListRedisScheduleSource(
    REDIS_URL, prefix=os.environ.get("TEST_SCHEDULE_PREFIX", "taskmon-test-schedule")
)

scheduler = TaskiqScheduler(broker, [LabelScheduleSource(broker)])
"""What `taskiq scheduler schedule_app:scheduler` runs: the label schedules."""

every_source = TaskiqScheduler(broker, [LabelScheduleSource(broker), redis_source, FileSource()])
"""Every kind of source: labels, Redis, and one taskmon cannot read."""
