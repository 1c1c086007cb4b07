"""ViewState: what the TUI asks the database, as plain Python."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from taskmon.tui.view_state import ViewState

TYPED_AT = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_relative_times_slide_with_the_clock() -> None:
    state = ViewState.initial(query="since:2h until:30m task:app.*", now=TYPED_AT)
    later = TYPED_AT + timedelta(hours=5)

    flt = state.filter_at(later)

    assert flt.since == later - timedelta(hours=2)
    assert flt.until == later - timedelta(minutes=30)
    assert flt.tasks == ("app.*",)
    # the typed reading stays as it was (live events are matched against it)
    assert state.filter.since == TYPED_AT - timedelta(hours=2)


def test_absolute_times_and_the_status_key_hold() -> None:
    state = ViewState.initial(query="since:2026-11-01 error:timeout", now=TYPED_AT).next_status()

    flt = state.filter_at(TYPED_AT + timedelta(days=3))

    assert flt.since == datetime(2026, 11, 1, tzinfo=UTC)
    assert flt.statuses == frozenset({"failed"})
    assert flt.errors == ("timeout",)
    assert ViewState().filter_at(TYPED_AT).is_empty()
