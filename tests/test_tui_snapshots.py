"""Snapshots of the TUI's screens at 80x24 and 120x36.

They check layout, so they run on fixed data (``tui_conftest_helpers``) with a
frozen clock; the behaviour against the real database is in ``test_tui.py``.
Update with ``pytest tests/test_tui_snapshots.py --snapshot-update`` and look
at the SVGs under ``tests/__snapshots__/`` before accepting them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
from helpers import wait_for
from textual.pilot import Pilot
from textual.widgets import Static
from tui_conftest_helpers import FakeData, FakeLive, frozen_clock, sample_event

from taskmon.tui.app import TaskmonApp, make_app
from taskmon.tui.screens.detail import DetailScreen
from taskmon.tui.screens.help import HelpScreen
from taskmon.tui.sources import LiveDisconnected
from taskmon.tui.widgets.history_table import HistoryTable
from taskmon.tui.widgets.live_feed import LiveFeed
from taskmon.tui.widgets.status_bar import StatusBar

if TYPE_CHECKING:
    from taskmon.tui.screens.main import MainScreen

SMALL = (80, 24)
LARGE = (120, 36)
EVENTS = 20

SnapCompare = Callable[..., bool]


def build_app(*, query: str = "", live: FakeLive | None = None) -> TaskmonApp:
    if live is None:
        live = FakeLive()
        statuses = ("success", "failed", "running", "success", "retrying")
        live.push_events([sample_event(i, status=statuses[i % 5]) for i in range(EVENTS)])
    return make_app(FakeData(), live, query=query, clock=frozen_clock)


def loaded(
    *then: str, shows: Callable[[TaskmonApp], bool] | None = None, what: str = ""
) -> Callable[[Pilot[None]], Awaitable[None]]:
    """Wait until metrics, history and the feed are on screen, press `then`, wait for `shows`.

    The snapshot is taken once the app is in the state it shows (`shows`, named
    `what`), never after a fixed while: a loaded machine only makes it slower.
    """

    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, TaskmonApp)
        main = app.main
        await wait_for(
            lambda: _Loaded(main),
            what="metrics, history and the live feed on screen, showing its newest lines",
        )
        if then:
            await pilot.press(*then)
        if shows is not None:
            await wait_for(lambda: shows(app), what=what)
        await pilot.pause()

    return run_before


class _Loaded:
    """Whether the main screen shows what a snapshot needs; its repr says what is missing.

    The feed must have its size, show its newest lines and the scrollbar they
    need (it gets its size and scrollbar at a layout after the lines arrive: a
    snapshot taken before that shows a moment, not the screen).
    """

    def __init__(self, main: MainScreen) -> None:
        if main.stats is None:  # and before the first metrics the panels may not be mounted yet
            self.parts: dict[str, object] = {"metrics": False}
            self.ok = False
            return
        feed = main.query_one(LiveFeed)
        rows = main.query_one(HistoryTable).row_count
        self.parts = {
            "metrics": True,
            "history rows": rows,
            "feed received": feed.received,
            "feed waiting": feed.waiting,
            "feed height": feed.size.height,
            "feed scroll_y": feed.scroll_y,
            "feed max_scroll_y": feed.max_scroll_y,
            "feed lines": feed.line_count,
            "feed scrollbar": feed.show_vertical_scrollbar,
        }
        # the feed scrolls to its newest lines at once; the scrollbar they need
        # shows at the next layout, which the snapshot must wait for too
        overflows = feed.virtual_size.height > feed.container_size.height
        self.ok = (
            rows > 0
            and feed.received >= EVENTS
            and not feed.waiting
            and feed.size.height > 0
            and feed.scroll_y >= feed.max_scroll_y
            and feed.show_vertical_scrollbar == overflows
        )

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return ", ".join(f"{name} {value}" for name, value in self.parts.items())


def feed(app: TaskmonApp) -> LiveFeed:
    return app.main.query_one(LiveFeed)


def filter_error(app: TaskmonApp) -> str:
    return str(app.main.query_one("#filter-error", Static).render())


def detail_loaded(app: TaskmonApp) -> bool:
    screen = app.screen
    return isinstance(screen, DetailScreen) and screen.attempts is not None


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_main_screen(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    """The main screen: status bar, metrics, tasks, history and the live feed."""
    assert snap_compare(build_app(), terminal_size=size, run_before=loaded())


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_filter_bar_with_error(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    """`/` opens the filter bar; a bad query shows its error inline."""
    keys = ("slash", *"status:bogus")
    shown = loaded(
        *keys,
        shows=lambda app: filter_error(app).startswith("✕ status: unknown status 'bogus'"),
        what="the filter bar's error",
    )
    assert snap_compare(build_app(), terminal_size=size, run_before=shown)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_filtered_and_paused(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    """A status filter from the command line, the feed paused."""
    app = build_app(query="status:failed")
    paused = loaded("space", shows=lambda app: feed(app).paused, what="the feed paused")
    assert snap_compare(app, terminal_size=size, run_before=paused)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_detail_screen(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    """`enter` on a failed attempt: fields, attempts, params and traceback."""
    # the third row is a failed attempt with a traceback
    keys = ("down", "down", "enter")
    shown = loaded(*keys, shows=detail_loaded, what="the detail screen with its attempts")
    assert snap_compare(build_app(), terminal_size=size, run_before=shown)


def test_help_screen(snap_compare: SnapCompare) -> None:
    """`?` lists every key."""
    shown = loaded(
        "question_mark", shows=lambda app: isinstance(app.screen, HelpScreen), what="the help"
    )
    assert snap_compare(build_app(), terminal_size=LARGE, run_before=shown)


def test_reconnecting(snap_compare: SnapCompare) -> None:
    """The hub went away: the status bar says so in words, the feed notes it."""
    live = FakeLive()
    live.push_events([sample_event(i) for i in range(EVENTS)])
    live.push(LiveDisconnected("ConnectionClosedError: no close frame received", 2))
    shown = loaded(
        shows=lambda app: (
            app.main.query_one(StatusBar).connection == "reconnecting"
            and any("live connection lost" in line for line in feed(app).plain_lines())
        ),
        what="the status bar and the feed saying the hub went away",
    )
    assert snap_compare(build_app(live=live), terminal_size=SMALL, run_before=shown)


def test_too_small(snap_compare: SnapCompare) -> None:
    """Below 80x24 a message replaces the layout."""
    assert snap_compare(build_app(), terminal_size=(60, 20))
