"""What the application layer answers with: typed rows, and their documented JSON shape.

The front ends speak these types and never the store's modules: the CLI
prints them, the TUI shows them. :func:`json_row` is the one JSON shape of an
attempt (``taskmon history --format json``, the CSV columns, the TUI's copy).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from taskmon.domain.events import iso
from taskmon.store.history import CursorError, HistoryPage, decode_cursor
from taskmon.store.pending import DEFAULT_WAITING_OVER_S, WaitingRow
from taskmon.store.replica import ReplicaStatus
from taskmon.store.retry_links import LINK_KEYS, retried_as, retry_of
from taskmon.store.schema import COLUMNS, AttemptRow
from taskmon.store.stats import RELATIVE_ERROR, Stats, TaskStats
from taskmon.store.workers import QueueRow, WorkerRow

__all__ = [
    "COLUMNS",
    "DEFAULT_WAITING_OVER_S",
    "JSON_KEYS",
    "LINK_KEYS",
    "RELATIVE_ERROR",
    "AttemptRow",
    "CursorError",
    "HistoryPage",
    "QueueRow",
    "ReplicaStatus",
    "Stats",
    "TaskStats",
    "WaitingRow",
    "WorkerRow",
    "check_cursor",
    "json_row",
    "retried_as",
    "retry_of",
]

JSON_KEYS: tuple[str, ...] = (*COLUMNS, *LINK_KEYS)
"""The keys of :func:`json_row`, in order: the columns, then the retry links."""


def check_cursor(cursor: str) -> None:
    """Raise :class:`CursorError` (one line for the user) unless `cursor` is a page cursor."""
    decode_cursor(cursor)


def json_row(row: AttemptRow) -> dict[str, Any]:
    """The documented JSON shape of a row: the keys of :data:`JSON_KEYS`, in order.

    Datetimes become ISO 8601 text; ``retry_of`` and ``retried_as`` link the
    row to ``taskmon retry``'s re-sends.
    """
    data: dict[str, Any] = {}
    for key in COLUMNS:
        value = row.get(key)
        data[key] = iso(value) if isinstance(value, datetime) else value
    data["retry_of"], data["retried_as"] = retry_of(row), retried_as(row)
    return data
