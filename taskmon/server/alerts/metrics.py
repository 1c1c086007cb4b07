"""Alert metrics: what a rule's ``when`` compares, one object each, in one registry.

A :class:`Metric` holds everything about one figure: how its threshold is
written and compared (:meth:`Metric.condition`, :meth:`Metric.holds`), how a
firing rule clears (:meth:`Metric.clear`), how its figure is read from the
store (:meth:`Metric.measure`), and how its value and what it counts are
worded (:meth:`Metric.format`, :attr:`Metric.words`,
:meth:`Metric.history_terms`). Rule parsing, the conditions the errors list,
the evaluator and the messages all read :data:`METRICS`: adding a metric is
one class (or one more instance of a class here) appended to that tuple.

The SQL of each figure stays in :mod:`taskmon.store.alerts` (and the stats
queries), imported when a figure is read.

No textual, typer or rich here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from taskmon.domain.filters import KEYS as _FILTER_KEYS_ALL
from taskmon.domain.filters import FilterError, TaskFilter, parse_duration_ms
from taskmon.domain.schedules import DEFAULT_GRACE_S, DEFAULT_LATE_AFTER_S
from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S

if TYPE_CHECKING:
    from taskmon.domain.schedules import Schedule
    from taskmon.store.alerts import Measurement

__all__ = [
    "HYSTERESIS",
    "METRICS",
    "NEW_ERROR_BASELINE",
    "Backlog",
    "ConditionError",
    "FailureRate",
    "Lost",
    "Metric",
    "NewErrorType",
    "PendingOldest",
    "Percentile",
    "Runs",
    "ScheduleMissed",
    "Window",
    "WorkersAlive",
    "get_metric",
    "known_conditions",
    "measure",
    "metric_names",
]

HYSTERESIS = 0.1
"""A firing rate or duration rule clears only below this fraction under its threshold."""
NEW_ERROR_BASELINE = timedelta(days=7)
"""``new_error_type``: an error type not seen in this long before the window is new."""


class ConditionError(ValueError):
    """A ``when`` the metric does not take; the message follows ``when: `` in the error."""


@dataclass(frozen=True)
class Window:
    """What one check measures over.

    Attributes:
        start: the window's start (``now - over``).
        end: the window's end (the check's now).
        lost_after_s: how long a running attempt without timeout may run
            before it counts as lost.
        baseline: how far back before `start` ``new_error_type`` looks.
        schedules: the user's schedules (``--scheduler``), for ``schedule_missed``;
            None when no scheduler is given.
        grace_s: how long after its time a scheduled fire may start before it is missed.
    """

    start: datetime
    end: datetime
    lost_after_s: float = DEFAULT_LOST_AFTER_S
    baseline: timedelta = NEW_ERROR_BASELINE
    schedules: Sequence[Schedule] | None = None
    grace_s: float = DEFAULT_GRACE_S


@dataclass(frozen=True)
class Metric(ABC):
    """One figure a rule can compare.

    Attributes:
        name: how ``when`` names it (``failure_rate``).
        words: how messages name it (``failure rate``).
        example: a condition on it, for the errors listing the known ones.
    """

    name: str
    words: str
    example: str

    ops: ClassVar[tuple[str, ...]] = (">", ">=")
    """The comparisons it takes."""
    counts_attempts: ClassVar[bool] = True
    """False: a figure of the workers' heartbeats or queue samples, so it takes no filter."""
    clears_at_once: ClassVar[bool] = False
    """True (counts): a firing rule clears once the condition no longer holds, no hysteresis."""
    filter_keys: ClassVar[tuple[str, ...] | None] = None
    """The filter keys a rule on it may use (None: every attempt filter)."""
    needs_schedules: ClassVar[bool] = False
    """True: it reads the user's schedules, so ``--scheduler`` must be given."""

    def condition(self, op: str | None, value: str | None) -> tuple[str, float]:
        """``(op, threshold)`` of a ``when`` on this metric; the threshold in its unit.

        Raises:
            ConditionError: no comparison, an unsupported one, or a bad threshold.
        """
        if op is None or value is None:
            raise ConditionError(f"{self.name} needs a comparison, e.g. {self.comparison_hint()}")
        if op not in self.ops:
            raise ConditionError(f"{op!r} is not supported (use {' or '.join(self.ops)})")
        return op, self.threshold(value.strip())

    def comparison_hint(self) -> str:
        """What a condition on this metric looks like, for the error of a bare name."""
        return f"{self.name} {self.ops[0]} ..."

    @abstractmethod
    def threshold(self, text: str) -> float:
        """The threshold `text` in the metric's unit.

        Raises:
            ConditionError: `text` is not one.
        """

    def holds(self, op: str, threshold: float, value: float) -> bool:
        """Whether `value` meets the condition ``op threshold``."""
        if op == "<":
            return value < threshold
        if op == "<=":
            return value <= threshold
        return value >= threshold if op == ">=" else value > threshold

    def clear(self, threshold: float, value: float) -> bool:
        """Whether a firing rule whose condition no longer holds is clear of it.

        Rates and durations only below ``threshold * (1 - HYSTERESIS)``, so a
        figure flapping around the threshold notifies once; counts
        (:attr:`clears_at_once`) as soon as the condition no longer holds.
        """
        return self.clears_at_once or value <= threshold * (1 - HYSTERESIS)

    @abstractmethod
    def format(self, value: float, detail: str | None) -> str:
        """The figure in its unit: ``7.3%``, ``2.4s``, ``3``, ``KeyError, OSError``."""

    def history_terms(self, threshold: float) -> tuple[str, ...]:
        """Filter terms, added to the rule's, showing in the history what it counts."""
        return ()

    @abstractmethod
    async def measure(self, conn: Any, flt: TaskFilter, window: Window) -> Measurement:
        """The figure for the attempts matching `flt` created within `window`.

        Args:
            conn: a connection from :func:`taskmon.store.db.connect`.
            flt: the rule's filter (no since/until: the window is given).
            window: the window, and the lost rule's threshold.
        """


