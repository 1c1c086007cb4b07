"""Alert rules: read from the config file, evaluated against the database, notified.

A rule compares one figure of a recent window with a threshold::

    [[alerts]]
    name = "billing failures"
    when = "failure_rate > 5%"
    over = "15m"
    filter = "task:billing*"
    min_count = 20
    for = "2m"
    notify = ["ops"]

    [notifiers.ops]
    webhook = "https://hooks.example.com/T000/B000"

Each rule moves ``ok → pending → firing → resolved`` (:func:`advance`): it
fires once its condition has held for ``for``, and resolves once the value has
stayed below a hysteresis band (:data:`HYSTERESIS` under the threshold) for
``for`` again, so a value flapping around the threshold notifies once. The
state lives in the database (:mod:`taskmon.store.alerts`): a restarted hub, or
``taskmon alerts check`` run by cron, goes on from where the last check left it
and never notifies a transition twice.

Notifiers (webhooks, commands) run concurrently, each within its own timeout;
one that fails or hangs never delays the others, nor the hub that evaluates.

No textual, typer or rich here: ``taskmon serve`` runs this next to its hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import signal
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from taskmon.config import ConfigError, config_path, config_table
from taskmon.domain.filters import (
    KEYS,
    FilterError,
    TaskFilter,
    parse,
    parse_duration_ms,
    parse_window,
)
from taskmon.domain.version import __version__

if TYPE_CHECKING:
    from taskmon.store.alerts import StoredState

__all__ = [
    "DEFAULT_INTERVAL_S",
    "HYSTERESIS",
    "AlertConfig",
    "AlertReader",
    "AlertRunner",
    "AlertStatus",
    "Delivery",
    "Evaluator",
    "Notifier",
    "Rule",
    "advance",
    "format_value",
    "load_alert_config",
    "parse_alert_config",
    "read_statuses",
]

logger = logging.getLogger("taskmon.server.alerts")

DEFAULT_INTERVAL_S = 15.0
"""How often ``taskmon serve`` evaluates the rules (config key ``alert_interval``)."""
HYSTERESIS = 0.1
"""A firing rate or duration rule clears only below this fraction under its threshold."""
NEW_ERROR_BASELINE = timedelta(days=7)
"""``new_error_type``: an error type not seen in this long before the window is new."""

_RULE_KEYS = ("name", "when", "over", "filter", "min_count", "for", "notify")
_NOTIFIER_KEYS = ("webhook", "command", "timeout", "retries", "backoff")
_WHEN_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:(>=|>|<=|<|==|=)\s*(\S.*?))?\s*")
_WORKER_METRICS = ("backlog", "workers_alive")
"""Figures of the workers' heartbeats and queue samples, not of attempts: no filter."""
_PERCENTILES = ("p50", "p95", "p99", "p95_queue_wait")
_KNOWN_WHEN = (
    "failure_rate > 5%, p95 > 2s, p50/p99 > 2s, p95_queue_wait > 30s, lost > 0, new_error_type, "
    "backlog > 1000, workers_alive < 1"
)
_FILTER_KEYS = tuple(k for k in KEYS if k not in ("since", "until"))
# the words of a metric in messages
_METRIC_WORDS = {
    "failure_rate": "failure rate",
    "lost": "lost attempts",
    "p50": "p50 duration",
    "p95": "p95 duration",
    "p99": "p99 duration",
    "p95_queue_wait": "p95 queue wait",
    "new_error_type": "new error types",
    "backlog": "queue backlog",
    "workers_alive": "workers alive",
}


