"""From captured attempts to stored rows and wire events, once per attempt, in the writer.

The middleware's hooks only capture (clock readings, the arguments as JSON, the
exception); everything that costs more — binding arguments to names, redaction,
size bounds, formatting tracebacks, JSON for the row and for the events — is
done here, by the background writer, off the task's path.
"""

from __future__ import annotations

import traceback as tb
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import orjson

from taskmon.domain.events import EVENT_VERSION, AttemptRecord, Status, event_type_for
from taskmon.domain.params import ParamsPolicy, dumps

__all__ = [
    "MAX_TRACEBACK",
    "Prepared",
    "Sent",
    "as_number",
    "encode_event",
    "encode_parts",
    "encode_record_event",
    "prepare",
    "row",
    "row_of",
    "sent_rows",
]

MAX_TRACEBACK = 32 * 1024
_UNFINISHED = (Status.RUNNING, Status.PENDING)
_EMPTY_TEXT = "{}"
_TYPES = {status: event_type_for(status).value for status in Status}
_PENDING = Status.PENDING


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a task's error message sometimes does
    if value is not None and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _jsonb(data: bytes) -> str:
    # jsonb refuses \u0000 as well
    text = data.decode()
    return text.replace("\\u0000", "\\ufffd") if "\\u0000" in text else text


_LABEL_TEXTS: dict[bytes, str] = {}
"""The stored text of labels' encodings seen lately: most attempts repeat a few."""


def _labels_text(policy: ParamsPolicy, labels: dict[str, Any]) -> str:
    data = policy.encode(labels, remember=True)
    text = _LABEL_TEXTS.get(data)
    if text is None:
        text = _jsonb(data)
        if len(data) <= 1024:
            if len(_LABEL_TEXTS) >= 1024:
                _LABEL_TEXTS.clear()
            _LABEL_TEXTS[data] = text
    return text


@dataclass(slots=True)
class Prepared:
    """What one attempt costs to encode, computed once and reused for each of its states."""

    record: AttemptRecord
    labels: str
    params: bytes | None


def prepare(record: AttemptRecord, policy: ParamsPolicy) -> Prepared:
    """Redact, bound and encode `record`'s labels and parameters.

    Args:
        record: the attempt; its ``raw_params`` (from the middleware) take precedence
            over ``params`` (from other writers).
        policy: redaction and size bounds.
    """
    return Prepared(record, *encode_parts(record, policy))


def encode_parts(record: AttemptRecord, policy: ParamsPolicy) -> tuple[str, bytes | None]:
    """:func:`prepare` without the wrapper: the labels' stored text and the params' JSON."""
    labels = _labels_text(policy, record.labels) if record.labels else _EMPTY_TEXT
    raw = record.raw_params
    if raw is not None:
        return labels, policy.encode_captured(raw)
    if record.params is not None:
        return labels, policy.encode(record.params)
    return labels, None


def _fill_error(record: AttemptRecord, max_message: int) -> None:
    """Format the captured exception into the record's error fields (once)."""
    exc, record.exception = record.exception, None
    if exc is None or record.error_type is not None:
        return
    record.error_type = type(exc).__qualname__
    try:
        record.error_message = str(exc)[:max_message] or None
    except Exception:  # a broken __str__ must not lose the attempt
        record.error_message = f"<unprintable {type(exc).__name__}>"
    text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
    record.traceback = text[-MAX_TRACEBACK:]


def _seconds(value: datetime | None) -> float | None:
    """Unix seconds of a time (naive ones are UTC), as the staging table takes them."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def row_of(prepared: Prepared, max_message: int) -> tuple[Any, ...]:
    """The attempt's current state as staged: :data:`taskmon.store.ingest.COLUMNS`, in order."""
    return row(prepared.record, prepared.labels, prepared.params, max_message)


def row(r: AttemptRecord, labels: str, params: bytes | None, max_message: int) -> tuple[Any, ...]:
    """:func:`row_of` from the parts :func:`encode_parts` returned.

    Called once per attempt in the writer: the text checks and time conversions
    are written out rather than called (a call costs more than most of them).
    """
    if r.exception is not None:
        _fill_error(r, max_message)
    task_id = r.task_id
    task_name = r.task_name
    worker = r.worker
    queue = r.queue
    error_type = r.error_type
    error_message = r.error_message
    traceback = r.traceback
    # PostgreSQL text cannot hold NUL (see _text): the usual texts are checked in place
    if (task_id is not None and "\x00" in task_id) or (
        task_name is not None and "\x00" in task_name
    ):
        task_id, task_name = _text(task_id), _text(task_name)  # type: ignore[assignment]
    if worker is not None and "\x00" in worker:
        worker = _text(worker)
    if queue is not None and "\x00" in queue:
        queue = _text(queue)
    if error_type is not None:
        error_type, error_message, traceback = (
            _text(error_type),
            _text(error_message),
            _text(traceback),
        )
    elif error_message is not None or traceback is not None:
        error_message, traceback = _text(error_message), _text(traceback)
    if params is None:
        params_text = None
    else:
        params_text = params.decode()
        if "\\u0000" in params_text:
            params_text = params_text.replace("\\u0000", "\\ufffd")
    # Unix seconds (naive times are UTC), as _seconds does
    t = r.enqueued_at
    enqueued_s = None if t is None else t.timestamp() if t.tzinfo is not None else _seconds(t)
    t = r.started_at
    started_s = None if t is None else t.timestamp() if t.tzinfo is not None else _seconds(t)
    t = r.finished_at
    finished_s = None if t is None else t.timestamp() if t.tzinfo is not None else _seconds(t)
    # AttemptRecord.created_at, from the seconds already computed
    created_s: float | None
    t = r.anchor
    if t is not None:
        created_s = t.timestamp() if t.tzinfo is not None else _seconds(t)
    elif started_s is not None:
        created_s = started_s
    elif finished_s is not None:
        created_s = finished_s
    else:
        created_s = _seconds(r.created_at)
    # in the order of taskmon.store.ingest.COLUMNS (a test holds them together)
    return (
        task_id,
        task_name,
        r.status,
        r.attempt,
        worker,
        queue,
        params_text,
        labels,
        error_type,
        error_message,
        traceback,
        r.timeout_s,
        enqueued_s,
        started_s,
        finished_s,
        r.duration_ms,
        r.queue_wait_ms,
        created_s,
    )


