"""The recorder: a bounded in-memory buffer and one background writer per process.

Hooks call :meth:`Recorder.submit`, which never blocks, never does I/O and
never raises. The writer task flushes the buffer in batches (when it holds
``batch_size`` attempts, or every ``flush_interval`` seconds) as one upsert on
``(task_id, attempt)``, publishes the batch's events in the same transaction
(NOTIFY) or after it (Redis), and survives any database outage by keeping up
to ``max_pending`` attempts and retrying with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import asyncpg

from taskmon.bus import Publisher
from taskmon.events import AttemptRecord, Status, event_from_record
from taskmon.store import migrations
from taskmon.store.db import CONNECTION_ERRORS, connect, redact_dsn

__all__ = ["Recorder", "RecorderStats"]

logger = logging.getLogger("taskmon.recorder")

_UPSERT = """
INSERT INTO task_execution_logs AS t (
    task_id, attempt, task_name, status, worker, queue, labels, params,
    error_type, error_message, traceback, timeout_s,
    enqueued_at, started_at, finished_at, duration_ms, queue_wait_ms, created_at
)
SELECT u.task_id, u.attempt, u.task_name, u.status, u.worker, u.queue,
       coalesce(u.labels::jsonb, '{}'::jsonb), u.params::jsonb,
       u.error_type, u.error_message, u.traceback, u.timeout_s,
       u.enqueued_at, u.started_at, u.finished_at, u.duration_ms, u.queue_wait_ms, u.created_at
FROM unnest(
    $1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::text[], $10::text[], $11::text[], $12::float8[],
    $13::timestamptz[], $14::timestamptz[], $15::timestamptz[], $16::float8[], $17::float8[],
    $18::timestamptz[]
) AS u(task_id, attempt, task_name, status, worker, queue, labels, params,
       error_type, error_message, traceback, timeout_s,
       enqueued_at, started_at, finished_at, duration_ms, queue_wait_ms, created_at)
ON CONFLICT (task_id, attempt) DO UPDATE SET
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

_SEQS = "SELECT array_agg(nextval('taskmon_event_seq')) FROM generate_series(1, $1::int)"


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a task's error message sometimes does
    return value.replace("\x00", "\ufffd") if value is not None else None


def _json(value: Any) -> str | None:
    if value is None:
        return None
    # jsonb rejects \u0000 as well
    return json.dumps(value, ensure_ascii=False, default=repr).replace("\\u0000", "\\ufffd")


def _columns(batch: list[AttemptRecord]) -> list[list[Any]]:
    return [
        [r.task_id for r in batch],
        [r.attempt for r in batch],
        [_text(r.task_name) for r in batch],
        [r.status.value for r in batch],
        [_text(r.worker) for r in batch],
        [_text(r.queue) for r in batch],
        [_json(r.labels) for r in batch],
        [_json(r.params) for r in batch],
        [_text(r.error_type) for r in batch],
        [_text(r.error_message) for r in batch],
        [_text(r.traceback) for r in batch],
        [r.timeout_s for r in batch],
        [r.enqueued_at for r in batch],
        [r.started_at for r in batch],
        [r.finished_at for r in batch],
        [r.duration_ms for r in batch],
        [r.queue_wait_ms for r in batch],
        [r.created_at for r in batch],
    ]


_FIELDS = [f.name for f in fields(AttemptRecord)]
_UNFINISHED = (Status.RUNNING, Status.PENDING)


def _merge(old: AttemptRecord, new: AttemptRecord) -> AttemptRecord:
    """The newer record of the same attempt wins field by field, but never loses an outcome."""
    merged = copy.copy(new)
    for name in _FIELDS:
        if getattr(new, name) is None:
            setattr(merged, name, getattr(old, name))
    if new.status in _UNFINISHED and old.status not in _UNFINISHED:
        merged.status = old.status
    merged.started_at = old.started_at or new.started_at
    merged.enqueued_at = old.enqueued_at or new.enqueued_at
    return merged


@dataclass(slots=True)
class _Pending:
    record: AttemptRecord
    events: list[AttemptRecord]
    since: float
    """When the attempt entered the buffer (monotonic): it is written by since + flush_interval."""
    """Each state submitted, to announce; encoded by the writer, off the task's path."""