# ---------------------------------------------------------------------------
# rules and notifiers
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One ``[[alerts]]`` entry, checked.

    Attributes:
        name: unique among the rules; the key of its stored state.
        metric: what is compared (see :data:`taskmon.store.alerts.METRICS`).
        op: ``>`` or ``>=`` (empty for ``new_error_type``).
        threshold: a rate from 0 to 1, milliseconds, or a count.
        when: the condition as written.
        over: the window, ending at each check.
        over_text: the window as written.
        filter: which attempts count.
        filter_text: the filter as written.
        min_count: below this many attempts the condition does not hold.
        hold_for: how long the condition must hold before the rule fires (and
            stay clear before it resolves); ``for`` in the file.
        notify: the names of its notifiers.
    """

    name: str
    metric: str
    op: str
    threshold: float
    when: str
    over: timedelta
    over_text: str
    filter: TaskFilter = field(default_factory=TaskFilter)
    filter_text: str = ""
    min_count: int = 0
    hold_for: timedelta = timedelta(0)
    notify: tuple[str, ...] = ()

    def holds(self, value: float | None, count: int) -> bool:
        """Whether the condition holds for this figure."""
        if value is None or count < self.min_count:
            return False
        if self.metric == "new_error_type":
            return value > 0
        if self.op == "<":
            return value < self.threshold
        if self.op == "<=":
            return value <= self.threshold
        return value >= self.threshold if self.op == ">=" else value > self.threshold

    def clear(self, value: float | None, count: int) -> bool:
        """Whether a firing rule's figure is back below the hysteresis band.

        Counts (lost attempts, new error types) clear as soon as the condition
        no longer holds; rates and durations only below ``threshold * (1 -
        HYSTERESIS)``. Too few attempts, or none, clear too: there is nothing
        left to alert about.
        """
        if self.holds(value, count):
            return False
        if value is None or count < self.min_count:
            return True
        if self.metric in ("lost", "new_error_type", "workers_alive"):
            return True
        return value <= self.threshold * (1 - HYSTERESIS)

    def history_query(self) -> str:
        """The history filter (filter language) showing what this rule counts."""
        parts = [self.filter_text.strip()] if self.filter_text.strip() else []
        if self.metric == "failure_rate":
            parts.append("status:failed,lost")
        elif self.metric == "lost":
            parts.append("status:lost")
        elif self.metric == "new_error_type":
            parts.append("status:failed,retrying,lost")
        elif self.metric in ("p50", "p95", "p99"):
            parts.append(f"min_duration:{_ms_query(self.threshold)}")
        parts.append(f"since:{self.over_text}")
        return " ".join(parts)

    def describe(self) -> str:
        """The condition in words: ``failure_rate > 5% over 15m (task:billing*)``."""
        text = f"{self.when} over {self.over_text}"
        if self.filter_text.strip():
            text += f" ({self.filter_text.strip()})"
        return text


def _ms_query(ms: float) -> str:
    return f"{ms / 1000:g}s" if ms >= 1000 and ms % 1000 == 0 else f"{ms:g}ms"


@dataclass(frozen=True)
class Notifier:
    """One ``[notifiers.NAME]`` table: a webhook or a command.

    Attributes:
        name: its name in ``notify = [...]``.
        webhook: an http(s) URL receiving a JSON POST with a ``text`` field.
        command: a shell command receiving the JSON on standard input.
        timeout: seconds one attempt may take.
        retries: further attempts of a webhook after a failure (5xx, 429, a
            timeout or a connection error); a command runs once.
        backoff: seconds before the first retry, doubled before each next one.
    """

    name: str
    webhook: str | None = None
    command: str | None = None
    timeout: float = 10.0
    retries: int = 3
    backoff: float = 1.0


@dataclass(frozen=True)
class AlertConfig:
    """The rules and notifiers of a config file, plus how often the hub evaluates."""

    rules: tuple[Rule, ...] = ()
    notifiers: Mapping[str, Notifier] = field(default_factory=dict)
    interval_s: float = DEFAULT_INTERVAL_S


def load_alert_config() -> AlertConfig:
    """The alert rules of the config file (``--config``, ``TASKMON_CONFIG`` or the default).

    Raises:
        ConfigError: the file is wrong, or a rule or notifier is; one line
            naming the rule (or notifier) and the problem.
    """
    return parse_alert_config(config_table(), f"config file {config_path()}")


def parse_alert_config(data: Mapping[str, Any], source: str = "config") -> AlertConfig:
    """Check the ``alerts``, ``notifiers`` and ``alert_interval`` keys of a parsed config.

    Args:
        data: the whole config table.
        source: what to name in messages (``config file /path``).

    Raises:
        ConfigError: one line: `source`, the rule or notifier, the problem.
    """
    notifiers: dict[str, Notifier] = {}
    for name, table in dict(data.get("notifiers") or {}).items():
        notifiers[name] = _notifier(name, table, source)
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, table in enumerate(list(data.get("alerts") or [])):
        rule = _rule(i, table, notifiers, source)
        if rule.name in seen:
            raise ConfigError(f"{source}: alert {rule.name!r}: the name is used by another rule")
        seen.add(rule.name)
        rules.append(rule)
    interval = data.get("alert_interval", DEFAULT_INTERVAL_S)
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not math.isfinite(interval)
        or interval < 1
    ):
        raise ConfigError(f"{source}: alert_interval must be a number of seconds >= 1")
    return AlertConfig(tuple(rules), notifiers, float(interval))


def _notifier(name: str, table: Mapping[str, Any], source: str) -> Notifier:
    where = f"{source}: notifier {name!r}"
    for key in table:
        if key not in _NOTIFIER_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(_NOTIFIER_KEYS)})")
    webhook, command = table.get("webhook"), table.get("command")
    if (webhook is None) == (command is None):
        raise ConfigError(f'{where}: needs exactly one of webhook = "URL" or command = "..."')
    if webhook is not None:
        if not isinstance(webhook, str):
            raise ConfigError(f"{where}: webhook must be a string (an http or https URL)")
        parts = urlsplit(webhook)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}: webhook {webhook!r} is not an http:// or https:// URL")
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise ConfigError(f"{where}: command must be a non-empty string")
    numbers: dict[str, float] = {}
    for key, default, low in (("timeout", 10.0, 0.001), ("backoff", 1.0, 0.0)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number of seconds")
        if not math.isfinite(value) or value < low:
            raise ConfigError(f"{where}: {key} must be a number of seconds above {low:g}")
        numbers[key] = float(value)
    retries = table.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 20:
        raise ConfigError(f"{where}: retries must be a whole number from 0 to 20")
    return Notifier(name, webhook, command, numbers["timeout"], retries, numbers["backoff"])


def _rule(
    index: int, table: Mapping[str, Any], notifiers: Mapping[str, Notifier], source: str
) -> Rule:
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f'{source}: alerts[{index}] needs a name = "..." (a non-empty string)')
    where = f"{source}: alert {name!r}"
    for key in table:
        if key not in _RULE_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(_RULE_KEYS)})")

    def text(key: str, required: bool) -> str | None:
        value = table.get(key)
        if value is None:
            if required:
                raise ConfigError(f'{where}: needs {key} = "..."')
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string")
        return value

    when = text("when", True)
    assert when is not None
    metric, op, threshold = _condition(when, where)
    over_text = text("over", True)
    assert over_text is not None
    try:
        over = parse_window(over_text.strip())
    except FilterError as exc:
        raise ConfigError(f"{where}: over: {exc}") from None
    filter_text = text("filter", False) or ""
    if metric in _WORKER_METRICS and filter_text.strip():
        raise ConfigError(
            f"{where}: filter: {metric} counts workers and queues, not attempts; remove the filter"
        )
    try:
        flt = parse(filter_text, keys=_FILTER_KEYS)
    except FilterError as exc:
        raise ConfigError(f"{where}: filter: {exc}") from None
    for_text = text("for", False)
    hold_for = timedelta(0)
    if for_text is not None and for_text.strip() not in ("", "0", "0s"):
        try:
            hold_for = parse_window(for_text.strip())
        except FilterError as exc:
            raise ConfigError(f"{where}: for: {exc}") from None
    min_count = table.get("min_count", 0)
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
        raise ConfigError(f"{where}: min_count must be a whole number >= 0")
    notify = table.get("notify", [])
    if isinstance(notify, str):
        notify = [notify]
    if not isinstance(notify, list) or not all(isinstance(n, str) for n in notify):
        raise ConfigError(f"{where}: notify must be a list of notifier names")
    for target in notify:
        if target not in notifiers:
            known = ", ".join(notifiers) or "none are configured"
            raise ConfigError(
                f"{where}: notify: no notifier {target!r} ([notifiers.{target}]; known: {known})"
            )
    return Rule(
        name=name,
        metric=metric,
        op=op,
        threshold=threshold,
        when=" ".join(when.split()),
        over=over,
        over_text=over_text.strip(),
        filter=flt,
        filter_text=filter_text,
        min_count=min_count,
        hold_for=hold_for,
        notify=tuple(dict.fromkeys(notify)),
    )


def _condition(when: str, where: str) -> tuple[str, str, float]:
    """``(metric, op, threshold)`` of a ``when`` text; thresholds in the metric's unit."""
    match = _WHEN_RE.fullmatch(when)
    if match is None:
        raise ConfigError(f"{where}: when {when!r} is not a condition (use {_KNOWN_WHEN})")
    metric, op, value = match.group(1).lower(), match.group(2), match.group(3)
    if metric == "new_error_type":
        if op is not None:
            raise ConfigError(f"{where}: when: new_error_type takes no comparison")
        return metric, "", 0.0
    if metric not in ("failure_rate", "lost", *_PERCENTILES, *_WORKER_METRICS):
        raise ConfigError(f"{where}: when: unknown figure {metric!r} (use {_KNOWN_WHEN})")
    if op is None or value is None:
        example = "workers_alive < 1" if metric == "workers_alive" else f"{metric} > ..."
        raise ConfigError(f"{where}: when: {metric} needs a comparison, e.g. {example}")
    value = value.strip()
    if metric == "workers_alive":
        # the one figure that alarms when low
        if op not in ("<", "<="):
            raise ConfigError(f"{where}: when: {op!r} is not supported (use < or <=)")
        if not value.isdigit():
            raise ConfigError(f"{where}: when: workers_alive needs a whole number, not {value!r}")
        return metric, op, float(int(value))
    if op not in (">", ">="):
        raise ConfigError(f"{where}: when: {op!r} is not supported (use > or >=)")
    if metric == "failure_rate":
        number = value.removesuffix("%").strip()
        try:
            percent = float(number) if value.endswith("%") else math.nan
        except ValueError:
            percent = math.nan
        if not 0 <= percent <= 100:
            raise ConfigError(
                f"{where}: when: failure_rate needs a percentage from 0% to 100%, not {value!r}"
            )
        return metric, op, percent / 100
    if metric in ("lost", "backlog"):
        if not value.isdigit():
            raise ConfigError(f"{where}: when: {metric} needs a whole number, not {value!r}")
        return metric, op, float(int(value))
    try:
        return metric, op, parse_duration_ms(value)
    except FilterError as exc:
        raise ConfigError(f"{where}: when: {exc}") from None


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
    """A figure in its unit: ``7.3%``, ``2.4s``, ``3``, ``KeyError, OSError``."""
    if value is None:
        return "no data"
    if rule.metric == "failure_rate":
        return f"{value * 100:.1f}%"
    if rule.metric == "lost":
        return f"{value:.0f}"
    if rule.metric == "backlog":
        return f"{value:.0f} waiting"
    if rule.metric == "workers_alive":
        return f"{value:.0f} alive"
    if rule.metric == "new_error_type":
        return detail or f"{value:.0f}"
    return _duration(value)


