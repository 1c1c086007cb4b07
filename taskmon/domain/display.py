"""How values read on screen, the same in the CLI and the TUI: status symbols, durations.

A status is never shown by colour alone (SSH sessions, ``NO_COLOR``, colour
blindness, a copy-paste): each has a symbol, shown with its word. Colours are
each front end's own (rich styles in ``taskmon.commands.render``, the TUI's
stylesheet). No rich, textual or typer here: the core may use it too.
"""

from __future__ import annotations

from datetime import datetime

from taskmon.domain.events import Status

__all__ = [
    "SCHEDULE_STATE_SYMBOLS",
    "STATUS_SYMBOLS",
    "UNKNOWN_SYMBOL",
    "WORKER_STATE_SYMBOLS",
    "duration",
    "fire_in",
    "ran_ago",
    "schedule_state_label",
    "status_label",
    "trend_label",
    "worker_state_label",
]

STATUS_SYMBOLS: dict[str, str] = {
    Status.PENDING: "…",
    Status.RUNNING: "▶",
    Status.SUCCESS: "✓",
    Status.FAILED: "✕",
    Status.RETRYING: "↻",
    Status.LOST: "⊘",
}
"""One symbol per status (every :class:`~taskmon.domain.events.Status` has one)."""
UNKNOWN_SYMBOL = "·"
"""The symbol of a status this version does not know."""


WORKER_STATE_SYMBOLS: dict[str, str] = {
    "alive": "●",
    "stale": "⚠",
    "stopped": "■",
}
"""One symbol per worker state (``taskmon_workers``): beating, silent, stopped cleanly."""


def worker_state_label(state: str) -> str:
    """``⚠ stale``: the symbol and the word of a worker's state."""
    return f"{WORKER_STATE_SYMBOLS.get(state, UNKNOWN_SYMBOL)} {state}"


SCHEDULE_STATE_SYMBOLS: dict[str, str] = {
    "unreadable": "?",
    "missed": "✕",
    "late": "!",
    "waiting": "…",
    "no runs": "-",
    "ok": "✓",
}
"""One symbol per schedule state (:class:`~taskmon.domain.schedules.ScheduleState`)."""


def schedule_state_label(state: str) -> str:
    """``✕ missed``: the symbol and the word of a schedule's state (or a fire's)."""
    return f"{SCHEDULE_STATE_SYMBOLS.get(state, UNKNOWN_SYMBOL)} {state}"


def trend_label(change: int | None) -> str:
    """A queue's change of depth over a window: ``↑ +12``, ``↓ -3``, ``→ 0``, ``-`` unknown."""
    if change is None:
        return "-"
    if change > 0:
        return f"↑ +{change:,}"
    if change < 0:
        return f"↓ {change:,}"
    return "→ 0"


def status_label(status: str) -> str:
    """``✕ failed``: the symbol and the word."""
    return f"{STATUS_SYMBOLS.get(status, UNKNOWN_SYMBOL)} {status}"


def span(seconds: float) -> str:
    """A set length of time (a window, a retention, a step) in its largest whole unit.

    ``7d``, ``12h``, ``30m``, ``45s``, ``1.5s``: the form the filter language
    and the options take, so what is printed can be typed back. For a measured
    time (a task's run, a query's), see :func:`duration`.
    """
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def duration(ms: float | None) -> str:
    """A measured time: ``0.42ms``, ``812ms``, ``4.2s``, ``3m05s``, ``1h02m``; ``-`` if unknown."""
    if ms is None:
        return "-"
    if 0 < ms < 1:
        return f"{ms:.2f}ms"
    if ms < 1_000:
        return f"{ms:.0f}ms"
    seconds = ms / 1_000
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3_600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3_600)}h{int(seconds % 3_600 // 60):02d}m"


def fire_in(at: datetime | None, now: datetime) -> str:
    """When a schedule fires next, from `now`: ``in 4m30s``, ``now``, or ``-`` (never)."""
    if at is None:
        return "-"
    seconds = (at - now).total_seconds()
    if seconds < 1:
        return "now"
    return f"in {duration(seconds * 1000)}"


def ran_ago(status: str, at: datetime, now: datetime) -> str:
    """A schedule's last run: ``✓ success 3m ago``."""
    return f"{status_label(status)} {duration(max(0.0, (now - at).total_seconds()) * 1000)} ago"
