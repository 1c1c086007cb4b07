"""How values read on screen, the same in the CLI and the TUI: status symbols, durations.

A status is never shown by colour alone (SSH sessions, ``NO_COLOR``, colour
blindness, a copy-paste): each has a symbol, shown with its word. Colours are
each front end's own (rich styles in ``taskmon.commands.render``, the TUI's
stylesheet). No rich, textual or typer here: the core may use it too.
"""

from __future__ import annotations

from taskmon.events import Status

__all__ = ["STATUS_SYMBOLS", "UNKNOWN_SYMBOL", "duration", "status_label"]

STATUS_SYMBOLS: dict[str, str] = {
    Status.PENDING: "…",
    Status.RUNNING: "▶",
    Status.SUCCESS: "✓",
    Status.FAILED: "✕",
    Status.RETRYING: "↻",
    Status.LOST: "⊘",
}
"""One symbol per status (every :class:`~taskmon.events.Status` has one)."""
UNKNOWN_SYMBOL = "·"
"""The symbol of a status this version does not know."""


def status_label(status: str) -> str:
    """``✕ failed``: the symbol and the word."""
    return f"{STATUS_SYMBOLS.get(status, UNKNOWN_SYMBOL)} {status}"


def duration(ms: float | None) -> str:
    """``0.42ms``, ``812ms``, ``4.2s``, ``3m05s``, ``1h02m``; ``-`` when unknown."""
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
