"""What the user is looking at: the window, the status filter and the typed filter.

Kept apart from the widgets so the same rules (what `s` and `w` cycle through,
how the typed filter and the status key combine) are plain, testable Python.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from taskmon.filters import FilterError, TaskFilter, parse

__all__ = ["STATUS_CYCLE", "WINDOWS", "ViewState"]

WINDOWS: tuple[tuple[str, timedelta], ...] = (
    ("15m", timedelta(minutes=15)),
    ("1h", timedelta(hours=1)),
    ("24h", timedelta(hours=24)),
    ("7d", timedelta(days=7)),
    ("30d", timedelta(days=30)),
)
"""The metrics windows `w` cycles through."""

STATUS_CYCLE: tuple[str, ...] = ("all", "failed", "running", "retrying", "lost")
"""The status filters `s` cycles through."""


@dataclass(frozen=True)
class ViewState:
    """An immutable snapshot of the question the screen asks the database."""

    window: str = "1h"
    status: str = "all"
    query: str = ""
    typed: TaskFilter = field(default_factory=TaskFilter)
    generation: int = 0
    """Bumped on every change: results of an older generation are stale."""

    @classmethod
    def initial(
        cls, *, window: str = "1h", query: str = "", now: datetime | None = None
    ) -> ViewState:
        """The state for the command line's `--since` and `--query` (FilterError if bad)."""
        if window not in dict(WINDOWS):
            raise ValueError(f"window: {window!r} is not one of {', '.join(n for n, _ in WINDOWS)}")
        return cls(
            window=window, query=query, typed=parse(query, now=now) if query else TaskFilter()
        )

    @property
    def window_delta(self) -> timedelta:
        return dict(WINDOWS)[self.window]

    @property
    def filter(self) -> TaskFilter:
        """The typed filter with the status key's choice in place of its statuses.

        Its relative times (``since:2h``) count back from when the query was
        typed; what reads the database asks :meth:`filter_at` instead.
        """
        return self._with_status(self.typed)

    def filter_at(self, now: datetime | None = None) -> TaskFilter:
        """:attr:`filter` with the query's relative times counted back from `now`.

        A screen left open on ``since:2h`` keeps showing the last two hours,
        not the two hours before the query was typed.
        """
        typed = self.typed
        if self.query:
            with contextlib.suppress(FilterError):  # it parsed when typed; else keep that
                typed = parse(self.query, now=now)
        return self._with_status(typed)

    def _with_status(self, typed: TaskFilter) -> TaskFilter:
        if self.status == "all":
            return typed
        return replace(typed, statuses=frozenset({self.status}))

    def describe(self) -> str:
        """The active filter as query text (empty when none)."""
        return self.filter.to_query()

    def next_window(self) -> ViewState:
        names = [n for n, _ in WINDOWS]
        return replace(
            self,
            window=names[(names.index(self.window) + 1) % len(names)],
            generation=self.generation + 1,
        )

    def next_status(self) -> ViewState:
        i = STATUS_CYCLE.index(self.status) if self.status in STATUS_CYCLE else 0
        return replace(
            self, status=STATUS_CYCLE[(i + 1) % len(STATUS_CYCLE)], generation=self.generation + 1
        )

    def with_query(self, query: str, *, now: datetime | None = None) -> ViewState:
        """A new state for a typed filter (raises FilterError when it does not parse)."""
        typed = parse(query, now=now) if query.strip() else TaskFilter()
        # a typed status: choice replaces the `s` key's one, so the two never fight
        status = "all" if typed.statuses else self.status
        return replace(
            self, query=query.strip(), typed=typed, status=status, generation=self.generation + 1
        )

    def refreshed(self) -> ViewState:
        return replace(self, generation=self.generation + 1)
