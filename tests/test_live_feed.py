"""The live feed panel on its own: it follows its newest lines until the user scrolls away."""

from __future__ import annotations

from helpers import wait_for
from textual.app import App, ComposeResult
from tui_conftest_helpers import sample_event

from taskmon.tui.widgets.live_feed import LiveFeed


class FeedApp(App[None]):
    CSS = "LiveFeed { height: 5; scrollbar-size-horizontal: 0; }"  # as in the app

    def compose(self) -> ComposeResult:
        yield LiveFeed()


def _everything(_event: object) -> bool:
    return True


async def test_new_lines_are_shown_before_the_layout_that_adds_the_scrollbar() -> None:
    app = FeedApp()
    async with app.run_test(size=(80, 24)):
        feed = app.query_one(LiveFeed)
        await wait_for(lambda: feed.size.height == 5, what="the panel's size")
        assert not feed.show_vertical_scrollbar  # empty: nothing to scroll yet
        # when more lines come than the panel holds, and it shows them at once
        feed.add_events([sample_event(i) for i in range(12)], _everything)
        feed.flush()
        # then it is at its newest lines straight away, not at the layout after
        assert feed.max_scroll_y == 12 - feed.container_size.height > 0
        assert feed.scroll_y == feed.max_scroll_y
        # and once laid out, the scrollbar shows that place
        await wait_for(lambda: feed.show_vertical_scrollbar, what="the scrollbar")
        assert feed.scroll_y == feed.max_scroll_y
        assert feed.vertical_scrollbar.position == feed.scroll_y


async def test_a_user_who_scrolled_up_keeps_their_place() -> None:
    app = FeedApp()
    async with app.run_test(size=(80, 24)) as pilot:
        feed = app.query_one(LiveFeed)
        await wait_for(lambda: feed.size.height == 5, what="the panel's size")
        feed.add_events([sample_event(i) for i in range(12)], _everything)
        feed.flush()
        await wait_for(lambda: feed.show_vertical_scrollbar, what="the scrollbar")
        feed.focus()
        # when the user goes to the top and more lines come
        await pilot.press("g")
        await wait_for(lambda: feed.scroll_y == 0, what="the top")
        feed.add_events([sample_event(i) for i in range(12, 20)], _everything)
        feed.flush()
        await pilot.pause()
        # then the panel stays where they are
        assert feed.line_count == 20
        assert feed.scroll_y == 0
        # and G takes them back to the newest, which it follows again
        await pilot.press("G")
        await wait_for(lambda: feed.scroll_y == feed.max_scroll_y > 0, what="the bottom")
        feed.add_events([sample_event(i) for i in range(20, 25)], _everything)
        feed.flush()
        assert feed.scroll_y == feed.max_scroll_y == 25 - feed.container_size.height
