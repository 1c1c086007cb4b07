"""Alert rules in the config file: what is accepted, and one line naming the rule for the rest."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
from test_cli_errors import one_error_line, taskmon

from taskmon.config import ConfigError
from taskmon.domain.filters import TaskFilter
from taskmon.server.alerts import (
    DEFAULT_INTERVAL_S,
    AlertConfig,
    Rule,
    format_value,
    parse_alert_config,
)

ISSUE_EXAMPLE = """
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
"""


def load(text: str) -> AlertConfig:
    return parse_alert_config(tomllib.loads(text), "config file x.toml")


def test_the_issue_example_is_read_as_written() -> None:
    # when
    config = load(ISSUE_EXAMPLE)
    # then
    (rule,) = config.rules
    assert (rule.name, rule.metric, rule.op, rule.threshold) == (
        "billing failures",
        "failure_rate",
        ">",
        0.05,
    )
    assert rule.over == timedelta(minutes=15) and rule.hold_for == timedelta(minutes=2)
    assert rule.filter == TaskFilter(tasks=("billing*",)) and rule.min_count == 20
    assert rule.notify == ("ops",) and config.interval_s == DEFAULT_INTERVAL_S
    ops = config.notifiers["ops"]
    assert ops.webhook == "https://hooks.example.com/T000/B000" and ops.command is None
    assert rule.history_query() == "task:billing* status:failed,lost since:15m"


@pytest.mark.parametrize(
    ("when", "metric", "op", "threshold"),
    [
        ("failure_rate > 5%", "failure_rate", ">", 0.05),
        ("failure_rate >= 12.5 %", "failure_rate", ">=", 0.125),
        ("p95 > 2s", "p95", ">", 2000.0),
        ("p50 > 500ms", "p50", ">", 500.0),
        ("p99 >= 1.5s", "p99", ">=", 1500.0),
        ("p95_queue_wait > 30s", "p95_queue_wait", ">", 30_000.0),
        ("lost > 0", "lost", ">", 0.0),
        ("new_error_type", "new_error_type", "", 0.0),
    ],
)
def test_every_condition_parses(when: str, metric: str, op: str, threshold: float) -> None:
    config = load(f'[[alerts]]\nname = "r"\nwhen = "{when}"\nover = "10m"\n')
    rule = config.rules[0]
    assert (rule.metric, rule.op, rule.threshold) == (metric, op, threshold)
    assert rule.notify == () and rule.hold_for == timedelta(0)


RULE = '[[alerts]]\nname = "slow"\nwhen = "p95 > 2s"\nover = "1h"\n'
BAD = [
    ('[[alerts]]\nwhen = "p95 > 2s"\nover = "1h"\n', "alerts[0] needs a name"),
    (RULE + 'colour = "red"\n', "alert 'slow': unknown key 'colour'"),
    ('[[alerts]]\nname = "slow"\nover = "1h"\n', "alert 'slow': needs when"),
    (RULE.replace("p95 > 2s", "p97 > 2s"), "alert 'slow': when: unknown figure 'p97'"),
    (RULE.replace("p95 > 2s", "p95 > fast"), "alert 'slow': when: 'fast' is not a duration"),
    (RULE.replace("p95 > 2s", "p95 < 2s"), "alert 'slow': when: '<' is not supported"),
    (RULE.replace("p95 > 2s", "p95"), "alert 'slow': when: p95 needs a comparison"),
    (RULE.replace("p95 > 2s", "failure_rate > 5"), "failure_rate needs a percentage"),
    (RULE.replace("p95 > 2s", "failure_rate > 150%"), "from 0% to 100%, not '150%'"),
    (RULE.replace("p95 > 2s", "lost > 1.5"), "lost needs a whole number"),
    (RULE.replace("p95 > 2s", "new_error_type > 1"), "new_error_type takes no comparison"),
    (RULE.replace("p95 > 2s", "backlog > many"), "backlog needs a whole number, not 'many'"),
    (RULE.replace("p95 > 2s", "backlog < 10"), "alert 'slow': when: '<' is not supported"),
    (RULE.replace("p95 > 2s", "workers_alive > 1"), "when: '>' is not supported (use < or <=)"),
    (RULE.replace("p95 > 2s", "workers_alive"), "e.g. workers_alive < 1"),
    (
        RULE.replace("p95 > 2s", "workers_alive < 1") + 'filter = "task:a"\n',
        "filter: workers_alive counts workers and queues, not attempts",
    ),
    (RULE.replace('"1h"', '"an hour"'), "alert 'slow': over: 'an hour' is not a duration"),
    ('[[alerts]]\nname = "slow"\nwhen = "p95 > 2s"\n', "alert 'slow': needs over"),
    (RULE + 'filter = "colour:red"\n', "alert 'slow': filter: unknown filter key 'colour'"),
    (RULE + 'filter = "since:1d"\n', "alert 'slow': filter: since: has no effect here"),
    (RULE + 'for = "soon"\n', "alert 'slow': for: 'soon' is not a duration"),
    (RULE + "min_count = -1\n", "alert 'slow': min_count must be a whole number"),
    (RULE + 'min_count = "20"\n', "alert 'slow': min_count must be a whole number"),
    (RULE + 'notify = ["pager"]\n', "alert 'slow': notify: no notifier 'pager'"),
    (RULE + "notify = [1]\n", "alert 'slow': notify must be a list"),
    (RULE + RULE, "alert 'slow': the name is used by another rule"),
    ("[notifiers.ops]\n", "notifier 'ops': needs exactly one of webhook"),
    ('[notifiers.ops]\nwebhook = "x"\ncommand = "y"\n', "notifier 'ops': needs exactly one"),
    ('[notifiers.ops]\nwebhook = "ftp://x/"\n', "notifier 'ops': webhook 'ftp://x/' is not"),
    ('[notifiers.ops]\nurl = "https://x/"\n', "notifier 'ops': unknown key 'url'"),
    ('[notifiers.ops]\ncommand = "cat"\ntimeout = 0\n', "notifier 'ops': timeout must be"),
    ('[notifiers.ops]\ncommand = "cat"\nretries = -1\n', "notifier 'ops': retries must be"),
    ("alert_interval = 0.5\n", "alert_interval must be a number of seconds >= 1"),
]


@pytest.mark.parametrize(("text", "named"), BAD)
def test_a_bad_rule_or_notifier_is_one_line_naming_it(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(text)
    message = str(caught.value)
    assert named in message, message
    assert message.startswith("config file x.toml: ") and "\n" not in message


def test_hysteresis_and_min_count() -> None:
    rule = load(RULE.replace("p95 > 2s", "failure_rate > 10%") + "min_count = 5\n").rules[0]
    assert isinstance(rule, Rule)
    assert rule.holds(0.2, 5) and not rule.holds(0.2, 4) and not rule.holds(None, 0)
    # between 90 % of the threshold and the threshold a firing rule stays firing
    assert not rule.holds(0.095, 10) and not rule.clear(0.095, 10)
    assert rule.clear(0.09, 10) and rule.clear(0.5, 4)
    assert format_value(rule, 0.0734) == "7.3%" and format_value(rule, None) == "no data"


@pytest.mark.parametrize("command", [["alerts"], ["alerts", "check"], ["serve"], ["tui"]])
def test_commands_refuse_a_bad_rule_at_load_in_one_line(tmp_path: Path, command: list[str]) -> None:
    # given a config whose rule compares the wrong way
    path = tmp_path / "config.toml"
    path.write_text(RULE.replace("p95 > 2s", "workers_alive > 1"))
    # when a command that loads the rules starts; then it stops there, exit 2, one line
    line = one_error_line(taskmon(*command, TASKMON_CONFIG=str(path)))
    assert f"config file {path}: alert 'slow': when: '>' is not supported (use < or <=)" in line


def test_alert_commands_refuse_a_bad_format_and_explain_themselves() -> None:
    assert "--format: 'yaml' is not a format" in one_error_line(taskmon("alerts", "-f", "yaml"))
    shown = taskmon("alerts", "check", "-h", COLUMNS="120")
    assert shown.returncode == 0 and "Exit status: 1 when a rule is firing" in shown.stdout
    listed = taskmon("-h", COLUMNS="120").stdout
    assert "alerts" in listed


def test_the_readme_example_is_a_valid_config() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Alerts", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = load(example)
    assert [r.name for r in config.rules] == ["billing failures"]
    assert config.notifiers["pager"].command == "/usr/local/bin/page-oncall"
    assert config.notifiers["ops"].retries == 3
