"""Snapshots of the TUI's screens at 80x24 and 120x36.

They check layout, so they run on fixed data (``tui_conftest_helpers``) with a
frozen clock; the behaviour against the real database is in ``test_tui.py``.
Update with ``pytest tests/test_tui_snapshots.py --snapshot-update`` and look
at the SVGs under ``tests/__snapshots__/`` before accepting them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from helpers import wait_for
from textual.pilot import Pilot
from tui_conftest_helpers import FakeData, FakeLive, frozen_clock, sample_event

from taskmon.tui.app import TaskmonApp, make_app
from taskmon.tui.sources import LiveDisconnected
from taskmon.tui.widgets.history_table import HistoryTable
from taskmon.tui.widgets.live_feed import LiveFeed

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


def loaded(*then: str) -> Callable[[Pilot[None]], Awaitable[None]]:
    """Wait until metrics, history and the feed are on screen, then press `then`."""

    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, TaskmonApp)
        main = app.main
        await wait_for(
            lambda: (
                main.stats is not None
                and main.query_one(HistoryTable).row_count > 0
                and main.query_one(LiveFeed).received >= EVENTS
                and not main.query_one(LiveFeed).waiting
            )
        )
        if then:
            await pilot.press(*then)
        await pilot.pause(0.2)

    return run_before


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_main_screen(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    """The main screen: status bar, metrics, tasks, history and the live feed."""
    assert snap_compare(build_app(), terminal_size=size, run_before=loaded())


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_filter_bar_with_error(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    """`/` opens the filter bar; a bad query shows its error inline."""
    keys = ("slash", *"status:bogus")
    assert snap_compare(build_app(), terminal_size=size, run_before=loaded(*keys))


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_filtered_and_paused(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    """A status filter from the command line, the feed paused."""
    app = build_app(query="status:failed")
    assert snap_compare(app, terminal_size=size, run_before=loaded("space"))


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "120x36"])
def test_detail_screen(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    """`enter` on a failed attempt: fields, attempts, params and traceback."""
    # the third row is a failed attempt with a traceback
    keys = ("down", "down", "enter")
    assert snap_compare(build_app(), terminal_size=size, run_before=loaded(*keys))


def test_help_screen(snap_compare: SnapCompare) -> None:
    """`?` lists every key."""
    assert snap_compare(build_app(), terminal_size=LARGE, run_before=loaded("question_mark"))


def test_reconnecting(snap_compare: SnapCompare) -> None:
    """The hub went away: the status bar says so in words, the feed notes it."""
    live = FakeLive()
    live.push_events([sample_event(i) for i in range(EVENTS)])
    live.push(LiveDisconnected("ConnectionClosedError: no close frame received", 2))
    assert snap_compare(build_app(live=live), terminal_size=SMALL, run_before=loaded())


def test_too_small(snap_compare: SnapCompare) -> None:
    """Below 80x24 a message replaces the layout."""
    assert snap_compare(build_app(), terminal_size=(60, 20))
