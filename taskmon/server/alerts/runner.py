"""Evaluating the rules: the state machine, the evaluator, and the hub's runner.

Each rule moves ``ok → pending → firing → resolved`` (:func:`advance`): it
fires once its condition has held for ``for``, and resolves once the value has
stayed clear of it (below a hysteresis band for rates and durations, see
:meth:`~taskmon.server.alerts.metrics.Metric.clear`) for ``for`` again, so a
value flapping around the threshold notifies once. The state lives in the
database (:mod:`taskmon.store.alerts`): a restarted hub, or ``taskmon alerts
check`` run by cron, goes on from where the last check left it and never
notifies a transition twice.

No textual, typer or rich here: ``taskmon serve`` runs this next to its hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from taskmon.domain.display import span
from taskmon.domain.schedules import DEFAULT_GRACE_S, Schedule
from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S
from taskmon.server.alerts.metrics import NEW_ERROR_BASELINE, Window
from taskmon.server.alerts.notifiers import Delivery, deliver
from taskmon.server.alerts.rules import AlertConfig, Rule
from taskmon.store.migrations import UPGRADE_HINT

if TYPE_CHECKING:
    from taskmon.store.alerts import StoredState

SchedulesSource = Callable[[], Awaitable[Sequence[Schedule]]]
"""Reads the user's schedules for a check (``schedule_missed``); given by the caller."""

__all__ = [
    "AlertReader",
    "AlertRunner",
    "AlertStatus",
    "Evaluator",
    "SchedulesSource",
    "advance",
    "format_value",
    "read_statuses",
]

logger = logging.getLogger("taskmon.server.alerts")


# ---------------------------------------------------------------------------
# the state machine
# ---------------------------------------------------------------------------


def advance(
    rule: Rule, prev: StoredState, value: float | None, count: int, now: datetime
) -> tuple[StoredState, str | None]:
    """The next state of `rule` after a check, and the transition to notify.

    Args:
        rule: the rule.
        prev: its :class:`~taskmon.store.alerts.StoredState` before the check.
        value: the figure (None: no data).
        count: the attempts behind it.
        now: the check's time.

    Returns:
        The new state, and ``"firing"`` or ``"resolved"`` when the check moved
        the rule into one of them (each notified once), else None.
    """
    holds = rule.holds(value, count)
    st = replace(prev, value=value, count=count, checked_at=now, error=None)
    if prev.state in ("ok", "resolved"):
        if not holds:
            return st, None
        if rule.hold_for <= timedelta(0):
            return _fire(st, now), "firing"
        return replace(st, state="pending", since=now, clearing_since=None), None
    if prev.state == "pending":
        if not holds:
            return replace(st, state="ok", since=now), None
        if now - prev.since >= rule.hold_for:
            return _fire(st, now), "firing"
        return st, None
    # firing: resolves once the value has stayed clear for `for` (at once without one)
    if not rule.clear(value, count):
        return replace(st, clearing_since=None), None
    clearing = prev.clearing_since or now
    if now - clearing >= rule.hold_for:
        resolved = replace(st, state="resolved", since=now, resolved_at=now, clearing_since=None)
        return resolved, "resolved"
    return replace(st, clearing_since=clearing), None


def _fire(st: StoredState, now: datetime) -> StoredState:
    return replace(st, state="firing", since=now, fired_at=now, clearing_since=None)


# ---------------------------------------------------------------------------
# values in words
# ---------------------------------------------------------------------------


def format_value(rule: Rule, value: float | None, detail: str | None = None) -> str:
    """A figure in its metric's unit: ``7.3%``, ``2.4s``, ``3``, ``KeyError, OSError``."""
    if value is None:
        return "no data"
    return rule.spec.format(value, detail)


