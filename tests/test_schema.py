"""The store's schema facts are the ones every reader, the CLI, the TUI and the archive use."""

from __future__ import annotations

from typing import Any

import asyncpg

from taskmon.domain.events import Status
from taskmon.domain.filters import STATUSES as FILTER_STATUSES
from taskmon.domain.filters import TaskFilter
from taskmon.store.history import fetch_attempts, fetch_history
from taskmon.store.maintenance import search_indexes
from taskmon.store.schema import COLUMNS, STATUSES, TERMINAL, AttemptRow, select_list_sql
from taskmon.tui.screens.detail import _FIELDS

_INSERT = """
INSERT INTO task_execution_logs (task_id, attempt, task_name, status, worker, created_at)
VALUES ('t1', 0, 'tests:a', 'success', 'host-1:1', now())
"""


def test_statuses_come_from_the_event_types() -> None:
    assert STATUSES == tuple(s.value for s in Status) == FILTER_STATUSES
    assert TERMINAL == ("success", "failed", "retrying", "lost")


def test_columns_are_the_keys_of_a_row() -> None:
    assert tuple(AttemptRow.__annotations__) == COLUMNS
    assert COLUMNS[:4] == ("id", "task_id", "task_name", "status")
    assert len(set(COLUMNS)) == len(COLUMNS)
    # the detail screen shows some of them first, in its own order, and the rest after
    assert set(_FIELDS) <= set(COLUMNS)


def test_the_select_list_names_every_column_once() -> None:
    sql = select_list_sql("$1::float8", alias="r")
    assert sql.count(" AS status") == 1
    for column in COLUMNS:
        assert f"r.{column}" in sql


async def test_readers_return_rows_with_exactly_the_columns(db: asyncpg.Connection[Any]) -> None:
    # given one recorded attempt
    await db.execute(_INSERT)
    # when it is read as a history page and as a task's attempts
    page = await fetch_history(db, TaskFilter())
    attempts = await fetch_attempts(db, "t1")
    # then both rows have the columns, in order
    assert [tuple(r) for r in page.rows] == [COLUMNS]
    assert [tuple(r) for r in attempts] == [COLUMNS]


async def test_search_indexes_are_read_from_the_migration(db: asyncpg.Connection[Any]) -> None:
    # the migrated (small) test database has every index the maintenance command builds
    indexes = search_indexes()
    assert len(indexes) == 4  # three error-search indexes (0003), the schedule runs' (0009)
    rows = await db.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE indexname = ANY($1::text[])",
        list(indexes),
    )
    assert {r["indexname"] for r in rows} == set(indexes)
    for row in rows:
        # pg_indexes spells the definition its own way; the partial condition is kept
        assert "WHERE" in row["indexdef"] and "WHERE" in indexes[row["indexname"]]
