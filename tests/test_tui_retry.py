"""`R` in the TUI, driven by Pilot: real PostgreSQL, the real Redis queue of a real broker."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import helpers
import pytest
import redis
from helpers import app_client, publish, wait_for
from tui_conftest_helpers import screen_text

from taskmon.domain.events import AttemptRecord, Status
from taskmon.service.resend import Retrier
from taskmon.tui.app import TaskmonApp, make_app
from taskmon.tui.screens.confirm_retry import ConfirmRetryManyScreen, ConfirmRetryScreen
from taskmon.tui.screens.detail import DetailScreen
from taskmon.tui.sources import PgDataSource
from taskmon.tui.widgets.history_table import HistoryTable
from taskmon.worker.recorder import Recorder

SIZE = (80, 24)
BROKER = "retry_worker_app:broker"


@pytest.fixture
def env(dsn: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    base = helpers.worker_env(dsn, redis_url, TEST_STATE_DIR=str(tmp_path))
    clean = {k: v for k, v in base.items() if not k.startswith("TASKMON_")}
    return {**clean, "TASKMON_DSN": dsn, "TASKMON_CONFIG": os.devnull}


@pytest.fixture
def queue(env: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(env["TEST_REDIS_URL"])
    yield client
    client.close()


def failed(
    task_name: str, kwargs: dict[str, Any], labels: dict[str, Any] | None = None
) -> AttemptRecord:
    now = datetime.now(UTC)
    return AttemptRecord(
        task_id=uuid.uuid4().hex,
        attempt=0,
        task_name=task_name,
        status=Status.FAILED,
        worker="host-1:42",
        labels=labels or {},
        params={"args": [], "kwargs": kwargs},
        error_type="ValueError",
        error_message="bad",
        started_at=now,
        finished_at=now,
        duration_ms=1.0,
    )


def notices(app: TaskmonApp) -> str:
    """Every notification still held, as ``title: message`` lines.

    Textual draws toasts in a layer of their own that a compositor snapshot of
    the screen leaves out, and has no public list of them.
    """
    return "\n".join(f"{n.title}: {n.message}" for n in app._notifications)


async def history_shown(app: TaskmonApp, rows: int) -> None:
    await wait_for(lambda: app.main.query_one(HistoryTable).row_count == rows)


async def test_r_on_a_history_row_asks_first_and_sends_only_when_confirmed(
    pg_recorder: Recorder, dsn: str, env: dict[str, str], queue: redis.Redis
) -> None:
    # given a failed attempt and the TUI with its broker configured
    attempt = failed("retry:fail_once", {"marker": "tui", "size": 2})
    await publish(pg_recorder, [attempt])
    name = env["TEST_QUEUE"]
    async with app_client("retry_worker_app", env):
        app = make_app(PgDataSource(dsn), None, retrier=Retrier(BROKER, dsn))
        async with app.run_test(size=SIZE) as pilot:
            await history_shown(app, 1)

            # when R is pressed on the row, then a dialog says what would be sent
            await pilot.press("R")
            await wait_for(lambda: isinstance(app.screen, ConfirmRetryScreen))
            text = screen_text(app)
            assert "Send this task again?" in text
            assert attempt.task_id in text and "retry:fail_once" in text
            assert '(marker="tui", size=2)' in text and "✕ failed" in text

            # and n cancels: nothing is sent, and the TUI says so
            await pilot.press("n")
            await wait_for(lambda: app.screen is app.main)
            await wait_for(lambda: "retry: retry cancelled: nothing sent" in notices(app))
            assert queue.llen(name) == 0

            # when R again, and y
            await pilot.press("R")
            await wait_for(lambda: isinstance(app.screen, ConfirmRetryScreen))
            await pilot.press("y")

            # then the task is on the broker's queue, linked to the original, and it says so
            await wait_for(lambda: queue.llen(name) == 1)
            message = json.loads(queue.lindex(name, 0) or b"{}")
            assert message["task_name"] == "retry:fail_once"
            assert message["kwargs"] == {"marker": "tui", "size": 2}
            assert message["labels"]["taskmon_retry_of"] == attempt.task_id
            await wait_for(lambda: "retry sent: sent retry:fail_once" in notices(app))
            assert app.screen is app.main


async def test_r_in_the_detail_screen_refuses_redacted_params_without_asking(
    pg_recorder: Recorder, dsn: str, env: dict[str, str], queue: redis.Redis
) -> None:
    # given a call recorded with its password redacted
    attempt = failed("retry:login", {"user": "carol", "password": "hunter2"})
    await publish(pg_recorder, [attempt])
    async with app_client("retry_worker_app", env):
        app = make_app(PgDataSource(dsn), None, retrier=Retrier(BROKER, dsn))
        async with app.run_test(size=SIZE) as pilot:
            await history_shown(app, 1)
            await pilot.press("enter")
            await wait_for(lambda: isinstance(app.screen, DetailScreen))

            # when R is pressed in the detail
            await pilot.press("R")

            # then it is refused with the reason, no dialog, nothing sent
            await wait_for(lambda: "retry refused" in notices(app))
            assert "kwargs.password was redacted; nothing sent" in notices(app)
            assert isinstance(app.screen, DetailScreen)
            assert queue.llen(env["TEST_QUEUE"]) == 0


async def test_r_without_a_broker_says_how_to_enable_it(pg_recorder: Recorder, dsn: str) -> None:
    # given the TUI started with no broker configured
    await publish(pg_recorder, [failed("retry:fail_once", {"marker": "x", "size": 1})])
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=SIZE) as pilot:
        await history_shown(app, 1)
        for where in ("history", "detail"):
            if where == "detail":
                await pilot.press("enter")
                await wait_for(lambda: isinstance(app.screen, DetailScreen))
            # when R is pressed
            await pilot.press("R")
            # then it says how to configure one, and asks nothing
            await wait_for(lambda: "retry is off" in notices(app))
            text = notices(app)
            assert "--broker module:variable" in text and "TASKMON_BROKER" in text, text
            assert not isinstance(app.screen, ConfirmRetryScreen)
            app.clear_notifications()


async def test_history_and_the_detail_screen_show_retry_of_and_retried_as(
    pg_recorder: Recorder, dsn: str
) -> None:
    # given a failed task and its retry (as a worker records it: the link in its labels)
    original = failed("retry:fail_once", {"marker": "a", "size": 1})
    retry = failed(
        "retry:fail_once", {"marker": "a", "size": 1}, {"taskmon_retry_of": original.task_id}
    )
    await publish(pg_recorder, [original, retry])
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=SIZE) as pilot:
        await history_shown(app, 2)
        # the history marks both rows, before their errors
        shown = screen_text(app)
        assert "↻ retried ValueError bad" in shown and "↻ retry ValueError bad" in shown, shown
        rows = {r["task_id"]: r for r in app.main.history_rows}
        for task_id, expected in (
            (original.task_id, f"retried as {retry.task_id}"),
            (retry.task_id, f"retry of {original.task_id}"),
        ):
            # when the detail of each is opened
            await app.push_screen(DetailScreen(rows[task_id], data=app.data, tz=UTC))
            # then its first line says which way the link goes
            await wait_for(lambda: expected in screen_text(app))  # noqa: B023
            await pilot.press("escape")
            await wait_for(lambda: app.screen is app.main)


async def move_to(pilot: Any, app: TaskmonApp, task_id: str) -> None:
    """Put the history's cursor on `task_id`'s row with the arrow keys."""
    table = app.main.query_one(HistoryTable)
    target = next(i for i, r in enumerate(app.main.history_rows) if r["task_id"] == task_id)
    delta = target - table.cursor_row
    await pilot.press(*["down" if delta > 0 else "up"] * abs(delta))
    assert table.cursor_row == target


async def test_marked_rows_are_retried_after_one_question_each_once(
    pg_recorder: Recorder, dsn: str, env: dict[str, str], queue: redis.Redis
) -> None:
    # given two failed tasks to retry, one whose password was redacted, and one left alone
    first = failed("retry:fail_once", {"marker": "m1", "size": 1})
    second = failed("retry:fail_once", {"marker": "m2", "size": 2})
    secret = failed("retry:login", {"user": "carol", "password": "hunter2"})
    other = failed("retry:fail_once", {"marker": "m3", "size": 3})
    await publish(pg_recorder, [first, second, secret, other])
    name = env["TEST_QUEUE"]
    async with app_client("retry_worker_app", env):
        app = make_app(PgDataSource(dsn), None, retrier=Retrier(BROKER, dsn))
        async with app.run_test(size=SIZE) as pilot:
            await history_shown(app, 4)
            table = app.main.query_one(HistoryTable)

            # when three rows are marked with m
            for attempt in (first, second, secret):
                await move_to(pilot, app, attempt.task_id)
                await pilot.press("m")
            marked = {r["task_id"] for r in table.marked.values()}
            assert marked == {first.task_id, second.task_id, secret.task_id}
            # then each shows the mark symbol, in words and not colour alone, and the count
            shown = screen_text(app)
            assert "History · page 1 · 3 marked" in shown
            lines = [line for line in shown.splitlines() if "retry:" in line]
            assert sum(line.lstrip("│▌ ").startswith("*") for line in lines) == 3, shown
            assert "m Mark" in shown

            # when R: one question, saying how many and which, and which cannot be sent
            await pilot.press("R")
            await wait_for(lambda: isinstance(app.screen, ConfirmRetryManyScreen), timeout=15)
            text = screen_text(app)
            assert "Send 2 tasks again?" in text, text
            assert first.task_id in text and second.task_id in text, text
            assert "not sent (1):" in text and secret.task_id in text, text
            assert "kwargs.password was" in text and "redacted" in text, text
            assert other.task_id not in text

            # and n cancels: nothing is sent, the marks stay
            await pilot.press("n")
            await wait_for(lambda: app.screen is app.main)
            await wait_for(lambda: "retry: retry cancelled: nothing sent" in notices(app))
            assert queue.llen(name) == 0
            assert len(table.marked) == 3

            # when R again, and y
            await pilot.press("R")
            await wait_for(lambda: isinstance(app.screen, ConfirmRetryManyScreen), timeout=15)
            await pilot.press("y")

            # then each sendable marked task is on the queue once, linked to its original
            await wait_for(lambda: queue.llen(name) == 2, timeout=15)
            messages = [json.loads(m) for m in queue.lrange(name, 0, -1)]
            retry_of = sorted(m["labels"]["taskmon_retry_of"] for m in messages)
            assert retry_of == sorted([first.task_id, second.task_id])
            assert sorted(m["kwargs"]["marker"] for m in messages) == ["m1", "m2"]
            # and one notification says what was sent and what was not, and why
            await wait_for(lambda: "retry: 2 sent, 1 not sent" in notices(app), timeout=10)
            said = notices(app)
            assert f"sent retry:fail_once {first.task_id} again as" in said
            assert f"sent retry:fail_once {second.task_id} again as" in said
            assert f"not sent retry:login {secret.task_id}: " in said
            assert "kwargs.password was redacted" in said
            # and the marks are cleared
            await wait_for(lambda: not table.marked)
            await pilot.pause(0.3)
            assert queue.llen(name) == 2


async def test_esc_clears_the_marks_and_r_then_retries_the_cursor_row_only(
    pg_recorder: Recorder, dsn: str, env: dict[str, str], queue: redis.Redis
) -> None:
    # given two failed tasks, both marked
    attempts = [failed("retry:fail_once", {"marker": f"e{i}", "size": i}) for i in range(2)]
    await publish(pg_recorder, attempts)
    async with app_client("retry_worker_app", env):
        app = make_app(PgDataSource(dsn), None, retrier=Retrier(BROKER, dsn))
        async with app.run_test(size=SIZE) as pilot:
            await history_shown(app, 2)
            table = app.main.query_one(HistoryTable)
            await pilot.press("m", "m")
            assert len(table.marked) == 2
            # when esc
            await pilot.press("escape")
            # then no row is marked, nor shows the symbol
            assert not table.marked
            assert "marked" not in screen_text(app)
            # and R asks about the one row under the cursor, as before
            await pilot.press("R")
            await wait_for(lambda: isinstance(app.screen, ConfirmRetryScreen), timeout=15)
            await pilot.press("n")
            await wait_for(lambda: "retry: retry cancelled: nothing sent" in notices(app))
            assert queue.llen(env["TEST_QUEUE"]) == 0
