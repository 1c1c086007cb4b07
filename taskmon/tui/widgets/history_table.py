"""The attempts matching the active filter, newest first, one keyset page at a time."""

from __future__ import annotations

from datetime import tzinfo
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable

from taskmon.tui.format import duration, timestamp
from taskmon.tui.widgets.status_styles import STATUS_CLASSES, styled_status

__all__ = ["HistoryTable"]


class HistoryTable(DataTable[Text]):
    """A page of attempts. ``enter`` opens the detail screen (the screen handles it).

    | Key | Description |
    | :- | :- |
    | j / k, up / down | Move the cursor. |
    | g / G | First / last row of the page. |
    | pageup / pagedown | Scroll a screenful. |
    | n / p | Next / previous page (bound on the screen). |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
    ]

    COMPONENT_CLASSES = DataTable.COMPONENT_CLASSES | STATUS_CLASSES | {"history-table--error"}

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.rows_by_key: dict[str, dict[str, Any]] = {}
        """The page's rows by row key (the attempt's id), for the detail screen."""
        self.tz: tzinfo | None = None
        """The zone times are shown in (the viewer's)."""

    def on_mount(self) -> None:
        self.add_column("time", key="time")
        self.add_column("status", key="status")
        self.add_column("task", key="task")
        self.add_column(Text("#", justify="right"), key="attempt")
        self.add_column(Text("duration", justify="right"), key="duration")
        self.add_column("worker", key="worker")
        self.add_column("error", key="error")

    def show(self, rows: list[dict[str, Any]]) -> None:
        """Replace the page, keeping the cursor on the same attempt when it is still there."""
        selected = self.selected_row()
        selected_key = str(selected["id"]) if selected else None
        self.clear()
        self.rows_by_key = {}
        error_style = self.get_component_rich_style("history-table--error", partial=True)
        for row in rows:
            key = str(row["id"])
            self.rows_by_key[key] = row
            error = " ".join(str(p) for p in (row.get("error_type"), row.get("error_message")) if p)
            self.add_row(
                Text(timestamp(row.get("created_at"), self.tz, short_date=True)),
                styled_status(self, str(row.get("status")), width=10),
                Text(str(row.get("task_name", ""))),
                Text(str(row.get("attempt", 0)), justify="right"),
                Text(duration(row.get("duration_ms")), justify="right"),
                Text(str(row.get("worker") or "-")),
                Text(error[:80], style=error_style),
                key=key,
            )
        if selected_key in self.rows_by_key:
            self.move_cursor(row=self.get_row_index(selected_key), animate=False, scroll=False)

    def selected_row(self) -> dict[str, Any] | None:
        """The attempt under the cursor."""
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None
        return self.rows_by_key.get(str(key))
