"""Time partitions of ``task_execution_logs``: kept ahead, listed, converted, expired.

The layout and the server-side functions are those of
``sql/0008_partitions.sql``; this module calls them and does what a function
cannot (anything ``CONCURRENTLY``, retries on a lock timeout, reading a
partition out to an archive).

Locks: creating a partition (``ATTACH``) takes a SHARE UPDATE EXCLUSIVE lock on
the parent, which writers and readers do not notice. Detaching one takes an
ACCESS EXCLUSIVE lock for a moment: PostgreSQL refuses ``DETACH ... CONCURRENTLY``
on a table with a default partition, and the default partition is what keeps
an insert from ever failing for want of a partition. So every statement that
needs a strong lock runs under a short ``lock_timeout`` and is retried: a
writer waits at most that long behind it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

__all__ = [
    "DEFAULT_PARTITION",
    "LEGACY_PARTITION",
    "ConvertResult",
    "Partition",
    "Settings",
    "archive_lines",
    "convert",
    "detach",
    "drop",
    "ensure",
    "expired",
    "is_partitioned",
    "leftovers",
    "list_partitions",
    "reattach",
    "set_settings",
    "settings",
    "supported",
]

DEFAULT_PARTITION = "task_execution_logs_default"
LEGACY_PARTITION = "task_execution_logs_legacy"
# what the partitions are named (sql/0008_partitions.sql), and nothing else is
_PARTITION_NAME = re.compile(r"^task_execution_logs_(p\d{8}(_\d{6})?|legacy)$")

# How long a statement that needs a strong lock may wait for it; writers queue
# behind a waiting lock request, so this bounds how long they can be held up.
DETACH_LOCK_TIMEOUT_MS = 50
ENSURE_LOCK_TIMEOUT_MS = 1000


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of ``task_execution_logs``.

    Attributes:
        name: the table's name.
        lo: the first instant it holds (None: no lower bound, or the default partition).
        hi: the first instant it does not hold (None for the default partition).
        is_default: the default partition (rows no other partition covers).
        rows: the planner's estimate of its rows (-1: never analysed).
        bytes: its size on disk, indexes included.
    """

    name: str
    lo: datetime | None
    hi: datetime | None
    is_default: bool
    rows: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Settings:
    """How partitions are made: `span` wide, kept `ahead` of now."""

    span: timedelta
    ahead: timedelta


async def is_partitioned(conn: asyncpg.Connection[Any]) -> bool | None:
    """True once partitioned; False for the plain table; None before the table exists."""
    kind: str | None = await conn.fetchval(
        "SELECT relkind::text FROM pg_class WHERE oid = to_regclass('task_execution_logs')"
    )
    return None if kind is None else kind == "p"


async def supported(conn: asyncpg.Connection[Any]) -> bool:
    """Whether the schema has partitioning's settings and functions (migration 0008)."""
    found: bool = await conn.fetchval("SELECT to_regclass('taskmon_partitioning') IS NOT NULL")
    return found


async def ensure(
    conn: asyncpg.Connection[Any],
    *,
    since: datetime | None = None,
    upto: datetime | None = None,
) -> int:
    """Create the missing partitions of [`since`, `upto`); how many were created.

    By default from the slot holding now to ``now + ahead``. Nothing happens
    (0) on a table that is not partitioned, or while another session is
    creating partitions. Raises :class:`asyncpg.LockNotAvailableError` when a
    lock was not granted within a second (try again later).
    """
    if not await supported(conn):
        return 0
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {ENSURE_LOCK_TIMEOUT_MS}")
        created: int = await conn.fetchval("SELECT taskmon_ensure_partitions($1, $2)", since, upto)
    return created


async def list_partitions(conn: asyncpg.Connection[Any]) -> list[Partition]:
    """Every attached partition, oldest first, the default one last."""
    rows = await conn.fetch(
        "SELECT p.name, p.lo, p.hi, p.is_default, c.reltuples::bigint AS rows,"
        " pg_total_relation_size(c.oid) AS bytes"
        " FROM taskmon_partitions() AS p JOIN pg_class AS c ON c.oid = to_regclass(p.name)"
    )
    return [
        Partition(
            r["name"],
            _finite(r["lo"]),
            _finite(r["hi"]),
            r["is_default"],
            r["rows"],
            r["bytes"],
        )
        for r in rows
    ]


def _finite(value: datetime | None) -> datetime | None:
    # asyncpg decodes -infinity and infinity as the first and last datetime
    return None if value is None or value.year in (1, 9999) else value


async def settings(conn: asyncpg.Connection[Any]) -> Settings:
    """The span and the look-ahead new partitions are made with."""
    row = await conn.fetchrow("SELECT span, ahead FROM taskmon_partitioning")
    assert row is not None
    return Settings(row["span"], row["ahead"])


