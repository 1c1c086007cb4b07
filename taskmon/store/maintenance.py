"""Maintenance of a large database: rollups rebuilt, error-search indexes built concurrently.

Both run from ``taskmon db`` with no statement timeout; neither is needed on a
database that the migrations and the triggers kept from the start.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any

import asyncpg

from taskmon.store import migrations, partitions

__all__ = [
    "PARAM_INDEXES",
    "SEARCH_INDEX_MIGRATIONS",
    "build_search_indexes",
    "rebuild_rollups",
    "search_indexes",
]

SEARCH_INDEX_MIGRATIONS = (3, 9)
"""The migrations whose indexes are skipped on a large table and built by ``db search-indexes``:
the error-search indexes (``0003_error_search.sql``) and the schedule runs'
(``0009_schedule_runs.sql``)."""

# `CREATE INDEX IF NOT EXISTS name ON ...;` outside comments: the statements the
# migration runs when the table is small, and the ones to repeat CONCURRENTLY
_CREATE_INDEX = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+)\s+(ON [^;]+);")

PARAM_INDEXES: dict[str, str] = {
    "task_execution_logs_params_gin": "ON task_execution_logs USING gin (params jsonb_path_ops)",
    "task_execution_logs_labels_gin": "ON task_execution_logs USING gin (labels jsonb_path_ops)",
    "task_execution_logs_queue_created": (
        "ON task_execution_logs (queue, created_at DESC, id DESC) WHERE queue IS NOT NULL"
    ),
}
"""The indexes of the ``param:``, ``label:`` and ``queue:`` filter terms: name -> definition.

Opt-in (``taskmon db search-indexes --params``): a GIN index on every
attempt's arguments costs each write more than the error indexes, which only
attempts with an error pay for. ``jsonb_path_ops`` answers the terms'
containment (``@>``); presence (``param:KEY``) is checked on the rows found.
"""


async def rebuild_rollups(conn: asyncpg.Connection[Any]) -> None:
    """Recompute every rollup from the raw rows (after a bulk load without triggers).

    Time no longer covered by raw rows (deleted by retention) loses its rollups.
    """
    async with conn.transaction():
        await conn.execute("SELECT taskmon_rebuild_rollups()")


@cache
def search_indexes() -> dict[str, str]:
    """The indexes of :data:`SEARCH_INDEX_MIGRATIONS`: name -> ``ON table ...`` definition.

    Read from the migration files themselves, so the DDL lives once.
    """
    found: dict[str, str] = {}
    for migration in migrations.available():
        if migration.version not in SEARCH_INDEX_MIGRATIONS:
            continue
        code = "\n".join(
            line for line in migration.sql.splitlines() if not line.lstrip().startswith("--")
        )
        made = {name: " ".join(body.split()) for name, body in _CREATE_INDEX.findall(code)}
        if not made:
            raise RuntimeError(f"no CREATE INDEX statement in {migration.filename}")
        found.update(made)
    return found


async def build_search_indexes(
    conn: asyncpg.Connection[Any],
    progress: Callable[[str, str], None],
    *,
    params: bool = False,
) -> None:
    """Build the search indexes without blocking writers (``CREATE INDEX CONCURRENTLY``).

    Migrations 0003 and 0009 skip them on a table that is already large. Safe to re-run:
    an index left invalid by an interrupted build is dropped and built again.
    `progress` is called with ``(index name, "present" | "building" | "built")``.
    With `params`, the indexes of the param, label and queue terms
    (:data:`PARAM_INDEXES`) are built too.

    A partitioned table cannot build an index concurrently: the index is made
    on the parent alone (``ON ONLY``, invalid until complete), built
    concurrently on each partition, and attached; it is valid once every
    partition has its own, and partitions made later get it at once.
    """
    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    partitioned = await partitions.is_partitioned(conn)
    wanted = {**search_indexes(), **(PARAM_INDEXES if params else {})}
    for name, definition in wanted.items():
        valid = await _validity(conn, name)
        if valid:
            progress(name, "present")
            continue
        progress(name, "building")
        # name and definition come from the shipped migration file, never from input
        if not partitioned:
            if valid is not None:  # left INVALID by an interrupted build
                await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
            await conn.execute(f'CREATE INDEX CONCURRENTLY "{name}" {definition}')
        else:
            await _build_on_partitions(conn, name, definition)
        progress(name, "built")


async def _validity(conn: asyncpg.Connection[Any], name: str) -> bool | None:
    valid: bool | None = await conn.fetchval(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = $1",
        name,
    )
    return valid


async def _build_on_partitions(conn: asyncpg.Connection[Any], name: str, definition: str) -> None:
    on_only = definition.replace("ON task_execution_logs ", "ON ONLY task_execution_logs ", 1)
    await conn.execute(f'CREATE INDEX IF NOT EXISTS "{name}" {on_only}')
    for part in await partitions.list_partitions(conn):
        attached = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits AS i JOIN pg_index AS x"
            " ON x.indexrelid = i.inhrelid WHERE i.inhparent = to_regclass($1)"
            " AND x.indrelid = to_regclass($2))",
            name,
            part.name,
        )
        if attached:
            continue
        child = f"{part.name}_{name}"[:63]
        if await _validity(conn, child) is False:
            await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{child}"')
        on_part = definition.replace("ON task_execution_logs ", f'ON "{part.name}" ', 1)
        await conn.execute(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{child}" {on_part}')
        await conn.execute(f'ALTER INDEX "{name}" ATTACH PARTITION "{child}"')
