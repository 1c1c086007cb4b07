"""The TUI's schedules view (key S) and the schedule on an attempt's detail, on real PostgreSQL.

The schedules are read from a real TaskIQ scheduler (``tests/schedule_app.py``:
a 2-second tick with ``schedule_id`` "tick" and a nightly cron), through the
application layer's :class:`~taskmon.service.schedules.ScheduleWatch`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import wait_for
from tui_conftest_helpers import screen_text

from taskmon.service.schedules import ScheduleWatch
from taskmon.tui.app import make_app
from taskmon.tui.screens.detail import DetailScreen
from taskmon.tui.screens.schedules import NO_SCHEDULER, SchedulesScreen
from taskmon.tui.sources import PgDataSource
from taskmon.tui.widgets.history_table import HistoryTable


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TASKMON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TEST_REDIS_URL", redis_url)


async def _tick_ran(db: asyncpg.Connection[Any], ago: timedelta) -> None:
    at = datetime.now(UTC) - ago
    await db.execute(
        "INSERT INTO task_execution_logs (task_id, attempt, task_name, status, worker, labels,"
        " enqueued_at, started_at, finished_at, duration_ms, created_at)"
        " VALUES ($1, 0, 'tests:tick', 'success', 'w:1', '{\"schedule_id\": \"tick\"}'::jsonb,"
        " $2, $2, $2, 12.0, $2)",
        f"tick-{at.timestamp()}",
        at,
    )


def _line(text: str, needle: str) -> str:
    [line] = [line for line in text.splitlines() if needle in line]
    return line


async def test_s_lists_the_schedules_with_their_states_and_opens_a_tasks_history(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    # given the tick ran a second ago and the nightly job never ran
    await _tick_ran(db, timedelta(seconds=1))
    data = PgDataSource(dsn)
    app = make_app(data, None, schedules=ScheduleWatch("schedule_app:scheduler", data))
    async with app.run_test(size=(80, 24)) as pilot:
        # when S is pressed
        await pilot.press("S")
        await wait_for(lambda: isinstance(app.screen, SchedulesScreen))
        screen = app.screen
        assert isinstance(screen, SchedulesScreen)
        await wait_for(lambda: screen.loaded and bool(screen.reports), what="the schedules")
        await pilot.pause()
        text = screen_text(app)
        # then each schedule is listed with its state in words and symbols, at 80x24
        tick = _line(text, "tests:tick")
        assert "✓ ok" in tick or "… waiting" in tick
        assert "every 2s" in tick and "✓ success" in tick
        nightly = _line(text, "tests:nightly")
        # its 03:00 fire of the last day has no run (within 5 min of it: still waiting)
        assert "✕ missed  tests:nightly  1 " in nightly or "… waiting" in nightly
        assert "0 3 * * *" in nightly
        assert "over the last day" in text

        # and enter on a schedule opens the history of its task
        await pilot.press("down")  # the worst state comes first: the nightly job
        row = screen.query_one("#schedules-table").cursor_row  # type: ignore[attr-defined]
        wanted = screen.reports[row].schedule.task_name
        await pilot.press("enter")
        await wait_for(lambda: app.screen is app.main)
        assert app.main.state.query == f"task:{wanted}"


async def test_s_without_a_scheduler_says_how_to_give_one(dsn: str) -> None:
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("S")
        await wait_for(lambda: isinstance(app.screen, SchedulesScreen))
        await pilot.pause()
        text = " ".join(screen_text(app).split())
        assert "No scheduler given" in text and "--scheduler module:variable" in text
        assert NO_SCHEDULER.startswith("No scheduler given")
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.main)


async def test_a_bad_scheduler_is_one_line_on_the_screen(dsn: str) -> None:
    data = PgDataSource(dsn)
    app = make_app(data, None, schedules=ScheduleWatch("schedule_app:no_such_thing", data))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("S")
        await wait_for(lambda: isinstance(app.screen, SchedulesScreen))
        screen = app.screen
        assert isinstance(screen, SchedulesScreen)
        await wait_for(lambda: screen.loaded, what="the failed read")
        await pilot.pause()
        text = screen_text(app)
        assert "✕ cannot read the schedules:" in text and "no_such_thing" in text
        assert "Traceback" not in text


async def test_an_attempt_sent_by_the_scheduler_shows_its_schedule(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    await _tick_ran(db, timedelta(seconds=30))
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(lambda: app.main.query_one(HistoryTable).row_count == 1)
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, DetailScreen))
        await pilot.pause()
        assert "⏱ schedule tick" in screen_text(app)
