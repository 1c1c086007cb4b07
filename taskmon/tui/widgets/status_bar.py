"""The top line: which database, the live connection, the last event, the window, the filter."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

__all__ = ["StatusBar"]


class StatusBar(Widget):
    """Says where the data comes from and how fresh it is.

    The connection state is a symbol *and* a word (``● live``,
    ``◌ reconnecting (2)``, ``✕ offline``) so it reads without colour.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "status-bar--live",
        "status-bar--reconnecting",
        "status-bar--offline",
        "status-bar--label",
        "status-bar--error",
    }

    database: reactive[str] = reactive("", layout=True)
    """The database label (DSN without password)."""
    connection: reactive[str] = reactive("connecting", layout=True)
    """One of ``connecting``, ``live``, ``reconnecting``, ``offline``."""
    attempt: reactive[int] = reactive(0, layout=True)
    """Reconnection attempts so far (shown while reconnecting)."""
    last_event: reactive[str] = reactive("-")
    """When the newest live event happened."""
    window: reactive[str] = reactive("1h", layout=True)
    """The metrics window."""
    filter_text: reactive[str] = reactive("", layout=True)
    """The active filter as query text."""
    error: reactive[str] = reactive("", layout=True)
    """The newest database error, cleared by the next good read."""
    offline_reason: reactive[str] = reactive("", layout=True)
    """Why the live feed gave up (a refused token, no hub), shown after ``offline``."""

    def connection_text(self) -> Text:
        state = self.connection
        if state == "live":
            return Text("● live", style=self.get_component_rich_style("status-bar--live"))
        if state == "reconnecting":
            return Text(
                f"◌ reconnecting ({self.attempt})",
                style=self.get_component_rich_style("status-bar--reconnecting"),
            )
        if state == "offline":
            reason = f": {self.offline_reason}" if self.offline_reason else ""
            style = self.get_component_rich_style("status-bar--offline")
            return Text(f"✕ offline{reason}", style=style)
        return Text("◌ connecting", style=self.get_component_rich_style("status-bar--reconnecting"))

    def render(self) -> Text:
        """One line when it fits; else the essentials first, the database on a line of its own.

        The connection state must stay visible at 80 columns, and a database
        label (an embedded server's socket path, say) can be longer than that.
        """
        label = self.get_component_rich_style("status-bar--label")
        sep = Text(" · ")
        essentials = sep.join(
            [
                Text("taskmon", style="bold"),
                self.connection_text(),
                Text.assemble(("last ", label), self.last_event),
                Text.assemble(("window ", label), self.window),
                Text.assemble(("filter ", label), self.filter_text or "none"),
            ]
        )
        error_style = self.get_component_rich_style("status-bar--error")
        notes = [Text(f"db error: {self.error}", style=error_style)] if self.error else []
        width = self.content_size.width
        line = sep.join([essentials, *notes, Text.assemble(("db ", label), self.database)])
        if width <= 0 or line.cell_len <= width:
            return line
        essentials.truncate(width, overflow="ellipsis")
        room = width - sum(note.cell_len + len(sep) for note in notes) - len("db ")
        if room < 16 and notes:  # the error matters more than the label
            return Text("\n").join([essentials, *notes])
        where = Text.assemble(("db ", label), _elide(self.database, room))
        return Text("\n").join([essentials, sep.join([*notes, where])])


def _elide(text: str, width: int) -> str:
    """`text` cut in the middle to `width` cells (a path's ends say the most)."""
    if len(text) <= width:
        return text
    if width < 2:
        return "…"[:width]
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]