def _duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.1f}m"
    return f"{ms / 3_600_000:.1f}h"


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
        words = _METRIC_WORDS[rule.metric]
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
            "for": _seconds_text(self.rule.hold_for),
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


def _seconds_text(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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
    """

    def __init__(self, config: AlertConfig, *, lost_after_s: float = 3600.0) -> None:
        self.config = config
        self.lost_after_s = lost_after_s

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
        from taskmon.store.alerts import load_states, lock_state, measure, save_state

        now = (now or _utcnow()).astimezone(UTC)
        stored = {} if save else await load_states(conn)
        out: list[AlertStatus] = []
        for rule in self.config.rules:
            error: str | None = None
            value: float | None = None
            count = 0
            detail: str | None = None
            try:
                m = await measure(
                    conn,
                    rule.metric,
                    rule.filter,
                    start=now - rule.over,
                    end=now,
                    lost_after_s=self.lost_after_s,
                    baseline=NEW_ERROR_BASELINE,
                )
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
            _deliver(self.config.notifiers[name], status)
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
# notifications
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """How one notification went.

    Attributes:
        notifier: the notifier's name.
        rule: the rule's name.
        transition: ``firing`` or ``resolved``.
        ok: delivered (a 2xx answer; a command exiting 0).
        attempts: how many tries it took (or were made).
        error: the last failure, if it was not delivered.
        seconds: how long it took in all.
    """

    notifier: str
    rule: str
    transition: str
    ok: bool
    attempts: int
    error: str | None
    seconds: float


def payload(status: AlertStatus) -> dict[str, Any]:
    """The JSON a notifier receives: ``text`` (Slack-compatible), ``alert`` (the details)."""
    return {
        "text": status.text(),
        "alert": {**status.to_dict(), "transition": status.transition},
    }


async def _deliver(notifier: Notifier, status: AlertStatus) -> Delivery:
    started = time.monotonic()
    body = json.dumps(payload(status), ensure_ascii=False).encode()
    transition = status.transition or ""
    if notifier.command is not None:
        ok, error = await _run_command(notifier.command, body, notifier.timeout)
        attempts = 1
    else:
        assert notifier.webhook is not None
        ok, error, attempts = False, None, 0
        for attempt in range(notifier.retries + 1):
            if attempt:
                await asyncio.sleep(notifier.backoff * 2 ** (attempt - 1))
            attempts += 1
            ok, error, retry = await _post_once(notifier.webhook, body, notifier.timeout)
            if ok or not retry:
                break
    seconds = time.monotonic() - started
    if not ok:
        logger.warning(
            "notifier %s could not deliver alert %r (%s) after %d attempt(s): %s",
            notifier.name,
            status.name,
            transition,
            attempts,
            error,
        )
    return Delivery(notifier.name, status.name, transition, ok, attempts, error, seconds)


async def _post_once(url: str, body: bytes, timeout: float) -> tuple[bool, str | None, bool]:
    """One POST: ``(delivered, error, worth retrying)``."""
    try:
        async with asyncio.timeout(timeout):
            code = await _post(url, body)
    except TimeoutError:
        return False, f"no answer within {timeout:g}s", True
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        return False, f"{type(exc).__name__}: {exc}", True
    if 200 <= code < 300:
        return True, None, False
    # a receiver refusing the request will refuse it again; an overloaded one may not
    return False, f"HTTP {code}", code >= 500 or code in (408, 429)


async def _post(url: str, body: bytes) -> int:
    """POST `body` as JSON to `url` over HTTP/1.1; returns the status code."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    context = ssl.create_default_context() if secure else None
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=host if secure else None
    )
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        authority = parts.netloc.rpartition("@")[2]
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {authority}\r\n"
            f"User-Agent: taskmon/{__version__}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        line = await reader.readline()
        fields = line.decode("latin-1").split()
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise ValueError(f"not an HTTP response: {line[:60]!r}")
        return int(fields[1])
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _run_command(command: str, body: bytes, timeout: float) -> tuple[bool, str | None]:
    """Run `command` in a shell with `body` on stdin; killed (with its children) at `timeout`."""
    try:
        proc = await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout kills what it started
        )
    except OSError as exc:
        return False, f"cannot start: {exc}"
    try:
        async with asyncio.timeout(timeout):
            _, err = await proc.communicate(body)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False, f"killed after {timeout:g}s"
    if proc.returncode == 0:
        return True, None
    last = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
    return False, f"exit status {proc.returncode}: {last[0][:200]}".rstrip(": ")


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
        clock: now (tests).
    """

    def __init__(
        self,
        dsn: str,
        config: AlertConfig,
        *,
        interval: float | None = None,
        lost_after_s: float = 3600.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.dsn = dsn
        self.evaluator = Evaluator(config, lost_after_s=lost_after_s)
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
                    text += " (run `taskmon db upgrade`)"
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
