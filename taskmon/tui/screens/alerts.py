"""The alerts: a banner in the status bar while a rule fires, and the list of rules (key ``a``).

The TUI checks nothing itself: ``taskmon serve`` (or ``taskmon alerts check``
from cron) evaluates the rules and stores their states; :class:`AlertsPoller`
re-reads those states every :data:`ALERTS_REFRESH_S` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, ClassVar, Protocol

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from taskmon.tui.format import error_line, timestamp

if TYPE_CHECKING:
    from taskmon.service.alerts import AlertStatus

__all__ = ["ALERTS_REFRESH_S", "AlertSource", "AlertsPoller", "AlertsScreen", "banner_text"]

ALERTS_REFRESH_S = 5.0
"""How often the stored alert states are re-read."""

# a state as a symbol and a word, as well as a colour
STATE_LABELS: dict[str, tuple[str, str]] = {
    "firing": ("▲ firing", "bold red"),
    "pending": ("… pending", "yellow"),
    "resolved": ("✓ resolved", "green"),
    "ok": ("✓ ok", "green"),
    "unknown": ("? not checked", "dim"),
}


class AlertSource(Protocol):
    """Where the rules' states come from (:class:`taskmon.server.alerts.AlertReader`)."""

    async def statuses(self) -> list[AlertStatus]:
        """Every rule with its stored state."""

    async def close(self) -> None:
        """Release connections."""


def banner_text(statuses: Sequence[AlertStatus]) -> str:
    """What the status bar says while rules fire (empty when none does)."""
    firing = [s.name for s in statuses if s.firing]
    if not firing:
        return ""
    if len(firing) == 1:
        name = firing[0] if len(firing[0]) <= 24 else firing[0][:23] + "…"
        return f"▲ ALERT {name} (a)"
    return f"▲ {len(firing)} ALERTS (a)"


class AlertsScreen(Screen[None]):
    """Every alert rule: its state, its value at the last check, when it fired.

    | Key | Description |
    | :- | :- |
    | enter, h | Open the history of what the rule counts (its filter and window). |
    | escape, a | Back to the main screen. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,a", "back", "Back", tooltip="Back to the main screen"),
        Binding("h", "history", "History", tooltip="The history the selected rule counts"),
    ]

    def __init__(
        self,
        statuses: Sequence[AlertStatus],
        *,
        tz: tzinfo | None,
        open_history: Callable[[str], None],
        error: str = "",
    ) -> None:
        super().__init__()
        self.statuses = list(statuses)
        """The rules shown, in the order of the config file."""
        self.tz = tz
        self.open_history = open_history
        self.error = error

    def compose(self) -> ComposeResult:
        with Vertical(id="alerts-body") as body:
            body.border_title = "Alerts"
            body.border_subtitle = "enter/h: history · esc: back"
            yield Static(id="alerts-note")
            yield DataTable(id="alerts-table", cursor_type="row", zebra_stripes=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in ("state", "rule", "value", "fired", "condition"):
            table.add_column(column, key=column)
        self.show(self.statuses, self.error)
        table.focus()

    def show(self, statuses: Sequence[AlertStatus], error: str = "") -> None:
        """Replace the rows (the cursor stays on the same rule)."""
        self.statuses, self.error = list(statuses), error
        table = self.query_one(DataTable)
        keep = table.cursor_row
        table.clear()
        for status in self.statuses:
            label, style = STATE_LABELS.get(status.state_name, (status.state_name, ""))
            fired = status.state.fired_at if status.state is not None else None
            table.add_row(
                Text(label, style=style),
                status.name,
                status.value_text(),
                self._when(fired),
                status.rule.describe(),
                key=status.name,
            )
        if self.statuses:
            table.move_cursor(row=min(keep, len(self.statuses) - 1))
        note = self.query_one("#alerts-note", Static)
        firing = sum(s.firing for s in self.statuses)
        if error:
            note.update(Text(f"✕ cannot read the alert states: {error}", style="red"))
        elif not self.statuses:
            note.update("no alert rules: add [[alerts]] to the config file")
        else:
            checked = [s.state.checked_at for s in self.statuses if s.state and s.state.checked_at]
            last = self._when(max(checked)) if checked else "never (is taskmon serve running?)"
            note.update(f"{firing} of {len(self.statuses)} firing · last check {last}")

    def _when(self, value: datetime | None) -> str:
        return "-" if value is None else timestamp(value, self.tz)

    def selected(self) -> AlertStatus | None:
        """The rule under the cursor."""
        table = self.query_one(DataTable)
        if not self.statuses or table.cursor_row < 0:
            return None
        return self.statuses[min(table.cursor_row, len(self.statuses) - 1)]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_history()

    def action_history(self) -> None:
        status = self.selected()
        if status is not None:
            self.dismiss()
            self.open_history(status.rule.history_query())

    def action_back(self) -> None:
        self.dismiss()


class AlertsPoller:
    """Re-reads the alert states and hands them to the banner and an open alerts screen.

    Args:
        app: the app whose workers read.
        source: the states.
        apply: called with the statuses and an error text ('' when the read worked).
        interval: seconds between reads.
    """

    def __init__(
        self,
        app: App[None],
        source: AlertSource,
        apply: Callable[[list[AlertStatus], str], None],
        *,
        interval: float = ALERTS_REFRESH_S,
    ) -> None:
        self.app = app
        self.source = source
        self.apply = apply
        self.interval = interval
        self.statuses: list[AlertStatus] = []
        """The newest statuses read."""
        self.error = ""
        """Why the last read failed ('' when it worked)."""

    def start(self) -> None:
        self.refresh()
        self.app.set_interval(self.interval, self.refresh, name="alerts")

    def refresh(self) -> None:
        self.app.run_worker(self._load(), group="alerts", exclusive=True, exit_on_error=False)

    async def _load(self) -> None:
        try:
            statuses = await self.source.statuses()
            error = ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            statuses, error = self.statuses, error_line(exc)
        self.statuses, self.error = statuses, error
        self.apply(statuses, error)
