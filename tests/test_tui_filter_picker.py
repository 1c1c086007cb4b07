"""`f` in the detail screen, driven by Pilot against a real PostgreSQL: filter by a value."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from helpers import publish, wait_for
from textual.pilot import Pilot
from textual.widgets import Input
from tui_conftest_helpers import screen_text

from taskmon.domain.events import AttemptRecord, Status
from taskmon.domain.params import REDACTED
from taskmon.tui.app import TaskmonApp, make_app
from taskmon.tui.screens.detail import DetailScreen
from taskmon.tui.screens.filter_picker import FilterPickerScreen
from taskmon.tui.sources import PgDataSource
from taskmon.tui.widgets.history_table import HistoryTable
from taskmon.tui.widgets.status_bar import StatusBar
from taskmon.worker.recorder import Recorder

SIZE = (80, 24)


def call(
    kwargs: dict[str, Any],
    *,
    labels: dict[str, Any] | None = None,
    queue: str | None = None,
    ago_s: int = 0,
) -> AttemptRecord:
    when = datetime.now(UTC) - timedelta(seconds=ago_s)
    return AttemptRecord(
        task_id=uuid.uuid4().hex,
        attempt=0,
        task_name="app.tasks:charge",
        status=Status.SUCCESS,
        worker="host-1:42",
        queue=queue,
        labels=labels or {},
        params={"args": [], "kwargs": kwargs},
        started_at=when,
        finished_at=when,
        duration_ms=1.0,
    )


async def open_picker(pilot: Pilot[None], app: TaskmonApp, task_id: str) -> FilterPickerScreen:
    """From the list: the cursor to `task_id`'s row, enter, then f."""
    table = app.main.query_one(HistoryTable)
    target = next(i for i, r in enumerate(app.main.history_rows) if r["task_id"] == task_id)
    delta = target - table.cursor_row
    await pilot.press(*["down" if delta > 0 else "up"] * abs(delta), "enter")
    await wait_for(lambda: isinstance(app.screen, DetailScreen))
    await pilot.press("f")
    await wait_for(lambda: isinstance(app.screen, FilterPickerScreen))
    screen = app.screen
    assert isinstance(screen, FilterPickerScreen)
    return screen


async def pick(pilot: Pilot[None], screen: FilterPickerScreen, term: str) -> None:
    """Move down to the choice whose term is `term`, then enter."""
    index = [c.term for c in screen.choices].index(term)
    await pilot.press(*["down"] * index, "enter")


def shown_ids(app: TaskmonApp) -> set[str]:
    return {r["task_id"] for r in app.main.history_rows}


async def test_picking_a_value_of_the_attempt_filters_the_history_by_it(
    pg_recorder: Recorder, dsn: str
) -> None:
    # given calls that share some values and not others; one has a secret
    ada = call(
        {"user": {"id": 42}, "name": "Ada Lovelace", "password": REDACTED},
        labels={"tenant": "acme"},
        queue="emails",
        ago_s=1,
    )
    grace = call({"user": {"id": 42}, "name": "Grace"}, queue="billing", ago_s=2)
    other_ada = call({"user": {"id": 7}, "name": "Ada Lovelace"}, queue="emails", ago_s=3)
    await publish(pg_recorder, [ada, grace, other_ada])
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: len(shown_ids(app)) == 3)

        # when f is pressed in the detail of ada's attempt
        picker = await open_picker(pilot, app, ada.task_id)

        # then its params (nested keys dotted), its labels and its queue are offered,
        # readable at 80x24, and the redacted password is not
        offered = {c.term for c in picker.choices}
        assert offered == {
            "param:user.id=42",
            'param:"name=Ada Lovelace"',
            "label:tenant=acme",
            "queue:emails",
        }
        text = screen_text(app)
        for line in ("user.id = 42", "name = Ada Lovelace", "tenant = acme", "queue  emails"):
            assert line in text, text
        assert "password" not in " ".join(c.key for c in picker.choices)

        # when user.id = 42 is picked
        await pick(pilot, picker, "param:user.id=42")

        # then the list is back, filtered to the calls with that value, and says so
        await wait_for(lambda: app.screen is app.main)
        bar = app.main.query_one(StatusBar)
        assert bar.filter_text == "param:user.id=42"
        await wait_for(lambda: shown_ids(app) == {ada.task_id, grace.task_id})
        assert "filter param:user.id=42" in screen_text(app)

        # when a value with a space is picked too, then it is quoted and both terms hold
        picker = await open_picker(pilot, app, ada.task_id)
        await pick(pilot, picker, 'param:"name=Ada Lovelace"')
        await wait_for(lambda: app.screen is app.main)
        assert bar.filter_text == 'param:user.id=42 param:"name=Ada Lovelace"'
        await wait_for(lambda: shown_ids(app) == {ada.task_id})

        # and the filter bar holds the same text to edit
        await pilot.press("slash")
        assert app.main.query_one("#filter-input", Input).value == bar.filter_text
        await pilot.press("escape")
        await wait_for(lambda: len(shown_ids(app)) == 3)

        # when the queue is picked from another attempt, it filters by the queue
        picker = await open_picker(pilot, app, other_ada.task_id)
        await pick(pilot, picker, "queue:emails")
        await wait_for(lambda: shown_ids(app) == {ada.task_id, other_ada.task_id})


async def test_esc_in_the_picker_changes_nothing_and_an_attempt_without_values_says_so(
    pg_recorder: Recorder, dsn: str
) -> None:
    # given one call with a value and one whose only param is a secret
    plain = call({"n": 1}, ago_s=1)
    secret = call({"token": REDACTED}, ago_s=2)
    await publish(pg_recorder, [plain, secret])
    app = make_app(PgDataSource(dsn), None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(lambda: len(shown_ids(app)) == 2)
        # when esc in the picker
        await open_picker(pilot, app, plain.task_id)
        await pilot.press("escape")
        # then back in the detail, the filter unchanged
        await wait_for(lambda: isinstance(app.screen, DetailScreen))
        assert app.main.state.query == ""
        await pilot.press("escape")
        await wait_for(lambda: app.screen is app.main)
        # when f on an attempt with nothing to offer, then it says so and opens nothing
        await pilot.press("down", "enter")
        await wait_for(lambda: isinstance(app.screen, DetailScreen))
        assert isinstance(app.screen, DetailScreen) and app.screen.task_id == secret.task_id
        await pilot.press("f")
        await wait_for(
            lambda: any("no params, labels or queue" in str(n.message) for n in app._notifications)
        )
        assert isinstance(app.screen, DetailScreen)
