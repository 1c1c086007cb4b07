"""Retention: mark lost attempts, archive and delete old rows, trim old rollups.

Raw rows older than ``TASK_LOG_RETENTION_DAYS`` (default 30) go, in bounded
batches: each batch is one short transaction, so no lock is held for long
and no transaction grows with the table. Batches walk the ``created_at``
index as a keyset (after the last deleted key), so a batch never re-reads
the dead index entries its predecessors left behind.

Rollups (``sql/0002_rollups.sql``) are not touched by deleting raw rows
(there is no DELETE trigger): long windows keep their counts. They have
their own retention: minute (and 5-minute) rollups go with the raw rows of
the same time (they only serve the edges of windows whose raw rows still
exist), hour rollups after :data:`DEFAULT_ROLLUP_RETENTION` (400 days).

An attempt still ``running`` long after it should have ended (twice its
``timeout`` label, else ``lost_after_s``) is *lost*: its worker died without
recording an outcome. Readers already show such rows as lost; :func:`mark_lost`
stores it, with one ``task_failed`` event per row on the bus.

Run it from TaskIQ's scheduler with :func:`register_cleanup`, or as
``taskmon cleanup``. The statements are in :mod:`taskmon.store.purge`; this
module batches them and publishes the events. No textual, typer or rich here:
it runs inside workers.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import asyncpg

from taskmon.bus import Publisher
from taskmon.domain.events import AttemptRecord, Status
from taskmon.store import partitions
from taskmon.store import purge as statements
from taskmon.store.ingest import next_seqs
from taskmon.store.purge import HOUR_ROLLUP_TABLES, MINUTE_ROLLUP_TABLES
from taskmon.store.schema import DEFAULT_LOST_AFTER_S
from taskmon.worker.encode import encode_record_event

if TYPE_CHECKING:
    from taskiq import AsyncBroker, AsyncTaskiqDecoratedTask

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CRON",
    "DEFAULT_LOST_AFTER_S",
    "DEFAULT_RETENTION_DAYS",
    "DEFAULT_ROLLUP_RETENTION",
    "HOUR_ROLLUP_TABLES",
    "MINUTE_ROLLUP_TABLES",
    "RETENTION_ENV",
    "Archive",
    "ArchiveError",
    "CleanupResult",
    "cleanup",
    "cleanup_old_task_logs",
    "mark_lost",
    "register_cleanup",
    "retention_days_setting",
]

logger = logging.getLogger("taskmon.worker.cleanup")

RETENTION_ENV = "TASK_LOG_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 30.0
DEFAULT_CRON = "0 3 * * *"
DEFAULT_BATCH_SIZE = 5000
DEFAULT_ROLLUP_RETENTION = timedelta(days=400)
CLEANUP_TASK_NAME = "taskmon:cleanup"

_EPOCH_START = datetime(1, 1, 1, tzinfo=UTC)


# ---------------------------------------------------------------------------
# lost attempts
# ---------------------------------------------------------------------------


def _lost_record(row: asyncpg.Record) -> AttemptRecord:
    return AttemptRecord(
        task_id=row["task_id"],
        attempt=row["attempt"],
        task_name=row["task_name"],
        status=Status.LOST,
        worker=row["worker"],
        queue=row["queue"],
        labels=row["labels"] or {},
        params=row["params"],
        error_type=row["error_type"],
        error_message=row["error_message"],
        timeout_s=row["timeout_s"],
        enqueued_at=row["enqueued_at"],
        started_at=row["started_at"] or row["created_at"],
        queue_wait_ms=row["queue_wait_ms"],
    )


async def mark_lost(
    conn: asyncpg.Connection[Any],
    *,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
    batch_size: int = 1000,
    publisher: Publisher | None = None,
    dead_workers_only: bool = False,
) -> int:
    """Store status ``lost`` on attempts still ``running`` past their threshold.

    An attempt whose worker is dead (its heartbeat stopped without a clean
    shutdown) is lost at once; `dead_workers_only` marks only those.

    The threshold is twice the attempt's ``timeout`` label when it has one,
    else `lost_after_s`. ``finished_at`` stays NULL (nothing finished);
    ``error_type`` becomes ``Lost`` with a message naming the threshold. Each
    batch is one transaction that also publishes one ``task_failed`` event
    (status ``lost``) per row, with a ``seq`` from ``taskmon_event_seq``.

    Args:
        conn: a connection from :func:`taskmon.store.db.connect`.
        lost_after_s: seconds a ``running`` attempt without a timeout may run.
        batch_size: rows per transaction.
        publisher: where the events go; default PostgreSQL ``NOTIFY``.

    Returns:
        The number of attempts marked lost.
    """
    if publisher is None:
        from taskmon.bus.postgres import PgNotifyPublisher

        publisher = PgNotifyPublisher()
    batch_size = max(1, batch_size)
    total = 0
    while True:
        async with conn.transaction():
            rows = await statements.mark_lost_batch(
                conn, lost_after_s, batch_size, dead_workers_only=dead_workers_only
            )
            events: list[bytes] = []
            if rows:
                seqs = await next_seqs(conn, len(rows))
                events = [
                    encode_record_event(_lost_record(row), seq)
                    for row, seq in zip(rows, seqs, strict=True)
                ]
                await publisher.in_transaction(conn, events)
        if events:
            try:
                await publisher.after_commit(events)
            except Exception:
                logger.exception("taskmon: could not publish lost-attempt events")
        total += len(rows)
        if len(rows) < batch_size:
            break
    if total:
        logger.info("taskmon: marked %d attempts lost", total)
    return total


# ---------------------------------------------------------------------------
# archive
# ---------------------------------------------------------------------------


class ArchiveError(RuntimeError):
    """Writing the archive failed; the batch being archived was not deleted."""


class Archive:
    """Gzip JSON lines, one attempt per line, made durable before rows are deleted.

    The file is opened (created if needed) on construction, so a path that
    cannot be written fails before anything is deleted. Runs append: each run
    adds a gzip member, and ``gzip -dc`` reads every member in order. After
    each batch the compressor is sync-flushed and the file fsynced, so the
    lines of every deleted row are on disk even if the process dies later.

    Args:
        path: the archive file (``.jsonl.gz`` by convention).

    Raises:
        OSError: the file cannot be opened for writing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path} is a directory")
        self._raw: IO[bytes] = self.path.open("ab")
        # level 3: about 5 times as fast as 9 for some 25 % more bytes
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=3)
        self.rows = 0

    def write_batch(self, lines: list[str]) -> None:
        """Append JSON `lines` and make them durable (blocking; call it from a thread)."""
        # JSON text from PostgreSQL never holds a raw newline: one row, one line
        self._gz.write("".join(line + "\n" for line in lines).encode())
        self._gz.flush()  # Z_SYNC_FLUSH: every line so far decompresses
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self.rows += len(lines)

    def close(self) -> None:
        """Finish the gzip member (its trailer) and close the file."""
        try:
            self._gz.close()
            self._raw.flush()
            os.fsync(self._raw.fileno())
        finally:
            self._raw.close()


