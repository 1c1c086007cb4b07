"""The TUI's alerts: the status bar's banner and the alerts screen, against a real PostgreSQL."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from helpers import wait_for
from test_rollups import insert
from tui_conftest_helpers import screen_text

from taskmon.server.alerts import AlertReader, Evaluator, parse_alert_config
from taskmon.tui.app import make_app
from taskmon.tui.screens.alerts import AlertsScreen
from taskmon.tui.sources import PgDataSource
from taskmon.tui.widgets.history_table import HistoryTable
from taskmon.tui.widgets.status_bar import StatusBar

CONFIG = parse_alert_config(
    tomllib.loads(
        """
        [[alerts]]
        name = "lost billing"
        when = "lost > 0"
        over = "10m"
        filter = "task:app:billing*"

        [[alerts]]
        name = "slow"
        when = "p95 > 2s"
        over = "1h"
        """
    )
)


async def test_a_firing_rule_is_a_banner_and_the_alerts_key_lists_it_and_opens_its_history(
    dsn: str, db: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    # given a lost billing attempt, a finished one, and a check that made the rule fire
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {"task_id": "gone", "task_name": "app:billing", "status": "lost"},
        {"task_id": "fine", "task_name": "app:billing", "status": "success", "duration_ms": 5.0},
        {"task_id": "other", "task_name": "app:mail", "status": "lost"},
    ]
    for i, row in enumerate(rows):
        row["created_at"] = now - timedelta(minutes=2, seconds=i)
    await insert(db, rows)
    evaluator = Evaluator(CONFIG)
    await evaluator.evaluate(db, now)
    app = make_app(PgDataSource(dsn), None, alerts=AlertReader(dsn, CONFIG))
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.no_color
        bar = app.main.query_one(StatusBar)
        # then the status bar says so in words, first, at 80 columns
        await wait_for(lambda: bar.alert == "▲ ALERT lost billing (a)")
        await pilot.pause()
        assert screen_text(app).splitlines()[0].startswith(" taskmon · ▲ ALERT lost billing (a)")
        # when the alerts key is pressed, the rules are listed with state, value and time
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, AlertsScreen))
        await pilot.pause()
        text = screen_text(app)
        [firing] = [line for line in text.splitlines() if "lost billing" in line]
        assert "▲ firing" in firing and " 1 " in firing
        assert now.astimezone().strftime("%H:%M") in firing  # when it fired
        [quiet] = [line for line in text.splitlines() if "slow" in line]
        assert "✓ ok" in quiet and "5ms" in quiet
        assert "1 of 2 firing" in text
        # when its history is opened, the main screen shows what the rule counts
        await pilot.press("h")
        await wait_for(lambda: app.screen is app.main)
        assert app.main.state.query == "task:app:billing* status:lost since:10m"
        await wait_for(lambda: bar.filter_text == app.main.state.query)
        await wait_for(
            lambda: (
                [r["task_id"] for r in app.main.history_rows] == ["gone"]
                and app.main.query_one(HistoryTable).row_count == 1
            )
        )
        # when the next check finds the rule clear, the banner goes away
        await evaluator.evaluate(db, now + timedelta(minutes=20))
        assert app.alerts is not None
        app.alerts.refresh()
        await wait_for(lambda: bar.alert == "")
        await pilot.pause()
        assert "ALERT" not in screen_text(app).splitlines()[0]
        await pilot.press("a")
        await wait_for(lambda: isinstance(app.screen, AlertsScreen))
        await pilot.pause()
        assert "✓ resolved" in screen_text(app)
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.main)


async def test_without_rules_the_alerts_key_says_how_to_add_some(dsn: str) -> None:
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a")
        await pilot.pause()
        assert app.screen is app.main
        assert any("no alert rules" in str(n.message) for n in app._notifications)
        assert app.main.query_one(StatusBar).alert == ""
