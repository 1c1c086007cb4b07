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

import bisect
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from typing import Any, Literal

from taskmon.domain.display import span

__all__ = [
    "DEFAULT_GRACE_S",
    "DEFAULT_LATE_AFTER_S",
    "DEFAULT_WINDOW_S",
    "MAX_FIRES",
    "SCHEDULE_LABEL",
    "Fire",
    "FireState",
    "Run",
    "Schedule",
    "ScheduleReport",
    "ScheduleState",
    "Unreadable",
    "expected_fires",
    "judge",
    "next_fire",
]

SCHEDULE_LABEL = "schedule_id"
"""The label TaskIQ's scheduler stamps on every message it sends."""

DEFAULT_WINDOW_S = 86400.0
"""How far back a schedule report looks: one day."""
DEFAULT_GRACE_S = 300.0
"""How long after its expected time a fire may start before it counts as missed."""
DEFAULT_LATE_AFTER_S = 60.0
"""A fire enqueued or started more than this after its expected time is late."""
MAX_FIRES = 2000
"""Fires a report lists at most (the newest); its counts cover them all."""
CRON_TOLERANCE_S = 30.0
"""A run enqueued this much before a cron fire's minute still belongs to it (clock skew)."""

FireState = Literal["ok", "late", "missed", "waiting"]
ScheduleState = Literal["unreadable", "missed", "late", "waiting", "no runs", "ok"]
"""A schedule's health over a window, worst first."""


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
    """How long after ``expected_at`` the run started (a late send or a long queue wait)."""


@dataclass(frozen=True, slots=True)
class ScheduleReport:
    """A schedule over a window: its fires, its last run, what is next."""

    schedule: Schedule
    next_fire: datetime | None
    last_run: Run | None
    runs: int
    """Attempts recorded for the schedule in the window."""
    fires: tuple[Fire, ...]
    """Expected fires in the window, oldest first (the newest :data:`MAX_FIRES`)."""
    missed_count: int = 0
    """Missed fires in the window, listed or not."""
    late_count: int = 0
    """Late fires in the window, listed or not."""
    problem: str | None = None
    """Why the fires could not be worked out (an unparsable cron, an unknown time zone)."""

    @property
    def state(self) -> ScheduleState:
        """The schedule's health in one word, worst first: what a list sorts and colours by."""
        if self.problem is not None:
            return "unreadable"
        if self.missed_count:
            return "missed"
        if self.late_count:
            return "late"
        if any(f.state == "waiting" for f in self.fires):
            return "waiting"
        if self.last_run is None:
            return "no runs"
        return "ok"

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


# -- expected fires ---------------------------------------------------------------

_OFFSET = re.compile(r"^([+-])(\d{1,2}):?(\d{2})$")


def _zone(offset: str | None) -> tzinfo:
    """The time zone a cron is read in, as TaskIQ reads ``cron_offset``."""
    if not offset:
        return UTC
    m = _OFFSET.match(offset.strip())
    if m:
        sign = -1 if m.group(1) == "-" else 1
        return timezone(sign * timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(offset)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {offset!r}") from exc


def _field(text: str, low: int, high: int) -> list[int]:
    """The values a numeric cron field (minute or hour) admits, ascending."""
    values: set[int] = set()
    for item in text.split(","):
        body, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"step {step_text!r}")
        if body == "*":
            start, stop = low, high
        elif "-" in body:
            a, b = body.split("-", 1)
            start, stop = int(a), int(b)
        else:
            start = int(body)
            stop = high if step_text else start
        if not low <= start <= stop <= high:
            raise ValueError(f"{item!r} is out of {low}-{high}")
        values.update(range(start, stop + 1, step))
    return sorted(values)


def _day_matches(cron_days: str, day: date) -> bool:
    import pycron  # type: ignore[import-untyped]

    return bool(pycron.is_now(f"* * {cron_days}", datetime(day.year, day.month, day.day)))