# ---------------------------------------------------------------------------
# cleanup
# ---------------------------------------------------------------------------


@dataclass
class CleanupResult:
    """What one cleanup did (or, with ``dry_run``, would do)."""

    cutoff: datetime
    """Raw rows created before this went (and minute rollups of whole hours before it)."""
    rollup_cutoff: datetime | None
    """Hour rollups of buckets before this went (None: hour rollups kept)."""
    dry_run: bool
    deleted: int = 0
    """Raw rows deleted (or that would be)."""
    archived: int = 0
    marked_lost: int = 0
    """Running attempts marked lost (with ``dry_run``: that would be)."""
    rollups_deleted: dict[str, int] = field(default_factory=dict)
    """Rows deleted (or that would be) per rollup table."""
    partitions_dropped: list[str] = field(default_factory=list)
    """Whole partitions dropped (or that would be), their rows counted in ``deleted``."""
    workers_deleted: int = 0
    """Heartbeat rows of workers not seen for :data:`WORKER_RETENTION` (not counted by dry runs)."""
    batches: int = 0
    seconds: float = 0.0


async def _delete_raw(
    conn: asyncpg.Connection[Any],
    cutoff: datetime,
    *,
    batch_size: int,
    lost_after_s: float,
    archive: Archive | None,
    progress: Callable[[int], None] | None,
) -> tuple[int, int]:
    """Delete rows created before `cutoff`, batch by batch; return (rows, batches)."""
    last_at, last_id = _EPOCH_START, 0
    total = batches = 0
    while True:
        if archive is None:
            keys = await statements.delete_batch(conn, cutoff, (last_at, last_id), batch_size)
            n = len(keys)
            if n:
                last_at, last_id = max((k["created_at"], k["id"]) for k in keys)
        else:
            # lock, write and fsync the batch, then delete it, all in one
            # transaction: if the archive fails, nothing of the batch is deleted
            async with conn.transaction():
                rows = await statements.archive_batch(
                    conn, cutoff, (last_at, last_id), batch_size, lost_after_s
                )
                n = len(rows)
                if n:
                    try:
                        await asyncio.to_thread(archive.write_batch, [r["line"] for r in rows])
                    except OSError as exc:
                        raise ArchiveError(
                            f"cannot write the archive {archive.path}: {exc.strerror or exc}"
                            f" ({total:,} rows archived and deleted before)"
                        ) from exc
                    await statements.delete_ids(conn, [r["id"] for r in rows])
                    last_at, last_id = rows[-1]["created_at"], rows[-1]["id"]
        total += n
        if n:
            batches += 1
            if progress is not None:
                progress(total)
        if n < batch_size:
            return total, batches