# -- thresholds and values --------------------------------------------------------------


def _whole(name: str, text: str) -> float:
    if not text.isdigit():
        raise ConditionError(f"{name} needs a whole number, not {text!r}")
    return float(int(text))


def _duration_ms(text: str) -> float:
    try:
        return parse_duration_ms(text)
    except FilterError as exc:
        raise ConditionError(str(exc)) from None


def _duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.1f}m"
    return f"{ms / 3_600_000:.1f}h"


def _ms_query(ms: float) -> str:
    return f"{ms / 1000:g}s" if ms >= 1000 and ms % 1000 == 0 else f"{ms:g}ms"


async def _decided(conn: Any, flt: TaskFilter, window: Window) -> tuple[int, float, int]:
    """``(decided attempts, failure rate, lost)`` of the window, from the stats queries."""
    from taskmon.store.stats import fetch_stats

    stats = await fetch_stats(
        conn, flt, since=window.start, until=window.end, lost_after_s=window.lost_after_s
    )
    decided = sum(stats.by_status[s] for s in ("success", "failed", "lost"))
    return decided, stats.failure_rate, stats.lost


# -- the metrics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailureRate(Metric):
    """(failed + lost) / (success + failed + lost), over the decided attempts."""

    def threshold(self, text: str) -> float:
        number = text.removesuffix("%").strip()
        try:
            percent = float(number) if text.endswith("%") else math.nan
        except ValueError:
            percent = math.nan
        if not 0 <= percent <= 100:
            raise ConditionError(f"{self.name} needs a percentage from 0% to 100%, not {text!r}")
        return percent / 100

    def format(self, value: float, detail: str | None) -> str:
        return f"{value * 100:.1f}%"

    def history_terms(self, threshold: float) -> tuple[str, ...]:
        return ("status:failed,lost",)

    async def measure(self, conn: Any, flt: TaskFilter, window: Window) -> Measurement:
        from taskmon.store.alerts import Measurement

        decided, rate, _ = await _decided(conn, flt, window)
        return Measurement(rate if decided else None, decided)


