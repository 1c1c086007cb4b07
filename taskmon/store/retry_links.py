"""The statement behind "retried as": the retries of recorded tasks, by their link label.

A retry is a new task whose labels carry ``taskmon_retry_of`` (the original's
task id), stored with the rest of its labels when a worker records it; the link
"retried as" is found by reading that label back. A partial index on it
(``sql/0005_retry_links.sql``) serves the lookup; where the migration left it
out (a large table), the lookup is bounded to rows newer than the original.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import asyncpg

if TYPE_CHECKING:
    from taskmon.domain.filters import TaskFilter
    from taskmon.store.history import HistoryPage
    from taskmon.store.schema import AttemptRow

__all__ = [
    "LINK_KEYS",
    "RETRY_LABEL",
    "add_retry_links",
    "fetch_history_with_links",
    "fetch_retried_as",
    "retried_as",
    "retry_of",
]

RETRY_LABEL = "taskmon_retry_of"
"""The label of a re-sent task that names the task it re-sends."""


async def fetch_retried_as(
    conn: asyncpg.Connection[Any], task_ids: Sequence[str], *, since: datetime | None = None
) -> dict[str, list[str]]:
    """For each of `task_ids` that was retried, the task ids of its retries, oldest first.

    Only retries that a worker has started are known: the link is read from the
    labels the worker recorded.

    Args:
        conn: a connection from :func:`taskmon.store.db.connect`.
        task_ids: the originals.
        since: no retry was recorded before this (the oldest original's
            ``created_at``): without the partial index, only newer rows are read.
    """
    if not task_ids:
        return {}
    params: list[object] = [list(dict.fromkeys(task_ids))]
    bound = ""
    if since is not None:
        params.append(since)
        bound = " AND r.created_at >= $2"
    # the label's name is a schema constant, written as the partial index spells
    # it, so the planner matches the index's expression and predicate
    records = await conn.fetch(
        "SELECT r.labels ->> 'taskmon_retry_of' AS original, r.task_id, "
        "min(r.created_at) AS first_seen FROM task_execution_logs r "
        "WHERE r.labels ? 'taskmon_retry_of' AND r.labels ->> 'taskmon_retry_of' = ANY($1::text[])"
        f"{bound} GROUP BY 1, 2 ORDER BY 3, 2",
        *params,
    )
    found: dict[str, list[str]] = {}
    for r in records:
        found.setdefault(r["original"], []).append(r["task_id"])
    return found


LINK_KEYS = ("retry_of", "retried_as")
"""The keys a history row gains from :func:`add_retry_links` (after :data:`COLUMNS`)."""


def retry_of(row: Mapping[str, object]) -> str | None:
    """The task id this attempt's task re-sends (``taskmon retry``), from its labels."""
    labels = row.get("labels")
    origin = labels.get(RETRY_LABEL) if isinstance(labels, dict) else None
    return None if origin is None else str(origin)


def retried_as(row: Mapping[str, object]) -> list[str]:
    """The task ids that re-sent this attempt's task, as :func:`add_retry_links` found them."""
    found = row.get("retried_as")
    return [str(t) for t in found] if isinstance(found, list) else []


async def add_retry_links(conn: asyncpg.Connection[Any], rows: Sequence[AttemptRow]) -> None:
    """Give each history row a ``retried_as`` key (see :func:`retried_as`), in place."""
    if not rows:
        return
    links = await fetch_retried_as(
        conn, [r["task_id"] for r in rows], since=min(r["created_at"] for r in rows)
    )
    for row in rows:
        # one key beyond the row's columns, read back through retried_as()
        cast("dict[str, Any]", row)["retried_as"] = links.get(row["task_id"], [])


async def fetch_history_with_links(
    conn: asyncpg.Connection[Any], flt: TaskFilter, **options: Any
) -> HistoryPage:
    """A history page (``fetch_history(conn, flt, **options)``) with :func:`add_retry_links`."""
    from taskmon.store.history import fetch_history

    page = await fetch_history(conn, flt, **options)
    await add_retry_links(conn, page.rows)
    return page