async def _expire_partitions(
    conn: asyncpg.Connection[Any],
    cutoff: datetime,
    *,
    lost_after_s: float,
    archive: Archive | None,
    progress: Callable[[int], None] | None,
) -> tuple[list[str], int]:
    """Detach, archive and drop every partition wholly older than `cutoff`; (names, rows).

    A partition is detached first (a moment's lock, retried under a 50 ms lock
    timeout, so no writer waits longer), then read out to the archive with
    nothing writing to it any more, then dropped. If the archive cannot be
    written, the partition is attached again (nothing lost) and
    :class:`ArchiveError` raised. A partition detached by a run that died
    before dropping it is attached again first, and expires like the others.
    """
    for name in await partitions.leftovers(conn):
        logger.warning("taskmon: attaching %s again (a cleanup stopped before dropping it)", name)
        await partitions.reattach(conn, name)
    dropped: list[str] = []
    total = 0
    for part in await partitions.expired(conn, cutoff):
        await partitions.detach(conn, part.name)
        try:
            if archive is not None:
                rows = await _archive_table(conn, part.name, archive, lost_after_s)
            else:
                rows = await conn.fetchval(f'SELECT count(*) FROM "{part.name}"')
        except BaseException:
            await partitions.reattach(conn, part.name)
            raise
        await partitions.drop(conn, part.name)
        dropped.append(part.name)
        total += rows
        if progress is not None:
            progress(total)
    return dropped, total


async def _archive_table(
    conn: asyncpg.Connection[Any], name: str, archive: Archive, lost_after_s: float
) -> int:
    """Write every row of the detached partition `name` to `archive`; how many."""
    line = statements.archive_line_sql("$1::float8")
    written = 0
    writing: asyncio.Future[None] | None = None
    try:
        # the next batch is read while the previous one is compressed and fsynced
        async for lines in partitions.archive_lines(
            conn, name, line, _ARCHIVE_BATCH, float(lost_after_s)
        ):
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(asyncio.to_thread(archive.write_batch, lines))
            written += len(lines)
        if writing is not None:
            await writing
    except OSError as exc:
        raise ArchiveError(
            f"cannot write the archive {archive.path}: {exc.strerror or exc}"
            f" (partition {name} kept)"
        ) from exc
    return written


_ARCHIVE_BATCH = 20_000


async def _delete_rollups(
    conn: asyncpg.Connection[Any], table: str, cutoff: datetime, batch_size: int
) -> int:
    total = 0
    while True:
        n = await statements.delete_rollups(conn, table, cutoff, batch_size)
        total += n
        if n < batch_size:
            return total


WORKER_RETENTION = timedelta(days=7)
"""How long the row of a stopped or stale worker stays in ``taskmon_workers``."""
QUEUE_SAMPLE_RETENTION = timedelta(days=1)
"""How long queue depth samples stay (the writers keep their own queue's last hour)."""