@dataclass(frozen=True)
class Lost(Metric):
    """Attempts lost (marked, or running too long), over the decided attempts."""

    clears_at_once: ClassVar[bool] = True

    def threshold(self, text: str) -> float:
        return _whole(self.name, text)

    def format(self, value: float, detail: str | None) -> str:
        return f"{value:.0f}"

    def history_terms(self, threshold: float) -> tuple[str, ...]:
        return ("status:lost",)

    async def measure(self, conn: Any, flt: TaskFilter, window: Window) -> Measurement:
        from taskmon.store.alerts import Measurement

        decided, _, lost = await _decided(conn, flt, window)
        return Measurement(float(lost), decided)


@dataclass(frozen=True)
class Percentile(Metric):
    """A quantile of the finished attempts' durations or queue waits, in ms.

    Attributes:
        lane: ``duration`` or ``queue_wait`` (the histograms of the rollups).
        q: the quantile, from 0 to 1.
    """

    lane: str = "duration"
    q: float = 0.95

    def threshold(self, text: str) -> float:
        return _duration_ms(text)

    def format(self, value: float, detail: str | None) -> str:
        return _duration(value)

    def history_terms(self, threshold: float) -> tuple[str, ...]:
        return (f"min_duration:{_ms_query(threshold)}",) if self.lane == "duration" else ()

    async def measure(self, conn: Any, flt: TaskFilter, window: Window) -> Measurement:
        from taskmon.store.alerts import percentile

        return await percentile(
            conn,
            flt,
            lane=self.lane,
            q=self.q,
            start=window.start,
            end=window.end,
            lost_after_s=window.lost_after_s,
        )


@dataclass(frozen=True)
class NewErrorType(Metric):
    """Error types of the window not seen in the :attr:`Window.baseline` before it.

    It takes no comparison: any new type holds.
    """

    clears_at_once: ClassVar[bool] = True

    def condition(self, op: str | None, value: str | None) -> tuple[str, float]:
        if op is not None:
            raise ConditionError(f"{self.name} takes no comparison")
        return "", 0.0

    def threshold(self, text: str) -> float:
        raise ConditionError(f"{self.name} takes no comparison")

    def holds(self, op: str, threshold: float, value: float) -> bool:
        return value > 0

    def format(self, value: float, detail: str | None) -> str:
        return detail or f"{value:.0f}"

    def history_terms(self, threshold: float) -> tuple[str, ...]:
        return ("status:failed,retrying,lost",)

    async def measure(self, conn: Any, flt: TaskFilter, window: Window) -> Measurement:
        from taskmon.store.alerts import new_error_types

        return await new_error_types(
            conn,
            flt,
            start=window.start,
            end=window.end,
            baseline=window.baseline,
            lost_after_s=window.lost_after_s,
        )


@dataclass(frozen=True)
class Backlog(Metric):
    """The deepest queue's latest depth among the queues sampled in the window."""

    counts_attempts: ClassVar[bool] = False

    def threshold(self, text: str) -> float:
        return _whole(self.name, text)

    def format(self, value: float, detail: str | None) -> str:
        return f"{value:.0f} waiting"

    async def measure(self, conn: Any, flt: TaskFilter, window: Window) -> Measurement:
        from taskmon.store.alerts import deepest_queue

        return await deepest_queue(conn, start=window.start, end=window.end)


@dataclass(frozen=True)
class WorkersAlive(Metric):
    """The workers whose heartbeat is fresh now: the one figure that alarms when low."""

    ops: ClassVar[tuple[str, ...]] = ("<", "<=")
    counts_attempts: ClassVar[bool] = False
    clears_at_once: ClassVar[bool] = True

    def comparison_hint(self) -> str:
        return self.example

    def threshold(self, text: str) -> float:
        return _whole(self.name, text)

    def format(self, value: float, detail: str | None) -> str:
        return f"{value:.0f} alive"

    async def measure(self, conn: Any, flt: TaskFilter, window: Window) -> Measurement:
        from taskmon.store.alerts import workers_alive

        return await workers_alive(conn)


