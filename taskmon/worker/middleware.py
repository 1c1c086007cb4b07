"""MonitoringMiddleware: records every TaskIQ task execution, one row per attempt.

Client side it stamps the enqueue time on each message (``pre_send``) and, with
``record_enqueued``, records each sent attempt as ``pending`` through the same
batching writer (nothing inline): the worker's states of attempt 0 then update
that row, as they share its ``created_at`` (the enqueue time, label
``taskmon_pending``).
Worker side it snapshots each attempt in ``pre_execute``, keeps the real
exception from ``on_error``, and hands the outcome to the process's
:class:`~taskmon.worker.recorder.Recorder` in ``post_execute``. No hook awaits the
database or raises: a failing monitor must never fail a task.

The hooks are the hot path, paid by every task: they only capture what cannot
be had later (clock readings, the arguments before TaskIQ converts them, the
exception) into one record per attempt, and submit it once running and once
finished. Binding arguments to names, redaction, bounds, tracebacks and JSON
are the writer's work (``taskmon.worker.encode``), done once per attempt.

The hooks are coroutines that never await: TaskIQ passes whatever a hook
returns to ``maybe_awaitable``, which tells a coroutine at once but checks any
other value against ``collections.abc.Awaitable``, and that check costs more
than making and running the coroutine (~300 ns against ~170 ns per hook).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from taskiq import TaskiqMessage, TaskiqMiddleware, TaskiqResult
from taskiq.exceptions import NoResultError

from taskmon.bus import Publisher
from taskmon.config import ConfigError
from taskmon.domain.events import AttemptRecord, Status
from taskmon.domain.params import (
    DEFAULT_MAX_ROW_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_REDACT_KEYS,
    CallSpec,
    ParamsPolicy,
    capture_call,
)
from taskmon.worker.encode import as_number
from taskmon.worker.recorder import Recorder, WorkerIdentity

__all__ = ["ENQUEUED_LABEL", "PENDING_LABEL", "MonitoringMiddleware"]

logger = logging.getLogger("taskmon.worker.middleware")

ENQUEUED_LABEL = "taskmon_enqueued_at"
"""Label stamped by ``pre_send``: the enqueue time as Unix seconds, to the millisecond."""

PENDING_LABEL = "taskmon_pending"
"""Label stamped by ``pre_send`` with ``record_enqueued``: the attempt was recorded
``pending``, its row keyed by the enqueue time; the worker keys its states the same."""


def _attempt(labels: dict[str, Any]) -> int:
    retries = labels.get("_retries")
    if retries is None:
        return 0
    n = as_number(retries)
    return int(n) if n is not None and n >= 0 else 0


# bound once: the hooks call them for every task
_time = time.time
_perf_counter = time.perf_counter
_from_timestamp = datetime.fromtimestamp
_now = datetime.now
_RUNNING = Status.RUNNING
_PENDING = Status.PENDING


@dataclass(slots=True)
class _Running:
    record: AttemptRecord
    t0: float
    exception: BaseException | None = None
    rekicked: bool = False


class MonitoringMiddleware(TaskiqMiddleware):
    """Record every task execution in PostgreSQL and publish live events.

    Args:
        dsn: PostgreSQL DSN; default ``TASKMON_DSN``, else the config file, else the
            user's embedded PostgreSQL.
        redis_url: publish events to a Redis stream instead of PostgreSQL NOTIFY
            (default ``TASKMON_REDIS_URL``).
        auto_migrate: bring the schema up to date at startup.
        publish_events: send live events at all.
        redact_keys: key substrings whose values are replaced by ``[REDACTED]``.
        max_value_bytes: bound of one stored parameter value (JSON bytes).
        max_row_bytes: bound of one attempt's stored parameters.
        stamp_enqueue: stamp the enqueue time on each message sent (label
            ``taskmon_enqueued_at``, the middleware's one visible change), so the
            worker knows each attempt's queue wait; off, queue wait is unknown.
        record_enqueued: record each task this process sends as ``pending``
            (client side; off by default), so that ``taskmon history --status
            pending`` shows what was sent and never started; the worker's attempt
            replaces it. Needs ``stamp_enqueue``'s label, which it stamps anyway.
            A client's pending rows are written, not announced as live events
            (a worker's re-sent retries are, with its other events).
        max_pending: attempts kept in memory while the database is unreachable.
        batch_size: attempts per database write.
        flush_interval: seconds between writes when fewer than `batch_size` wait.
        shutdown_timeout: how long ``shutdown()`` may spend writing what is left;
            keep it under the worker's ``--shutdown-timeout`` (5 s by default).
        heartbeat_interval: seconds between the worker's heartbeats (and queue
            samples); silent for 3 of them, a worker is stale and its running
            attempts are lost.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        redis_url: str | None = None,
        auto_migrate: bool = True,
        publish_events: bool = True,
        redact_keys: Iterable[str] = DEFAULT_REDACT_KEYS,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
        stamp_enqueue: bool = True,
        record_enqueued: bool = False,
        max_pending: int = 100_000,
        batch_size: int = 500,
        flush_interval: float = 0.1,
        shutdown_timeout: float = 4.0,
        heartbeat_interval: float = 5.0,
    ) -> None:
        super().__init__()
        self._dsn = dsn
        self._redis_url = redis_url
        self.auto_migrate = auto_migrate
        self.publish_events = publish_events
        self.policy = ParamsPolicy(redact_keys, max_value_bytes, max_row_bytes)
        self.stamp_enqueue = stamp_enqueue
        self.record_enqueued = record_enqueued
        self.max_pending = max_pending
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.shutdown_timeout = shutdown_timeout
        self.heartbeat_interval = heartbeat_interval
        self._probe: Any = None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.recorder: Recorder | None = None
        # keyed by id(message): the same task_id can have two attempts in flight
        # (a retry runs while the failed attempt is still being handled)
        self._running: dict[int, _Running] = {}
        self._queue: str | None = None
        self._specs: dict[str, CallSpec | None] = {}
        self._starting: set[asyncio.Task[None]] = set()
        self._sends_only = False
        """This process sends tasks and runs none (a client): its sends take the lean path."""

    # -- lifecycle -------------------------------------------------------------

    def _executes_tasks(self) -> bool:
        from taskiq import InMemoryBroker

        broker = self.broker
        return broker is not None and (
            broker.is_worker_process or isinstance(broker, InMemoryBroker)
        )

    def _make_recorder(self) -> Recorder:
        from taskmon.config import embedded_default_dsn, resolve_setting

        worker_side = self._executes_tasks()
        self._sends_only = not worker_side

        publisher: Publisher | None = None
        # a client's pending rows are not announced: the live feed shows executions
        if self.publish_events and worker_side:
            redis_url = resolve_setting(self._redis_url, "TASKMON_REDIS_URL", "redis_url")
            if redis_url:
                from taskmon.bus.redis import RedisStreamPublisher

                publisher = RedisStreamPublisher(redis_url)
            else:
                from taskmon.bus.postgres import PgNotifyPublisher

                publisher = PgNotifyPublisher()
        self._queue = getattr(self.broker, "queue_name", None)
        identity: WorkerIdentity | None = None
        if worker_side:
            # a client that only sends (record_enqueued) keeps no heartbeat row
            from taskmon.worker.queues import NotInspectable, QueueProbe

            try:
                self._probe = QueueProbe(self.broker)
            except NotInspectable:
                self._probe = None
            broker_class = type(self.broker)
            identity = WorkerIdentity(
                self.worker,
                f"{broker_class.__module__}.{broker_class.__qualname__}",
                self._queue,
                self._running.__len__,  # read by the writer: no cost in the hooks
                self._probe,
            )
        return Recorder(
            # with no DSN configured the writer finds the embedded server in a
            # thread: it may have to start it, which no hook may wait for
            resolve_setting(self._dsn, "TASKMON_DSN", "dsn") or embedded_default_dsn,
            publisher=publisher,
            policy=self.policy,
            auto_migrate=self.auto_migrate,
            max_pending=self.max_pending,
            batch_size=self.batch_size,
            flush_interval=self.flush_interval,
            worker=identity,
            heartbeat_interval=self.heartbeat_interval,
        )

    async def startup(self) -> None:
        """Start this process's writer (worker side only); never fails the worker."""
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # after a fork, the child's pid
        if not self._executes_tasks():
            if self.record_enqueued:
                await self._start_sender()
            return
        try:
            for task_name in self.broker.get_all_tasks():
                self._spec_of(task_name)  # read signatures now, not in the first hooks
            if self.recorder is None:
                self.recorder = self._make_recorder()
            # give migrations a moment so the first tasks land at once; a database
            # that does not answer is not our worker's problem: the writer retries
            await self.recorder.start(wait_connected=5.0)
        except ConfigError as exc:
            logger.error("taskmon: monitoring disabled for this process: %s", exc)
        except Exception:
            logger.exception("taskmon: monitoring disabled for this process")

    async def _start_sender(self) -> None:
        """The client's writer of ``pending`` attempts; it never holds up the client."""
        try:
            if self.recorder is None:
                self.recorder = self._make_recorder()
            await self.recorder.start()
        except ConfigError as exc:
            logger.error("taskmon: not recording sent tasks: %s", exc)
        except Exception:
            logger.exception("taskmon: not recording sent tasks")

    async def shutdown(self) -> None:
        """Write what is buffered, within `shutdown_timeout`."""
        recorder, self.recorder = self.recorder, None
        if recorder is None:
            return
        try:
            await recorder.stop(self.shutdown_timeout)
        except Exception:
            logger.exception("taskmon: error while stopping the recorder")
        probe, self._probe = self._probe, None
        if probe is not None:
            try:
                await probe.close()
            except Exception:
                logger.exception("taskmon: error while closing the queue probe")

    def _ensure_recorder(self) -> Recorder | None:
        if self.recorder is None:
            # tasks run, but startup() was not called (or failed): start writing now,
            # without awaiting anything inside the hook
            try:
                self.recorder = self._make_recorder()
                task = asyncio.get_running_loop().create_task(self.recorder.start())
                self._starting.add(task)
                task.add_done_callback(self._started)
            except Exception:
                logger.exception("taskmon: cannot start recording")
                self.recorder = None
        return self.recorder

    def _started(self, task: asyncio.Task[None]) -> None:
        self._starting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("taskmon: cannot start recording", exc_info=task.exception())

    def _spec_of(self, task_name: str) -> CallSpec | None:
        """The parameter names of a task registered on the broker (read once per task)."""
        try:
            return self._specs[task_name]
        except KeyError:
            pass
        task = self.broker.find_task(task_name) if self.broker is not None else None
        func = getattr(task, "original_func", None)
        spec = CallSpec.of(func) if callable(func) else None
        self._specs[task_name] = spec
        return spec

    # -- client side -----------------------------------------------------------

    async def pre_send(self, message: TaskiqMessage) -> TaskiqMessage:
        """Stamp the enqueue time; notice retries re-kicked from inside a running attempt.

        With ``record_enqueued``, also submit the attempt as ``pending``.
        """
        try:
            if self.record_enqueued:
                self._record_sent(message)
            elif self.stamp_enqueue:
                # to the millisecond; round(t, 3) costs ~2.5 times as much
                message.labels[ENQUEUED_LABEL] = int(_time() * 1000 + 0.5) / 1000
            if self._running:
                # a retry middleware re-kicks with the same task_id while the failed
                # attempt is still being handled: that attempt is "retrying"
                attempt = _attempt(message.labels)
                for running in self._running.values():
                    record = running.record
                    if record.task_id == message.task_id and record.attempt < attempt:
                        running.rekicked = True
        except Exception:
            logger.exception("taskmon: pre_send failed")
        return message

    def _record_sent(self, message: TaskiqMessage) -> None:
        """Stamp the message and submit its attempt as ``pending`` (the writer encodes it).

        A client (a process that runs no tasks) submits a plain tuple, which its
        writer makes a row (``encode.sent_rows``); a worker that re-sends a retry
        submits a record, as its other states are, to be merged and announced.
        """
        labels = message.labels
        kept = dict(labels)  # what the row stores: the labels without taskmon's own
        stamped = int(_time() * 1000 + 0.5) / 1000
        labels[ENQUEUED_LABEL] = stamped
        labels[PENDING_LABEL] = 1
        recorder = self.recorder or self._ensure_recorder()
        if recorder is None:
            return
        kept.pop(ENQUEUED_LABEL, None)  # a message sent again carries the last send's
        kept.pop(PENDING_LABEL, None)
        retries = kept.get("_retries")
        name = message.task_name
        try:
            spec = self._specs[name]
        except KeyError:
            spec = self._spec_of(name)
        if self._sends_only:
            recorder.submit_sent(
                (
                    message.task_id,
                    0 if retries is None else _attempt(kept),
                    name,
                    self._queue or kept.get("queue_name"),  # as pre_execute
                    kept,
                    kept.get("timeout"),
                    stamped,
                    capture_call(message.args, message.kwargs, spec, self.policy),
                )
            )
            return
        timeout = kept.get("timeout")
        sent = _from_timestamp(stamped, UTC)
        recorder.submit(
            AttemptRecord(
                message.task_id,
                0 if retries is None else _attempt(kept),
                name,
                _PENDING,
                None,  # worker: none has it yet
                self._queue or kept.get("queue_name"),  # as pre_execute: set with the recorder
                kept,
                None,  # params: captured raw below, encoded by the writer
                None,  # error_type
                None,  # error_message
                None,  # traceback
                None if timeout is None else as_number(timeout),
                sent,  # enqueued_at
                None,  # started_at
                None,  # finished_at
                None,  # duration_ms
                None,  # queue_wait_ms
                capture_call(message.args, message.kwargs, spec, self.policy),
                None,  # exception
                sent,  # anchor: the row's created_at, which the worker's states share
            )
        )

    # -- worker side -----------------------------------------------------------

    async def pre_execute(self, message: TaskiqMessage) -> TaskiqMessage:
        """Snapshot the attempt (args are still JSON here) and record it as running."""
        try:
            t0 = _perf_counter()
            now = _time()
            labels = dict(message.labels)  # a retry middleware rewrites `_retries` in place
            enqueued = labels.pop(ENQUEUED_LABEL, None)
            pended = labels.pop(PENDING_LABEL, None)
            if enqueued is not None and type(enqueued) is not float:
                enqueued = as_number(enqueued)
            retries = labels.get("_retries")
            timeout = labels.get("timeout")
            name = message.task_name
            try:
                spec = self._specs[name]
            except KeyError:
                spec = self._spec_of(name)
            enqueued_at: datetime | None = None
            queue_wait: float | None = None
            if enqueued and enqueued == enqueued:  # neither missing, zero nor NaN
                try:
                    enqueued_at = _from_timestamp(enqueued, UTC)
                except (OverflowError, OSError, ValueError):
                    pass  # no time a clock gives: the attempt is recorded without it
                else:
                    wait = now - enqueued
                    # milliseconds to the microsecond, never negative: clocks may disagree
                    queue_wait = int(wait * 1_000_000 + 0.5) / 1000 if wait > 0 else 0.0
            # positional: a dataclass's keyword arguments cost this hook three times as much
            record = AttemptRecord(
                message.task_id,
                0 if retries is None else _attempt(labels),
                name,
                _RUNNING,
                self.worker,
                self._queue or labels.get("queue_name"),
                labels,
                None,  # params: captured raw below, encoded by the writer
                None,  # error_type
                None,  # error_message
                None,  # traceback
                None if timeout is None else as_number(timeout),
                enqueued_at,
                _from_timestamp(now, UTC),
                None,  # finished_at
                None,  # duration_ms
                queue_wait,
                capture_call(message.args, message.kwargs, spec, self.policy),
            )
            if pended is not None and enqueued_at is not None:
                record.anchor = enqueued_at  # the client's pending row: update it
            self._running[id(message)] = _Running(record, t0)
            recorder = self.recorder or self._ensure_recorder()
            if recorder is not None:
                recorder.submit(record)
        except Exception:
            logger.exception("taskmon: pre_execute failed")
        return message

    async def on_error(
        self, message: TaskiqMessage, result: TaskiqResult[Any], exception: BaseException
    ) -> None:
        """Keep the real exception: a retry middleware may replace it by NoResultError."""
        try:
            running = self._lookup(message)
            if running is not None and (
                running.exception is None or not isinstance(exception, NoResultError)
            ):
                running.exception = exception
        except Exception:
            logger.exception("taskmon: on_error failed")

    async def post_execute(self, message: TaskiqMessage, result: TaskiqResult[Any]) -> None:
        """Record the attempt's outcome, duration and error."""
        try:
            finished = _perf_counter()
            running = self._running.pop(id(message), None)
            if running is None:
                key = self._key(message)
                if key is None:
                    return
                running = self._running.pop(key)
            exc = running.exception
            if exc is None and result.is_err and not isinstance(result.error, NoResultError):
                exc = result.error
            if running.rekicked:
                status = Status.RETRYING
            elif exc is not None and not isinstance(exc, NoResultError):
                status = Status.FAILED
            else:
                # success, or a task that raised NoResultError on purpose (no result to save)
                status = Status.SUCCESS
                exc = None
            # the running state was submitted as this same object: the writer
            # encodes the attempt once, and writes and announces its latest state
            record = running.record
            record.status = status
            record.finished_at = _now(UTC)
            elapsed = finished - running.t0  # milliseconds to the microsecond, as queue_wait_ms
            record.duration_ms = int(elapsed * 1_000_000 + 0.5) / 1000 if elapsed > 0 else 0.0
            record.exception = exc
            recorder = self.recorder or self._ensure_recorder()
            if recorder is not None:
                recorder.submit(record)
        except Exception:
            logger.exception("taskmon: post_execute failed")

    def _key(self, message: TaskiqMessage) -> int | None:
        if id(message) in self._running:
            return id(message)
        # a later middleware replaced the message object: find the attempt by task_id
        # (the retry middleware also rewrites `_retries` in place, so not by label)
        for key, candidate in reversed(self._running.items()):
            if candidate.record.task_id == message.task_id:
                return key
        return None

    def _lookup(self, message: TaskiqMessage) -> _Running | None:
        key = self._key(message)
        return None if key is None else self._running[key]
