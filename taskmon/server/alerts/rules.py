"""Alert rules: the ``[[alerts]]`` tables of the config file, checked into :class:`Rule`.

What a ``when`` may compare, and how its threshold is written, is the
registry's (:mod:`taskmon.server.alerts.metrics`); this module reads the
rest of a rule (window, filter, ``min_count``, ``for``, notifiers) and says
in one line what is wrong with a bad one.

No textual, typer or rich here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from taskmon.config import ConfigError, config_path, config_table
from taskmon.domain.filters import KEYS, FilterError, TaskFilter, parse, parse_window
from taskmon.server.alerts.metrics import (
    ConditionError,
    Metric,
    get_metric,
    known_conditions,
    metric_names,
)
from taskmon.server.alerts.notifiers import Notifier, parse_notifier

__all__ = [
    "DEFAULT_INTERVAL_S",
    "AlertConfig",
    "Rule",
    "load_alert_config",
    "parse_alert_config",
]

DEFAULT_INTERVAL_S = 15.0
"""How often ``taskmon serve`` evaluates the rules (config key ``alert_interval``)."""

_RULE_KEYS = ("name", "when", "over", "filter", "min_count", "for", "grace", "notify")
_WHEN_RE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:(>=|>|<=|<|==|=)\s*(\S.*?))?\s*")
_FILTER_KEYS = tuple(k for k in KEYS if k not in ("since", "until"))


@dataclass(frozen=True)
class Rule:
    """One ``[[alerts]]`` entry, checked.

    Attributes:
        name: unique among the rules; the key of its stored state.
        metric: what is compared, a name of the registry
            (:func:`~taskmon.server.alerts.metrics.metric_names`).
        op: ``>`` or ``>=`` (``<``, ``<=`` for ``workers_alive``; empty for
            ``new_error_type``).
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
        grace: ``schedule_missed`` only: how long after its time a fire may
            start before it counts as missed (None: the default, 5m).
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
    grace: timedelta | None = None

    @property
    def spec(self) -> Metric:
        """The registry's :class:`~taskmon.server.alerts.metrics.Metric` of :attr:`metric`."""
        return get_metric(self.metric)

    def holds(self, value: float | None, count: int) -> bool:
        """Whether the condition holds for this figure."""
        if value is None or count < self.min_count:
            return False
        return self.spec.holds(self.op, self.threshold, value)

    def clear(self, value: float | None, count: int) -> bool:
        """Whether a firing rule's figure is back below the hysteresis band.

        Counts (lost attempts, new error types, workers alive) clear as soon as
        the condition no longer holds; rates and durations only below
        ``threshold * (1 - HYSTERESIS)`` (the metric's
        :meth:`~taskmon.server.alerts.metrics.Metric.clear`). Too few attempts,
        or none, clear too: there is nothing left to alert about.
        """
        if self.holds(value, count):
            return False
        if value is None or count < self.min_count:
            return True
        return self.spec.clear(self.threshold, value)

    def history_query(self) -> str:
        """The history filter (filter language) showing what this rule counts."""
        parts = [self.filter_text.strip()] if self.filter_text.strip() else []
        parts.extend(self.spec.history_terms(self.threshold))
        parts.append(f"since:{self.over_text}")
        return " ".join(parts)

    def describe(self) -> str:
        """The condition in words: ``failure_rate > 5% over 15m (task:billing*)``."""
        text = f"{self.when} over {self.over_text}"
        if self.filter_text.strip():
            text += f" ({self.filter_text.strip()})"
        return text


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
        notifiers[name] = parse_notifier(name, table, source)
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
    if not metric.counts_attempts and filter_text.strip():
        raise ConfigError(
            f"{where}: filter: {metric.name} counts workers and queues, not attempts; "
            "remove the filter"
        )
    try:
        flt = parse(filter_text, keys=metric.filter_keys or _FILTER_KEYS)
    except FilterError as exc:
        raise ConfigError(f"{where}: filter: {exc}") from None
    grace_text = text("grace", False)
    grace: timedelta | None = None
    if grace_text is not None:
        if not metric.needs_schedules:
            raise ConfigError(f"{where}: grace: only schedule_missed takes a grace period")
        try:
            grace = (
                timedelta(0)
                if grace_text.strip() in ("0", "0s")
                else parse_window(grace_text.strip())
            )
        except FilterError as exc:
            raise ConfigError(f"{where}: grace: {exc}") from None
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
        metric=metric.name,
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
        grace=grace,
    )


def _condition(when: str, where: str) -> tuple[Metric, str, float]:
    """``(metric, op, threshold)`` of a ``when`` text; thresholds in the metric's unit."""
    match = _WHEN_RE.fullmatch(when)
    if match is None:
        raise ConfigError(f"{where}: when {when!r} is not a condition (use {known_conditions()})")
    name, op, value = match.group(1).lower(), match.group(2), match.group(3)
    if name not in metric_names():
        raise ConfigError(f"{where}: when: unknown figure {name!r} (use {known_conditions()})")
    metric = get_metric(name)
    try:
        op, threshold = metric.condition(op, value)
    except ConditionError as exc:
        raise ConfigError(f"{where}: when: {exc}") from None
    return metric, op, threshold
