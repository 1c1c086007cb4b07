"""The declared columns (taskmon.store.columns) are the table's, the staging table's and the rows'.

A migration that adds, drops or retypes a column of ``task_execution_logs``
without declaring it in :data:`taskmon.store.columns.TABLE` fails here, and so
does a declaration that :class:`AttemptRow` or the writer's row tuple does not follow.
"""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from taskmon.domain.events import AttemptRecord, Status
from taskmon.store import ingest
from taskmon.store.columns import READ, TABLE, WRITTEN, AttemptRow
from taskmon.worker.encode import row

# the Python type asyncpg decodes each PostgreSQL type to (jsonb by taskmon.store.db)
_PYTHON = {
    "bigint": int,
    "integer": int,
    "text": str,
    "jsonb": dict,
    "double precision": float,
    "timestamp with time zone": datetime,
}


async def _columns(db: asyncpg.Connection[Any], where: str, *args: Any) -> list[tuple[str, ...]]:
    rows = await db.fetch(
        "SELECT column_name::text, data_type::text, is_nullable::text"
        f" FROM information_schema.columns WHERE {where} ORDER BY ordinal_position",
        *args,
    )
    return [tuple(r) for r in rows]


async def test_the_declared_columns_are_the_migrated_tables(db: asyncpg.Connection[Any]) -> None:
    # given a database with every migration applied
    table = await _columns(
        db, "table_schema = current_schema() AND table_name = 'task_execution_logs'"
    )
    # then its columns are the declared ones, with their types and nullability
    declared = {(c.name, c.pg_type, "YES" if c.nullable else "NO") for c in TABLE}
    assert set(table) == declared, "declare the column in taskmon/store/columns.py"
    assert len(TABLE) == len({c.name for c in TABLE})


async def test_the_staging_table_holds_the_written_columns_in_copy_order(
    db: asyncpg.Connection[Any],
) -> None:
    # given the writer's connection, prepared
    await ingest.prepare_connection(db)
    # then its staging table has the written columns, in the order rows are copied
    stage = await _columns(
        db, "table_schema = (SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema())"
        " AND table_name = 'taskmon_stage'"
    )  # fmt: skip
    assert [name for name, _, _ in stage] == list(ingest.COLUMNS) == list(WRITTEN)
    assert [kind for _, kind, _ in stage] == [c.stage_type for c in TABLE if c.written]


def test_attempt_row_has_the_read_columns_with_their_types() -> None:
    hints = typing.get_type_hints(AttemptRow)
    assert tuple(hints) == READ
    for column in TABLE:
        hint = hints[column.name]
        args = typing.get_args(hint)
        nullable = isinstance(hint, types.UnionType) and type(None) in args
        base = next(a for a in args if a is not type(None)) if nullable else hint
        assert nullable == column.nullable, column.name
        assert (typing.get_origin(base) or base) is _PYTHON[column.pg_type], column.name


def test_the_writers_row_is_in_copy_order() -> None:
    # given an attempt whose every field has a value of its own
    started = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = AttemptRecord(
        task_id="the-task-id",
        attempt=3,
        task_name="app:the-task",
        status=Status.FAILED,
        worker="host:7",
        queue="the-queue",
        error_type="KeyError",
        error_message="the message",
        traceback="the traceback",
        timeout_s=9.5,
        enqueued_at=started - timedelta(seconds=2),
        started_at=started,
        finished_at=started + timedelta(seconds=1),
        duration_ms=1000.0,
        queue_wait_ms=2000.0,
    )
    # when the writer turns it into a staged row
    staged = dict(zip(ingest.COLUMNS, row(record, '{"k":1}', b'{"x":2}', 100), strict=True))
    # then each value stands under its column's name (times as Unix seconds)
    expected: dict[str, Any] = {"labels": '{"k":1}', "params": '{"x":2}'}
    for name in ingest.COLUMNS:
        value = getattr(record, name) if name not in expected else expected[name]
        expected[name] = value.timestamp() if isinstance(value, datetime) else value
    assert staged == expected
