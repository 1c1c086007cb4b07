"""Statuses, attempt records and the live event wire schema.

Standard library only: this module is imported inside every worker process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "EVENT_VERSION",
    "TERMINAL_STATUSES",
    "AttemptRecord",
    "EventType",
    "Status",
    "event_from_record",
    "iso",
]

EVENT_VERSION = 1


class Status(StrEnum):
    """The state of one attempt of a task."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    RETRYING = "retrying"
    """This attempt failed and another attempt was scheduled."""
    LOST = "lost"
    """Still marked running long after it should have ended (worker died)."""


TERMINAL_STATUSES = frozenset({Status.SUCCESS, Status.FAILED, Status.RETRYING, Status.LOST})


class EventType(StrEnum):
    """The `type` field of a live event (the seed's three kinds)."""

    STARTED = "task_started"
    COMPLETED = "task_completed"
    FAILED = "task_failed"


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with an explicit offset (naive values are taken as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


@dataclass(slots=True)
class AttemptRecord:
    """What the recorder writes for one attempt: one row of `task_execution_logs`.

    The same attempt is usually recorded twice (``running`` at the start, then
    its outcome); the writer merges both into one upsert when they share a batch.
    """

    task_id: str
    attempt: int
    task_name: str
    status: Status
    worker: str | None
    queue: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    timeout_s: float | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    queue_wait_ms: float | None = None
    raw_params: bytes | None = field(default=None, repr=False, compare=False)
    """The call's arguments as the middleware captured them (JSON of ``[args, kwargs]``),
    not yet bound to names, redacted or bounded: the writer turns them into `params`."""
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    """The attempt's exception, formatted into the error fields by the writer."""
    anchor: datetime | None = None
    """The attempt's ``created_at`` when its sender fixed it: the enqueue time of an
    attempt recorded ``pending`` by the client (``record_enqueued``), which the
    worker's states of the same attempt must share to update that row."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.task_id, self.attempt)

    @property
    def created_at(self) -> datetime:
        return self.anchor or self.started_at or self.finished_at or datetime.now(UTC)


def event_type_for(status: Status) -> EventType:
    if status is Status.RUNNING or status is Status.PENDING:
        return EventType.STARTED
    if status is Status.SUCCESS:
        return EventType.COMPLETED
    return EventType.FAILED


def event_from_record(record: AttemptRecord, seq: int = 0) -> dict[str, Any]:
    """The wire form of the event announcing `record` (docs/protocol.md), as a dict.

    The same keys as the writer's :func:`taskmon.worker.encode.encode_event`
    (a test holds the two together).
    """
    timestamp = record.finished_at or record.started_at or datetime.now(UTC)
    return {
        "v": EVENT_VERSION,
        "seq": seq,
        "type": event_type_for(record.status).value,
        "task_name": record.task_name,
        "status": record.status.value,
        "timestamp": iso(timestamp),
        "data": {
            "task_id": record.task_id,
            "attempt": record.attempt,
            "worker": record.worker,
            "duration_ms": record.duration_ms,
            "queue_wait_ms": record.queue_wait_ms,
            "error_type": record.error_type,
            "error_message": record.error_message,
            "params": record.params,
            "labels": record.labels or {},
            "queue": record.queue,
        },
    }


def dumps(obj: Any) -> str:
    """Compact JSON, the one encoding used on the bus and the websocket."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)