@dataclass(frozen=True)
class Runs(Metric):
    """Attempts recorded in the window: alarms when a task that should run did not.

    ``runs < 1`` over ``1h`` with ``task:nightly_export`` says "it did not run";
    the absence rule for tasks whose schedule taskmon cannot read.
    """

    ops: ClassVar[tuple[str, ...]] = ("<", "<=")
    clears_at_once: ClassVar[bool] = True

    def comparison_hint(self) -> str:
        return self.example

    def threshold(self, text: str) -> float:
        return _whole(self.name, text)

    def format(self, value: float, detail: str | None) -> str:
        return f"{value:.0f} run{'' if value == 1 else 's'}"

    async def measure(self, conn: Any, flt: TaskFilter, window: Window) -> Measurement:
        from taskmon.store.alerts import Measurement
        from taskmon.store.stats import fetch_stats

        stats = await fetch_stats(
            conn, flt, since=window.start, until=window.end, lost_after_s=window.lost_after_s
        )
        # the count is the figure itself: "too few attempts" is what this rule is about
        return Measurement(float(stats.total), stats.total)


@dataclass(frozen=True)
class ScheduleMissed(Metric):
    """Expected fires of the user's schedules with no attempt within the grace period.

    A bare ``schedule_missed`` holds from one missed fire; ``filter`` takes
    ``task:`` to watch some schedules only. The schedules come from the
    scheduler given with ``--scheduler``.
    """

    clears_at_once: ClassVar[bool] = True
    filter_keys: ClassVar[tuple[str, ...] | None] = ("task",)
    needs_schedules: ClassVar[bool] = True

    def condition(self, op: str | None, value: str | None) -> tuple[str, float]:
        if op is None and value is None:
            return ">", 0.0
        return super().condition(op, value)

    def threshold(self, text: str) -> float:
        return _whole(self.name, text)

    def format(self, value: float, detail: str | None) -> str:
        fires = f"{value:.0f} missed fire{'' if value == 1 else 's'}"
        return f"{fires} ({detail})" if detail else fires

    async def measure(self, conn: Any, flt: TaskFilter, window: Window) -> Measurement:
        import fnmatch

        from taskmon.store.alerts import Measurement
        from taskmon.store.schedules import reports

        if window.schedules is None:
            raise ValueError(
                "schedule_missed needs the scheduler: give --scheduler module:variable "
                "(or TASKMON_SCHEDULER, or scheduler in the config file)"
            )
        watched = [
            s
            for s in window.schedules
            if not flt.tasks or any(fnmatch.fnmatchcase(s.task_name, t) for t in flt.tasks)
        ]
        judged = await reports(
            conn,
            watched,
            now=window.end,
            window_s=(window.end - window.start).total_seconds(),
            grace_s=window.grace_s,
            late_after_s=DEFAULT_LATE_AFTER_S,
            lost_after_s=window.lost_after_s,
        )
        missed = [r for r in judged if r.missed_count]
        names = tuple(dict.fromkeys(r.schedule.task_name for r in missed))
        return Measurement(float(sum(r.missed_count for r in missed)), len(judged), names)


@dataclass(frozen=True)
class PendingOldest(Metric):
    """How long the oldest task sent and not started has waited, in ms.

    Counts the ``pending`` rows a client with ``record_enqueued=True`` writes,
    however old (not only the window's); ``filter`` takes the attempt keys but
    ``status``. Clears at once when the oldest wait falls back under the threshold.
    """

    clears_at_once: ClassVar[bool] = True
    filter_keys: ClassVar[tuple[str, ...] | None] = tuple(
        k for k in _FILTER_KEYS_ALL if k not in ("since", "until", "status")
    )

    def threshold(self, text: str) -> float:
        return _duration_ms(text)

    def format(self, value: float, detail: str | None) -> str:
        waited = f"{_duration(value)} waiting"
        return f"{waited} ({detail})" if detail else waited

    def history_terms(self, threshold: float) -> tuple[str, ...]:
        return ("status:pending",)

    async def measure(self, conn: Any, flt: TaskFilter, window: Window) -> Measurement:
        from dataclasses import replace

        from taskmon.store.alerts import oldest_pending

        found = await oldest_pending(conn, flt, end=window.end, lost_after_s=window.lost_after_s)
        if found.value is None:
            return found
        return replace(found, value=found.value * 1000)


