"""The top line: which database, the live connection, the last event, the window, the filter."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

__all__ = ["StatusBar"]


class StatusBar(Widget):
    """Says where the data comes from and how fresh it is.

    The state is a symbol *and* words (``● live``, ``◌ reconnecting (2)``,
    ``✕ offline``, ``✕ db: no taskmon tables — run taskmon db upgrade``) so it
    reads without colour.
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "status-bar--live",
        "status-bar--reconnecting",
        "status-bar--offline",
        "status-bar--label",
        "status-bar--error",
        "status-bar--alert",
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
    alert: reactive[str] = reactive("", layout=True)
    """The banner while alert rules fire (``▲ ALERT name (a)``), first after the name."""
    worker_warning: reactive[str] = reactive("", layout=True)
    """The workers' warning (``✕ no worker alive (W)``, ``↑ backlog q 40 (W)``), after alerts."""
    replica_lag: reactive[str] = reactive("", layout=True)
    """How far the read replica is behind its primary (``0.4s``); empty without a replica."""

    def connection_text(self) -> Text:
        """The live connection's state: a symbol and a word."""
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

    def state_text(self, *, brief: bool = False) -> Text:
        """What the screen can be trusted for: a database error first, else the live state.

        "● live" next to a failing database would say the opposite of the
        truth: the database is what the screen shows, the feed only speeds it.
        A live feed that is down as well is said after the error.

        Args:
            brief: say "✕ db error" without the error (it goes on the next line).
        """
        if not self.error:
            return self.connection_text()
        text = "✕ db error" if brief else f"✕ db: {self.error}"
        problem = Text(text, style=self.get_component_rich_style("status-bar--error"))
        if self.connection == "live":
            return problem
        return Text(" · ").join([problem, self.connection_text()])

    def _alert(self) -> Text:
        """The alert banner and its separator (nothing while no rule fires)."""
        banners = [b for b in (self.alert, self.worker_warning) if b]
        if not banners:
            return Text()
        style = self.get_component_rich_style("status-bar--alert")
        return Text.assemble(Text(" · ".join(banners), style=style), " · ")

    def render(self) -> Text:
        """One line when it fits; else two, the state always first on the first.

        The state must stay visible at 80 columns, and a database label (an
        embedded server's socket path, say) can be longer than that: what does
        not fit on the first line goes to the second, the label last, cut in
        the middle.
        """
        label = self.get_component_rich_style("status-bar--label")
        sep = Text(" · ")
        head = Text.assemble(Text("taskmon", style="bold"), sep, self._alert(), self.state_text())
        rest = [
            Text.assemble(("last ", label), self.last_event),
            Text.assemble(("window ", label), self.window),
            Text.assemble(("filter ", label), self.filter_text or "none"),
        ]
        if self.replica_lag:  # reads go to a replica: how stale they may be
            rest.insert(0, Text.assemble(("replica lag ", label), self.replica_lag))
        where = Text.assemble(("db ", label), self.database)
        width = self.content_size.width
        line = sep.join([head, *rest, where])
        if width <= 0 or line.cell_len <= width:
            return line
        second: list[Text] = []
        if head.cell_len > width and self.error:
            # a long error would push the rest out of sight: it gets the second line
            head = Text.assemble(
                Text("taskmon", style="bold"), sep, self._alert(), self.state_text(brief=True)
            )
            error_style = self.get_component_rich_style("status-bar--error")
            second.append(Text(f"db error: {self.error}", style=error_style))
        first, spilled = head, False
        for part in rest:  # in order: once one moves down, the rest follow it
            spilled = spilled or first.cell_len + len(sep) + part.cell_len > width
            if spilled:
                second.append(part)
            else:
                first = sep.join([first, part])
        first.truncate(width, overflow="ellipsis")
        room = width - sum(p.cell_len + len(sep) for p in second) - len("db ")
        if room >= 16 or not second:  # a label cut shorter says nothing
            second.append(Text.assemble(("db ", label), _elide(self.database, max(room, 1))))
        line2 = sep.join(second)
        line2.truncate(width, overflow="ellipsis")
        return Text("\n").join([first, line2])


def _elide(text: str, width: int) -> str:
    """`text` cut in the middle to `width` cells (a path's ends say the most)."""
    if len(text) <= width:
        return text
    if width < 2:
        return "…"[:width]
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]
