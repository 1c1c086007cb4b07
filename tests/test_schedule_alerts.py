"""The schedule_missed and runs alert metrics, on real PostgreSQL, notified by webhook."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from alert_receiver import Receiver
from helpers import wait_for
from test_rollups import insert

from taskmon.config import ConfigError
from taskmon.domain.schedules import Schedule
from taskmon.server.alerts import AlertConfig, AlertStatus, Evaluator, parse_alert_config

T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
NIGHTLY = Schedule("nightly", "app:export", "ListRedisScheduleSource", cron="0 3 * * *")
EVERY_MINUTE = Schedule("minutely", "app:sync", "ListRedisScheduleSource", cron="* * * * *")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    server = Receiver()
    url = await server.start()
    yield server, url
    await server.stop()


def config(text: str) -> AlertConfig:
    return parse_alert_config(tomllib.loads(text), "test")


def run(schedule: Schedule, sent: datetime, *, status: str = "success") -> dict[str, Any]:
    """An attempt the scheduler sent at `sent`, recorded as it started a second later."""
    return {
        "task_id": f"{schedule.schedule_id}-{sent.isoformat()}",
        "task_name": schedule.task_name,
        "status": status,
        "worker": "w1:1",
        "labels": {"schedule_id": schedule.schedule_id},
        "duration_ms": 800.0,
        "created_at": sent + timedelta(seconds=1),
    }


async def test_a_missed_nightly_run_fires_and_a_late_one_resolves_it(
    db: asyncpg.Connection[Any], receiver: tuple[Receiver, str]
) -> None:
    server, url = receiver
    cfg = config(
        f"""
        [[alerts]]
        name = "nightly export"
        when = "schedule_missed"
        over = "1h"
        grace = "10m"
        filter = "task:app:export"
        notify = ["hook"]
        [notifiers.hook]
        webhook = "{url}/ok"
        """
    )
    reads = 0

    async def schedules() -> list[Schedule]:
        nonlocal reads
        reads += 1
        return [NIGHTLY, EVERY_MINUTE]

    evaluator = Evaluator(cfg, schedules=schedules)

    async def check(at: datetime) -> AlertStatus:
        (status,) = await evaluator.evaluate(db, at)
        await evaluator.notify([status])
        return status

    # the every-minute schedule is not watched by this rule (filter task:app:export)
    await insert(db, [run(NIGHTLY, T0 - timedelta(days=1))])
    # within the grace period, the 03:00 fire is only waiting
    assert (await check(T0 + timedelta(minutes=9))).state_name == "ok"
    # past it, with nothing recorded, the fire is missed and the rule fires at once
    fired = await check(T0 + timedelta(minutes=11))
    assert (fired.state_name, fired.transition) == ("firing", "firing")
    assert fired.value_text() == "1 missed fire (app:export)"
    await wait_for(lambda: len(server.received) == 1, what="the firing webhook")
    assert server.received[0].body["text"].startswith("[FIRING] nightly export")
    # when the run turns up late (the worker caught up), the rule resolves
    await insert(db, [run(NIGHTLY, T0 + timedelta(minutes=12))])
    resolved = await check(T0 + timedelta(minutes=13))
    assert (resolved.state_name, resolved.transition) == ("resolved", "resolved")
    await wait_for(lambda: len(server.received) == 2, what="the resolved webhook")
    assert reads == 3  # the schedules are read once per check


async def test_too_few_runs_fires_and_clears(db: asyncpg.Connection[Any]) -> None:
    cfg = config(
        """
        [[alerts]]
        name = "sync stopped"
        when = "runs < 2"
        over = "10m"
        filter = "task:app:sync"
        """
    )
    evaluator = Evaluator(cfg)
    await insert(db, [run(EVERY_MINUTE, T0)])
    (low,) = await evaluator.evaluate(db, T0 + timedelta(minutes=5))
    assert (low.state_name, low.value_text()) == ("firing", "1 run")
    await insert(db, [run(EVERY_MINUTE, T0 + timedelta(minutes=5))])
    (ok,) = await evaluator.evaluate(db, T0 + timedelta(minutes=6))
    assert (ok.state_name, ok.transition, ok.value_text()) == ("resolved", "resolved", "2 runs")


async def test_schedule_missed_without_a_scheduler_is_an_error_not_a_silence(
    db: asyncpg.Connection[Any],
) -> None:
    cfg = config('[[alerts]]\nname = "n"\nwhen = "schedule_missed > 2"\nover = "1h"\n')
    (status,) = await Evaluator(cfg).evaluate(db, T0)
    assert status.state is not None and status.state.error
    assert "--scheduler" in status.state.error

    async def broken() -> list[Schedule]:
        raise ConnectionError("redis down")

    (status,) = await Evaluator(cfg, schedules=broken).evaluate(db, T0)
    assert status.state is not None and status.state.error
    assert "cannot read the schedules" in status.state.error and "redis down" in status.state.error


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ('when = "schedule_missed"\nfilter = "status:failed"', "filter"),
        ('when = "failure_rate > 5%"\ngrace = "5m"', "only schedule_missed takes a grace"),
        ('when = "schedule_missed"\ngrace = "soon"', "grace"),
        ('when = "runs > 3"', "'>' is not supported"),
    ],
)
def test_bad_schedule_rules_say_what_is_wrong(rule: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        config(f'[[alerts]]\nname = "r"\nover = "1h"\n{rule}\n')
