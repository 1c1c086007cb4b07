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

The package, by role:

- :mod:`~taskmon.server.alerts.metrics`: the registry of what ``when`` can
  compare, one :class:`~taskmon.server.alerts.metrics.Metric` each (its
  threshold, how it clears, how it is read and worded); a new metric is one
  entry of :data:`~taskmon.server.alerts.metrics.METRICS`;
- :mod:`~taskmon.server.alerts.rules`: ``[[alerts]]`` tables checked into rules;
- :mod:`~taskmon.server.alerts.notifiers`: ``[notifiers.NAME]`` tables, and
  delivering to webhooks and commands;
- :mod:`~taskmon.server.alerts.runner`: the state machine, the evaluator and
  the hub's background runner.

No textual, typer or rich here: ``taskmon serve`` runs this next to its hub.
"""

from __future__ import annotations

from taskmon.server.alerts.metrics import (
    HYSTERESIS,
    METRICS,
    NEW_ERROR_BASELINE,
    Metric,
    Window,
    get_metric,
    known_conditions,
    measure,
    metric_names,
)
from taskmon.server.alerts.notifiers import Delivery, Notifier, payload
from taskmon.server.alerts.rules import (
    DEFAULT_INTERVAL_S,
    AlertConfig,
    Rule,
    load_alert_config,
    parse_alert_config,
)
from taskmon.server.alerts.runner import (
    AlertReader,
    AlertRunner,
    AlertStatus,
    Evaluator,
    SchedulesSource,
    advance,
    format_value,
    read_statuses,
)

__all__ = [
    "DEFAULT_INTERVAL_S",
    "HYSTERESIS",
    "METRICS",
    "NEW_ERROR_BASELINE",
    "AlertConfig",
    "AlertReader",
    "AlertRunner",
    "AlertStatus",
    "Delivery",
    "Evaluator",
    "Metric",
    "Notifier",
    "Rule",
    "SchedulesSource",
    "Window",
    "advance",
    "format_value",
    "get_metric",
    "known_conditions",
    "load_alert_config",
    "measure",
    "metric_names",
    "parse_alert_config",
    "payload",
    "read_statuses",
]
