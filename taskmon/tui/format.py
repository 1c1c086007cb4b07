"""How values look in the TUI: times, counts, rates, text clipped to a cell width.

Statuses and durations read as in the CLI: :mod:`taskmon.domain.display`.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from rich.cells import cell_len, set_cell_size

__all__ = [
    "clip",
    "count",
    "error_line",
    "event_status",
    "parse_timestamp",
    "percent",
    "timestamp",
]


def error_line(exc: BaseException) -> str:
    """A failed read's error on one line of at most 200 characters (its type if it says nothing)."""
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def count(n: int) -> str:
    """Thousands grouped with thin spaces: ``12 345``."""
    return f"{n:,}".replace(",", "\u2009")


def percent(rate: float) -> str:
    """A 0..1 rate as ``2.4%``."""
    return f"{rate * 100:.1f}%"


def parse_timestamp(value: Any) -> datetime | None:
    """A datetime from a datetime or an ISO string; None when neither."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def timestamp(
    value: Any, tz: tzinfo | None, *, with_date: bool = False, short_date: bool = False
) -> str:
    """A time in the viewer's zone: ``12:00:03``, ``2026-11-28 12:00:03`` or ``11-28 12:00:03``."""
    when = parse_timestamp(value)
    if when is None:
        return "-"
    if tz is not None and when.tzinfo is not None:
        when = when.astimezone(tz)
    if short_date:
        return when.strftime("%m-%d %H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def event_status(event: dict[str, Any]) -> str:
    """The status a live event announces."""
    return str(event.get("status") or "")


def clip(text: str, width: int) -> str:
    """`text` in at most `width` cells: cut after a whole word with ``…`` when it is longer.

    A word is only cut when cutting at a space would leave less than half the room.
    """
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = set_cell_size(text, width - 1).rstrip()
    space = head.rfind(" ")
    if space >= width // 2 and not text[len(head) : len(head) + 1].isspace():
        head = head[:space].rstrip()
    return head + "…"
