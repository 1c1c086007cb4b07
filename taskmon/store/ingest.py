"""Writing attempts: the one upsert per attempt and the event sequence.

A batch is copied (binary ``COPY``, the cheapest way into PostgreSQL for both
sides) into a temporary staging table of the writer's connection, then one
statement inserts new attempts and updates known ones from it, never letting a
late ``running`` overwrite an outcome. Times travel as Unix seconds (``float``):
asyncpg encodes a float several times faster than a datetime, and a double holds
today's times to a fraction of the microsecond PostgreSQL keeps. The rollup triggers of
``sql/0002_rollups.sql`` fire once per statement. Rows are tuples in
:data:`COLUMNS` order (see :func:`taskmon.worker.encode.row_of`); the staging
table, the column lists and the upsert's rules are derived from the declarations
of :mod:`taskmon.store.columns`, once, at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from taskmon.store.columns import WRITTEN, insert_sql, set_sql, stage_sql

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

COLUMNS: tuple[str, ...] = WRITTEN
"""The staging table's columns, in the order of ``COPY`` and of the writer's row tuples."""

STAGE = stage_sql("taskmon_stage")

_INSERT_COLUMNS, _INSERT_VALUES = insert_sql("u")

# Derived from the columns' declarations (taskmon.store.columns): their Merge
# rules say what an attempt already recorded keeps (a late "running" never
# overwrites an outcome; an outcome replaces the error cleanup wrote for a lost one).
_UPSERT = f"""
INSERT INTO task_execution_logs AS t ({_INSERT_COLUMNS})
SELECT {_INSERT_VALUES}
FROM taskmon_stage AS u
-- one order for every writer: concurrent batches sharing attempts never deadlock
ORDER BY u.task_id, u.attempt
ON CONFLICT ({{key}}) DO UPDATE SET {set_sql()}
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
