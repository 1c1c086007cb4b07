"""The recorder: a bounded in-memory buffer and one background writer per process.

Hooks call :meth:`Recorder.submit`, which never blocks, never does I/O and
never raises. The writer task flushes the buffer in batches (when it holds
``batch_size`` attempts, or every ``flush_interval`` seconds) as one upsert on
``(task_id, attempt)``, publishes the batch's events in the same transaction
(NOTIFY) or after it (Redis), and survives any database outage by keeping up
to ``max_pending`` attempts and retrying with backoff.

In a worker process the writer also keeps the worker's heartbeat row (see
:class:`WorkerIdentity`): every ``heartbeat_interval`` seconds, between writes
and over the same connection, it refreshes the row with the counts it wrote,
samples the worker's queue, and (every 15 s at most) marks lost the running
attempts of workers whose heartbeat stopped. A clean :meth:`Recorder.stop` marks the row stopped.
A failed heartbeat is an outage like any other: it never costs a record.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import functools
import itertools
import logging
import operator
import os
import socket
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, TypeAlias, TypeVar

import asyncpg

from taskmon.bus import Publisher
from taskmon.domain.backoff import Backoff
from taskmon.domain.events import AttemptRecord, Status
from taskmon.domain.params import ParamsPolicy
from taskmon.store import ingest, migrations, partitions, workers
from taskmon.store.db import CONNECTION_ERRORS, DsnError, connect, redact_dsn
from taskmon.store.workers import QueueSample, WorkerBeat
from taskmon.worker.encode import Sent, encode_event, encode_parts, row, sent_rows

__all__ = ["Recorder", "RecorderStats", "WorkerIdentity"]

logger = logging.getLogger("taskmon.worker.recorder")

_UNFINISHED = (Status.RUNNING, Status.PENDING)
_FIELDS = [f.name for f in fields(AttemptRecord)]
_REACH_WAIT = 0.5
"""How long ``start()`` waits for the database to answer at all: an unreachable one
must not hold up a worker's start-up (a reachable one may take longer to migrate)."""
_STOP_RETRY_CONNECT = 1.0
_MARK_LOST_EVERY = 15.0
_PARTITIONS_EVERY = 600.0
"""Seconds between checks that the next partitions exist (they are made days ahead)."""
"""Seconds between a writer's searches for dead workers' attempts (each scans the running
rows: with many workers beating every few seconds, every beat would be too often)."""


def _merge(old: AttemptRecord, new: AttemptRecord) -> AttemptRecord:
    """The newer record of the same attempt wins field by field, but never loses an outcome."""
    merged = copy.copy(new)
    for name in _FIELDS:
        if getattr(new, name) is None:
            setattr(merged, name, getattr(old, name))
    if (new.status in _UNFINISHED and old.status not in _UNFINISHED) or (
        new.status is Status.PENDING and old.status is not Status.PENDING
    ):
        merged.status = old.status  # nor does a late "pending" replace a start
    merged.started_at = old.started_at or new.started_at
    merged.enqueued_at = old.enqueued_at or new.enqueued_at
    merged.anchor = old.anchor or new.anchor
    return merged


_Pending: TypeAlias = list[Any]
"""One buffered attempt, as one flat list: ``[record, since, order]``.

``record`` is the attempt's (merged) record; ``since`` when the attempt entered the
buffer (monotonic: it is written by since + flush_interval); ``order`` when its
latest state was submitted, the order in which the batch's events are announced.
A batch announces each attempt once, in the state it writes: a state that a later
one replaced before it was written (a task that started and ended within one
flush) is not announced on its own, as it never was in the table either.
One list rather than an object: every attempt passes through here, and each
container fewer is an allocation less and one object less for the garbage
collector to visit while the batch waits."""
_RECORD = 0
_SINCE = 1
_ORDER = 2
_monotonic = time.monotonic
_FAR = float("inf")
_Item = TypeVar("_Item")
_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
"""What PostgreSQL raises for a record it refuses as data (the others may still be written)."""