def _cron_times(
    cron: str, offset: str | None, since: datetime, until: datetime
) -> Iterator[datetime]:
    """A cron's fire times in [since, until], in UTC, as TaskIQ's scheduler sends them."""
    parts = cron.split()
    if len(parts) != 5:
        raise ValueError(f"cron {cron!r} does not have 5 fields")
    zone = _zone(offset)
    try:
        minutes = _field(parts[0], 0, 59)
        hours = _field(parts[1], 0, 23)
    except ValueError as exc:
        raise ValueError(f"cron {cron!r}: {exc}") from None
    days = " ".join(parts[2:])
    try:
        _day_matches(days, since.date())
    except (ValueError, IndexError) as exc:
        raise ValueError(f"cron {cron!r}: {exc}") from None
    day = since.astimezone(zone).date()
    last = until.astimezone(zone).date()
    while day <= last:
        if _day_matches(days, day):
            for hour in hours:
                for minute in minutes:
                    at = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
                    if at > until:
                        return
                    if at >= since:
                        yield at.astimezone(UTC)
        day += timedelta(days=1)


def expected_fires(schedule: Schedule, *, since: datetime, until: datetime) -> list[datetime]:
    """When a cron or one-off schedule should have fired in [since, until], oldest first.

    An interval schedule's fires follow its runs (TaskIQ counts the interval
    from the last send), so :func:`judge` works them out with the runs.

    Raises:
        ValueError: the cron or its time zone cannot be read.
    """
    if schedule.cron is not None:
        return list(_cron_times(schedule.cron, schedule.cron_offset, since, until))
    if schedule.time is not None:
        at = schedule.time if schedule.time.tzinfo else schedule.time.replace(tzinfo=UTC)
        return [at] if since <= at <= until else []
    return []


def next_fire(schedule: Schedule, now: datetime, last_run: Run | None = None) -> datetime | None:
    """When the schedule fires next after `now` (``None``: never again, or unknown)."""
    try:
        if schedule.cron is not None:
            for years in (1, 5):
                found = next(
                    _cron_times(
                        schedule.cron,
                        schedule.cron_offset,
                        now + timedelta(seconds=1),
                        now + timedelta(days=366 * years),
                    ),
                    None,
                )
                if found is not None:
                    return found
            return None
    except ValueError:
        return None
    if schedule.interval_s is not None:
        if last_run is None:
            return None
        due = _ref(last_run) + timedelta(seconds=schedule.interval_s)
        return due if due > now else now
    if schedule.time is not None:
        at = schedule.time if schedule.time.tzinfo else schedule.time.replace(tzinfo=UTC)
        return at if at > now and last_run is None else None
    return None


# -- judging fires against runs -----------------------------------------------------


def _ref(run: Run) -> datetime:
    """When a run was sent: its enqueue stamp, else when it was recorded."""
    return run.enqueued_at or run.created_at


def _fire(
    expected: datetime, run: Run | None, *, now: datetime, grace_s: float, late_after_s: float
) -> Fire:
    started = run.started_at if run is not None and run.status != "pending" else None
    if started is None and run is not None and run.status != "pending":
        started = run.created_at
    if started is not None and run is not None:
        # a run starts after it is sent: its start's delay covers a late send too
        delay = max((started - expected).total_seconds(), 0.0)
        state: FireState = "late" if delay > late_after_s else "ok"
        return Fire(expected, state, run, delay)
    if now < expected + timedelta(seconds=grace_s):
        return Fire(expected, "waiting", run)
    return Fire(expected, "missed", run)


