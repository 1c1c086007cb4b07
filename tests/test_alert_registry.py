"""The registry of alert metrics, and rules on the param:, label: and queue: terms.

Rows are inserted at fixed times and each check is made at the moment the
test names (the evaluator's `now`), against a real PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from test_alerts import T0, attempts, config
from test_rollups import insert

from taskmon.config import ConfigError
from taskmon.domain.filters import parse
from taskmon.server.alerts import METRICS, Evaluator, measure, metric_names


def test_every_registered_metric_parses_its_example_and_errors_list_them_all() -> None:
    # given each metric of the registry, when its example is a rule's condition
    for metric in METRICS:
        (rule,) = config(f'[[alerts]]\nname = "r"\nwhen = "{metric.example}"\nover = "5m"\n').rules
        # then the rule compares that metric
        assert rule.metric == metric.name and rule.spec is metric
    # and an unknown figure is refused naming every registered one
    with pytest.raises(ConfigError) as caught:
        config('[[alerts]]\nname = "r"\nwhen = "p97 > 2s"\nover = "5m"\n')
    assert all(name in str(caught.value) for name in metric_names()), caught.value


async def test_param_label_and_queue_filters_count_only_their_attempts(
    db: asyncpg.Connection[Any],
) -> None:
    # given a rule filter with each of the new terms, then it is read as the filter language does
    (rule,) = config(
        """
        [[alerts]]
        name = "acme reports"
        when = "failure_rate > 60%"
        over = "10m"
        filter = "queue:reports param:tenant=acme label:priority=high"
        """
    ).rules
    assert rule.filter == parse("queue:reports param:tenant=acme label:priority=high")
    assert (rule.filter.queues, rule.filter.params, rule.filter.labels) == (
        ("reports",),
        (("tenant", "acme"),),
        (("priority", "high"),),
    )
    assert rule.history_query() == (
        "queue:reports param:tenant=acme label:priority=high status:failed,lost since:10m"
    )

    # given failures in three places: the reports queue (2 of 4), emails (6 of 6), no queue (4)
    acme: dict[str, Any] = {"params": {"kwargs": {"tenant": "acme"}}}
    high: dict[str, Any] = {"labels": {"priority": "high"}}
    report: dict[str, Any] = {"task": "app:report", "queue": "reports"}
    await insert(
        db,
        attempts(2, "failed", T0, **report, error_type="ReportError", **acme, **high)
        + attempts(2, "success", T0, **report, params={"kwargs": {"tenant": "globex"}})
        + attempts(6, "failed", T0, task="app:mail", queue="emails", error_type="MailError", **high)
        + attempts(4, "failed", T0, task="app:other", error_type="OtherError"),
    )
    cfg = config(
        """
        [[alerts]]
        name = "reports"
        when = "failure_rate > 60%"
        over = "10m"
        filter = "queue:reports"
        [[alerts]]
        name = "everything"
        when = "failure_rate > 60%"
        over = "10m"
        [[alerts]]
        name = "reports errors"
        when = "new_error_type"
        over = "10m"
        filter = "queue:reports"
        [[alerts]]
        name = "acme reports"
        when = "failure_rate > 60%"
        over = "10m"
        filter = "queue:reports param:tenant=acme"
        [[alerts]]
        name = "high priority"
        when = "failure_rate >= 100%"
        over = "10m"
        filter = "label:priority=high"
        """
    )
    # when the rules are checked a minute later
    now = T0 + timedelta(minutes=1)
    statuses = {s.name: s for s in await Evaluator(cfg).evaluate(db, now)}

    def seen(name: str) -> tuple[str, str, int | None]:
        st = statuses[name].state
        assert st is not None and st.error is None, st
        return statuses[name].state_name, statuses[name].value_text(), st.count

    # then the queue's rule counted only its 4 attempts (half failed: under 60 %, ok)
    assert seen("reports") == ("ok", "50.0%", 4)
    # while the same rule unfiltered counts every queue's failures and fires
    assert seen("everything") == ("firing", "85.7%", 14)
    # the queue's new error types are its own only
    assert seen("reports errors") == ("firing", "ReportError", 2)
    # a param term narrows the queue to the acme calls, a label term picks across queues
    assert seen("acme reports") == ("firing", "100.0%", 2)
    assert seen("high priority") == ("firing", "100.0%", 8)
    # and a figure measured on a queue alone reads that queue's attempts, or none
    start = T0 - timedelta(minutes=9)
    emails = await measure(db, "failure_rate", parse("queue:emails"), start=start, end=now)
    assert (emails.value, emails.count) == (1.0, 6)
    nowhere = await measure(db, "lost", parse("queue:nowhere"), start=start, end=now)
    assert (nowhere.value, nowhere.count) == (0.0, 0)