@dataclass(slots=True)
class WorkerIdentity:
    """The worker process a recorder beats for (see ``taskmon_workers``)."""

    name: str
    """host:pid, the ``worker`` of the attempts it records."""
    broker: str | None = None
    queue: str | None = None
    running: Callable[[], int] | None = None
    """How many attempts run now (read by the writer, e.g. ``len`` of the hooks' dict)."""
    probe: Callable[[], Awaitable[QueueSample | None]] | None = None
    """Samples the worker's queue (I/O of the writer's own, bounded by a timeout)."""


class _NoEvents:
    name = "none"

    async def in_transaction(self, conn: Any, events: list[bytes]) -> None:
        return None

    async def after_commit(self, events: list[bytes]) -> None:
        return None

    async def close(self) -> None:
        return None


@functools.cache
def _versions() -> tuple[str | None, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    from taskmon.domain.version import __version__

    try:
        taskiq: str | None = version("taskiq")
    except PackageNotFoundError:
        taskiq = None
    return __version__, taskiq


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
    unwritten: int = 0
    """Attempts still buffered when the writer stopped (logged once)."""
    events_published: int = 0
    outages: int = 0
    heartbeats: int = 0
    """Heartbeats written (worker processes only)."""


_live: weakref.WeakSet[Recorder] = weakref.WeakSet()


@atexit.register
def _report_unwritten() -> None:
    """At exit, say what writers that were never stopped still held (their loop ended)."""
    for recorder in list(_live):
        recorder._abandon("the process ended without broker.shutdown()")


class Recorder:
    """Buffers attempt records and writes them to PostgreSQL from one background task.

    The same :class:`AttemptRecord` object may be submitted once per state (the
    middleware submits it running, then finished): it is prepared for storage
    once — labels and parameters redacted, bounded and encoded. Each write of an
    attempt is announced by one event, of the state written: an attempt that
    started and ended before the writer's next batch is announced once, ended.

    Args:
        dsn: the database to write to, or a function that finds it. The writer
            calls the function once, in a thread, before it first connects: it
            may block (start the embedded server) without holding up a task.
        publisher: where events go (None: no events).
        policy: redaction and size bounds for labels and parameters.
        auto_migrate: apply pending migrations on (re)connect.
        max_pending: attempts kept while the database is away; beyond it the oldest go.
        batch_size: attempts per upsert.
        flush_interval: seconds between flushes when fewer than `batch_size` wait.
        max_backoff: the longest pause between reconnection attempts, in seconds.
        worker: the worker process to keep a heartbeat row for (None: no heartbeat).
        heartbeat_interval: seconds between heartbeats; a worker silent for 3 of
            them is stale and its running attempts are lost.
    """

    def __init__(
        self,
        dsn: str | Callable[[], str],
        *,
        publisher: Publisher | None = None,
        policy: ParamsPolicy | None = None,
        auto_migrate: bool = True,
        max_pending: int = 100_000,
        batch_size: int = 500,
        flush_interval: float = 0.1,
        max_backoff: float = 5.0,
        statement_timeout: float = 30.0,
        worker: WorkerIdentity | None = None,
        heartbeat_interval: float = 5.0,
    ) -> None:
        self.dsn: str | None = dsn if isinstance(dsn, str) else None
        self._find_dsn = None if isinstance(dsn, str) else dsn
        self.publisher = publisher
        self.policy = policy or ParamsPolicy()
        self.auto_migrate = auto_migrate
        self.max_pending = max(1, max_pending)
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.statement_timeout = statement_timeout
        self.stats = RecorderStats()
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._inflight: list[_Pending] = []
        self._sent: list[Sent] = []
        """A client's sends (record_enqueued), apart: each is one row, written as it came."""
        self._sent_since = 0.0
        """When the oldest of ``_sent`` arrived (monotonic)."""
        self._inflight_sent: list[Sent] = []
        self._sent_check = min(self.batch_size, self.max_pending + 1)
        """The length of ``_sent`` from which a send looks at the batch size and the bound."""
        self._prepared: dict[tuple[str, int], tuple[AttemptRecord, str, bytes | None]] = {}
        """Attempts written unfinished: their encoding is reused when they finish."""
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._hurry = False
        self._stopping = False
        self._deadline: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection[Any] | None = None
        self._migrated = False
        self._upsert_sql = ingest.UPSERT
        self._next_partitions = 0.0
        self._unpartitioned_said = False
        self._connected = asyncio.Event()
        self._answered = asyncio.Event()
        """Set once the server answered (a connection is open, maybe still migrating)."""
        self._found = asyncio.Event()
        """Set once the DSN is known (at once, unless a function must find it)."""
        if self.dsn is not None:
            self._found.set()
        self._tried = asyncio.Event()
        """Set once the first connection attempt ended, either way."""
        self._dropping = False
        self._outage_since: float | None = None
        self._outage_logged = False
        self._busy = False
        self._abandoned = False
        self.worker = worker
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        self.heartbeat_interval = heartbeat_interval
        self._next_beat = 0.0
        self._next_mark = 0.0
        self._clean_stop = False
        self._processed = 0
        self._failed = 0
        self._beat_trouble: set[str] = set()
        """Kinds of heartbeat trouble already logged (once each, until a beat succeeds)."""

    # -- producer side (hooks) -------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._inflight) + len(self._sent) + len(self._inflight_sent)

    def submit(self, record: AttemptRecord) -> None:
        """Queue one attempt's state. Never blocks, never raises, does no I/O."""
        try:
            self.stats.submitted += 1
            pending = self._pending
            key = (record.task_id, record.attempt)
            entry = pending.get(key)
            if entry is None:
                first = not pending
                pending[key] = [record, _monotonic(), next(self._order)]
                if len(pending) > self.max_pending:
                    self._bound()
                if first:
                    self._wake.set()  # the writer now knows when this one is due
            else:
                if entry[_RECORD] is not record:
                    entry[_RECORD] = _merge(entry[_RECORD], record)
                entry[_ORDER] = next(self._order)
            if len(pending) >= self.batch_size:
                self._wake.set()
        except Exception:
            logger.exception("taskmon: could not queue a task record")

    def submit_sent(self, sent: Sent) -> None:
        """Queue a task a client sent, to be written ``pending``; the cheapest submit.

        Never blocks, never raises, does no I/O. No merge with other states and no
        event: a client's attempt has no other state here (the worker records
        those), and its writer announces nothing. Bounded by ``max_pending`` apart
        from :meth:`submit`'s buffer.
        """
        try:
            self.stats.submitted += 1
            buffer = self._sent
            if not buffer:
                self._sent_since = _monotonic()
                buffer.append(sent)
                self._wake.set()  # the writer now knows when this one is due
                return
            buffer.append(sent)
            if len(buffer) >= self._sent_check:
                if len(buffer) > self.max_pending:
                    self._bound_sent()
                if len(buffer) >= self.batch_size:
                    self._wake.set()
        except Exception:
            logger.exception("taskmon: could not queue a task record")

    def _bound_sent(self) -> None:
        excess = len(self._sent) - self.max_pending
        if excess > 0:
            del self._sent[:excess]
            self._dropped(excess)

    def _bound(self) -> None:
        excess = len(self._pending) - self.max_pending
        if excess <= 0:
            return
        for key in list(itertools.islice(self._pending, excess)):
            del self._pending[key]
        self._dropped(excess)

    def _dropped(self, excess: int) -> None:
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
        """Start the writer; optionally wait up to `wait_connected` s for its first connection.

        The wait ends early when the first attempt fails, and half a second after
        the database is known (the embedded server started) when it has not
        answered at all: an unreachable database never holds up the caller. A
        server that answers may take the rest of the time to migrate, so that the
        first tasks land at once.
        """
        if self._task is None:
            self._stopping = False
            self._clean_stop = False
            self._abandoned = False
            self._stopped.clear()
            self._task = asyncio.create_task(self._run(), name="taskmon-writer")
            # a loop closed without cancelling its tasks must not print "Task was
            # destroyed but it is pending" for us: what we held is reported at exit
            with contextlib.suppress(AttributeError):
                self._task._log_destroy_pending = False  # type: ignore[attr-defined]
            _live.add(self)
        if wait_connected > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_connected
            # finding the database may mean starting the embedded server: local work
            await _first_of(self._found, self._tried, wait_connected)
            await _first_of(self._answered, self._tried, min(deadline - loop.time(), _REACH_WAIT))
            if self._answered.is_set():
                await _first_of(self._connected, self._tried, deadline - loop.time())

    async def stop(self, timeout: float = 4.0) -> None:
        """Flush what is buffered within `timeout` seconds, then close.

        Records that could not be written in time (the database is unreachable,
        or a batch was still being written) are counted in ``stats.unwritten`` and
        logged once, never dropped in silence.
        """
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._clean_stop = True
        self._deadline = time.monotonic() + timeout
        self._stopped.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        _live.discard(self)
        self._abandon("the database could not be reached in time")
        await self._close()
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.close()

    def _abandon(self, why: str) -> None:
        """Count and log (once) what is still buffered; close the connection without I/O."""
        if self._abandoned:
            return
        self._abandoned = True
        self._requeue([])  # a batch cut off mid-write counts as unwritten too
        left = len(self._pending) + len(self._sent)
        if left:
            self.stats.unwritten += left
            logger.error("taskmon: %d task records were not written: %s", left, why)
            self._pending.clear()
            self._sent.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far is written (tests, demos)."""
        deadline = time.monotonic() + timeout
        while self._pending or self._sent or self._busy:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.pending} task records still buffered")
            self._hurry = True
            self._wake.set()
            await asyncio.sleep(0.01)

    # -- writer ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            if not self._stopping:
                # the event loop is ending without shutdown() (asyncio.run cancels
                # what is left): make one last, short attempt to write, then report
                await self._last_flush()
            raise

    async def _last_flush(self) -> None:
        self._stopping = True
        self._deadline = time.monotonic() + 2.0
        self._requeue([])
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(self._loop(), 2.0)
        _live.discard(self)
        self._abandon("the event loop ended without broker.shutdown()")

    async def _loop(self) -> None:
        try:
            # connect (and migrate) now, so the first flush does not pay for it
            await self._connection()
        except Exception as exc:
            self._note_outage(exc)
        finally:
            self._tried.set()
        backoff = Backoff(maximum=self.max_backoff)
        while True:
            beat_due = self.worker is not None and time.monotonic() >= self._next_beat
            if beat_due and not self._stopping:
                await self._beat()
            if self._conn is not None and time.monotonic() >= self._next_partitions:
                await self._partitions(self._conn)
            if not self._pending and not self._sent:
                self._hurry = False
                if self._stopping:
                    if self._clean_stop and self._conn is not None:
                        await self._beat(stopped=True)
                    return
                await self._wait_wake(self._until_beat())  # an attempt arrives, or stop
                continue
            size = self.batch_size
            if (
                len(self._pending) < size
                and len(self._sent) < size
                and not (self._stopping or self._hurry)
            ):
                # let a burst accumulate, but write each attempt within flush_interval
                # of its arrival
                oldest = min(
                    next(iter(self._pending.values()))[_SINCE] if self._pending else _FAR,
                    self._sent_since if self._sent else _FAR,
                )
                delay = oldest + self.flush_interval - time.monotonic()
                if delay > 0:
                    until_beat = self._until_beat()
                    await self._wait_wake(delay if until_beat is None else min(delay, until_beat))
                    continue
            keys = list(itertools.islice(self._pending, size))
            self._inflight = [self._pending.pop(k) for k in keys]
            if len(self._sent) <= size:
                self._inflight_sent, self._sent = self._sent, []
            else:
                # the rest arrived after the oldest: it is due no later than _sent_since says
                self._inflight_sent = self._sent[:size]
                del self._sent[:size]
            self._busy = True
            try:
                await self._write(self._inflight)
                self._inflight = []
            except Exception as exc:
                could_connect = self._conn is not None
                self._requeue([])
                await self._close()
                self._note_outage(exc)
                if self._stopping and not could_connect:
                    # shutting down and the database does not answer: the records
                    # are counted and logged by stop(), not retried until it times out
                    return
                await self._pause(backoff.next())
                continue
            finally:
                self._busy = False
            backoff.reset()
            self._note_recovery()

    async def _partitions(self, conn: asyncpg.Connection[Any]) -> None:
        """Make sure the next days' partitions exist; never raises (a default partition waits)."""
        self._next_partitions = time.monotonic() + _PARTITIONS_EVERY
        try:
            created = await partitions.ensure(conn)
            if created:
                logger.info("taskmon: created %d partitions of task_execution_logs", created)
            elif (
                self._upsert_sql is ingest.UPSERT_UNPARTITIONED
                and not self._unpartitioned_said
                and await partitions.is_partitioned(conn) is False
                and await partitions.supported(conn)
            ):
                self._unpartitioned_said = True
                logger.warning(
                    "taskmon: %s (it was too large to convert at start-up); "
                    "recording goes on meanwhile",
                    migrations.NOT_PARTITIONED,
                )
        except Exception as exc:
            # a lock not granted in time, a connection lost (the writes notice that):
            # try again at the next check
            logger.debug("taskmon: partition check failed: %s", exc)

    def _until_beat(self) -> float | None:
        if self.worker is None:
            return None
        return max(0.0, self._next_beat - time.monotonic())

    async def _beat(self, *, stopped: bool = False) -> None:
        """Refresh the worker's row, sample its queue, mark dead workers' attempts lost.

        Never raises: a failure is logged once per kind and counts as an outage
        when the connection broke; the records wait for the writes to reconnect.
        """
        ident = self.worker
        self._next_beat = time.monotonic() + self.heartbeat_interval
        if ident is None:
            return
        if self._outage_since is not None and (self._pending or self._sent) and not stopped:
            return  # the writes are reconnecting with backoff: no second attempt
        sample: QueueSample | None = None
        if ident.probe is not None and not stopped:
            try:
                async with asyncio.timeout(min(1.0, self.heartbeat_interval)):
                    sample = await ident.probe()
            except Exception as exc:
                self._beat_problem("probe", "cannot sample the queue (%s: %s)", exc)
        try:
            running = ident.running() if ident.running is not None else 0
            conn = await self._connection()
            host, _, pid = ident.name.rpartition(":")
            await workers.beat(
                conn,
                WorkerBeat(
                    ident.name,
                    host or socket.gethostname(),
                    int(pid) if pid.isdigit() else os.getpid(),
                    ident.broker,
                    ident.queue,
                    *_versions(),
                    self.heartbeat_interval,
                    0 if stopped else running,
                    self._processed,
                    self._failed,
                    stopped,
                ),
                sample,
            )
            self.stats.heartbeats += 1
            if not stopped and time.monotonic() >= self._next_mark:
                self._next_mark = time.monotonic() + max(_MARK_LOST_EVERY, self.heartbeat_interval)
                from taskmon.worker.cleanup import mark_lost

                await mark_lost(
                    conn,
                    batch_size=100,
                    publisher=self.publisher or _NoEvents(),
                    dead_workers_only=True,
                )
        except Exception as exc:
            if isinstance(exc, (*CONNECTION_ERRORS, DsnError)) or (
                self._conn is not None and self._conn.is_closed()
            ):
                await self._close()
                self._note_outage(exc)
            else:
                self._beat_problem("beat", "cannot write the worker's heartbeat (%s: %s)", exc)
            return
        self._beat_trouble.discard("beat")
        if not self._pending and not self._sent:
            self._note_recovery()

    def _beat_problem(self, kind: str, message: str, exc: BaseException) -> None:
        if kind not in self._beat_trouble:
            self._beat_trouble.add(kind)
            logger.warning("taskmon: " + message, type(exc).__name__, exc)

    async def _wait_wake(self, timeout: float | None) -> None:
        """Wait for a submit that changes the plan (first arrival, full batch) or a stop."""
        # asyncio.timeout, not wait_for: no inner task that a loop closed without
        # cancelling would report as "destroyed but pending"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._wake.clear()

    async def _pause(self, seconds: float) -> None:
        """Back off after a failed write. New submits do not cut it short; stop() does."""
        if self._stopping:
            await asyncio.sleep(min(seconds, 0.2))
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopped.wait()

    def _requeue(self, batch: list[_Pending]) -> None:
        """Put the batch in flight back in front; newer states of the same attempts win."""
        if self._inflight_sent:
            self._sent[:0] = self._inflight_sent
            self._inflight_sent = []
            self._bound_sent()
        batch = [*self._inflight, *batch]
        self._inflight = []
        if not batch:
            return
        newer = self._pending
        self._pending = {}
        for entry in batch:
            self._pending[entry[_RECORD].key] = entry
        for key, entry in newer.items():
            old = self._pending.get(key)
            if old is None:
                self._pending[key] = entry
            else:
                if old[_RECORD] is not entry[_RECORD]:
                    old[_RECORD] = _merge(old[_RECORD], entry[_RECORD])
                old[_ORDER] = entry[_ORDER]
        self._bound()

    def _note_outage(self, exc: BaseException) -> None:
        connection_error = isinstance(exc, (*CONNECTION_ERRORS, DsnError))
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.stats.outages += 1
            self._connected.clear()
        if self._outage_logged:
            return  # said once per outage: a retry every few seconds must not flood the log
        self._outage_logged = True
        if connection_error:
            logger.warning(
                "taskmon: database %s unreachable (%s: %s); keeping up to %d task records "
                "and retrying",
                "(not yet found)" if self.dsn is None else redact_dsn(self.dsn),
                type(exc).__name__,
                exc,
                self.max_pending,
            )
        else:
            logger.error(
                "taskmon: cannot write task records to %s; keeping up to %d and retrying",
                "(not yet found)" if self.dsn is None else redact_dsn(self.dsn),
                self.max_pending,
                exc_info=exc,
            )

    def _note_recovery(self) -> None:
        if self._outage_since is not None:
            logger.warning(
                "taskmon: database reachable again after %.1fs; %d records dropped meanwhile",
                time.monotonic() - self._outage_since,
                self.stats.dropped,
            )
            self._outage_since = None
            self._outage_logged = False
        self._dropping = False

    def _connect_timeout(self) -> float:
        if self._deadline is None:
            return 5.0
        return max(0.1, min(_STOP_RETRY_CONNECT, self._deadline - time.monotonic()))

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
            self._found.set()
        conn = await connect(
            self.dsn, timeout=self._connect_timeout(), command_timeout=self.statement_timeout
        )
        self._answered.set()
        try:
            if self.auto_migrate and not self._migrated:
                # worker mode: a long (manual) migration is left to `taskmon db upgrade`,
                # and recording goes on into the current schema
                result = await migrations.upgrade(conn)
                if result.applied:
                    logger.info(
                        "taskmon: applied migrations %s", [m.version for m in result.applied]
                    )
                notice = result.notice
                if notice:
                    logger.warning("taskmon: %s", notice)
                self._migrated = True
            self._upsert_sql = await ingest.prepare_connection(conn)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._next_partitions = 0.0  # checked before the first write
        self._connected.set()
        return conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def _write(self, batch: list[_Pending]) -> None:
        conn = await self._connection()
        if self._inflight_sent:
            await self._write_sent(conn, self._inflight_sent)
            self._inflight_sent = []  # committed: not to be written again after a failure below
        if not batch:
            return
        events = await self._upserted(conn, self._upsert, batch, _entry_key)
        self.stats.written += len(batch)
        self.stats.batches += 1
        if self.worker is not None:
            for entry in batch:
                status = entry[_RECORD].status
                if status not in _UNFINISHED:
                    self._processed += 1
                    if status is Status.FAILED or status is Status.RETRYING:
                        self._failed += 1
        if events and self.publisher is not None:
            try:
                await self.publisher.after_commit(events)
                self.stats.events_published += len(events)
            except Exception:
                logger.exception("taskmon: could not publish events")

    async def _write_sent(self, conn: asyncpg.Connection[Any], sent: list[Sent]) -> None:
        """Write a client's sends as ``pending`` rows, in a statement of their own.

        Apart from the other states' statement, as an attempt may be in both (a
        worker that re-sends a retry and starts it within one flush): the upsert's
        rules make either order right, and one statement may not write a row twice.
        """
        rows = sent_rows(sent, self.policy)
        await self._upserted(conn, self._upsert_rows, rows, _row_key)
        self.stats.written += len(rows)
        self.stats.batches += 1

    async def _upsert_rows(
        self, conn: asyncpg.Connection[Any], rows: list[tuple[Any, ...]]
    ) -> list[bytes]:
        """Upsert staged rows in a transaction of their own, announcing nothing."""
        async with conn.transaction():
            await ingest.upsert(conn, rows, self._upsert_sql)
        return []

    async def _upserted(
        self,
        conn: asyncpg.Connection[Any],
        upsert: Callable[[asyncpg.Connection[Any], list[_Item]], Awaitable[list[bytes]]],
        items: list[_Item],
        key: Callable[[_Item], tuple[str, int]],
    ) -> list[bytes]:
        """``upsert(conn, items)``: its events, after the two failures a write gets over.

        A table partitioned meanwhile is asked its key again, once; a record
        PostgreSQL refuses as data costs only itself (counted, logged by `key`).
        """
        try:
            try:
                return await upsert(conn, items)
            except asyncpg.InvalidColumnReferenceError:
                # ON CONFLICT names a key the table no longer has: `taskmon db
                # upgrade` partitioned it meanwhile; ask which key it has now
                self._upsert_sql = await ingest.prepare_connection(conn)
                return await upsert(conn, items)
        except _REFUSED:
            # one bad record must not hold up the rest: write them one by one
            events: list[bytes] = []
            for item in items:
                try:
                    events += await upsert(conn, [item])
                except _REFUSED as exc:
                    self.stats.rejected += 1
                    task_id, attempt = key(item)
                    logger.error(
                        "taskmon: PostgreSQL refused the record of task %s attempt %d: %s",
                        task_id,
                        attempt,
                        exc,
                    )
            return events

    def _prepare(self, record: AttemptRecord) -> tuple[str, bytes | None]:
        """The attempt's encoded labels and parameters, computed once per attempt."""
        key = (record.task_id, record.attempt)
        cached = self._prepared.pop(key, None) if self._prepared else None
        if cached is not None and cached[0] is record:
            if record.status is Status.RUNNING:
                self._prepared[key] = cached
            return cached[1], cached[2]
        labels, params = encode_parts(record, self.policy)
        # a pending attempt (a client's record_enqueued) finishes in a worker, not here
        if record.status is Status.RUNNING:
            self._prepared[key] = (record, labels, params)
            if len(self._prepared) > self.max_pending:  # attempts that never finish
                del self._prepared[next(iter(self._prepared))]
        return labels, params

    async def _upsert(self, conn: asyncpg.Connection[Any], batch: list[_Pending]) -> list[bytes]:
        max_message = self.policy.max_value_bytes
        prepare = self._prepare
        rows = []
        announce: list[tuple[int, Status, AttemptRecord, bytes | None, str]] = []
        for entry in batch:
            record = entry[_RECORD]
            labels, params = prepare(record)
            rows.append(row(record, labels, params, max_message))
            # the state written now is the one announced (a hook may change the
            # record while the batch is being written: its next state comes next)
            announce.append((entry[_ORDER], record.status, record, params, labels))
        events: list[bytes] = []
        async with conn.transaction():
            if self.publisher is None:
                await ingest.upsert(conn, rows, self._upsert_sql)
            else:
                # the rows and the events' seqs in one statement (one round trip)
                seqs = await ingest.upsert_taking_seqs(conn, rows, len(announce), self._upsert_sql)
                # announced in the order they happened, whatever the rows' order
                announce.sort(key=_first)
                events = [
                    encode_event(record, status, seq, params, labels)
                    for (_, status, record, params, labels), seq in zip(announce, seqs, strict=True)
                ]
                await self.publisher.in_transaction(conn, events)
        return events


_first = operator.itemgetter(0)


def _entry_key(entry: _Pending) -> tuple[str, int]:
    record: AttemptRecord = entry[_RECORD]
    return record.task_id, record.attempt


def _row_key(row: tuple[Any, ...]) -> tuple[str, int]:
    return row[0], row[3]  # task_id and attempt, in COLUMNS order


async def _first_of(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    """Wait until `a` or `b` is set, at most `timeout` seconds."""
    if a.is_set() or b.is_set() or timeout <= 0:
        return
    waiters = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
