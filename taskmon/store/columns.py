"""The columns of ``task_execution_logs``, declared once: :data:`TABLE`.

Each :class:`Column` says what the column is in PostgreSQL, whether the writer
stages it (``written``) and readers select it (``read``), and what the upsert
stores when the attempt is recorded already (:class:`Merge`). Every list of the
attempt's columns is derived from :data:`TABLE` once, at import time:

* the writer's staging table, its ``COPY`` column list, and the upsert's insert
  list, conversions and ``SET`` list (:func:`stage_sql`, :func:`insert_sql`,
  :func:`set_sql`, used by :mod:`taskmon.store.ingest`); the row tuples of
  :func:`taskmon.worker.encode.row` are in :data:`WRITTEN` order;
* the read columns (:data:`READ`, ``taskmon.store.schema.COLUMNS``): every
  select list of an attempt, the archive's line and the JSON shape of
  ``taskmon history`` (their order, documented in the README).

:class:`AttemptRow` stays a written-out ``TypedDict`` so that its fields are
typed; a test holds its keys and types to :data:`READ`, another holds
:data:`TABLE` to the migrated table (``information_schema.columns``), so a
migration that adds a column without declaring it here fails the tests.

A new column: its migration (``sql/``), its :class:`Column` here and its field
in :class:`AttemptRow`, and, when written, its value in
:func:`taskmon.worker.encode.row` (the writer's tuple stays written out: it is
built once per attempt).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, TypedDict

__all__ = [
    "READ",
    "TABLE",
    "WRITTEN",
    "AttemptRow",
    "Column",
    "Merge",
    "insert_sql",
    "set_sql",
    "stage_sql",
]

_UNFINISHED = "('running', 'pending')"


class Merge(Enum):
    """What the upsert stores in a column of an attempt already recorded.

    ``t`` is the stored row, ``EXCLUDED`` the state being written; ``{c}`` the column.
    """

    KEEP = ""
    """Never updated: the attempt's key, and what its first state fixes."""
    NEW = "EXCLUDED.{c}"
    """The state written now."""
    NEW_OR_OLD = "coalesce(EXCLUDED.{c}, t.{c})"
    """The state written now, unless it does not know the value."""
    OLD_OR_NEW = "coalesce(t.{c}, EXCLUDED.{c})"
    """The first value recorded (a start time stays the first one seen)."""
    STATUS = (
        "CASE WHEN EXCLUDED.status = 'pending' AND t.status <> 'pending' THEN t.status"
        f" WHEN EXCLUDED.status IN {_UNFINISHED} AND t.status NOT IN {_UNFINISHED}"
        " THEN t.status ELSE EXCLUDED.status END"
    )
    """A late ``running`` never overwrites an outcome already recorded, nor a late
    ``pending`` (the client's record of the send) a start or an outcome."""
    NEW_UNLESS_PENDING = (
        "CASE WHEN EXCLUDED.status = 'pending' AND t.status <> 'pending'"
        " THEN t.{c} ELSE EXCLUDED.{c} END"
    )
    """As :attr:`NEW`, except that a ``pending`` state arriving after the worker's
    keeps what the worker wrote."""
    OUTCOME = (
        f"CASE WHEN t.status = 'lost' AND EXCLUDED.status NOT IN {_UNFINISHED}"
        " THEN EXCLUDED.{c} ELSE coalesce(EXCLUDED.{c}, t.{c}) END"
    )
    """As :attr:`NEW_OR_OLD`, except that an outcome arriving after cleanup marked
    the attempt lost replaces the "no outcome recorded" error with its own (none,
    for a success)."""
    NOW = "now()"
    """The time of the update."""


# How a written column travels in the staging table, by its type: times as Unix
# seconds (asyncpg encodes a float several times faster than a datetime), JSON
# as its text. `{v}` is the staged value.
_STAGED: dict[str, tuple[str, str]] = {
    "timestamp with time zone": ("double precision", "to_timestamp({v})"),
    "jsonb": ("text", "{v}::jsonb"),
}