async def set_settings(
    conn: asyncpg.Connection[Any], *, span: timedelta | None = None, ahead: timedelta | None = None
) -> Settings:
    """Change how partitions are made from now on (existing ones stay as they are).

    Raises:
        ValueError: a span under an hour or over 31 days, a look-ahead under an hour.
    """
    if span is not None and not timedelta(hours=1) <= span <= timedelta(days=31):
        raise ValueError("a partition spans between 1 hour and 31 days")
    if ahead is not None and ahead < timedelta(hours=1):
        raise ValueError("partitions are made at least 1 hour ahead")
    row = await conn.fetchrow(
        "UPDATE taskmon_partitioning SET span = coalesce($1, span), ahead = coalesce($2, ahead)"
        " RETURNING span, ahead",
        span,
        ahead,
    )
    assert row is not None
    return Settings(row["span"], row["ahead"])


# -- retention ------------------------------------------------------------------


async def expired(conn: asyncpg.Connection[Any], cutoff: datetime) -> list[Partition]:
    """The attached partitions whose every row is older than `cutoff`, oldest first."""
    return [
        p
        for p in await list_partitions(conn)
        if not p.is_default and p.hi is not None and p.hi <= cutoff
    ]


async def leftovers(conn: asyncpg.Connection[Any]) -> list[str]:
    """Partitions detached by a retention run that did not get to drop them."""
    rows = await conn.fetch(
        "SELECT c.relname::text AS name FROM pg_class AS c"
        " WHERE c.relkind = 'r' AND NOT c.relispartition AND pg_table_is_visible(c.oid)"
        " AND c.relname LIKE 'task\\_execution\\_logs\\_%' ORDER BY c.relname"
    )
    return [r["name"] for r in rows if _PARTITION_NAME.match(r["name"])]


def _checked(name: str) -> str:
    if not _PARTITION_NAME.match(name):
        raise ValueError(f"{name!r} is not a partition of task_execution_logs")
    return name


async def detach(
    conn: asyncpg.Connection[Any],
    name: str,
    *,
    attempts: int = 100,
    on_retry: Callable[[], None] | None = None,
) -> None:
    """Detach partition `name`, waiting at most 50 ms for the lock at each try.

    The lock is taken for a moment only; a try that does not get it within
    :data:`DETACH_LOCK_TIMEOUT_MS` gives up (so the writers queued behind it go
    on) and is repeated after a pause, up to `attempts` times.
    """
    await _with_lock_retries(
        conn,
        f'ALTER TABLE task_execution_logs DETACH PARTITION "{_checked(name)}"',
        attempts,
        lock_timeout_ms=DETACH_LOCK_TIMEOUT_MS,
        pause=lambda attempt: min(0.05 * (attempt + 1), 1.0),
        on_retry=on_retry,
    )


_QUOTED_TIME = re.compile(r"'([^']+)'::timestamp with time zone")


async def reattach(conn: asyncpg.Connection[Any], name: str) -> None:
    """Attach a detached partition again, with the range its CHECK constraint states.

    Every partition keeps a constraint stating its range (``_range``; the old
    table's ``_bound``), so attaching it scans nothing. For a retention run
    that detached a partition and could not archive it.
    """
    defs = await conn.fetch(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint"
        " WHERE conrelid = to_regclass($1) AND contype = 'c'"
        " AND conname IN ($1 || '_range', $1 || '_bound')",
        _checked(name),
    )
    if len(defs) != 1:
        raise ValueError(f"{name}: no constraint states its range")
    times = _QUOTED_TIME.findall(defs[0]["def"])
    if len(times) == 1:
        lo, hi = "MINVALUE", f"'{times[0]}'"
    elif len(times) == 2:
        lo, hi = f"'{times[0]}'", f"'{times[1]}'"
    else:
        raise ValueError(f"{name}: cannot read its range from {defs[0]['def']}")
    await _with_lock_retries(
        conn,
        f'ALTER TABLE task_execution_logs ATTACH PARTITION "{name}"'
        f" FOR VALUES FROM ({lo}) TO ({hi})",
        100,
    )


async def drop(conn: asyncpg.Connection[Any], name: str) -> None:
    """Drop a detached partition (nothing else waits on it)."""
    await conn.execute(f'DROP TABLE IF EXISTS "{_checked(name)}"')


async def archive_lines(
    conn: asyncpg.Connection[Any], name: str, line_sql: str, batch_size: int, *args: Any
) -> AsyncIterator[list[str]]:
    """The archive lines of table `name`, in (created_at, id) order, `batch_size` at a time.

    `line_sql` is the SQL expression of a line over alias ``t``; `args` are its
    parameters (``$1``...). Runs in one repeatable-read transaction.
    """
    query = f'SELECT {line_sql} AS line FROM "{_checked(name)}" AS t ORDER BY t.created_at, t.id'
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        cursor = await conn.cursor(query, *args)
        while rows := await cursor.fetch(batch_size):
            yield [r["line"] for r in rows]