@dataclass(frozen=True)
class AlertStatus:
    """A rule with its state (after a check, or as stored).

    Attributes:
        rule: the rule.
        state: its :class:`~taskmon.store.alerts.StoredState` (None: never checked).
        transition: ``firing`` or ``resolved`` when this check made it so.
    """

    rule: Rule
    state: StoredState | None
    transition: str | None = None

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def state_name(self) -> str:
        """``ok``, ``pending``, ``firing``, ``resolved`` or ``unknown`` (never checked)."""
        return str(self.state.state) if self.state is not None else "unknown"

    @property
    def firing(self) -> bool:
        return self.state_name == "firing"

    def value_text(self) -> str:
        if self.state is None or self.state.checked_at is None:
            return "-"
        if self.state.error:
            return "error"
        return format_value(self.rule, self.state.value, self.state.detail)

    def text(self) -> str:
        """One line, the words a chat channel shows."""
        rule = self.rule
        words = rule.spec.words
        value = self.value_text()
        count = "" if self.state is None or self.state.count is None else self.state.count
        if self.state_name == "firing":
            return (
                f"[FIRING] {rule.name}: {words} {value}, rule {rule.describe()}; "
                f"{count} attempts counted"
            )
        if self.state_name == "resolved":
            return f"[RESOLVED] {rule.name}: {words} {value}, rule {rule.describe()}"
        return f"[{self.state_name.upper()}] {rule.name}: {words} {value}, rule {rule.describe()}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: what ``taskmon alerts --format json`` prints and notifiers receive."""
        st = self.state

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "name": self.rule.name,
            "state": self.state_name,
            "when": self.rule.when,
            "over": self.rule.over_text,
            "filter": self.rule.filter_text,
            "min_count": self.rule.min_count,
            "for": span(int(self.rule.hold_for.total_seconds())),
            "notify": list(self.rule.notify),
            "value": None if st is None else st.value,
            "value_text": self.value_text(),
            "count": None if st is None else st.count,
            "detail": None if st is None else st.detail,
            "since": iso(None if st is None else st.since),
            "fired_at": iso(None if st is None else st.fired_at),
            "resolved_at": iso(None if st is None else st.resolved_at),
            "checked_at": iso(None if st is None else st.checked_at),
            "error": None if st is None else st.error,
            "history": self.rule.history_query(),
        }


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Evaluator:
    """Checks every rule against the database and moves its stored state.

    Args:
        config: the rules and notifiers.
        lost_after_s: how long a running attempt without timeout may run
            before it counts as lost.
        schedules: reads the user's schedules, for ``schedule_missed`` rules
            (None: no scheduler given; such rules record that as their error).
    """

    def __init__(
        self,
        config: AlertConfig,
        *,
        lost_after_s: float = DEFAULT_LOST_AFTER_S,
        schedules: SchedulesSource | None = None,
    ) -> None:
        self.config = config
        self.lost_after_s = lost_after_s
        self.schedules = schedules

    async def _schedules(self) -> tuple[Sequence[Schedule] | None, str | None]:
        """The user's schedules for this check, read once (or why they cannot be)."""
        if self.schedules is None or not any(r.spec.needs_schedules for r in self.config.rules):
            return None, None
        try:
            return await self.schedules(), None
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:
            return None, f"cannot read the schedules: {type(exc).__name__}: {exc}"[:300]

    async def evaluate(
        self, conn: Any, now: datetime | None = None, *, save: bool = True
    ) -> list[AlertStatus]:
        """Check every rule at `now` (default: the clock); one status per rule, in order.

        A rule whose figure cannot be computed keeps its state and records the
        error; the others are checked all the same. With `save` false nothing
        is written (``alerts check --dry-run``): the states are what this
        check would make them.

        Raises:
            asyncpg.PostgresError, OSError: the state table cannot be read or written.
        """
        from taskmon.store.alerts import load_states, lock_state, save_state

        now = (now or _utcnow()).astimezone(UTC)
        stored = {} if save else await load_states(conn)
        out: list[AlertStatus] = []
        schedules, schedules_error = await self._schedules()
        for rule in self.config.rules:
            error: str | None = None
            value: float | None = None
            count = 0
            detail: str | None = None
            try:
                if rule.spec.needs_schedules and schedules_error:
                    raise RuntimeError(schedules_error)
                window = Window(
                    now - rule.over,
                    now,
                    self.lost_after_s,
                    NEW_ERROR_BASELINE,
                    schedules=schedules,
                    grace_s=DEFAULT_GRACE_S if rule.grace is None else rule.grace.total_seconds(),
                )
                m = await rule.spec.measure(conn, rule.filter, window)
                value, count, detail = m.value, m.count, ", ".join(m.detail) or None
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
            if not save:
                from taskmon.store.alerts import StoredState

                prev = stored.get(rule.name) or StoredState(rule.name, "ok", now)
                out.append(self._next(rule, prev, value, count, detail, error, now))
                continue
            async with conn.transaction():
                prev = await lock_state(conn, rule.name, now)
                status = self._next(rule, prev, value, count, detail, error, now)
                assert status.state is not None
                await save_state(conn, status.state)
            out.append(status)
            if status.transition == "firing":
                logger.warning("alert %s", status.text())
            elif status.transition == "resolved":
                logger.info("alert %s", status.text())
        return out

    @staticmethod
    def _next(
        rule: Rule,
        prev: StoredState,
        value: float | None,
        count: int,
        detail: str | None,
        error: str | None,
        now: datetime,
    ) -> AlertStatus:
        if error is not None:
            # no figure, no move: a database hiccup neither fires nor resolves a rule
            return AlertStatus(rule, replace(prev, checked_at=now, error=error))
        st, transition = advance(rule, prev, value, count, now)
        return AlertStatus(rule, replace(st, detail=detail), transition)

    async def notify(self, statuses: Sequence[AlertStatus]) -> list[Delivery]:
        """Send every transition in `statuses` to its rule's notifiers, all at once.

        Each delivery runs within its notifier's own timeout and retries, so
        one receiver that hangs or fails delays none of the others. Never
        raises for a receiver's failure: the :class:`Delivery` says it.
        """
        jobs = [
            deliver(self.config.notifiers[name], status)
            for status in statuses
            if status.transition is not None
            for name in status.rule.notify
            if name in self.config.notifiers
        ]
        return list(await asyncio.gather(*jobs))