@dataclass(frozen=True, slots=True)
class Column:
    """One column of ``task_execution_logs``.

    Attributes:
        name: the column's name.
        pg_type: its type, spelled as ``information_schema.columns.data_type`` does.
        nullable: whether it may hold NULL.
        written: staged and inserted by the writer (in :data:`WRITTEN` order).
        read: selected by readers (a key of :class:`AttemptRow`, in :data:`READ` order).
        merge: what the upsert stores when the attempt is recorded already.
        null_as: the SQL a NULL written value is stored as (a NOT NULL column's default).
    """

    name: str
    pg_type: str
    nullable: bool = True
    written: bool = True
    read: bool = True
    merge: Merge = Merge.NEW_OR_OLD
    null_as: str | None = None

    @property
    def stage_type(self) -> str:
        """Its type in the writer's staging table."""
        return _STAGED.get(self.pg_type, (self.pg_type, ""))[0]

    def load_sql(self, staged: str) -> str:
        """The SQL of the stored value from the staged value `staged` (e.g. ``u.labels``)."""
        conversion = _STAGED.get(self.pg_type, ("", "{v}"))[1]
        value = conversion.format(v=staged)
        return value if self.null_as is None else f"coalesce({value}, {self.null_as})"


_TIME = "timestamp with time zone"
_FLOAT = "double precision"

TABLE: tuple[Column, ...] = (
    Column("id", "bigint", nullable=False, written=False, merge=Merge.KEEP),
    Column("task_id", "text", nullable=False, merge=Merge.KEEP),
    Column("task_name", "text", nullable=False, merge=Merge.NEW),
    Column("status", "text", nullable=False, merge=Merge.STATUS),
    Column("attempt", "integer", nullable=False, merge=Merge.KEEP),
    Column("worker", "text"),
    Column("queue", "text"),
    Column("params", "jsonb"),
    Column(
        "labels", "jsonb", nullable=False, merge=Merge.NEW_UNLESS_PENDING, null_as="'{}'::jsonb"
    ),
    Column("error_type", "text", merge=Merge.OUTCOME),
    Column("error_message", "text", merge=Merge.OUTCOME),
    Column("traceback", "text", merge=Merge.OUTCOME),
    Column("timeout_s", _FLOAT),
    Column("enqueued_at", _TIME, merge=Merge.OLD_OR_NEW),
    Column("started_at", _TIME, merge=Merge.OLD_OR_NEW),
    Column("finished_at", _TIME),
    Column("duration_ms", _FLOAT),
    Column("queue_wait_ms", _FLOAT),
    # part of the key of a partitioned table (sql/0008_partitions.sql); both
    # states of an attempt carry the same one
    Column("created_at", _TIME, nullable=False, merge=Merge.KEEP),
    Column("updated_at", _TIME, nullable=False, written=False, merge=Merge.NOW),
)
"""Every column, in the order of :class:`AttemptRow` (the JSON shape of ``taskmon history``)."""

WRITTEN: tuple[str, ...] = tuple(c.name for c in TABLE if c.written)
"""The columns the writer stages, in the order of its row tuples and of ``COPY``."""

READ: tuple[str, ...] = tuple(c.name for c in TABLE if c.read)
"""The columns readers select, in order: the keys of :class:`AttemptRow`."""


class AttemptRow(TypedDict):
    """One attempt as the store reads it (one row of ``task_execution_logs``).

    Datetimes are aware; ``status`` is ``lost`` for an attempt running too
    long (see :func:`taskmon.store.schema.stale_sql`), whatever is stored. The
    keys, in this order, are :data:`READ`; their types those of :data:`TABLE`
    (a test holds them together).
    """

    id: int
    task_id: str
    task_name: str
    status: str
    attempt: int
    worker: str | None
    queue: str | None
    params: dict[str, Any] | None
    labels: dict[str, Any]
    error_type: str | None
    error_message: str | None
    traceback: str | None
    timeout_s: float | None
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    queue_wait_ms: float | None
    created_at: datetime
    updated_at: datetime


def stage_sql(table: str) -> str:
    """The DDL of the writer's temporary staging table `table`: the written columns."""
    columns = ", ".join(f"{c.name} {c.stage_type}" for c in TABLE if c.written)
    return f"CREATE TEMPORARY TABLE IF NOT EXISTS {table} ({columns}) ON COMMIT DELETE ROWS"


def insert_sql(staged: str) -> tuple[str, str]:
    """The insert's column list and, in the same order, the values read from alias `staged`."""
    written = [c for c in TABLE if c.written]
    return (
        ", ".join(c.name for c in written),
        ", ".join(c.load_sql(f"{staged}.{c.name}") for c in written),
    )


def set_sql() -> str:
    """The upsert's ``SET`` list over the stored row ``t`` and ``EXCLUDED`` (see :class:`Merge`)."""
    return ", ".join(
        f"{c.name} = {c.merge.value.format(c=c.name)}" for c in TABLE if c.merge is not Merge.KEEP
    )
