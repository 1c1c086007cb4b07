"""Per-task numbers for the window, sortable by any column."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable

from taskmon.domain.display import duration
from taskmon.tui.format import count, percent

if TYPE_CHECKING:
    from taskmon.service.rows import TaskStats

__all__ = ["TaskTable"]

# (key, header, sort key, right-aligned)
_COLUMNS: tuple[tuple[str, str, Callable[[Any], Any], bool], ...] = (
    ("task", "task", lambda t: t.task_name, False),
    ("count", "count", lambda t: t.count, True),
    ("failures", "failed", lambda t: t.failures, True),
    ("failure_rate", "fail %", lambda t: t.failure_rate, True),
    ("p50", "p50", lambda t: -1.0 if t.p50_ms is None else t.p50_ms, True),
    ("p95", "p95", lambda t: -1.0 if t.p95_ms is None else t.p95_ms, True),
    ("p99", "p99", lambda t: -1.0 if t.p99_ms is None else t.p99_ms, True),
)


class TaskTable(DataTable[Text]):
    """One row per task name: count, failures, failure rate, p50/p95/p99.

    | Key | Description |
    | :- | :- |
    | o | Sort by the next column. |
    | O | Reverse the sort order. |
    | enter | Filter by this task. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
        Binding("o", "next_sort", "Sort", tooltip="Sort by the next column"),
        Binding("O", "reverse_sort", "Reverse sort", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.sort_index = 1
        """Which column the rows are sorted by (default: count)."""
        self.sort_reverse = True
        """Largest first."""
        self._tasks: list[TaskStats] = []

    def on_mount(self) -> None:
        self._add_columns()

    def _add_columns(self) -> None:
        self.clear(columns=True)
        for i, (key, header, _, right) in enumerate(_COLUMNS):
            arrow = (" ▼" if self.sort_reverse else " ▲") if i == self.sort_index else ""
            label = header + arrow
            self.add_column(Text(label, justify="right" if right else "left"), key=key)

    @property
    def task_names(self) -> list[str]:
        """The task names in display order."""
        return [t.task_name for t in self._sorted()]

    def _sorted(self) -> list[TaskStats]:
        key = _COLUMNS[self.sort_index][2]
        return sorted(self._tasks, key=key, reverse=self.sort_reverse)

    def show(self, tasks: list[TaskStats]) -> None:
        """Replace the rows, keeping the cursor on the same task when it is still there."""
        selected = self._selected_task()
        self._tasks = list(tasks)
        self._fill(selected)

    def _selected_task(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except Exception:
            return None

    def _fill(self, selected: str | None) -> None:
        self.clear()
        for t in self._sorted():
            self.add_row(
                Text(t.task_name),
                Text(count(t.count), justify="right"),
                Text(count(t.failures), justify="right"),
                Text(percent(t.failure_rate), justify="right"),
                Text(duration(t.p50_ms), justify="right"),
                Text(duration(t.p95_ms), justify="right"),
                Text(duration(t.p99_ms), justify="right"),
                key=t.task_name,
            )
        if selected is not None and selected in self.task_names:
            self.move_cursor(row=self.get_row_index(selected), animate=False, scroll=False)

    def sort_by(self, index: int, *, reverse: bool | None = None) -> None:
        """Sort by column `index`; numbers largest first unless told otherwise."""
        self.sort_index = index % len(_COLUMNS)
        self.sort_reverse = (self.sort_index != 0) if reverse is None else reverse
        selected = self._selected_task()
        self._add_columns()
        self._fill(selected)

    def action_next_sort(self) -> None:
        self.sort_by(self.sort_index + 1)

    def action_reverse_sort(self) -> None:
        self.sort_by(self.sort_index, reverse=not self.sort_reverse)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        if event.column_index == self.sort_index:
            self.action_reverse_sort()
        else:
            self.sort_by(event.column_index)
