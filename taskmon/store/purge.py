"""Retention's statements: lost attempts marked, old rows archived and deleted, rollups trimmed.

Each function is one statement; :mod:`taskmon.worker.cleanup` puts them together
into batches and transactions, and publishes the events. Deletes walk the
``created_at`` index as a keyset (after the last deleted key), so a batch
never re-reads the dead index entries its predecessors left behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from taskmon.store.schema import COLUMNS, dead_worker_sql, shown_status_sql, stale_sql

__all__ = [
    "HOUR_ROLLUP_TABLES",
    "MINUTE_ROLLUP_TABLES",
    "archive_batch",
    "archive_line_sql",
    "count_older",
    "count_rollups",
    "count_stale",
    "delete_batch",
    "delete_ids",
    "delete_rollups",
    "existing_tables",
    "mark_lost_batch",
    "server_now",
]

# The rollup tables of sql/0002_rollups.sql, by resolution: the fine ones
# (minute counts and errors, 5-minute histograms) serve only the edges of
# windows, the hour ones whole hours. Each has a leading `bucket timestamptz`
# primary-key column. Table names are constants of the schema, never input,
# so they are the only thing formatted into SQL here.
MINUTE_ROLLUP_TABLES: tuple[str, ...] = (
    "task_rollup_minute",
    "task_hist_5min",
    "task_error_minute",
)
# hour and day tables answer long windows, so they share the longer retention
HOUR_ROLLUP_TABLES: tuple[str, ...] = (
    "task_rollup_hour",
    "task_hist_hour",
    "task_error_hour",
    "task_hist_day",
    "task_error_day",
)

# The readers' rule (taskmon.store.schema): with a timeout label, twice the
# timeout; without, `lost_after_s` ($1).
_STALE = stale_sql("$1::double precision", alias="")

_MARK_LOST = """
WITH stale AS (
    SELECT id FROM task_execution_logs
    WHERE {stale}
    ORDER BY created_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE task_execution_logs AS t SET
    status = 'lost',
    error_type = coalesce(t.error_type, 'Lost'),
    error_message = coalesce(t.error_message, CASE
        WHEN {dead} THEN
            'no outcome recorded and worker ' || t.worker
            || ' stopped sending heartbeats; it probably died'
        WHEN t.timeout_s IS NOT NULL THEN
            'no outcome recorded within 2×timeout (' || (t.timeout_s * 2)::text
            || 's); the worker probably died'
        ELSE 'no outcome recorded within ' || $1::double precision::text
            || 's; the worker probably died'
    END),
    updated_at = now()
FROM stale
WHERE t.id = stale.id AND t.status = 'running'
RETURNING t.task_id, t.attempt, t.task_name, t.worker, t.queue, t.labels, t.params,
          t.error_type, t.error_message, t.timeout_s, t.enqueued_at, t.started_at,
          t.created_at, t.queue_wait_ms
"""
_MARK_LOST_ANY = _MARK_LOST.format(stale=_STALE, dead=dead_worker_sql("t"))
# only the attempts of dead workers (what each worker's writer marks with its heartbeat)
_MARK_LOST_DEAD = _MARK_LOST.format(
    stale=f"status = 'running' AND {dead_worker_sql('')}", dead=dead_worker_sql("t")
)

_COUNT_STALE = f"SELECT count(*) FROM task_execution_logs WHERE {_STALE}"


# A keyset walk up the created_at index: $1 cutoff, $2/$3 the last key deleted
# (or -infinity/0 at the start), $4 the batch size.
_NEXT_KEYS = """
    SELECT id FROM task_execution_logs
    WHERE created_at < $1 AND (created_at, id) > ($2, $3)
    ORDER BY created_at, id
    LIMIT $4
"""

_DELETE_BATCH = f"""
WITH doomed AS ({_NEXT_KEYS})
DELETE FROM task_execution_logs AS t USING doomed
WHERE t.id = doomed.id
RETURNING t.created_at, t.id
"""


# The archive's line: the keys of `taskmon history --format json` (COLUMNS), in
# its order, built by PostgreSQL (JSON encoding in Python was the slowest part
# of archiving). A row still running past its threshold ($5) is written as
# lost, as readers show it. Timestamps are ISO 8601 in UTC (the transaction
# sets it).
def archive_line_sql(lost_after: str) -> str:
    """The SQL of one archive line of row ``t``; `lost_after` is the threshold's parameter."""
    return (
        "json_build_object("
        + ", ".join(
            f"'{c}', " + (shown_status_sql(lost_after, alias="t") if c == "status" else f"t.{c}")
            for c in COLUMNS
        )
        + ")::text"
    )


_ARCHIVE_LINE = archive_line_sql("$5::float8")

_SELECT_BATCH = f"""
SELECT t.id, t.created_at, {_ARCHIVE_LINE} AS line
FROM task_execution_logs AS t
WHERE t.id IN ({_NEXT_KEYS})
ORDER BY t.created_at, t.id
FOR UPDATE
"""

_DELETE_IDS = "DELETE FROM task_execution_logs WHERE id = ANY($1::bigint[])"

_COUNT_OLD = "SELECT count(*) FROM task_execution_logs WHERE created_at < $1"


async def server_now(conn: asyncpg.Connection[Any]) -> datetime:
    """The server's ``now()``: cutoffs are taken from the clock the rows were stamped by."""
    now: datetime = await conn.fetchval("SELECT now()")
    return now


async def mark_lost_batch(
    conn: asyncpg.Connection[Any],
    lost_after_s: float,
    batch_size: int,
    *,
    dead_workers_only: bool = False,
) -> list[asyncpg.Record]:
    """Store ``lost`` on up to `batch_size` stale running attempts; their rows.

    `dead_workers_only`: only the running attempts of dead workers (the first
    half of the lost rule, which needs no threshold).

    Each returned row has ``task_id, attempt, task_name, worker, queue, labels,
    params, error_type, error_message, timeout_s, enqueued_at, started_at,
    created_at, queue_wait_ms`` (after the update).
    """
    if dead_workers_only:
        # $1 is unused by this statement but keeps the error message's type known
        return await conn.fetch(_MARK_LOST_DEAD, float(lost_after_s), batch_size)
    return await conn.fetch(_MARK_LOST_ANY, float(lost_after_s), batch_size)


async def count_stale(conn: asyncpg.Connection[Any], lost_after_s: float) -> int:
    """How many attempts :func:`mark_lost_batch` would mark."""
    n: int = await conn.fetchval(_COUNT_STALE, float(lost_after_s))
    return n


async def count_older(conn: asyncpg.Connection[Any], cutoff: datetime) -> int:
    """How many raw rows were created before `cutoff`."""
    n: int = await conn.fetchval(_COUNT_OLD, cutoff)
    return n


async def delete_batch(
    conn: asyncpg.Connection[Any],
    cutoff: datetime,
    after: tuple[datetime, int],
    batch_size: int,
) -> list[asyncpg.Record]:
    """Delete the next `batch_size` rows created before `cutoff` after the key `after`.

    Returns the ``(created_at, id)`` of each deleted row.
    """
    return await conn.fetch(_DELETE_BATCH, cutoff, after[0], after[1], batch_size)


async def archive_batch(
    conn: asyncpg.Connection[Any],
    cutoff: datetime,
    after: tuple[datetime, int],
    batch_size: int,
    lost_after_s: float,
) -> list[asyncpg.Record]:
    """Lock the next batch :func:`delete_batch` would delete and read its archive lines.

    Call it in a transaction, then :func:`delete_ids` on the ids once the lines
    are safe. Rows have ``id, created_at, line`` (a JSON object, the keys of
    ``taskmon history --format json``), in key order.
    """
    await conn.execute("SET LOCAL TimeZone = 'UTC'")
    return await conn.fetch(
        _SELECT_BATCH, cutoff, after[0], after[1], batch_size, float(lost_after_s)
    )


async def delete_ids(conn: asyncpg.Connection[Any], ids: Sequence[int]) -> None:
    """Delete the raw rows `ids`."""
    await conn.execute(_DELETE_IDS, list(ids))


async def delete_rollups(
    conn: asyncpg.Connection[Any], table: str, cutoff: datetime, batch_size: int
) -> int:
    """Delete at most `batch_size` rows of rollup `table` with buckets before `cutoff`."""
    if table not in MINUTE_ROLLUP_TABLES + HOUR_ROLLUP_TABLES:
        raise ValueError(f"{table!r} is not a rollup table")
    status = await conn.execute(
        f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM {table} WHERE bucket < $1 ORDER BY bucket LIMIT $2))",
        cutoff,
        batch_size,
    )
    return int(status.rsplit(" ", 1)[1])


async def count_rollups(conn: asyncpg.Connection[Any], table: str, cutoff: datetime) -> int:
    """How many rows of rollup `table` have buckets before `cutoff`."""
    if table not in MINUTE_ROLLUP_TABLES + HOUR_ROLLUP_TABLES:
        raise ValueError(f"{table!r} is not a rollup table")
    n: int = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE bucket < $1", cutoff)
    return n


async def existing_tables(conn: asyncpg.Connection[Any], names: Sequence[str]) -> list[str]:
    """Those of `names` that are tables on the search path, in the order given."""
    found = await conn.fetch(
        "SELECT c.relname FROM pg_class AS c WHERE c.relname = ANY($1::text[])"
        " AND c.relkind IN ('r', 'p') AND pg_table_is_visible(c.oid)",
        list(names),
    )
    present = {r["relname"] for r in found}
    return [name for name in names if name in present]
