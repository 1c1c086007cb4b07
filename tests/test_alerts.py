"""Alert rules against a real PostgreSQL, notified to a real local HTTP receiver.

Time is the evaluator's `now` argument: rows are inserted at fixed times and
each check is made at the moment the test names, nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alert_receiver import Receiver
from helpers import unconfigured_env, wait_for
from test_cli_errors import ROOT, one_error_line, taskmon
from test_rollups import insert

from taskmon.domain.filters import parse
from taskmon.server.alerts import (
    AlertConfig,
    AlertRunner,
    AlertStatus,
    Evaluator,
    measure,
    parse_alert_config,
)
from taskmon.store.alerts import load_states
from taskmon.store.db import connect

# not on a 5-minute boundary: windows have raw edges and whole rollup buckets
T0 = datetime(2026, 3, 1, 10, 2, 7, tzinfo=UTC)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    server = Receiver()
    url = await server.start()
    yield server, url
    await server.stop()


def config(text: str) -> AlertConfig:
    return parse_alert_config(tomllib.loads(text), "test")


def attempts(
    n: int, status: str, at: datetime, *, task: str = "app:billing", **extra: Any
) -> list[dict[str, Any]]:
    return [
        {
            "task_id": f"{status}-{at.isoformat()}-{task}-{i}",
            "task_name": task,
            "status": status,
            "worker": "w1:1",
            "created_at": at + timedelta(milliseconds=i),
            **extra,
        }
        for i in range(n)
    ]


def transitions(statuses: list[AlertStatus]) -> list[tuple[str, str | None]]:
    return [(s.name, s.transition) for s in statuses]


# -- figures --------------------------------------------------------------------------


async def test_figures_from_rollups_and_from_raw_rows_agree(db: asyncpg.Connection[Any]) -> None:
    # given an hour of attempts with known durations and queue waits, and errors of two ages
    rows: list[dict[str, Any]] = []
    for i in range(400):
        at = T0 - timedelta(seconds=9 * i)
        status = "failed" if i % 10 == 0 else "lost" if i % 25 == 1 else "success"
        rows.append(
            {
                "task_id": f"a{i}",
                "task_name": "app:billing" if i % 2 else "app:billing_report",
                "status": status,
                "worker": "w1:1",
                "duration_ms": None if status == "lost" else float(10 + (i * 37) % 3000),
                "queue_wait_ms": float((i * 13) % 900),
                "error_type": None if status != "failed" else "NewError" if i < 20 else "KeyError",
                "created_at": at,
            }
        )
    rows += attempts(3, "failed", T0 - timedelta(days=2), error_type="OldError")
    rows += attempts(1, "failed", T0 - timedelta(minutes=3), error_type="OldError")
    rows += attempts(5, "success", T0 - timedelta(minutes=5), task="app:other")
    await insert(db, rows)
    start, end = T0 - timedelta(minutes=47, seconds=13), T0 + timedelta(seconds=1)
    in_window = [
        r
        for r in rows
        if start <= r["created_at"] < end and r["task_name"].startswith("app:billing")
    ]
    rollups = parse("task:billing*")
    raw = parse("task:billing* worker:w1")  # a worker filter is answered from raw rows only

    # when every figure is measured both ways, then they agree, and with the rows
    for metric, column, q in (
        ("p50", "duration_ms", 0.5),
        ("p95", "duration_ms", 0.95),
        ("p99", "duration_ms", 0.99),
        ("p95_queue_wait", "queue_wait_ms", 0.95),
    ):
        fast = await measure(db, metric, rollups, start=start, end=end)
        slow = await measure(db, metric, raw, start=start, end=end)
        exact = await db.fetchval(
            f"SELECT percentile_cont($3::float8) WITHIN GROUP (ORDER BY {column}) "
            "FROM task_execution_logs WHERE created_at >= $1 AND created_at < $2 "
            "AND task_name LIKE 'app:billing%' AND status <> 'running'",
            start,
            end,
            q,
        )
        assert fast.value is not None and slow.value is not None
        assert fast.value == pytest.approx(slow.value, rel=1e-9), metric
        assert math.isclose(fast.value, exact, rel_tol=0.0201), (metric, fast.value, exact)
        expected = sum(1 for r in in_window if r.get(column) is not None)
        assert fast.count == slow.count == expected
    decided = len(in_window)
    failures = sum(1 for r in in_window if r["status"] in ("failed", "lost"))
    lost = sum(1 for r in in_window if r["status"] == "lost")
    for flt in (rollups, raw):
        rate = await measure(db, "failure_rate", flt, start=start, end=end)
        assert (rate.value, rate.count) == (failures / decided, decided)
        lost_now = await measure(db, "lost", flt, start=start, end=end)
        assert lost_now.value == lost
        # KeyError was seen before the window, OldError two days ago, NewError never
        new = await measure(db, "new_error_type", flt, start=start, end=end)
        assert new.detail == ("NewError",) and new.value == 1
        assert new.count == sum(1 for r in in_window if r["error_type"] == "NewError")
    # a window of a few seconds has no whole rollup bucket: raw rows alone
    tiny = await measure(db, "p95", rollups, start=T0 - timedelta(seconds=20), end=end)
    assert tiny.count == 2  # three attempts, one of them lost (it has no duration)
    nothing = await measure(db, "p95", parse("task:nobody"), start=start, end=end)
    assert (nothing.value, nothing.count) == (None, 0)
    # only the baseline before the window counts as the past: with one day, OldError is new
    for flt in (rollups, raw):
        day = await measure(db, "new_error_type", flt, start=start, end=end, baseline=timedelta(1))
        assert set(day.detail) == {"NewError", "OldError"}


# -- states and notifications ---------------------------------------------------------------


async def test_fires_once_after_for_resolves_once_and_survives_a_restart(
    dsn: str, db: asyncpg.Connection[Any], receiver: tuple[Receiver, str]
) -> None:
    server, url = receiver
    cfg = config(
        f"""
        [[alerts]]
        name = "billing failures"
        when = "failure_rate > 20%"
        over = "10m"
        filter = "task:billing*"
        min_count = 5
        for = "2m"
        notify = ["hook"]
        [notifiers.hook]
        webhook = "{url}/ok"
        """
    )
    evaluator = Evaluator(cfg)

    async def check(at: datetime, ev: Evaluator = evaluator) -> AlertStatus:
        (status,) = await ev.evaluate(db, at)
        await ev.notify([status])
        return status

    # given half of ten attempts failed just after T0
    await insert(db, attempts(5, "failed", T0) + attempts(5, "success", T0))
    # when the condition holds, the rule waits for its `for` before it fires
    first = await check(T0 + timedelta(minutes=1))
    assert (first.state_name, first.transition) == ("pending", None)
    assert first.value_text() == "50.0%"
    assert (await check(T0 + timedelta(minutes=2, seconds=59))).state_name == "pending"
    fired = await check(T0 + timedelta(minutes=3))
    assert (fired.state_name, fired.transition) == ("firing", "firing")
    assert fired.state is not None and fired.state.fired_at == T0 + timedelta(minutes=3)
    # then it was notified once
    await wait_for(lambda: len(server.received) == 1)
    post = server.received[0]
    assert post.body["text"].startswith("[FIRING] billing failures: failure rate 50.0%")
    assert post.body["alert"]["transition"] == "firing"
    assert post.body["alert"]["history"] == "task:billing* status:failed,lost since:10m"
    assert post.headers["content-type"] == "application/json"
    assert (await check(T0 + timedelta(minutes=3, seconds=15))).transition is None

    # when the hub restarts (a new evaluator, a new connection), the rule is still firing
    conn = await connect(dsn)
    try:
        restarted = Evaluator(cfg)
        (again,) = await restarted.evaluate(conn, T0 + timedelta(minutes=4))
        assert await restarted.notify([again]) == []
    finally:
        await conn.close()
    assert (again.state_name, again.transition) == ("firing", None)

    # when the rate falls just under the threshold (19 %), hysteresis keeps it firing
    await insert(db, attempts(16, "success", T0 + timedelta(minutes=4)))
    held = await check(T0 + timedelta(minutes=5))
    assert (held.state_name, held.value_text()) == ("firing", "19.2%")
    assert held.state is not None and held.state.clearing_since is None
    # below the band (10 %) it must stay clear for `for` before it resolves
    await insert(db, attempts(24, "success", T0 + timedelta(minutes=5)))
    clearing = await check(T0 + timedelta(minutes=6))
    assert clearing.state_name == "firing" and clearing.transition is None
    assert (await check(T0 + timedelta(minutes=7, seconds=59))).state_name == "firing"
    resolved = await check(T0 + timedelta(minutes=8))
    assert (resolved.state_name, resolved.transition) == ("resolved", "resolved")
    assert (await check(T0 + timedelta(minutes=9))).transition is None
    # then it was notified exactly twice in all: firing, resolved
    await wait_for(lambda: len(server.received) == 2)
    assert [r.body["alert"]["transition"] for r in server.received] == ["firing", "resolved"]
    assert server.received[1].body["text"].startswith("[RESOLVED] billing failures")
    stored = (await load_states(db))["billing failures"]
    assert (stored.state, stored.resolved_at) == ("resolved", T0 + timedelta(minutes=8))


async def test_a_flapping_rate_notifies_once(
    db: asyncpg.Connection[Any], receiver: tuple[Receiver, str]
) -> None:
    server, url = receiver
    cfg = config(
        f"""
        [[alerts]]
        name = "flappy"
        when = "failure_rate > 20%"
        over = "1m"
        min_count = 1
        notify = ["hook"]
        [notifiers.hook]
        webhook = "{url}/ok"
        """
    )
    evaluator = Evaluator(cfg)
    # given a rate that moves between 25 % and 19 % (inside the band) every minute
    for minute in range(6):
        at = T0 + timedelta(minutes=minute)
        failed, ok = (1, 3) if minute % 2 == 0 else (4, 17)
        await insert(db, attempts(failed, "failed", at) + attempts(ok, "success", at))
        statuses = await evaluator.evaluate(db, at + timedelta(seconds=30))
        await evaluator.notify(statuses)
        assert statuses[0].state_name == "firing"
    # then it fired once and never resolved
    assert [r.body["alert"]["transition"] for r in server.received] == ["firing"]


async def test_a_hanging_and_a_failing_receiver_are_retried_and_delay_no_other(
    db: asyncpg.Connection[Any], receiver: tuple[Receiver, str]
) -> None:
    server, url = receiver
    cfg = config(
        f"""
        [[alerts]]
        name = "lost"
        when = "lost > 0"
        over = "10m"
        notify = ["hang", "flaky", "down", "ok"]
        [notifiers.hang]
        webhook = "{url}/hang"
        timeout = 1
        retries = 1
        backoff = 0.05
        [notifiers.flaky]
        webhook = "{url}/flaky"
        retries = 3
        backoff = 0.05
        [notifiers.down]
        webhook = "{url}/down"
        retries = 2
        backoff = 0.05
        [notifiers.ok]
        webhook = "{url}/ok"
        """
    )
    await insert(db, attempts(1, "lost", T0))
    evaluator = Evaluator(cfg)
    statuses = await evaluator.evaluate(db, T0 + timedelta(minutes=1))
    assert transitions(statuses) == [("lost", "firing")]
    # when the transition is notified
    started = time.monotonic()
    deliveries = {d.notifier: d for d in await evaluator.notify(statuses)}
    took = time.monotonic() - started
    # then the good receiver had it at once, whatever the others did
    (ok_post,) = server.posts("/ok")
    assert ok_post.at - started < 0.5
    assert deliveries["ok"].ok and deliveries["ok"].attempts == 1
    assert deliveries["ok"].seconds < 0.5
    # the hanging one timed out on each of its two attempts
    hang = deliveries["hang"]
    assert (hang.ok, hang.attempts, hang.error) == (False, 2, "no answer within 1s")
    assert len(server.posts("/hang")) == 2 and hang.seconds >= 2.0
    # the flaky one was retried until it answered; the broken one until its retries ran out
    assert (deliveries["flaky"].ok, deliveries["flaky"].attempts) == (True, 3)
    assert len(server.posts("/flaky")) == 3
    down = deliveries["down"]
    assert (down.ok, down.attempts, down.error) == (False, 3, "HTTP 500")
    # all at once: the whole took about the slowest one, not the sum
    assert took < hang.seconds + 0.5


async def test_a_command_gets_the_json_on_stdin_and_is_killed_at_its_timeout(
    db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    out = tmp_path / "alert.json"
    cfg = config(
        f"""
        [[alerts]]
        name = "lost"
        when = "lost > 0"
        over = "10m"
        notify = ["mail", "stuck", "broken"]
        [notifiers.mail]
        command = "cat > '{out}'"
        [notifiers.stuck]
        command = "sleep 30"
        timeout = 0.5
        [notifiers.broken]
        command = "echo no mail server >&2; exit 3"
        """
    )
    await insert(db, attempts(2, "lost", T0))
    evaluator = Evaluator(cfg)
    statuses = await evaluator.evaluate(db, T0 + timedelta(minutes=1))
    started = time.monotonic()
    deliveries = {d.notifier: d for d in await evaluator.notify(statuses)}
    assert time.monotonic() - started < 5
    assert deliveries["mail"].ok
    sent = json.loads(out.read_text())
    assert sent["alert"]["name"] == "lost" and sent["alert"]["value"] == 2
    assert sent["text"].startswith("[FIRING] lost: lost attempts 2")
    assert (deliveries["stuck"].ok, deliveries["stuck"].error) == (False, "killed after 0.5s")
    assert deliveries["broken"].error == "exit status 3: no mail server"


async def test_a_rule_that_cannot_be_measured_keeps_its_state_and_the_others_go_on(
    db: asyncpg.Connection[Any],
) -> None:
    cfg = config(
        """
        [[alerts]]
        name = "lost"
        when = "lost > 0"
        over = "10m"
        [[alerts]]
        name = "slow"
        when = "p95 > 1s"
        over = "10m"
        """
    )
    await insert(db, attempts(1, "lost", T0) + attempts(3, "success", T0, duration_ms=5000.0))
    evaluator = Evaluator(cfg)
    first = await evaluator.evaluate(db, T0 + timedelta(minutes=1))
    assert [s.state_name for s in first] == ["firing", "firing"]
    assert first[1].state is not None and first[1].state.value == pytest.approx(5000, rel=0.02)
    # when the histogram function that only the percentile reads is missing
    await db.execute("DELETE FROM task_execution_logs")
    await db.execute("ALTER FUNCTION taskmon_hist_unit(float8) RENAME TO taskmon_hist_unit_away")
    lost, slow = await evaluator.evaluate(db, T0 + timedelta(minutes=20))
    # then the rule that could be measured moved on, the other kept its state and says why
    assert lost.state is not None and lost.state.error is None
    assert (lost.state_name, lost.transition) == ("resolved", "resolved")
    assert (slow.state_name, slow.transition) == ("firing", None)
    assert slow.state is not None and slow.state.error is not None
    assert "taskmon_hist_unit" in slow.state.error and slow.value_text() == "error"


async def test_the_hub_runner_checks_in_the_background_and_survives_a_database_outage(
    dsn: str, db: asyncpg.Connection[Any], receiver: tuple[Receiver, str]
) -> None:
    server, url = receiver
    cfg = config(
        f"""
        [[alerts]]
        name = "lost"
        when = "lost > 0"
        over = "10m"
        notify = ["hook", "hang"]
        [notifiers.hook]
        webhook = "{url}/ok"
        [notifiers.hang]
        webhook = "{url}/hang"
        timeout = 30
        """
    )
    # a database that is not there: checks fail, the runner goes on
    down = AlertRunner("postgresql://postgres@127.0.0.1:1/x", cfg, interval=0.05)
    await down.start()
    await wait_for(lambda: down.failed_checks >= 3)
    await down.stop()
    assert down.checks == 0
    # a real one: a hanging receiver does not hold up the next checks
    await insert(db, attempts(1, "lost", datetime.now(UTC) - timedelta(minutes=1)))
    runner = AlertRunner(dsn, cfg, interval=0.05)
    await runner.start()
    try:
        await wait_for(lambda: len(server.posts("/ok")) == 1 and len(server.posts("/hang")) == 1)
        seen = runner.checks
        await wait_for(lambda: runner.checks >= seen + 5)
    finally:
        stopping = time.monotonic()
        await runner.stop(grace=0.2)
    assert time.monotonic() - stopping < 2
    assert len(server.posts("/ok")) == 1  # many checks, one notification


# -- the commands -----------------------------------------------------------------------------


def write_config(path: Path, dsn: str, url: str, *, interval: str = "") -> Path:
    path.write_text(
        f"""dsn = "{dsn}"
{interval}
[[alerts]]
name = "lost attempts"
when = "lost > 0"
over = "10m"
notify = ["hook"]

