"""Attempts sent and not started: the ``pending`` rows ``record_enqueued`` writes.

A client with ``MonitoringMiddleware(record_enqueued=True)`` records each task
it sends as ``pending`` (``created_at`` the enqueue time); the worker's first
state of the attempt updates that row. What stays ``pending`` was sent and
never picked up: :func:`fetch_waiting` groups it by task and queue for
``taskmon queues`` and the TUI's workers screen (the ``pending_oldest`` alert
metric's figure is :func:`taskmon.store.alerts.oldest_pending`). Both read the
``(status, created_at, id)`` index from its oldest ``pending`` entry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

import asyncpg

__all__ = ["DEFAULT_WAITING_OVER_S", "WaitingRow", "fetch_waiting"]

DEFAULT_WAITING_OVER_S = 60.0
"""How long a sent task may wait unstarted before the waiting lists show it."""


class WaitingRow(TypedDict):
    """The tasks of one name and queue sent longer ago than the threshold and not started."""

    task_name: str
    queue: str | None
    waiting: int
    oldest_sent_at: datetime
    oldest_wait_s: float
    """Seconds since the oldest of them was sent."""


_WAITING = """
SELECT r.task_name, r.queue, count(*) AS waiting, min(r.created_at) AS oldest_sent_at,
       extract(epoch FROM now() - min(r.created_at))::float8 AS oldest_wait_s
FROM task_execution_logs r
WHERE r.status = 'pending' AND r.created_at < now() - make_interval(secs => $1::float8)
GROUP BY r.task_name, r.queue
ORDER BY oldest_sent_at, r.task_name
LIMIT $2
"""


async def fetch_waiting(
    conn: asyncpg.Connection[Any], *, older_than_s: float = DEFAULT_WAITING_OVER_S, limit: int = 200
) -> list[WaitingRow]:
    """The pending attempts sent more than `older_than_s` ago, by task and queue, oldest first."""
    rows = await conn.fetch(_WAITING, float(older_than_s), limit)
    return [
        WaitingRow(
            task_name=r["task_name"],
            queue=r["queue"],
            waiting=int(r["waiting"]),
            oldest_sent_at=r["oldest_sent_at"],
            oldest_wait_s=max(0.0, float(r["oldest_wait_s"])),
        )
        for r in rows
    ]
