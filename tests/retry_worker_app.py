"""A TaskIQ application for `taskmon retry` tests, run by a real `taskiq worker`.

Configured from the environment like ``worker_app``: ``TEST_REDIS_URL``,
``TEST_QUEUE``, ``TASKMON_DSN``, and ``TEST_STATE_DIR``, where each task
appends the call it received (as JSON, one line per call) to a file named by
its first argument, so a test can compare a retry's call with the original's.
"""

from __future__ import annotations

import json
import os
from typing import Any

from taskiq_redis import ListQueueBroker

from taskmon import MonitoringMiddleware

broker = ListQueueBroker(
    os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    queue_name=os.environ.get("TEST_QUEUE", "taskmon-retry-test"),
).with_middlewares(MonitoringMiddleware(flush_interval=0.05))


def _called(marker: str, call: dict[str, Any]) -> int:
    """Append `call` to the marker's file; how many calls it now holds."""
    path = os.path.join(os.environ.get("TEST_STATE_DIR", "/tmp"), marker)
    with open(path, "a") as fh:
        fh.write(json.dumps(call, sort_keys=True) + "\n")
    with open(path) as fh:
        return len(fh.readlines())


@broker.task(task_name="retry:fail_once")
async def fail_once(marker: str, size: int, *, note: str = "") -> str:
    """Fails on its first call for `marker`, succeeds after."""
    if _called(marker, {"size": size, "note": note}) == 1:
        raise ValueError(f"first call of {marker}")
    return "ok"


@broker.task(task_name="retry:spread")
async def spread(marker: str, first: int, *rest: int) -> int:
    """Takes *args: a retry must put `marker` and `first` back in their positions."""
    if _called(marker, {"first": first, "rest": list(rest)}) == 1:
        raise ValueError(f"first call of {marker}")
    return first + sum(rest)


@broker.task(task_name="retry:login")
async def login(user: str, password: str) -> None:
    """A task with a secret parameter: recorded redacted."""
    raise PermissionError(f"no such user {user}")
