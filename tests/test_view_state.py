"""ViewState: what the TUI asks the database, as plain Python.

The rules of what `s`, `w`, the filter bar and a task row do to the question asked.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from taskmon.domain.filters import FilterError
from taskmon.tui.view_state import STATUS_CYCLE, ViewState

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_a_relative_since_is_shown_as_typed_and_names_the_window() -> None:
    state = ViewState.initial(query="task:extract since:2m", now=NOW)
    assert state.describe() == "task:extract since:2m"
    assert state.window_label == "2m"
    assert state.window_title == "last 2m"
    # the status key's choice is added in words, the typed text kept
    assert state.next_status().describe() == "task:extract since:2m status:failed"


def test_the_window_key_names_the_window_when_nothing_is_typed() -> None:
    state = ViewState.initial(window="15m", now=NOW)
    assert (state.window_label, state.window_title) == ("15m", "last 15m")
    assert state.next_window().window_label == "1h"


def test_an_absolute_since_or_an_until_is_named_as_a_range() -> None:
    state = ViewState.initial(query="since:2026-11-28T10:00", now=NOW)
    assert state.window_label == state.window_title == "since 2026-11-28T10:00"
    state = ViewState.initial(query="since:3h until:1h", now=NOW)
    assert state.window_label == "since 3h until 1h"


def test_the_status_key_takes_over_from_a_typed_status() -> None:
    # given a typed status:failed, which is what the screen shows
    state = ViewState.initial(query="status:failed task:extract", now=NOW)
    assert state.filter.statuses == {"failed"}
    # when s is pressed, the next status is shown (not failed again) and the typed one goes
    seen = []
    for _ in range(len(STATUS_CYCLE)):
        state = state.next_status()
        seen.append((state.status, state.describe(), set(state.filter_at(NOW).statuses)))
    assert seen == [
        ("running", "task:extract status:running", {"running"}),
        ("retrying", "task:extract status:retrying", {"retrying"}),
        ("lost", "task:extract status:lost", {"lost"}),
        ("pending", "task:extract status:pending", {"pending"}),
        # then "all" means all, not the status that was typed
        ("all", "task:extract", set()),
        ("failed", "task:extract status:failed", {"failed"}),
    ]


def test_a_typed_list_of_statuses_gives_way_to_the_cycle_from_its_start() -> None:
    state = ViewState.initial(query="status:failed,lost", now=NOW).next_status()
    assert (state.status, state.query) == ("failed", "")


def test_the_window_key_takes_over_from_a_typed_since() -> None:
    state = ViewState.initial(query="since:2m error:timeout", now=NOW)
    wider = state.next_window()
    # the next window wider than the typed one, and the typed since gone
    assert (wider.window, wider.window_label, wider.describe()) == ("15m", "15m", "error:timeout")
    assert wider.filter_at(NOW).since is None
    assert ViewState.initial(query="since:30d", now=NOW).next_window().window == "15m"


def test_a_task_row_replaces_the_typed_task_and_keeps_the_rest_as_typed() -> None:
    state = ViewState.initial(query="task:load since:2m", now=NOW).next_status()
    picked = state.with_task("app.tasks:extract")
    assert picked.describe() == "since:2m task:app.tasks:extract status:failed"
    assert picked.filter_at(NOW).tasks == ("app.tasks:extract",)
    assert picked.filter_at(NOW).since == NOW - timedelta(minutes=2)
    assert picked.generation > state.generation


def test_a_bad_query_still_raises() -> None:
    with pytest.raises(FilterError):
        ViewState.initial(query="status:bogus", now=NOW)


def test_relative_times_slide_with_the_clock() -> None:
    state = ViewState.initial(query="since:2h until:30m task:app.*", now=NOW)
    later = NOW + timedelta(hours=5)

    flt = state.filter_at(later)

    assert flt.since == later - timedelta(hours=2)
    assert flt.until == later - timedelta(minutes=30)
    assert flt.tasks == ("app.*",)
    # the typed reading stays as it was (live events are matched against it)
    assert state.filter.since == NOW - timedelta(hours=2)


def test_absolute_times_and_the_status_key_hold() -> None:
    state = ViewState.initial(query="since:2026-11-01 error:timeout", now=NOW).next_status()

    flt = state.filter_at(NOW + timedelta(days=3))

    assert flt.since == datetime(2026, 11, 1, tzinfo=UTC)
    assert flt.statuses == frozenset({"failed"})
    assert flt.errors == ("timeout",)
    assert ViewState().filter_at(NOW).is_empty()


def test_a_picked_term_joins_the_typed_query_and_replaces_one_on_the_same_key() -> None:
    state = ViewState.initial(query="since:2m param:user.id=7 label:tenant boom", now=NOW)
    state = state.next_status()
    picked = state.with_term('param:"name=Ada Lovelace"', now=NOW)
    assert picked.describe() == (
        'since:2m param:user.id=7 label:tenant boom param:"name=Ada Lovelace" status:failed'
    )
    assert picked.generation > state.generation
    # the same key again: the new value takes its place (both would match nothing)
    picked = picked.with_term("param:user.id=42", now=NOW)
    assert picked.filter_at(NOW).params == (("name", "Ada Lovelace"), ("user.id", "42"))
    assert picked.filter_at(NOW).labels == (("tenant", None),)
    picked = picked.with_term("label:tenant=acme", now=NOW)
    assert picked.filter_at(NOW).labels == (("tenant", "acme"),)
    # queue terms match any one of them: a picked queue replaces the typed ones
    picked = ViewState.initial(query="queue:a queue:b task:x", now=NOW).with_term("queue:a")
    assert picked.describe() == "task:x queue:a"
    assert picked.filter_at(NOW).queues == ("a",)
    with pytest.raises(FilterError):
        state.with_term("param:=1")
