"""The TUI's workers-and-queues view (key W) and its status-bar warning, on a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from helpers import wait_for
from tui_conftest_helpers import screen_text

from taskmon.store.workers import WorkerBeat, beat
from taskmon.tui.app import make_app
from taskmon.tui.screens.workers import PgWorkersSource, WorkersScreen
from taskmon.tui.sources import PgDataSource
from taskmon.tui.widgets.status_bar import StatusBar


def _beat(name: str, *, stopped: bool = False) -> WorkerBeat:
    host, pid = name.split(":")
    return WorkerBeat(
        name, host, int(pid), "b.Broker", "jobs", "0.1.0", "0.11", 5.0, 2, 40, 3, stopped
    )


async def test_workers_view_and_the_no_worker_alive_warning(
    dsn: str, db: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    # given a stale worker, a stopped one, and a queue whose backlog grows
    await beat(db, _beat("host-a:11"))
    await db.execute("UPDATE taskmon_workers SET last_seen = now() - interval '2 minutes'")
    await beat(db, _beat("host-b:22"))
    await beat(db, _beat("host-b:22", stopped=True))
    await db.execute(
        "INSERT INTO taskmon_queue_samples (broker, queue, sampled_at, sampled_by, depth,"
        " oldest_wait_s) VALUES ('ListQueueBroker', 'jobs', now() - interval '1 minute',"
        " 'host-a:11', 2, 3), ('ListQueueBroker', 'jobs', now(), 'host-a:11', 7, 65)"
    )
    app = make_app(PgDataSource(dsn), None, workers=PgWorkersSource(dsn))
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.no_color
        bar = app.main.query_one(StatusBar)
        # then the status bar warns in words, first, at 80 columns
        await wait_for(lambda: "no worker alive" in bar.worker_warning)
        assert bar.worker_warning == "✕ no worker alive (W) · ↑ backlog jobs 7 (W)"
        await pilot.pause()
        assert screen_text(app).splitlines()[0].startswith(" taskmon · ✕ no worker alive (W)")

        # when W is pressed, workers and queues are listed with states as words and symbols
        await pilot.press("W")
        await wait_for(lambda: isinstance(app.screen, WorkersScreen))
        await pilot.pause()
        text = screen_text(app)
        [stale] = [line for line in text.splitlines() if "host-a:11" in line]
        assert "⚠ stale" in stale and "2m0" in stale  # last seen two minutes ago
        [stopped] = [line for line in text.splitlines() if "host-b:22" in line]
        assert "■ stopped" in stopped and " 40 " in stopped and " 3 " in stopped
        [queue] = [line for line in text.splitlines() if " jobs " in line and "↑" in line]
        assert " 7 " in queue and "1m05s" in queue and "↑ +5" in queue
        assert "● alive 0" in text and "⚠ stale 1" in text and "■ stopped 1" in text

        # and escape goes back to the main screen
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.main)


async def test_a_live_worker_clears_the_warning(dsn: str, db: asyncpg.Connection[Any]) -> None:
    await beat(db, _beat("host-c:33"))
    app = make_app(PgDataSource(dsn), None, workers=PgWorkersSource(dsn))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("W")
        await wait_for(lambda: isinstance(app.screen, WorkersScreen))
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, WorkersScreen)
        await wait_for(lambda: [w["state"] for w in screen.worker_rows] == ["alive"])
        await pilot.pause()
        assert "● alive" in screen_text(app)
        assert app.main.query_one(StatusBar).worker_warning == ""


async def test_tasks_sent_and_not_started_are_listed_by_name(
    dsn: str, db: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    # given two exports sent 10 minutes ago and never started, and one sent just now
    await db.execute(
        "INSERT INTO task_execution_logs (task_id, attempt, task_name, status, queue, created_at)"
        " VALUES ('p1', 0, 'app:export', 'pending', 'jobs', now() - interval '10 minutes'),"
        " ('p2', 0, 'app:export', 'pending', 'jobs', now() - interval '9 minutes'),"
        " ('p3', 0, 'app:sync', 'pending', 'jobs', now())"
    )
    app = make_app(PgDataSource(dsn), None, workers=PgWorkersSource(dsn))
    async with app.run_test(size=(80, 24)) as pilot:
        bar = app.main.query_one(StatusBar)
        # then the status bar says so in words
        await wait_for(lambda: bar.worker_warning == "… 2 not started (W)")
        # and W lists them by name, with the oldest wait; the fresh one is not listed
        await pilot.press("W")
        await wait_for(lambda: isinstance(app.screen, WorkersScreen))
        await pilot.pause()
        text = screen_text(app)
        assert "… Not started after 1m00s: 2" in text
        [row] = [line for line in text.splitlines() if "app:export" in line]
        assert " jobs " in row and " 2 " in row and "10m" in row
        assert "app:sync" not in text