Sent: TypeAlias = tuple[str, int, str, str | None, dict[str, Any], Any, float, bytes]
"""A task a client sent, as ``record_enqueued`` captures it: ``(task_id, attempt,
task_name, queue, labels, timeout, enqueued, params)``, the labels without
taskmon's own, the timeout as the label gave it, the enqueue time in Unix
seconds and the arguments as :func:`~taskmon.domain.params.capture_call` took
them. A plain tuple, not an :class:`AttemptRecord`: a client sends many, each
once, and its writer makes each one row and nothing else (no event, no merge
with later states, which are the worker's)."""


def as_number(value: object) -> float | None:
    """A label's number (a timeout, a retry count), or None for anything else."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is no number here


def sent_rows(sent: list[Sent], policy: ParamsPolicy) -> list[tuple[Any, ...]]:
    """The staged rows (:func:`row`'s shape) of `sent`: each attempt ``pending``.

    What :func:`row` makes of the same attempt as an :class:`AttemptRecord`
    (a test holds the two together), without building one per send. An attempt
    sent twice in `sent` is one row, of its last send: one statement may not
    write a row twice.
    """
    rows: dict[tuple[str, int], tuple[Any, ...]] = {}
    encode_captured = policy.encode_captured
    for task_id, attempt, task_name, queue, labels, timeout, enqueued, raw in sent:
        if "\x00" in task_id or "\x00" in task_name:
            task_id, task_name = _text(task_id), _text(task_name)  # type: ignore[assignment]
        if queue is not None and "\x00" in queue:
            queue = _text(queue)
        params_text = _jsonb(encode_captured(raw))
        rows[(task_id, attempt)] = (
            task_id,
            task_name,
            _PENDING,
            attempt,
            None,  # worker: none has it yet
            queue,
            params_text,
            _labels_text(policy, labels) if labels else _EMPTY_TEXT,
            None,  # error_type
            None,  # error_message
            None,  # traceback
            None if timeout is None else as_number(timeout),
            enqueued,  # enqueued_at
            None,  # started_at
            None,  # finished_at
            None,  # duration_ms
            None,  # queue_wait_ms
            enqueued,  # created_at: the worker's states of the attempt share it
        )
    return list(rows.values())


def encode_event(
    record: AttemptRecord,
    status: Status,
    seq: int,
    params: bytes | None,
    labels: str | bytes = _EMPTY_TEXT,
) -> bytes:
    """The wire form of the event announcing `record` in `status` (docs/protocol.md).

    `params` and `labels` are the stored (redacted) encodings the row got, so
    the ``param:`` and ``label:`` filter terms match a live event as they match
    its row.

    An event of an unfinished state carries nothing of the outcome, even when the
    record (shared by the attempt's states) has meanwhile finished.
    """
    finished = status not in _UNFINISHED
    timestamp = (record.finished_at if finished else None) or record.started_at
    return orjson.dumps(
        {
            "v": EVENT_VERSION,
            "seq": seq,
            "type": _TYPES[status],
            "task_name": record.task_name,
            "status": status,
            "timestamp": timestamp or datetime.now(UTC),
            "data": {
                "task_id": record.task_id,
                "attempt": record.attempt,
                "worker": record.worker,
                "duration_ms": record.duration_ms if finished else None,
                "queue_wait_ms": record.queue_wait_ms,
                "error_type": record.error_type if finished else None,
                "error_message": record.error_message if finished else None,
                "params": None if params is None else orjson.Fragment(params),
                "labels": orjson.Fragment(labels),
                "queue": record.queue,
            },
        },
        option=orjson.OPT_NAIVE_UTC,
    )


def encode_record_event(record: AttemptRecord, seq: int) -> bytes:
    """The event of a record whose ``params`` are already in stored form (cleanup's lost events)."""
    params = None if record.params is None else dumps(record.params)
    return encode_event(record, record.status, seq, params, dumps(record.labels or {}))
