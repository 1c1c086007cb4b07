"""What the user is looking at: the window, the status filter and the typed filter.

Kept apart from the widgets so the same rules (what `s` and `w` cycle through,
how the typed filter and the keys combine) are plain, testable Python.

The typed query is kept as typed: ``since:2m`` stays ``since:2m`` on screen
(it is counted back from now at every read), never a frozen timestamp. A key
and a typed value never fight over the same thing: typing ``status:`` or
``since:`` takes over from `s` or `w`, and pressing `s` or `w` takes over from
what was typed, removing it from the query.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from taskmon.domain.filters import FilterError, TaskFilter, parse, parse_window

__all__ = ["STATUS_CYCLE", "WINDOWS", "ViewState"]

WINDOWS: tuple[tuple[str, timedelta], ...] = (
    ("15m", timedelta(minutes=15)),
    ("1h", timedelta(hours=1)),
    ("24h", timedelta(hours=24)),
    ("7d", timedelta(days=7)),
    ("30d", timedelta(days=30)),
)
"""The metrics windows `w` cycles through."""

STATUS_CYCLE: tuple[str, ...] = ("all", "failed", "running", "retrying", "lost", "pending")
"""The status filters `s` cycles through."""

# a query token: runs of non-space characters and double-quoted strings (with \" escapes)
_TOKEN_RE = re.compile(r'(?:[^\s"]+|"(?:\\.|[^"\\])*"?)+')
_KEY_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*):")


def _tokens(query: str) -> list[str]:
    """The query's tokens as typed (quotes kept)."""
    return _TOKEN_RE.findall(query)


def _key(token: str) -> str | None:
    """A token's key, lower-cased (None for a free word), as the filter language reads it."""
    match = _KEY_RE.match(token)
    return match.group(1).lower() if match else None


def _without(query: str, keys: set[str]) -> str:
    """`query` without its `keys:` tokens; the rest as typed."""
    return " ".join(t for t in _tokens(query) if _key(t) not in keys)


def _typed_value(query: str, key: str) -> str | None:
    """The last value typed for `key` (quotes removed), None when there is none."""
    values = [t.split(":", 1)[1].strip('"') for t in _tokens(query) if _key(t) == key]
    return values[-1] if values else None


def _relative(value: str | None) -> timedelta | None:
    """``2m`` → two minutes; None for an absolute time or nothing."""
    if value is None:
        return None
    try:
        return parse_window(value)
    except FilterError:
        return None


def _quote(value: str) -> str:
    if value and not any(c.isspace() or c == '"' for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
        query = query.strip()
        return cls(
            window=window, query=query, typed=parse(query, now=now) if query else TaskFilter()
        )

    @property
    def window_delta(self) -> timedelta:
        """The `w` key's window (a typed ``since:`` overrides it in :meth:`filter_at`)."""
        return dict(WINDOWS)[self.window]

    @property
    def window_label(self) -> str:
        """The metrics window in words: ``1h``, or the typed ``2m``, ``since 2026-11-28``."""
        since = _typed_value(self.query, "since")
        until = _typed_value(self.query, "until")
        if since is None and until is None:
            return self.window
        if until is None and _relative(since) is not None:
            return str(since)
        parts = [f"since {since}" if since else "", f"until {until}" if until else ""]
        return " ".join(p for p in parts if p)

    @property
    def window_title(self) -> str:
        """:attr:`window_label` for a title: ``last 2m``, ``since 2026-11-28``."""
        label = self.window_label
        return label if label.startswith(("since ", "until ")) else f"last {label}"

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
        """The active filter as the user would type it (empty when none).

        The query as typed (``since:2m``, not the time it meant when typed),
        then the status key's choice.
        """
        if self.status == "all":
            return self.query
        return " ".join(p for p in (self.query, f"status:{self.status}") if p)

    def next_window(self) -> ViewState:
        """The next wider window of :data:`WINDOWS` (after the widest, the narrowest).

        A typed ``since:``/``until:`` gives way: it is removed from the query,
        and the window after a typed relative one (``since:2m`` → 15m) is next.
        """
        since = _typed_value(self.query, "since")
        until = _typed_value(self.query, "until")
        state = self
        current = self.window_delta
        if since is not None or until is not None:
            typed_delta = _relative(since) if until is None else None
            current = typed_delta if typed_delta is not None else current
            state = replace(
                self,
                query=_without(self.query, {"since", "until"}),
                typed=replace(self.typed, since=None, until=None),
            )
        wider = [name for name, delta in WINDOWS if delta > current]
        return replace(state, window=(wider or [WINDOWS[0][0]])[0], generation=self.generation + 1)

    def next_status(self) -> ViewState:
        """The next status of :data:`STATUS_CYCLE`.

        A typed ``status:`` gives way: the cycle goes on from the status it
        showed (from the start for a list), and it is removed from the query, so
        "all" afterwards means all.
        """
        state, current = self, self.status
        if self.typed.statuses:
            typed = sorted(self.typed.statuses)
            current = typed[0] if len(typed) == 1 else "all"
            state = replace(
                self,
                query=_without(self.query, {"status"}),
                typed=replace(self.typed, statuses=frozenset()),
            )
        i = STATUS_CYCLE.index(current) if current in STATUS_CYCLE else 0
        return replace(
            state, status=STATUS_CYCLE[(i + 1) % len(STATUS_CYCLE)], generation=self.generation + 1
        )

    def with_query(self, query: str, *, now: datetime | None = None) -> ViewState:
        """A new state for a typed filter (raises FilterError when it does not parse)."""
        typed = parse(query, now=now) if query.strip() else TaskFilter()
        # a typed status: choice replaces the `s` key's one, so the two never fight
        status = "all" if typed.statuses else self.status
        return replace(
            self, query=query.strip(), typed=typed, status=status, generation=self.generation + 1
        )

    def with_task(self, name: str, *, now: datetime | None = None) -> ViewState:
        """Only the task `name`: the typed ``task:`` values give way, the rest stays as typed."""
        query = " ".join(p for p in (_without(self.query, {"task"}), f"task:{_quote(name)}") if p)
        return self.with_query(query, now=now)

    def with_term(self, term: str, *, now: datetime | None = None) -> ViewState:
        """The typed query with one more term (``param:user.id=42``, ``label:x``, ``queue:q``).

        A typed term on the same thing gives way, as ``task:`` does for a task
        row: another ``queue:`` (queue terms match any one of them, so keeping
        it would widen the list), or a ``param:``/``label:`` on the same key.
        The rest stays as typed. Raises FilterError when `term` does not parse.
        """
        added = parse(term, now=now)
        keys = {("param", k) for k, _ in added.params} | {("label", k) for k, _ in added.labels}

        def same_thing(token: str) -> bool:
            kind = _key(token)
            if kind == "queue":
                return bool(added.queues)
            if kind not in ("param", "label"):
                return False
            try:
                typed = parse(token, now=now)
            except FilterError:
                return False
            return any((kind, k) in keys for k, _ in (*typed.params, *typed.labels))

        kept = " ".join(t for t in _tokens(self.query) if not same_thing(t))
        return self.with_query(" ".join(p for p in (kept, term) if p), now=now)

    def refreshed(self) -> ViewState:
        return replace(self, generation=self.generation + 1)
