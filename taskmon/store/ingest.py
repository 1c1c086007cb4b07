"""Writing attempts: the one upsert per attempt and the event sequence.

A batch is copied (binary ``COPY``, the cheapest way into PostgreSQL for both
sides) into a temporary staging table of the writer's connection, then one
statement inserts new attempts and updates known ones from it, never letting a
late ``running`` overwrite an outcome. Times travel as Unix seconds (``float``):
asyncpg encodes a float several times faster than a datetime, and a double holds
today's times to a fraction of the microsecond PostgreSQL keeps. The rollup triggers of
``sql/0002_rollups.sql`` fire once per statement. Rows are tuples in
:data:`COLUMNS` order (see :func:`taskmon.worker.encode.row_of`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

__all__ = [
    "COLUMNS",
    "SEQS",
    "STAGE",
    "UPSERT",
    "UPSERT_UNPARTITIONED",
    "next_seqs",
    "prepare_connection",
    "upsert",
    "upsert_taking_seqs",
]

COLUMNS = (
    "task_id", "attempt", "task_name", "status", "worker", "queue", "labels", "params",
    "error_type", "error_message", "traceback", "timeout_s",
    "enqueued_at", "started_at", "finished_at", "duration_ms", "queue_wait_ms", "created_at",
)  # fmt: skip

STAGE = """
CREATE TEMPORARY TABLE IF NOT EXISTS taskmon_stage (
    task_id text, attempt integer, task_name text, status text, worker text, queue text,
    labels text, params text, error_type text, error_message text, traceback text,
    timeout_s double precision, enqueued_at double precision, started_at double precision,
    finished_at double precision, duration_ms double precision, queue_wait_ms double precision,
    created_at double precision
) ON COMMIT DELETE ROWS
"""

_UPSERT = """
INSERT INTO task_execution_logs AS t (
    task_id, attempt, task_name, status, worker, queue, labels, params,
    error_type, error_message, traceback, timeout_s,
    enqueued_at, started_at, finished_at, duration_ms, queue_wait_ms, created_at
)
SELECT u.task_id, u.attempt, u.task_name, u.status, u.worker, u.queue,
       coalesce(u.labels::jsonb, '{}'::jsonb), u.params::jsonb,
       u.error_type, u.error_message, u.traceback, u.timeout_s,
       to_timestamp(u.enqueued_at), to_timestamp(u.started_at), to_timestamp(u.finished_at),
       u.duration_ms, u.queue_wait_ms, to_timestamp(u.created_at)
FROM taskmon_stage AS u
-- one order for every writer: concurrent batches sharing attempts never deadlock
ORDER BY u.task_id, u.attempt
ON CONFLICT ({key}) DO UPDATE SET
    -- a late "running" never overwrites an outcome already recorded
    status = CASE WHEN EXCLUDED.status IN ('running', 'pending') AND t.status NOT IN
                  ('running', 'pending') THEN t.status ELSE EXCLUDED.status END,
    task_name = EXCLUDED.task_name,
    worker = coalesce(EXCLUDED.worker, t.worker),
    queue = coalesce(EXCLUDED.queue, t.queue),
    labels = EXCLUDED.labels,
    params = coalesce(EXCLUDED.params, t.params),
    -- an outcome arriving after cleanup marked the attempt lost replaces the
    -- "no outcome recorded" error with its own (none, for a success)
    error_type = CASE WHEN t.status = 'lost' AND EXCLUDED.status NOT IN ('running', 'pending')
                 THEN EXCLUDED.error_type ELSE coalesce(EXCLUDED.error_type, t.error_type) END,
    error_message = CASE WHEN t.status = 'lost' AND EXCLUDED.status NOT IN ('running', 'pending')
                 THEN EXCLUDED.error_message
                 ELSE coalesce(EXCLUDED.error_message, t.error_message) END,
    traceback = CASE WHEN t.status = 'lost' AND EXCLUDED.status NOT IN ('running', 'pending')
                 THEN EXCLUDED.traceback ELSE coalesce(EXCLUDED.traceback, t.traceback) END,
    timeout_s = coalesce(EXCLUDED.timeout_s, t.timeout_s),
    enqueued_at = coalesce(t.enqueued_at, EXCLUDED.enqueued_at),
    started_at = coalesce(t.started_at, EXCLUDED.started_at),
    finished_at = coalesce(EXCLUDED.finished_at, t.finished_at),
    duration_ms = coalesce(EXCLUDED.duration_ms, t.duration_ms),
    queue_wait_ms = coalesce(EXCLUDED.queue_wait_ms, t.queue_wait_ms),
    updated_at = now()
"""

# The attempt's key: a partitioned table's unique keys hold the partition key
# (sql/0008_partitions.sql); a table not converted yet keeps (task_id, attempt).
# Both states of an attempt carry the same created_at, so both find the same row.
UPSERT = _UPSERT.replace("{key}", "task_id, attempt, created_at")
UPSERT_UNPARTITIONED = _UPSERT.replace("{key}", "task_id, attempt")


def _taking_seqs(statement: str) -> str:
    """`statement` (one of the upserts) that also takes $1 values of the event sequence."""
    return (
        f"WITH written AS ({statement})\n"
        "SELECT array_agg(nextval('taskmon_event_seq')) FROM generate_series(1, $1::int)"
    )


_TAKING_SEQS = {statement: _taking_seqs(statement) for statement in (UPSERT, UPSERT_UNPARTITIONED)}

_PARTITIONED = "SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('task_execution_logs')"

SEQS = "SELECT array_agg(nextval('taskmon_event_seq')) FROM generate_series(1, $1::int)"


async def prepare_connection(conn: asyncpg.Connection[Any]) -> str:
    """Create the connection's staging table; the upsert for the table's layout.

    Ask again after :class:`asyncpg.InvalidColumnReferenceError` from :func:`upsert`:
    the table was partitioned meanwhile (``taskmon db upgrade`` converts it online).
    """
    await conn.execute(STAGE)
    partitioned = await conn.fetchval(_PARTITIONED)
    return UPSERT if partitioned is not False else UPSERT_UNPARTITIONED


async def upsert(
    conn: asyncpg.Connection[Any], rows: Sequence[tuple[Any, ...]], statement: str = UPSERT
) -> None:
    """Write `rows` in the caller's transaction (the staging table empties at commit).

    `statement` is what :func:`prepare_connection` returned.
    """
    await conn.copy_records_to_table("taskmon_stage", records=rows, columns=COLUMNS)
    # fetch, not execute: a statement without arguments given to execute() goes by
    # the simple protocol, planned at every batch; fetch() prepares it once
    await conn.fetch(statement)


async def upsert_taking_seqs(
    conn: asyncpg.Connection[Any], rows: Sequence[tuple[Any, ...]], n: int, statement: str = UPSERT
) -> list[int]:
    """:func:`upsert`, and `n` values of the event sequence taken by the same statement.

    One round trip less per batch than :func:`upsert` then :func:`next_seqs` (each
    costs the writer more CPU than a few dozen rows do); the sequence is the same.
    """
    await conn.copy_records_to_table("taskmon_stage", records=rows, columns=COLUMNS)
    seqs: list[int] | None = await conn.fetchval(_TAKING_SEQS[statement], n)
    return seqs or []


async def next_seqs(conn: asyncpg.Connection[Any], n: int) -> list[int]:
    """`n` values of the global event sequence, taken in the caller's transaction."""
    seqs: list[int] = await conn.fetchval(SEQS, n)
    return seqs