def _interval_fires(
    interval_s: float,
    runs: Sequence[Run],
    *,
    since: datetime,
    now: datetime,
    grace_s: float,
    late_after_s: float,
    skipped: list[int],
) -> Iterator[Fire]:
    """An interval schedule's fires: each due `interval_s` after the previous send.

    `skipped` gains the missed fires of a long silent stretch left unlisted.
    """
    period = timedelta(seconds=interval_s)
    grace = timedelta(seconds=max(grace_s, 0.0))
    early = timedelta(seconds=min(CRON_TOLERANCE_S, interval_s / 2))
    if not runs:
        return  # no send seen: when the chain starts is unknown (the scheduler never ran)
    i = bisect.bisect_left([_ref(r) for r in runs], since)
    if i > 0:
        anchor = _ref(runs[i - 1])  # the last send before the window
        if anchor + period < since:
            # silent since before the window: its first fire in the window
            anchor += ((since - anchor) // period) * period
    else:
        # the first send seen is in the window: a fire on its own time
        first = runs[0]
        yield _fire(_ref(first), first, now=now, grace_s=grace_s, late_after_s=late_after_s)
        anchor, i = _ref(first), 1
    while True:
        expected = anchor + period
        if expected > now:
            return
        while i < len(runs) and _ref(runs[i]) <= anchor:
            i += 1
        if i < len(runs) and _ref(runs[i]) <= expected + grace:
            run = runs[i]
            i += 1
            ref = _ref(run)
            at = expected if ref >= expected - early else ref
            yield _fire(at, run, now=now, grace_s=grace_s, late_after_s=late_after_s)
            anchor = max(ref, at)
            continue
        fire = _fire(expected, None, now=now, grace_s=grace_s, late_after_s=late_after_s)
        yield fire
        if fire.state == "waiting":
            return
        anchor = expected
        # a long stretch with no runs (the scheduler was down): count its
        # oldest missed fires without listing them, since a report keeps the newest
        end = min(now, _ref(runs[i])) if i < len(runs) else now
        ahead = int((end - grace - expected) / period)
        if ahead > MAX_FIRES:
            skip = ahead - MAX_FIRES
            skipped[0] += skip
            anchor = expected + skip * period


def judge(
    schedule: Schedule,
    runs: Sequence[Run],
    *,
    since: datetime,
    now: datetime,
    grace_s: float = DEFAULT_GRACE_S,
    late_after_s: float = DEFAULT_LATE_AFTER_S,
) -> ScheduleReport:
    """The schedule's fires in [since, now] matched with its `runs` (one per task, any order).

    Each expected fire takes the first run sent in its slot (from just before
    it to just before the next fire): a run that started is ``ok`` or
    ``late``; none, or one still pending, is ``waiting`` until the grace period
    ends, then ``missed``.
    """
    ordered = sorted(runs, key=_ref)
    in_window = [r for r in ordered if _ref(r) >= since]
    last_run = max(ordered, key=lambda r: r.started_at or _ref(r)) if ordered else None
    problem: str | None = None
    fires: list[Fire]
    skipped = [0]
    if schedule.interval_s is not None and schedule.cron is None and schedule.time is None:
        fires = list(
            _interval_fires(
                schedule.interval_s,
                ordered,
                since=since,
                now=now,
                grace_s=grace_s,
                late_after_s=late_after_s,
                skipped=skipped,
            )
        )
    else:
        try:
            times = expected_fires(schedule, since=since, until=now)
        except ValueError as exc:
            times, problem = [], str(exc)
        tol = timedelta(seconds=CRON_TOLERANCE_S if schedule.cron is not None else 0.0)
        starts = [t - tol for t in times]
        taken: dict[int, Run] = {}
        for run in ordered:
            slot = bisect.bisect_right(starts, _ref(run)) - 1
            if slot >= 0 and slot not in taken:
                taken[slot] = run
        fires = [
            _fire(at, taken.get(k), now=now, grace_s=grace_s, late_after_s=late_after_s)
            for k, at in enumerate(times)
        ]
    return ScheduleReport(
        schedule=schedule,
        next_fire=next_fire(schedule, now, last_run),
        last_run=last_run,
        runs=len(in_window),
        fires=tuple(fires[-MAX_FIRES:]),
        missed_count=skipped[0] + sum(1 for f in fires if f.state == "missed"),
        late_count=sum(1 for f in fires if f.state == "late"),
        problem=problem,
    )
