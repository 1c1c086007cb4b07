"""The TUI driven by Pilot against a real PostgreSQL and a real in-process hub."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from helpers import wait_for, with_database
from tui_conftest_helpers import screen_text

from taskmon.domain.events import AttemptRecord, Status
from taskmon.server.hub import Hub
from taskmon.store.schema import AttemptRow
from taskmon.tui.app import TaskmonApp, make_app
from taskmon.tui.screens.detail import DetailScreen
from taskmon.tui.screens.help import HelpScreen
from taskmon.tui.sources import HubLiveSource, InProcessHubSource, PgDataSource
from taskmon.tui.widgets.filter_bar import FilterBar
from taskmon.tui.widgets.history_table import HistoryTable
from taskmon.tui.widgets.live_feed import LiveFeed
from taskmon.tui.widgets.status_bar import StatusBar
from taskmon.tui.widgets.task_table import TaskTable
from taskmon.tui.widgets.too_small import TooSmall
from taskmon.worker.recorder import Recorder

SIZE = (120, 36)

_INSERT = """
INSERT INTO task_execution_logs (task_id, attempt, task_name, status, worker, params,
    error_type, error_message, traceback, started_at, finished_at, duration_ms, created_at)
VALUES ($1, $2, $3, $4, 'host-1:1', $5::jsonb, $6, $7, $8, $9, $10, $11, $9)
"""


async def insert(
    db: asyncpg.Connection[Any],
    task_id: str,
    *,
    age: timedelta,
    status: str = "success",
    task: str = "app.tasks:extract",
    attempt: int = 0,
    duration_ms: float = 100.0,
) -> None:
    created = datetime.now(UTC) - age
    failed = status in ("failed", "retrying")
    await db.execute(
        _INSERT,
        task_id,
        attempt,
        task,
        status,
        json.dumps({"args": [task_id], "kwargs": {"n": attempt}}),
        "ValueError" if failed else None,
        "bad input" if failed else None,
        "Traceback (most recent call last):\nValueError: bad input" if failed else None,
        created,
        created + timedelta(milliseconds=duration_ms),
        duration_ms,
    )


@pytest.fixture
async def recorded(db: asyncpg.Connection[Any]) -> asyncpg.Connection[Any]:
    """5 attempts 10 min old (2 failed), 7 two hours old, 11 three days old."""
    for i in range(5):
        await insert(
            db,
            f"recent-{i}",
            age=timedelta(minutes=10, seconds=i),
            status="failed" if i < 2 else "success",
        )
    for i in range(7):
        await insert(db, f"hours-{i}", age=timedelta(hours=2, seconds=i), task="app.tasks:load")
    for i in range(11):
        await insert(db, f"days-{i}", age=timedelta(days=3, seconds=i), task="app.tasks:notify")
    # one task retried: two attempts of the same task id
    await insert(db, "retried", age=timedelta(minutes=5), status="retrying")
    await insert(db, "retried", age=timedelta(minutes=4), attempt=1)
    return db


def attempt(
    task_id: str, status: Status = Status.SUCCESS, task: str = "app.tasks:live"
) -> AttemptRecord:
    now = datetime.now(UTC)
    return AttemptRecord(
        task_id=task_id,
        attempt=0,
        task_name=task,
        status=status,
        worker="host-9:9",
        started_at=now - timedelta(milliseconds=50),
        finished_at=now,
        duration_ms=50.0,
        error_type="ValueError" if status is Status.FAILED else None,
        error_message="bad" if status is Status.FAILED else None,
    )


def feed_text(app: TaskmonApp) -> str:
    return "\n".join(app.main.query_one(LiveFeed).plain_lines())


def history_rows(app: TaskmonApp) -> list[AttemptRow]:
    return app.main.history_rows


async def started(app: TaskmonApp) -> None:
    await wait_for(
        lambda: app.main.stats is not None and app.main.query_one(HistoryTable).row_count
    )


async def test_startup_shows_metrics_and_history(dsn: str, recorded: Any) -> None:
    # given 25 recorded attempts, 7 of them within the last hour
    app = make_app(PgDataSource(dsn), None, window="1h")
    async with app.run_test(size=SIZE):
        # when the app starts
        await started(app)
        # then the metrics count the window and the history lists everything, newest first
        assert app.main.stats.total == 7
        assert app.main.stats.by_status.get("failed") == 2
        rows = history_rows(app)
        assert len(rows) == 25
        assert rows[0]["task_id"] == "retried" and rows[0]["attempt"] == 1
        created = [r["created_at"] for r in rows]
        assert created == sorted(created, reverse=True)
        tasks = app.main.query_one(TaskTable)
        assert "app.tasks:extract" in tasks.task_names
        assert app.main.query_one(StatusBar).connection == "offline"  # no live source given


async def test_connection_state_stays_visible_at_80_columns_with_a_long_database(
    dsn: str,
) -> None:
    # an embedded server's label: a socket path longer than the terminal is wide
    long_label = (
        "postgresql://postgres@/taskmon?host=/home/someone/.local/share/taskmon/pg/run&port=5432"
    )
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=(80, 24)) as pilot:
        bar = app.main.query_one(StatusBar)
        bar.database = long_label
        await pilot.pause()
        lines = bar.render().plain.split("\n")
        assert len(lines) == 2 and all(len(line) <= bar.content_size.width for line in lines)
        assert lines[0].startswith("taskmon · ✕ offline · last")
        assert lines[1].startswith("db postgresql://postgres@/") and lines[1].endswith("port=5432")
        assert "…" in lines[1]
        # a database error is the state, first; what does not fit moves down, the label last
        bar.error = "connection refused"
        await pilot.pause()
        lines = bar.render().plain.split("\n")
        assert lines[0].startswith("taskmon · ✕ db: connection refused · ✕ offline · last")
        assert lines[1].startswith("filter none · db postgresql://")
        assert all(len(line) <= bar.content_size.width for line in lines)
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=SIZE) as pilot:  # wide enough: one line
        bar = app.main.query_one(StatusBar)
        bar.database = "postgresql://postgres@127.0.0.1:5432/app"
        await pilot.pause()
        assert bar.render().plain.endswith(" · db postgresql://postgres@127.0.0.1:5432/app")
        assert "\n" not in bar.render().plain


async def test_new_event_appears_in_feed_and_history(
    dsn: str, recorded: Any, pg_recorder: Recorder
) -> None:
    app = make_app(PgDataSource(dsn), InProcessHubSource(dsn))
    async with app.run_test(size=SIZE):
        await started(app)
        await wait_for(lambda: app.main.query_one(StatusBar).connection == "live")
        # when a worker records an attempt
        pg_recorder.submit(attempt("fresh-1"))
        await pg_recorder.flush()
        # then it shows in the feed, and the history (first page) re-reads
        await wait_for(lambda: "app.tasks:live" in feed_text(app))
        feed = app.main.query_one(LiveFeed)
        assert feed.received == 1
        await wait_for(lambda: history_rows(app)[0]["task_id"] == "fresh-1")
        assert app.main.query_one(StatusBar).last_event != "-"


async def test_filter_bar_filters_history(dsn: str, recorded: Any) -> None:
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=SIZE) as pilot:
        await started(app)
        # a query that does not parse shows its error inline and is not applied
        await pilot.press("slash", *"status:bogus")
        error = app.main.query_one("#filter-error")
        assert "bogus" in str(error.render())
        await pilot.press("enter")
        assert app.main.state.query == ""
        # when a valid filter is typed and applied
        bar = app.main.query_one(FilterBar)
        await pilot.press(*["backspace"] * len("bogus"), *"failed", "enter")
        # then only failed attempts are listed and the status bar says so
        await wait_for(lambda: {r["status"] for r in history_rows(app)} == {"failed"})
        assert len(history_rows(app)) == 2
        assert not bar.display
        assert app.main.query_one(StatusBar).filter_text == "status:failed"
        await wait_for(lambda: app.main.stats.total == 2)
        # and esc in the bar clears it
        await pilot.press("slash", "escape")
        await wait_for(lambda: len(history_rows(app)) == 25)
        assert app.main.query_one(StatusBar).filter_text == ""


async def test_a_relative_since_in_the_filter_follows_the_clock(
    dsn: str, pg_recorder: Recorder
) -> None:
    # given attempts begun 3 h and 30 min ago, and a screen filtered on since:1h
    now = datetime.now(UTC)
    for task_id, ago in (("three-hours", timedelta(hours=3)), ("half-hour", timedelta(minutes=30))):
        pg_recorder.submit(dataclasses.replace(attempt(task_id), started_at=now - ago))
    await pg_recorder.flush()
    clock = [now]
    app = make_app(PgDataSource(dsn), None, query="since:1h", clock=lambda: clock[0])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: [r["task_id"] for r in history_rows(app)] == ["half-hour"])
        # when the screen's clock is 2.5 h earlier (the same as staying open 2.5 h on
        # rows that keep coming) and it re-reads
        clock[0] = now - timedelta(hours=2, minutes=30)
        await pilot.press("r")
        # then "since:1h" counts back from then
        await wait_for(
            lambda: [r["task_id"] for r in history_rows(app)] == ["half-hour", "three-hours"]
        )


async def test_status_key_cycles_the_status_filter(dsn: str, recorded: Any) -> None:
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=SIZE) as pilot:
        await started(app)
        await pilot.press("s")
        await wait_for(lambda: {r["status"] for r in history_rows(app)} == {"failed"})
        await pilot.press("s")  # running: none recorded
        await wait_for(lambda: app.main.query_one(HistoryTable).row_count == 0)
        await pilot.press("s")
        await wait_for(lambda: {r["task_id"] for r in history_rows(app)} == {"retried"})
        assert app.main.state.status == "retrying"


async def test_a_typed_relative_since_is_shown_as_typed_and_is_the_window(
    dsn: str, recorded: Any
) -> None:
    app = make_app(PgDataSource(dsn), None, window="1h")
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app)
        # when the user types a relative since
        await pilot.press("slash", *"since:2m", "enter")
        # then the status bar shows it as typed, and the window is those two minutes
        bar = app.main.query_one(StatusBar)
        metrics = app.main.query_one("#metrics")
        await wait_for(lambda: app.main.stats is not None and app.main.stats.total == 0)
        await wait_for(lambda: str(metrics.border_title) == "Metrics · last 2m")
        assert (bar.filter_text, bar.window) == ("since:2m", "2m")
        assert "window 2m · filter since:2m" in screen_text(app)
        assert app.main.stats.until - app.main.stats.since == timedelta(minutes=2)


async def test_the_status_key_goes_on_from_a_typed_status(dsn: str, recorded: Any) -> None:
    # given a screen filtered on a typed status:failed
    app = make_app(PgDataSource(dsn), None, query="status:failed")
    async with app.run_test(size=SIZE) as pilot:
        await started(app)
        assert {r["status"] for r in history_rows(app)} == {"failed"}
        statuses = []
        for _ in range(5):
            # when s is pressed, each press shows something else
            await pilot.press("s")
            await wait_for(lambda: not app.main._history_busy and not app.main.workers)
            state = app.main.state
            statuses.append((state.status, app.main.query_one(StatusBar).filter_text))
        assert statuses == [
            ("running", "status:running"),
            ("retrying", "status:retrying"),
            ("lost", "status:lost"),
            ("pending", "status:pending"),
            ("all", ""),
        ]
        # and "all" lists every status, not the typed one again
        await wait_for(lambda: len(history_rows(app)) == 25)
        assert {"failed", "success", "retrying"} <= {r["status"] for r in history_rows(app)}


async def test_pause_and_resume_count_new_events(dsn: str, pg_recorder: Recorder) -> None:
    app = make_app(PgDataSource(dsn), InProcessHubSource(dsn))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: app.main.query_one(StatusBar).connection == "live")
        feed = app.main.query_one(LiveFeed)
        pg_recorder.submit(attempt("before-pause"))
        await pg_recorder.flush()
        await wait_for(lambda: "before-pause" in feed_text(app) or feed.line_count == 1)
        # when paused, new events are counted but the panel stands still
        await pilot.press("space")
        assert feed.paused
        for i in range(3):
            pg_recorder.submit(attempt(f"paused-{i}"))
        await pg_recorder.flush()
        await wait_for(lambda: feed.new_while_paused == 3)
        # the panel's flush has run since (it writes the count in the title): it showed nothing
        await wait_for(lambda: "+3 new" in str(feed.border_subtitle), what="a flush while paused")
        assert feed.line_count == 1
        assert feed.border_subtitle == "PAUSED · +3 new"
        # then space catches up
        await pilot.press("space")
        await wait_for(lambda: feed.line_count == 4)
        assert not feed.paused
        assert feed.received == 4


async def test_feed_lines_run_in_time_order_whatever_the_batch_order(
    dsn: str, pg_recorder: Recorder
) -> None:
    app = make_app(PgDataSource(dsn), InProcessHubSource(dsn))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: app.main.query_one(StatusBar).connection == "live")
        feed = app.main.query_one(LiveFeed)
        await pilot.press("space")  # what arrives waits, then shows at once
        # given three attempts written in one batch, whose task ids sort against their times
        now = datetime.now(UTC)
        for task_id, ago_s in (("a-last", 0), ("b-middle", 1), ("c-first", 2)):
            record = attempt(task_id, task=f"app.tasks:{task_id}")
            ended = now - timedelta(seconds=ago_s)
            pg_recorder.submit(
                dataclasses.replace(
                    record, started_at=ended - timedelta(milliseconds=50), finished_at=ended
                )
            )
        await pg_recorder.flush()
        await wait_for(lambda: feed.new_while_paused == 3)
        # when they are shown
        await pilot.press("space")
        await wait_for(lambda: feed.line_count == 3)
        # then the oldest comes first: times never run backwards
        names = [line.split()[3] for line in feed.plain_lines()]
        assert names == ["app.tasks:c-first", "app.tasks:b-middle", "app.tasks:a-last"]
        # and the newest event is the last one seen, whichever came last
        assert datetime.fromisoformat(feed.last_event_at) == now


async def test_detail_screen_opens_and_closes(dsn: str, recorded: Any) -> None:
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=SIZE) as pilot:
        await started(app)
        # the newest row is the retried task's second attempt
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, DetailScreen))
        detail = app.screen
        assert isinstance(detail, DetailScreen)
        await wait_for(lambda: detail.attempts is not None)
        assert [a["attempt"] for a in detail.attempts or []] == [0, 1]
        assert json.loads(detail.params_text or "") == {"args": ["retried"], "kwargs": {"n": 1}}
        await pilot.press("y")
        assert app.clipboard == "retried"
        await pilot.press("escape")
        await wait_for(lambda: not isinstance(app.screen, DetailScreen))
        assert app.screen is app.main


LONG_TRACEBACK = """Traceback (most recent call last):
  File "/srv/app/worker.py", line 88, in run
    result = await task(*args)
  File "/srv/app/tasks.py", line 42, in extract
    rows = await source.fetch(batch)
  File "/srv/app/source.py", line 17, in fetch
    async with session.get(url) as response:
  File "/srv/app/http.py", line 230, in get
    return await self._request("GET", url)
  File "/srv/app/http.py", line 301, in _request
    raise TimeoutError("upstream timed out after 30s")