[[alerts]]
name = "slow billing"
when = "p95 > 2s"
over = "1h"
filter = "task:billing*"

[notifiers.hook]
webhook = "{url}/ok"
"""
    )
    return path


async def test_alerts_check_exit_status_says_whether_anything_fires(
    dsn: str, db: asyncpg.Connection[Any], receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    server, url = receiver
    path = write_config(tmp_path / "config.toml", dsn, url)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return taskmon(*args, TASKMON_CONFIG=str(path), COLUMNS="160")

    # given nothing wrong
    quiet = await asyncio.to_thread(run, "alerts", "check")
    assert quiet.returncode == 0, quiet.stderr
    assert "✓ ok" in quiet.stdout and "lost attempts" in quiet.stdout
    # given a lost attempt a minute ago
    await insert(db, attempts(1, "lost", datetime.now(UTC) - timedelta(minutes=1)))
    dry = await asyncio.to_thread(run, "alerts", "check", "--dry-run", "-f", "json")
    assert dry.returncode == 1 and json.loads(dry.stdout)[0]["state"] == "firing"
    assert (await load_states(db))["lost attempts"].state == "ok"  # a dry run changed nothing
    assert server.received == []
    # when cron checks, it fires (exit 1), notifies, and says so
    firing = await asyncio.to_thread(run, "alerts", "check")
    assert firing.returncode == 1, firing.stderr
    assert "▲ firing" in firing.stdout
    assert len(server.posts("/ok")) == 1
    # a second check: still firing, not notified again
    again = await asyncio.to_thread(run, "alerts", "check", "--format", "json")
    assert again.returncode == 1
    rows = {r["name"]: r for r in json.loads(again.stdout)}
    assert rows["lost attempts"]["state"] == "firing" and rows["lost attempts"]["value"] == 1
    assert rows["slow billing"]["state"] == "ok" and rows["slow billing"]["value"] is None
    assert len(server.posts("/ok")) == 1
    # `taskmon alerts` lists the stored states without checking
    listed = await asyncio.to_thread(run, "alerts", "-f", "json")
    assert listed.returncode == 0
    assert [r["state"] for r in json.loads(listed.stdout)] == ["firing", "ok"]
    table = await asyncio.to_thread(run, "alerts", "list")
    assert "▲ firing" in table.stdout and "lost > 0 over 10m" in table.stdout


async def test_serve_checks_the_rules_and_a_restarted_hub_does_not_notify_again(
    dsn: str, db: asyncpg.Connection[Any], receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    server, url = receiver
    path = write_config(tmp_path / "config.toml", dsn, url, interval="alert_interval = 1")
    await insert(db, attempts(1, "lost", datetime.now(UTC) - timedelta(minutes=1)))

    async def serve_until_checked(checks: int) -> str:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "taskmon", "serve", "--port", "0"),
            cwd=ROOT,
            env=unconfigured_env(TASKMON_CONFIG=str(path)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert proc.stderr is not None
        said = asyncio.create_task(proc.stderr.read())  # read as it comes: the pipe never fills
        try:
            first = await db.fetchval("SELECT max(checked_at) FROM taskmon_alerts")

            async def checked() -> bool:
                last = await db.fetchval("SELECT max(checked_at) FROM taskmon_alerts")
                return last is not None and (first is None or last > first)

            for _ in range(checks):
                await wait_for(checked)
                first = await db.fetchval("SELECT max(checked_at) FROM taskmon_alerts")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 20)
        err = (await asyncio.wait_for(said, 5)).decode()
        assert code == 0, err
        return err

    # when serve runs with the rules, it checks them and notifies the lost attempt
    err = await serve_until_checked(2)
    assert "checking 2 alert rule(s) every 1s" in err
    await wait_for(lambda: len(server.posts("/ok")) == 1)
    assert "[FIRING] lost attempts" in err  # logged as well
    # when it is restarted, it goes on checking without notifying again
    await serve_until_checked(2)
    assert len(server.posts("/ok")) == 1
    assert (await load_states(db))["lost attempts"].state == "firing"


async def test_a_database_without_the_alerts_table_says_to_upgrade(
    dsn: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    await db.execute("DROP TABLE taskmon_alerts")
    path = write_config(tmp_path / "config.toml", dsn, "http://127.0.0.1:9")
    for args in (("alerts",), ("alerts", "check")):
        result = await asyncio.to_thread(taskmon, *args, TASKMON_CONFIG=str(path))
        line = one_error_line(result, code=1)
        assert "taskmon_alerts" in line and "run `taskmon db upgrade`" in line


def test_no_rules_is_said_and_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    result = taskmon("alerts", TASKMON_CONFIG=str(path))
    assert result.returncode == 0 and "no alert rules" in result.stderr
    as_json = taskmon("alerts", "list", "--format", "json", TASKMON_CONFIG=str(path))
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == []


async def test_worker_and_queue_rules_follow_heartbeats_and_queue_samples(
    db: asyncpg.Connection[Any],
) -> None:
    from taskmon.store.workers import QueueSample, WorkerBeat, beat

    cfg = config(
        """
        [[alerts]]
        name = "no workers"
        when = "workers_alive < 1"
        over = "1m"
        [[alerts]]
        name = "backlog"
        when = "backlog > 100"
        over = "5m"
        """
    )
    evaluator = Evaluator(cfg)

    async def check(at: datetime) -> dict[str, AlertStatus]:
        return {s.name: s for s in await evaluator.evaluate(db, at)}

    worker = WorkerBeat(
        name="host-1:42", host="host-1", pid=42, broker="ListQueueBroker", queue="q",
        taskmon_version=None, taskiq_version=None, heartbeat_s=5.0,
        running=0, processed=0, failed=0,
    )  # fmt: skip
    now = datetime.now(UTC)
    # given no worker ever beat and no queue was sampled
    first = await check(now)
    assert (first["no workers"].state_name, first["no workers"].value_text()) == (
        "firing",
        "0 alive",
    )
    assert (first["backlog"].state_name, first["backlog"].value_text()) == ("ok", "no data")

    # when a worker beats, with 250 messages waiting in its queue
    await beat(db, worker, QueueSample("ListQueueBroker", "q", 250, 12.0))
    second = await check(now + timedelta(seconds=15))
    assert (second["no workers"].transition, second["no workers"].value_text()) == (
        "resolved",
        "1 alive",
    )
    assert (second["backlog"].transition, second["backlog"].value_text()) == (
        "firing",
        "250 waiting",
    )

    # when the queue drains, the backlog rule resolves once
    await beat(db, worker, QueueSample("ListQueueBroker", "q", 0, None))
    third = await check(now + timedelta(seconds=30))
    assert (third["backlog"].transition, third["backlog"].value_text()) == ("resolved", "0 waiting")
    assert third["no workers"].transition is None

    # and when the worker stops cleanly, no worker is alive: the first rule fires again
    await beat(db, replace(worker, stopped=True))
    fourth = await check(now + timedelta(seconds=45))
    assert (fourth["no workers"].transition, fourth["no workers"].value_text()) == (
        "firing",
        "0 alive",
    )