# -- the registry -----------------------------------------------------------------------------

METRICS: tuple[Metric, ...] = (
    FailureRate("failure_rate", "failure rate", "failure_rate > 5%"),
    Percentile("p50", "p50 duration", "p50 > 2s", lane="duration", q=0.5),
    Percentile("p95", "p95 duration", "p95 > 2s", lane="duration", q=0.95),
    Percentile("p99", "p99 duration", "p99 > 2s", lane="duration", q=0.99),
    Percentile("p95_queue_wait", "p95 queue wait", "p95_queue_wait > 30s", lane="queue_wait"),
    Lost("lost", "lost attempts", "lost > 0"),
    NewErrorType("new_error_type", "new error types", "new_error_type"),
    Backlog("backlog", "queue backlog", "backlog > 1000"),
    WorkersAlive("workers_alive", "workers alive", "workers_alive < 1"),
    Runs("runs", "runs", "runs < 1"),
    ScheduleMissed("schedule_missed", "missed scheduled fires", "schedule_missed"),
    PendingOldest("pending_oldest", "oldest unstarted task's wait", "pending_oldest > 5m"),
)
"""Every metric a rule can compare, in the order the errors list them."""

_BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
if len(_BY_NAME) != len(METRICS):  # pragma: no cover - a mistake in the tuple above
    raise RuntimeError("two alert metrics have the same name")


def metric_names() -> tuple[str, ...]:
    """The names ``when`` accepts, in registry order."""
    return tuple(_BY_NAME)


def get_metric(name: str) -> Metric:
    """The metric called `name`.

    Raises:
        KeyError: no metric has that name.
    """
    return _BY_NAME[name]


def known_conditions() -> str:
    """The conditions an error suggests: each metric's example, neighbours sharing one merged.

    ``p50 > 2s``, ``p95 > 2s`` and ``p99 > 2s`` read ``p50/p95/p99 > 2s``.
    """
    groups: list[tuple[list[str], str]] = []
    for m in METRICS:
        tail = m.example[len(m.name) :] if m.example.startswith(m.name) else None
        if tail and groups and groups[-1][1] == tail:
            groups[-1][0].append(m.name)
        elif tail:
            groups.append(([m.name], tail))
        else:
            groups.append(([m.example], ""))
    return ", ".join("/".join(names) + tail for names, tail in groups)


async def measure(
    conn: Any,
    metric: str,
    flt: TaskFilter,
    *,
    start: datetime,
    end: datetime,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
    baseline: timedelta = NEW_ERROR_BASELINE,
) -> Measurement:
    """The figure `metric` for the attempts matching `flt` created in ``[start, end)``.

    Args:
        conn: a connection from :func:`taskmon.store.db.connect`.
        metric: one of :func:`metric_names`.
        flt: the rule's filter (no since/until: the window is given); the
            metrics of workers and queues ignore it.
        start: the window's start.
        end: the window's end (the evaluation's now).
        lost_after_s: how long a running attempt without timeout may run
            before it counts as lost.
        baseline: how far back ``new_error_type`` looks for an error type.

    Raises:
        ValueError: `metric` is not one of :func:`metric_names`.
    """
    found = _BY_NAME.get(metric)
    if found is None:
        known = ", ".join(metric_names())
        raise ValueError(f"unknown alert metric {metric!r} (known: {known})")
    window = Window(start.astimezone(UTC), end.astimezone(UTC), lost_after_s, baseline)
    return await found.measure(conn, flt, window)
