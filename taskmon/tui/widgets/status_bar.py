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
            return Text("✕ offline", style=self.get_component_rich_style("status-bar--offline"))
        return Text("◌ connecting", style=self.get_component_rich_style("status-bar--reconnecting"))

    def render(self) -> Text:
        label = self.get_component_rich_style("status-bar--label")
        parts: list[Text] = [
            Text.assemble(("taskmon ", "bold"), (self.database, "")),
            self.connection_text(),
            Text.assemble(("last ", label), self.last_event),
            Text.assemble(("window ", label), self.window),
            Text.assemble(("filter ", label), self.filter_text or "none"),
        ]
        if self.error:
            parts.append(
                Text(
                    f"db error: {self.error}",
                    style=self.get_component_rich_style("status-bar--error"),
                )
            )
        return Text(" · ").join(parts)