async def cleanup(
    conn: asyncpg.Connection[Any],
    *,
    older_than: timedelta,
    rollups_older_than: timedelta | None = DEFAULT_ROLLUP_RETENTION,
    batch_size: int = DEFAULT_BATCH_SIZE,
    archive: Archive | None = None,
    dry_run: bool = False,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
    publisher: Publisher | None = None,
    progress: Callable[[int], None] | None = None,
) -> CleanupResult:
    """Mark lost attempts, then delete (archiving first) rows older than `older_than`.

    Order: lost attempts are marked (and announced) first, so nothing still
    ``running`` is deleted unannounced; then raw rows created before
    ``now - older_than`` go in batches of `batch_size` (archived first when
    `archive` is given), then minute and 5-minute rollups of the whole hours
    before that, then hour rollups older than `rollups_older_than`.

    Args:
        conn: a connection from :func:`taskmon.store.db.connect`.
        older_than: the age beyond which raw rows and minute rollups go.
        rollups_older_than: the age beyond which hour rollups go (None: keep them).
        batch_size: rows per transaction.
        archive: where to write every deleted row before deleting it.
        dry_run: count only; change nothing.
        lost_after_s: seconds a ``running`` attempt without a timeout may run.
        publisher: where lost-attempt events go; default PostgreSQL ``NOTIFY``.
        progress: called with the running total of deleted rows after each batch.

    Raises:
        ValueError: a non-positive age or batch size.
        ArchiveError: the archive could not be written (that batch stays in the table).
    """
    if older_than <= timedelta(0):
        raise ValueError("the retention age must be positive")
    if rollups_older_than is not None and rollups_older_than <= timedelta(0):
        raise ValueError("the rollup retention age must be positive")
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, not {batch_size}")
    if lost_after_s <= 0:
        raise ValueError("the lost threshold must be positive")
    t0 = time.monotonic()
    now = await statements.server_now(conn)
    # keep hour rollups at least as long as raw rows: long windows need them
    if rollups_older_than is not None:
        rollups_older_than = max(rollups_older_than, older_than)
    result = CleanupResult(
        cutoff=now - older_than,
        rollup_cutoff=now - rollups_older_than if rollups_older_than is not None else None,
        dry_run=dry_run,
    )
    minute_tables = await statements.existing_tables(conn, MINUTE_ROLLUP_TABLES)
    hour_tables = await statements.existing_tables(conn, HOUR_ROLLUP_TABLES)
    # a fine bucket goes only once all of it is older than the cutoff: the raw
    # rows after the cutoff may still need the bucket they share with older ones
    fine_cutoff = result.cutoff.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    plans = [(t, fine_cutoff) for t in minute_tables]
    if result.rollup_cutoff is not None:
        plans += [(t, result.rollup_cutoff) for t in hour_tables]

    if dry_run:
        result.marked_lost = await statements.count_stale(conn, lost_after_s)
        result.deleted = await statements.count_older(conn, result.cutoff)
        result.partitions_dropped = [p.name for p in await partitions.expired(conn, result.cutoff)]
        for table, cutoff in plans:
            result.rollups_deleted[table] = await statements.count_rollups(conn, table, cutoff)
    else:
        result.marked_lost = await mark_lost(
            conn, lost_after_s=lost_after_s, batch_size=min(batch_size, 1000), publisher=publisher
        )
        if await partitions.is_partitioned(conn):
            try:
                await partitions.ensure(conn)
            except asyncpg.LockNotAvailableError:
                logger.warning("taskmon: partitions not created now (a lock was busy)")
            result.partitions_dropped, in_partitions = await _expire_partitions(
                conn, result.cutoff, lost_after_s=lost_after_s, archive=archive, progress=progress
            )
        else:
            in_partitions = 0

        def more(n: int) -> None:
            if progress is not None:
                progress(in_partitions + n)

        # what is left: the partition that straddles the cutoff, the old table's, the default
        deleted, result.batches = await _delete_raw(
            conn,
            result.cutoff,
            batch_size=batch_size,
            lost_after_s=lost_after_s,
            archive=archive,
            progress=more,
        )
        result.deleted = in_partitions + deleted
        result.archived = result.deleted if archive is not None else 0
        for table, cutoff in plans:
            result.rollups_deleted[table] = await _delete_rollups(conn, table, cutoff, batch_size)
        if await statements.existing_tables(conn, ["taskmon_workers"]):
            from taskmon.store.workers import delete_stale

            result.workers_deleted, _ = await delete_stale(
                conn, now - WORKER_RETENTION, now - QUEUE_SAMPLE_RETENTION
            )
    result.seconds = time.monotonic() - t0
    return result