async def read_statuses(conn: Any, config: AlertConfig) -> list[AlertStatus]:
    """Every rule with its stored state, as the last check left it (no evaluation)."""
    from taskmon.store.alerts import load_states

    states = await load_states(conn)
    return [AlertStatus(rule, states.get(rule.name)) for rule in config.rules]


# ---------------------------------------------------------------------------
# the hub's background task
# ---------------------------------------------------------------------------


class AlertRunner:
    """Evaluates the rules every `interval` seconds, next to a hub, until stopped.

    It never stops the hub: a failed evaluation (the database down, say) is
    logged once per distinct error and tried again at the next tick, and
    notifications run in tasks of their own, so a slow receiver never delays
    the next check.

    Args:
        dsn: the database to evaluate against.
        config: the rules and notifiers.
        interval: seconds between checks (default: the config's).
        lost_after_s: see :class:`Evaluator`.
        schedules: see :class:`Evaluator`.
        clock: now (tests).
    """

    def __init__(
        self,
        dsn: str,
        config: AlertConfig,
        *,
        interval: float | None = None,
        lost_after_s: float = DEFAULT_LOST_AFTER_S,
        schedules: SchedulesSource | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.dsn = dsn
        self.evaluator = Evaluator(config, lost_after_s=lost_after_s, schedules=schedules)
        self.interval = interval if interval is not None else config.interval_s
        self.clock = clock
        self.checks = 0
        """Completed checks (tests wait on it)."""
        self.failed_checks = 0
        """Checks that could not run (the database unreachable, say)."""
        self.deliveries: list[Delivery] = []
        """Every delivery made so far, newest last (bounded to the last 1000)."""
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._last_error: str | None = None

    async def start(self) -> None:
        """Start checking in the background (the first check at once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="taskmon-alerts")

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop checking; deliveries under way get `grace` seconds to finish."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._sends:
            _, pending = await asyncio.wait(set(self._sends), timeout=grace)
            for send in pending:
                send.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._close()

    async def check(self) -> list[AlertStatus]:
        """One check now; its notifications are sent in the background."""
        from taskmon.store.db import connect

        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self.dsn, command_timeout=60)
        statuses = await self.evaluator.evaluate(self._conn, self.clock())
        if any(s.transition for s in statuses):
            send = asyncio.create_task(self._send(statuses), name="taskmon-alerts-notify")
            self._sends.add(send)
            send.add_done_callback(self._sends.discard)
        self.checks += 1
        return statuses

    async def _send(self, statuses: list[AlertStatus]) -> None:
        self.deliveries.extend(await self.evaluator.notify(statuses))
        del self.deliveries[:-1000]

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(max(self.interval * 4, 60.0)):
                    await self.check()
                if self._last_error is not None:
                    logger.info("alerts: checking again")
                self._last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed_checks += 1
                text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                if type(exc).__name__ == "UndefinedTableError":
                    text += f" ({UPGRADE_HINT})"
                if text != self._last_error:
                    logger.warning("alerts: cannot check the rules: %s", text)
                self._last_error = text
                await self._close()
            await asyncio.sleep(self.interval)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5.0)


class AlertReader:
    """The stored states of the rules, for a viewer (the TUI): reads, never evaluates.

    ``taskmon serve`` or cron does the checking; a viewer only shows what it
    found, so opening a TUI never notifies anybody.

    Args:
        dsn: the database.
        config: the rules.
    """

    def __init__(self, dsn: str, config: AlertConfig) -> None:
        self.dsn = dsn
        self.config = config
        self._conn: Any = None

    async def statuses(self) -> list[AlertStatus]:
        """Every rule with its stored state (a new connection after a failure)."""
        from taskmon.store.db import connect

        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self.dsn, command_timeout=30)
        try:
            return await read_statuses(self._conn, self.config)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5.0)
