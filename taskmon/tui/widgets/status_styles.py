"""Status colours come from the app's stylesheet through component classes.

A widget that shows statuses lists :data:`STATUS_CLASSES` in its
``COMPONENT_CLASSES``; ``app.tcss`` gives each one its colour, so colours stay
in the stylesheet and ``NO_COLOR`` still leaves the symbol and the word.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from taskmon.domain.display import status_label
from taskmon.domain.filters import STATUSES

__all__ = ["STATUS_CLASSES", "styled_status"]

STATUS_CLASSES: set[str] = {f"status--{s}" for s in STATUSES}


def styled_status(widget: Widget, status: str, *, width: int = 0) -> Text:
    """``✕ failed`` in the status's colour, padded to `width` cells."""
    label = status_label(status)
    if width:
        label = label.ljust(width)
    name = f"status--{status}"
    if name not in STATUS_CLASSES:
        return Text(label)
    return Text(label, style=widget.get_component_rich_style(name, partial=True))
