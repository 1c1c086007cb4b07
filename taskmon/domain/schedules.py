"""Schedules and their fires: what a TaskIQ scheduler should have sent, and what ran.

TaskIQ's scheduler stamps the label ``schedule_id`` on every message it sends.
A :class:`Schedule` is one entry of the user's schedule sources; its expected
fires in a window are matched with the recorded attempts (:class:`Run`), by
``schedule_id``, or by task name (and cron) when the source makes a new id at
each start (``LabelScheduleSource`` without an explicit ``schedule_id``).

A fire is ``ok`` when an attempt was recorded for it within the grace period,
``late`` when it was enqueued or started more than ``late_after`` after the
expected time, ``missed`` when nothing was recorded within the grace period, and
``waiting`` when the grace period has not yet passed.

Pure: no I/O, no clock of its own (every function takes ``now``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from taskmon.domain.display import span

__all__ = [
    "SCHEDULE_LABEL",
    "Fire",
    "FireState",
    "Run",
    "Schedule",
    "ScheduleReport",
    "Unreadable",
]

SCHEDULE_LABEL = "schedule_id"
"""The label TaskIQ's scheduler stamps on every message it sends."""

FireState = Literal["ok", "late", "missed", "waiting"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule of the user's scheduler (a ``taskiq.ScheduledTask``, source named)."""

    schedule_id: str
    task_name: str
    source: str
    """The schedule source's class name, e.g. ``LabelScheduleSource``."""
    cron: str | None = None
    cron_offset: str | None = None
    """As TaskIQ takes it: a time zone name, or an offset such as ``+02:00``."""
    time: datetime | None = None
    """A one-off schedule's (aware) time."""
    interval_s: float | None = None
    """An interval schedule's period in seconds."""
    labels: Mapping[str, Any] = field(default_factory=dict)
    stable_id: bool = True
    """False when the source makes a new ``schedule_id`` at each start: matched by task name."""

    @property
    def when(self) -> str:
        """The schedule as a user wrote it: its cron, ``every 30s``, or its one time."""
        if self.cron is not None:
            return self.cron if self.cron_offset is None else f"{self.cron} ({self.cron_offset})"
        if self.interval_s is not None:
            return f"every {span(self.interval_s)}"
        if self.time is not None:
            return f"at {self.time.isoformat(timespec='seconds')}"
        return "never"


@dataclass(frozen=True, slots=True)
class Run:
    """One recorded attempt of a scheduled task."""

    task_id: str
    attempt: int
    status: str
    schedule_id: str | None
    created_at: datetime
    enqueued_at: datetime | None
    started_at: datetime | None
    duration_ms: float | None


@dataclass(frozen=True, slots=True)
class Fire:
    """One expected fire of a schedule and what was recorded for it."""

    expected_at: datetime
    state: FireState
    run: Run | None = None
    delay_s: float | None = None
    """How long after ``expected_at`` the run was enqueued (else started)."""


@dataclass(frozen=True, slots=True)
class ScheduleReport:
    """A schedule over a window: its fires, its last run, what is next."""

    schedule: Schedule
    next_fire: datetime | None
    last_run: Run | None
    runs: int
    """Attempts recorded for the schedule in the window."""
    fires: tuple[Fire, ...]
    """Expected fires in the window, oldest first."""

    @property
    def missed(self) -> tuple[Fire, ...]:
        return tuple(f for f in self.fires if f.state == "missed")

    @property
    def late(self) -> tuple[Fire, ...]:
        return tuple(f for f in self.fires if f.state == "late")


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A schedule source taskmon cannot list, and why (shown as "not readable")."""

    source: str
    reason: str
