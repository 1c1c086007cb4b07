"""A TaskIQ application whose task never ends on its own: its worker gets killed mid-task.

Configured from the environment like ``worker_app``: ``TEST_REDIS_URL``,
``TEST_QUEUE``, ``TASKMON_DSN``.
"""

from __future__ import annotations

import os
import time

from taskiq_redis import ListQueueBroker

from taskmon import MonitoringMiddleware

monitoring = MonitoringMiddleware(flush_interval=0.05)

broker = ListQueueBroker(
    os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    queue_name=os.environ.get("TEST_QUEUE", "taskmon-lost-test"),
).with_middlewares(monitoring)

TIMEOUT_S = 2


@broker.task(task_name="tests:hang", timeout=TIMEOUT_S)
async def hang() -> None:
    # Get the "running" row written, then block the event loop: TaskIQ's
    # timeout (a cancellation) can no longer fire and no outcome is ever
    # recorded, exactly as if the process froze or died mid-task.
    if monitoring.recorder is not None:
        await monitoring.recorder.flush()
    time.sleep(600)