@dataclass(slots=True)
class RecorderStats:
    """Counters a process can inspect (and tests check)."""

    submitted: int = 0
    written: int = 0
    batches: int = 0
    dropped: int = 0
    """Attempts let go because the buffer was full during an outage."""
    rejected: int = 0
    """Attempts PostgreSQL refused as data (logged with their task id)."""
    events_published: int = 0
    outages: int = 0


class Recorder:
    """Buffers attempt records and writes them to PostgreSQL from one background task.

    Args:
        dsn: the database to write to, or a function that finds it. The writer
            calls the function once, in a thread, before it first connects: it
            may block (start the embedded server) without holding up a task.
        publisher: where events go (None: no events).
        auto_migrate: apply pending migrations on (re)connect.
        max_pending: attempts kept while the database is away; beyond it the oldest go.
        batch_size: attempts per upsert.
        flush_interval: seconds between flushes when fewer than `batch_size` wait.
        max_backoff: the longest pause between reconnection attempts, in seconds.
    """

    def __init__(
        self,
        dsn: str | Callable[[], str],
        *,
        publisher: Publisher | None = None,
        auto_migrate: bool = True,
        max_pending: int = 100_000,
        batch_size: int = 500,
        flush_interval: float = 0.1,
        max_backoff: float = 5.0,
        statement_timeout: float = 30.0,
    ) -> None:
        self.dsn: str | None = dsn if isinstance(dsn, str) else None
        self._find_dsn = None if isinstance(dsn, str) else dsn
        self.publisher = publisher
        self.auto_migrate = auto_migrate
        self.max_pending = max(1, max_pending)
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.statement_timeout = statement_timeout
        self.stats = RecorderStats()
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._hurry = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection[Any] | None = None
        self._migrated = False
        self._connected = asyncio.Event()
        self._dropping = False
        self._outage_since: float | None = None
        self._busy = False

    # -- producer side (hooks) -------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, record: AttemptRecord) -> None:
        """Queue one attempt's state. Never blocks, never raises, does no I/O."""
        try:
            self.stats.submitted += 1
            publish = self.publisher is not None
            entry = self._pending.get(record.key)
            if entry is None:
                first = not self._pending
                self._pending[record.key] = _Pending(
                    record, [record] if publish else [], time.monotonic()
                )
                self._bound()
                if first:
                    self._wake.set()  # the writer now knows when this one is due
            else:
                entry.record = _merge(entry.record, record)
                if publish:
                    entry.events.append(record)
            if len(self._pending) >= self.batch_size:
                self._wake.set()
        except Exception:
            logger.exception("taskmon: could not queue a task record")

    def _bound(self) -> None:
        excess = len(self._pending) - self.max_pending
        if excess <= 0:
            return
        for key in list(self._pending)[:excess]:
            del self._pending[key]
        self.stats.dropped += excess
        if not self._dropping:
            self._dropping = True
            logger.error(
                "taskmon: buffer full (%d attempts) while the database is unreachable; "
                "dropping the oldest records until it recovers",
                self.max_pending,
            )

    # -- lifecycle -------------------------------------------------------------

    async def start(self, wait_connected: float = 0.0) -> None:
        """Start the writer; optionally wait up to `wait_connected` s for its first connection."""
        if self._task is None:
            self._stopping = False
            self._stopped.clear()
            self._task = asyncio.create_task(self._run(), name="taskmon-writer")
        if wait_connected > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), wait_connected)

    async def stop(self, timeout: float = 4.0) -> None:
        """Flush what is buffered within `timeout` seconds, then close."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pending:
            logger.error(
                "taskmon: shutting down with %d task records not written (database unreachable)",
                len(self._pending),
            )
        await self._close()
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.close()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far is written (tests, demos)."""
        deadline = time.monotonic() + timeout
        while self._pending or self._busy:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._pending)} task records still buffered")
            self._hurry = True
            self._wake.set()
            await asyncio.sleep(0.01)

    # -- writer ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            # connect (and migrate) now, so the first flush does not pay for it
            await self._connection()
        except Exception as exc:
            self._note_outage(exc)
        backoff = 0.1
        while True:
            if not self._pending:
                self._hurry = False
                if self._stopping:
                    return
                await self._wait_wake(None)  # until an attempt arrives (or stop)
                continue
            if len(self._pending) < self.batch_size and not (self._stopping or self._hurry):
                # let a burst accumulate, but write each attempt within flush_interval
                # of its arrival
                oldest = next(iter(self._pending.values())).since
                delay = oldest + self.flush_interval - time.monotonic()
                if delay > 0:
                    await self._wait_wake(delay)
                    continue
            keys = list(self._pending)[: self.batch_size]
            batch = [self._pending.pop(k) for k in keys]
            self._busy = True
            try:
                await self._write(batch)
            except CONNECTION_ERRORS as exc:
                self._requeue(batch)
                await self._close()
                self._note_outage(exc)
                await self._pause(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            except Exception:
                logger.exception("taskmon: unexpected error while writing task records")
                self._requeue(batch)
                await self._close()
                await self._pause(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            finally:
                self._busy = False
            backoff = 0.1
            self._note_recovery()

    async def _wait_wake(self, timeout: float | None) -> None:
        """Wait for a submit that changes the plan (first arrival, full batch) or a stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _pause(self, seconds: float) -> None:
        """Back off after a failed write. New submits do not cut it short; stop() does,
        but then retries still come at most every 0.5 s until the drain budget ends."""
        if self._stopping:
            await asyncio.sleep(min(seconds, 0.5))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    def _requeue(self, batch: list[_Pending]) -> None:
        """Put a failed batch back in front; newer states of the same attempts win."""
        newer = self._pending
        self._pending = {}
        for entry in batch:
            self._pending[entry.record.key] = entry
        for key, entry in newer.items():
            old = self._pending.get(key)
            if old is None:
                self._pending[key] = entry
            else:
                old.record = _merge(old.record, entry.record)
                old.events.extend(entry.events)
        self._bound()

    def _note_outage(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.stats.outages += 1
            self._connected.clear()
            logger.warning(
                "taskmon: database %s unreachable (%s: %s); keeping up to %d task records "
                "and retrying",
                "(not yet found)" if self.dsn is None else redact_dsn(self.dsn),
                type(exc).__name__,
                exc,
                self.max_pending,
            )

    def _note_recovery(self) -> None:
        if self._outage_since is not None:
            logger.warning(
                "taskmon: database reachable again after %.1fs; %d records dropped meanwhile",
                time.monotonic() - self._outage_since,
                self.stats.dropped,
            )
            self._outage_since = None
        self._dropping = False

    async def _connection(self) -> asyncpg.Connection[Any]:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if self.dsn is None:
            assert self._find_dsn is not None
            try:
                self.dsn = await asyncio.to_thread(self._find_dsn)
            except Exception as exc:
                # no database to write to is an outage like any other: said once,
                # records kept (bounded), and the lookup retried with backoff
                raise ConnectionError(f"cannot find the database: {exc}") from exc
        conn = await connect(self.dsn, timeout=5.0, command_timeout=self.statement_timeout)
        try:
            if self.auto_migrate and not self._migrated:
                applied = await migrations.upgrade(conn)
                if applied:
                    logger.info("taskmon: applied migrations %s", [m.version for m in applied])
                self._migrated = True
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._connected.set()
        return conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def _write(self, batch: list[_Pending]) -> None:
        conn = await self._connection()
        try:
            events = await self._upsert(conn, batch)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
            # one bad record must not hold up the rest: write them one by one
            events = []
            for entry in batch:
                try:
                    events += await self._upsert(conn, [entry])
                except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                    self.stats.rejected += 1
                    logger.error(
                        "taskmon: PostgreSQL refused the record of task %s attempt %d: %s",
                        entry.record.task_id,
                        entry.record.attempt,
                        exc,
                    )
        self.stats.written += len(batch)
        self.stats.batches += 1
        if events and self.publisher is not None:
            try:
                await self.publisher.after_commit(events)
                self.stats.events_published += len(events)
            except Exception:
                logger.exception("taskmon: could not publish events")

    async def _upsert(
        self, conn: asyncpg.Connection[Any], batch: list[_Pending]
    ) -> list[dict[str, Any]]:
        # a stable order keeps concurrent writers from deadlocking on shared rows
        batch = sorted(batch, key=lambda e: e.record.key)
        records = [e.record for e in batch]
        events = [event_from_record(r) for e in batch for r in e.events]
        async with conn.transaction():
            await conn.execute(_UPSERT, *_columns(records))
            if events and self.publisher is not None:
                seqs = await conn.fetchval(_SEQS, len(events))
                for event, seq in zip(events, seqs, strict=True):
                    event["seq"] = seq
                await self.publisher.in_transaction(conn, events)
        return events