# -- converting a plain table ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConvertResult:
    """What :func:`convert` did.

    Attributes:
        converted: False when the table was partitioned already.
        rows: rows of the old table (now the partition ``task_execution_logs_legacy``).
        bound: the old table's partition holds the rows created before this.
        swap_seconds: how long the final transaction (the only one that blocks
            writers) took, lock wait included.
        seconds: the whole conversion.
    """

    converted: bool
    rows: int = 0
    bound: datetime | None = None
    swap_seconds: float = 0.0
    seconds: float = 0.0


_PREPARED_INDEXES = {
    "task_execution_logs_legacy_pkey": "(id, created_at)",
    "task_execution_logs_legacy_attempt_key": "(task_id, attempt, created_at)",
}


async def convert(
    conn: asyncpg.Connection[Any],
    *,
    say: Callable[[str], None] | None = None,
    swap_attempts: int = 600,
) -> ConvertResult:
    """Partition a plain ``task_execution_logs`` online, keeping every row.

    Writers go on recording throughout. Steps:

    1. fix the bound of the old rows' partition (past any row it holds, at
       least two spans ahead of now) and check it with a constraint added
       ``NOT VALID``, then validated (a scan that does not block writers);
    2. build the unique indexes the partitioned keys need on the old table,
       ``CONCURRENTLY``;
    3. swap, in one short transaction (``taskmon_partition_table``): rename
       the old table, create the partitioned parent with the same columns,
       indexes and triggers, attach the old table as one partition FROM
       (MINVALUE) TO (the bound), add the default partition and the next
       days' partitions. It takes its locks with a short timeout and is
       retried until it gets them.

    `conn` must not be in a transaction. Interrupted, it can be run again: each
    step finds what its predecessor left.
    """
    t0 = asyncio.get_running_loop().time()
    tell = say or (lambda _text: None)
    if await is_partitioned(conn) is not False:
        return ConvertResult(converted=False)
    bound: datetime = await conn.fetchval(
        "UPDATE taskmon_partitioning SET legacy_bound = coalesce(legacy_bound, greatest("
        " taskmon_partition_floor(now(), span) + 2 * span,"
        " taskmon_partition_floor((SELECT max(created_at) FROM task_execution_logs), span)"
        " + span)) RETURNING legacy_bound"
    )
    tell(f"the rows so far go to {LEGACY_PARTITION}, which holds those created before {bound}")
    constraint = await conn.fetchrow(
        "SELECT convalidated FROM pg_constraint WHERE conrelid = 'task_execution_logs'::regclass"
        " AND conname = 'task_execution_logs_legacy_bound'"
    )
    if constraint is None:
        await _with_lock_retries(
            conn,
            "ALTER TABLE task_execution_logs ADD CONSTRAINT task_execution_logs_legacy_bound"
            f" CHECK (created_at < '{bound.isoformat()}'::timestamptz) NOT VALID",
            swap_attempts,
        )
    if constraint is None or not constraint["convalidated"]:
        tell("checking the bound against every row (writers go on meanwhile)")
        await conn.execute(
            "ALTER TABLE task_execution_logs VALIDATE CONSTRAINT task_execution_logs_legacy_bound"
        )
    for index, columns in _PREPARED_INDEXES.items():
        valid = await conn.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", index
        )
        if valid is False:  # an interrupted CONCURRENTLY build
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
        if valid is not True:
            tell(f"building the unique index {columns} (writers go on meanwhile)")
            await conn.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {index}"
                f" ON task_execution_logs {columns}"
            )
    rows: int = await conn.fetchval(
        "SELECT reltuples::bigint FROM pg_class WHERE oid = 'task_execution_logs'::regclass"
    )
    tell("swapping in the partitioned table")
    swap_started = asyncio.get_running_loop().time()
    await _with_lock_retries(conn, "SELECT taskmon_partition_table()", swap_attempts)
    now = asyncio.get_running_loop().time()
    return ConvertResult(
        converted=True,
        rows=max(rows, 0),
        bound=bound,
        swap_seconds=now - swap_started,
        seconds=now - t0,
    )


async def _with_lock_retries(
    conn: asyncpg.Connection[Any],
    statement: str,
    attempts: int,
    *,
    lock_timeout_ms: int = ENSURE_LOCK_TIMEOUT_MS,
    pause: Callable[[int], float] = lambda _attempt: 0.1,
    on_retry: Callable[[], None] | None = None,
) -> None:
    """Run `statement` in a transaction whose lock waits give up after `lock_timeout_ms`.

    A try that does not get its lock in time is repeated after `pause(attempt)`
    seconds, up to `attempts` times; the last failure is raised.
    """
    for attempt in range(attempts):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {lock_timeout_ms}")
                await conn.execute(statement)
            return
        except asyncpg.LockNotAvailableError:
            if attempt == attempts - 1:
                raise
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(pause(attempt))