TimeoutError: upstream timed out after 30s"""


async def test_a_failure_opens_on_its_error_and_traceback_at_80x24(
    dsn: str, recorded: asyncpg.Connection[Any]
) -> None:
    # given a failure with a twelve-line traceback, the newest failure recorded
    created = datetime.now(UTC) - timedelta(minutes=1)
    await recorded.execute(
        _INSERT, "slow-source", 0, "app.tasks:extract", "failed", "{}", "TimeoutError",
        "upstream timed out after 30s", LONG_TRACEBACK, created, created, 30_000.0,
    )  # fmt: skip
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app)
        # when the user shows failures and opens the newest
        await pilot.press("s")
        await wait_for(lambda: [r["task_id"] for r in history_rows(app)][:1] == ["slow-source"])
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, DetailScreen))
        await pilot.pause()
        # then the error and the whole traceback are on screen without scrolling
        text = screen_text(app)
        assert "TimeoutError: upstream timed out after 30s" in text.splitlines()[1]
        for line in LONG_TRACEBACK.splitlines():
            assert line in text, line


LONG_ERROR = "upstream timed out after 30s while reading batch 17 of s3://bucket/extract/2026"


@pytest.mark.parametrize("size", [(80, 24), (120, 36)], ids=["80x24", "120x36"])
async def test_history_columns_fit_the_width_error_included(
    dsn: str, recorded: asyncpg.Connection[Any], size: tuple[int, int]
) -> None:
    # given a failure whose error is longer than any terminal is wide
    created = datetime.now(UTC) - timedelta(minutes=1)
    await recorded.execute(
        _INSERT, "long-error", 0, "app.tasks:extract", "failed", "{}", "TimeoutError",
        LONG_ERROR, None, created, created, 30_000.0,
    )  # fmt: skip
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=size) as pilot:
        await started(app)
        await pilot.pause()
        table = app.main.query_one(HistoryTable)
        # then every column fits: there is nothing to scroll sideways to
        labels = [str(c.label) for c in table.columns.values()]
        assert labels[-1] == "error", labels
        used = sum(c.get_render_width(table) for c in table.columns.values())
        assert used <= table.scrollable_content_region.width
        assert table.max_scroll_x == 0
        # and the error shows, cut at a word with an ellipsis, never mid-word
        full = f"TimeoutError {LONG_ERROR}"
        assert history_rows(app)[0]["task_id"] == "long-error"
        assert table.get_row_at(0)[2].plain == "app.tasks:extract"  # the name stays whole
        shown = table.get_row_at(0)[-1].plain
        assert shown.endswith("…") and len(shown) >= 12, shown
        assert full.startswith(shown[:-1]) and full[len(shown) - 1] == " ", shown
        assert shown in screen_text(app)


async def test_80x24_without_colour_reads_in_words_and_works_from_the_keyboard(
    dsn: str, recorded: Any, pg_recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(PgDataSource(dsn), InProcessHubSource(dsn))
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.no_color
        await started(app)
        bar = app.main.query_one(StatusBar)
        await wait_for(lambda: bar.connection == "live")
        # given a live failure whose error is longer than the feed is wide
        failed = attempt("live-failure", Status.FAILED)
        pg_recorder.submit(dataclasses.replace(failed, error_message=LONG_ERROR))
        await pg_recorder.flush()
        feed = app.main.query_one(LiveFeed)
        await wait_for(lambda: feed.line_count == 1)
        await pilot.pause()
        lines = screen_text(app).splitlines()
        # then the state and every status read as symbol and word
        assert lines[0].startswith(" taskmon · ● live · last")
        assert any("✕ failed" in line and "app.tasks:extract" in line for line in lines)
        # and the feed's line fits the panel, its error cut at a word
        feed_top = next(i for i, line in enumerate(lines) if line[1:].startswith("Live ·"))
        [live] = [line for line in lines[feed_top:] if "app.tasks:live" in line]
        assert "✕ failed" in live and "ValueError upstream" in live
        assert live.rstrip().endswith("…") and len(live) <= 80
        # the keyboard reaches every panel; the focused one is marked by its border's shape
        await pilot.press("tab")
        assert app.focused is feed
        assert any(line.startswith("▀Live") for line in screen_text(app).splitlines())
        await pilot.press("tab")
        assert isinstance(app.focused, TaskTable)
        await pilot.press("enter")  # the busiest task in the window
        await wait_for(lambda: bar.filter_text == "task:app.tasks:extract")
        await wait_for(lambda: {r["task_name"] for r in history_rows(app)} == {"app.tasks:extract"})
        await pilot.press("tab", "enter")
        await wait_for(lambda: isinstance(app.screen, DetailScreen))
        await pilot.press("escape", "question_mark")
        await wait_for(lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.main)


async def test_window_cycling_changes_the_numbers(dsn: str, recorded: Any) -> None:
    app = make_app(PgDataSource(dsn), None, window="15m")
    async with app.run_test(size=SIZE) as pilot:
        await started(app)
        assert app.main.stats.total == 7
        totals = {}
        for window in ("1h", "24h", "7d", "30d", "15m"):
            await pilot.press("w")
            await wait_for(
                lambda w=window: (
                    app.main.state.window == w
                    and app.main.stats is not None
                    and app.main.stats.until - app.main.stats.since == app.main.state.window_delta
                )
            )
            totals[window] = app.main.stats.total
        assert totals == {"1h": 7, "24h": 14, "7d": 25, "30d": 25, "15m": 7}
        assert app.main.query_one(StatusBar).window == "15m"


async def test_hub_restart_reconnects_and_fills_the_gap(dsn: str, pg_recorder: Recorder) -> None:
    hub = Hub(dsn=dsn)
    url = await hub.start("127.0.0.1", 0)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    app = make_app(PgDataSource(dsn), HubLiveSource(url, max_backoff=0.3))
    try:
        async with app.run_test(size=SIZE):
            bar = app.main.query_one(StatusBar)
            await wait_for(lambda: bar.connection == "live")
            pg_recorder.submit(attempt("seen-live"))
            await pg_recorder.flush()
            await wait_for(lambda: "app.tasks:live" in feed_text(app))
            # when the hub goes away, attempts are written meanwhile, and it comes back
            await hub.stop()
            await wait_for(lambda: bar.connection in ("reconnecting", "offline"))
            assert "◌ reconnecting" in str(bar.connection_text()) or bar.connection == "offline"
            for i in range(3):
                pg_recorder.submit(attempt(f"missed-{i}", task="app.tasks:missed"))
            await pg_recorder.flush()
            hub = Hub(dsn=dsn)
            await hub.start("127.0.0.1", port)
            # then the app reconnects and reads the missed attempts from the database
            await wait_for(lambda: bar.connection == "live")
            await wait_for(lambda: "filled" in feed_text(app))
            text = feed_text(app)
            assert text.count("app.tasks:missed") == 3
            assert "live connection lost" in text
            # each filled line names the attempt's worker, as a live line does
            filled = [line for line in text.splitlines() if "app.tasks:missed" in line]
            assert all("  host-9:9" in line for line in filled), filled
    finally:
        await hub.stop()


async def test_an_attempt_that_ends_while_disconnected_is_shown_ending(
    dsn: str, pg_recorder: Recorder
) -> None:
    # given an attempt the feed showed starting half a minute before the outage
    hub = Hub(dsn=dsn)
    url = await hub.start("127.0.0.1", 0)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    app = make_app(PgDataSource(dsn), HubLiveSource(url, max_backoff=0.3))
    begun = datetime.now(UTC) - timedelta(seconds=30)
    running = AttemptRecord(
        task_id="long-1", attempt=0, task_name="app.tasks:long", status=Status.RUNNING,
        worker="host-9:9", started_at=begun,
    )  # fmt: skip
    try:
        async with app.run_test(size=SIZE):
            bar = app.main.query_one(StatusBar)
            feed = app.main.query_one(LiveFeed)
            await wait_for(lambda: bar.connection == "live")
            pg_recorder.submit(running)
            await pg_recorder.flush()
            await wait_for(lambda: ("long-1", 0) in feed.open_attempts)
            pg_recorder.submit(attempt("seen-live"))  # the last event before the outage: now
            await pg_recorder.flush()
            await wait_for(lambda: "app.tasks:live" in feed_text(app))
            # when it fails while the hub is away
            await hub.stop()
            await wait_for(lambda: bar.connection in ("reconnecting", "offline"))
            ended = dataclasses.replace(
                running,
                status=Status.FAILED,
                finished_at=datetime.now(UTC),
                duration_ms=30_000.0,
                error_type="ValueError",
                error_message="gave up",
            )
            pg_recorder.submit(ended)
            await pg_recorder.flush()
            hub = Hub(dsn=dsn)
            await hub.start("127.0.0.1", port)
            # then the fill reads its end, though it began before the gap
            await wait_for(lambda: "filled" in feed_text(app))
            lines = feed_text(app).splitlines()
            [end] = [line for line in lines if "app.tasks:long" in line and "failed" in line]
            assert "gave up" in end
            assert ("long-1", 0) not in feed.open_attempts
    finally:
        await hub.stop()


async def test_database_errors_are_shown_and_the_app_keeps_running(server_dsn: str) -> None:
    # a database that does not exist: every read fails
    bad = with_database(server_dsn, "taskmon_no_such_db")
    app = make_app(PgDataSource(bad), None)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        bar = app.main.query_one(StatusBar)
        await wait_for(lambda: bar.error != "")
        assert "taskmon_no_such_db" in bar.error
        assert any("database error" in (n.title or "") for n in app._notifications)
        await pilot.press("r")
        # the refresh's reads have failed again (and been reported), not crashed the app
        reads = [w for w in app.workers if w.group in ("metrics", "history")]
        await app.workers.wait_for_complete(reads)
        await pilot.pause()
        assert app.is_running


async def test_a_database_without_tables_is_the_state_not_live(empty_dsn: str) -> None:
    # given a database with no taskmon tables, and a live feed that connects
    app = make_app(PgDataSource(empty_dsn), InProcessHubSource(empty_dsn))
    async with app.run_test(size=(80, 24)) as pilot:
        bar = app.main.query_one(StatusBar)
        await wait_for(lambda: bar.error != "" and bar.connection == "live")
        await pilot.pause()
        # then the status bar's state is the database's problem and how to fix it
        assert bar.error == "no taskmon tables — run taskmon db upgrade"
        first = screen_text(app).splitlines()[0]
        assert first.startswith(" taskmon · ✕ db: no taskmon tables — run taskmon db upgrade")
        assert "● live" not in screen_text(app)


async def test_too_small_terminal_says_so(dsn: str) -> None:
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=(60, 20)) as pilot:
        message = app.main.query_one(TooSmall)
        await wait_for(lambda: message.display and message.region.width > 0)
        assert str(message.render()) == "terminal too small: 60×20, need 80×24"
        assert not app.main.query_one(HistoryTable).region.width
        await pilot.resize_terminal(80, 24)
        await wait_for(lambda: app.main.query_one(HistoryTable).region.width == 80)
        assert not message.region.width


async def test_help_lists_every_key_and_palette_offers_actions(dsn: str) -> None:
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await wait_for(lambda: isinstance(app.screen, HelpScreen))
        screen = app.screen
        assert isinstance(screen, HelpScreen)
        keys = {key for _, key, _ in screen.rows}
        listed = {part.strip() for key in keys for part in key.replace(" / ", ",").split(",")}
        for key in (
            "/",
            "s",
            "w",
            "space",
            "n",
            "p",
            "r",
            "q",
            "?",
            "esc",
            "y",
            "j",
            "k",
            "g",
            "G",
            "tab",
            "PgUp",
            "PgDn",
            "up",
            "down",
            "ctrl+c",
            "ctrl+p",
            "enter",
            "o",
            "O",
        ):
            assert key in listed, key
        # and it shows them: the whole table at 120 columns, wrapped to fit at 80
        table = screen.query_one("#help-table")
        for width, height in (SIZE, (80, 24)):
            await pilot.resize_terminal(width, height)
            await wait_for(lambda w=width: screen.region.width == w)
            await pilot.pause()
            body = screen.query_one("#help-body")
            assert screen.region.contains_region(body.region)
            assert table.region.width >= min(92, width - 6)
            assert table.virtual_size.height >= len(screen.rows)
        await pilot.press("escape")
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {
            "Filter",
            "Cycle status filter",
            "Cycle window",
            "Pause / resume feed",
            "Next page",
            "Previous page",
            "Refresh",
            "Keys",
        } <= titles


async def test_history_pages_forward_and_back(dsn: str, recorded: Any) -> None:
    app = make_app(PgDataSource(dsn), None, page_size=10)
    async with app.run_test(size=SIZE) as pilot:
        await started(app)
        first = [r["id"] for r in history_rows(app)]
        assert len(first) == 10
        await pilot.press("n")
        await wait_for(lambda: app.main.page_index == 1 and history_rows(app)[0]["id"] not in first)
        second = [r["id"] for r in history_rows(app)]
        await pilot.press("n")
        await wait_for(lambda: len(history_rows(app)) == 5)
        await pilot.press("p", "p")
        await wait_for(lambda: [r["id"] for r in history_rows(app)] == first)
        assert not set(first) & set(second)


def test_bad_query_on_the_command_line_is_one_line_exit_2() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "taskmon",
            "tui",
            "--dsn",
            "postgresql://x@127.0.0.1:1/x",
            "--hub-url",
            "ws://127.0.0.1:1/",
            "--query",
            "status:bogus",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "bogus" in result.stderr


def test_cli_imports_textual_only_when_tui_runs() -> None:
    code = "import sys, taskmon.cli; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