# ---------------------------------------------------------------------------
# the scheduled task
# ---------------------------------------------------------------------------


def retention_days_setting(flag: float | None = None) -> float:
    """The raw-row retention in days: `flag`, else ``TASK_LOG_RETENTION_DAYS``, else 30.

    Raises:
        ValueError: the setting is not a positive number of days.
    """
    if flag is not None:
        days = float(flag)
        source = "retention_days"
    else:
        from taskmon.config import resolve_setting

        text = resolve_setting(None, RETENTION_ENV, "retention_days")
        if text is None:
            return DEFAULT_RETENTION_DAYS
        source = RETENTION_ENV
        try:
            days = float(text)
        except ValueError:
            raise ValueError(f"{RETENTION_ENV}={text!r} is not a number of days") from None
    if not math.isfinite(days) or days <= 0:
        raise ValueError(f"{source} must be a positive number of days, not {days:g}")
    return days


async def cleanup_old_task_logs(
    retention_days: float | None = None,
    *,
    dsn: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
    rollups_older_than: timedelta | None = DEFAULT_ROLLUP_RETENTION,
) -> int:
    """Mark lost attempts and delete rows older than the retention; log and return the count.

    The body of the scheduled task (:func:`register_cleanup`).

    Args:
        retention_days: days to keep; default ``TASK_LOG_RETENTION_DAYS``, else 30.
        dsn: the database; default as everywhere (``TASKMON_DSN``, config, embedded).
        batch_size: rows per transaction.
        lost_after_s: seconds a ``running`` attempt without a timeout may run.
        rollups_older_than: the age beyond which hour rollups go (None: keep them).

    Returns:
        The number of raw rows deleted.
    """
    from taskmon.config import resolve_dsn
    from taskmon.store.db import connect

    days = retention_days_setting(retention_days)
    conn = await connect(resolve_dsn(dsn))
    try:
        result = await cleanup(
            conn,
            older_than=timedelta(days=days),
            rollups_older_than=rollups_older_than,
            batch_size=batch_size,
            lost_after_s=lost_after_s,
        )
    finally:
        await conn.close()
    logger.info(
        "taskmon: cleanup deleted %d task log rows older than %g days (%d marked lost, "
        "%d rollup rows deleted) in %.1fs",
        result.deleted,
        days,
        result.marked_lost,
        sum(result.rollups_deleted.values()),
        result.seconds,
    )
    return result.deleted


def register_cleanup(
    broker: AsyncBroker,
    *,
    cron: str = DEFAULT_CRON,
    retention_days: float | None = None,
    dsn: str | None = None,
    task_name: str = CLEANUP_TASK_NAME,
) -> AsyncTaskiqDecoratedTask[[], Coroutine[Any, Any, int]]:
    """Register the cleanup as a scheduled TaskIQ task on `broker`.

    The task carries the label ``schedule=[{"cron": cron}]``, which
    ``taskiq.schedule_sources.LabelScheduleSource`` reads::

        # myapp/tasks.py
        from taskiq import TaskiqScheduler
        from taskiq.schedule_sources import LabelScheduleSource
        from taskmon.worker.cleanup import register_cleanup

        cleanup_task = register_cleanup(broker)  # every day at 03:00 (UTC)
        scheduler = TaskiqScheduler(broker, [LabelScheduleSource(broker)])

    then run ``taskiq scheduler myapp.tasks:scheduler`` next to your workers
    (``taskiq worker myapp.tasks:broker``), which execute it.

    Args:
        broker: the application's TaskIQ broker.
        cron: when to run (cron syntax, UTC unless the scheduler says otherwise).
        retention_days: days to keep; default ``TASK_LOG_RETENTION_DAYS``, else 30,
            read when the task runs.
        dsn: the database; default as everywhere, resolved when the task runs.
        task_name: the task's name.

    Returns:
        The registered task (an ``AsyncTaskiqDecoratedTask`` returning the count).
    """
    # validate now, so a bad value fails at import time, not at 03:00
    if retention_days is not None:
        retention_days_setting(retention_days)

    async def taskmon_cleanup() -> int:
        return await cleanup_old_task_logs(retention_days, dsn=dsn)

    return broker.task(task_name=task_name, schedule=[{"cron": cron}])(taskmon_cleanup)
