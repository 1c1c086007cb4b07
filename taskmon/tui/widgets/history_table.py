"""The attempts matching the active filter, newest first, one keyset page at a time."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from typing import Any, ClassVar

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable

from taskmon.domain.display import duration
from taskmon.service.rows import AttemptRow, retried_as, retry_of
from taskmon.tui.format import clip, parse_timestamp, timestamp
from taskmon.tui.widgets.status_styles import STATUS_CLASSES, styled_status

__all__ = ["MARK", "HistoryTable", "fit_widths"]

MARK = "*"
"""A marked row's symbol, in a column of its own while any row is marked (no colour needed)."""

TASK_MAX = 30
"""A task name keeps up to this many cells before the error gives way."""
TASK_MIN = 12
"""A task name is cut no shorter than this to make room for the error."""
WORKER_MAX = 24
"""A worker (host:pid) is cut beyond this."""
ERROR_MIN = 16
"""The error column's room before the worker column goes, times lose their seconds
and, last, the task name is cut."""


@dataclass(frozen=True, slots=True)
class _Column:
    key: str
    header: str
    right: bool = False


_COLUMNS = (
    _Column("time", "time"),
    _Column("status", "status"),
    _Column("task", "task"),
    _Column("attempt", "#", right=True),
    _Column("duration", "duration", right=True),
    _Column("worker", "worker"),
    _Column("error", "error"),
)


def fit_widths(available: int, natural: Mapping[str, int], *, gap: int = 2) -> dict[str, int]:
    """The width of each shown column so that together they fit `available` cells.

    The short columns (time, status, #, duration) keep their natural width; the
    error column takes what is left, at least :data:`ERROR_MIN` if it can: to
    make that room the worker column is dropped first, then the task name is
    cut (down to :data:`TASK_MIN`). A column missing from the result is hidden.

    Args:
        available: the cells the table has (scrollbar excluded).
        natural: each column's widest cell or header.
        gap: the cells each column adds around its content (cell padding).
    """
    widths = {c.key: natural.get(c.key, len(c.header)) for c in _COLUMNS}
    widths["task"] = min(widths["task"], TASK_MAX)
    widths["worker"] = min(widths["worker"], WORKER_MAX)
    wanted_error = widths.pop("error")
    error_min = min(wanted_error, ERROR_MIN)

    def room() -> int:
        return available - sum(widths.values()) - gap * (len(widths) + 1)

    if room() < error_min:
        del widths["worker"]
    if room() < error_min:
        widths["task"] = max(TASK_MIN, widths["task"] - (error_min - room()))
    widths["error"] = max(1, min(wanted_error, room()))
    return widths


class HistoryTable(DataTable[Text]):
    """A page of attempts. ``enter`` opens the detail screen (the screen handles it).

    The columns are fitted to the width (:func:`fit_widths`), so the error is
    always on screen and nothing scrolls sideways; what does not fit is cut at
    a word with ``…`` (the detail screen has it whole).

    | Key | Description |
    | :- | :- |
    | j / k, up / down | Move the cursor. |
    | g / G | First / last row of the page. |
    | pageup / pagedown | Scroll a screenful. |
    | n / p | Next / previous page (bound on the screen). |
    | m | Mark / unmark the row (then `R` retries every marked one). |
    | escape | Clear the marks. |

    Marks are kept by attempt across pages and refreshes until cleared.
    ``space`` stays the live feed's pause key (bound on the screen), so
    marking is ``m``.
    """

    @dataclass
    class MarksChanged(Message):
        """Rows were marked or unmarked; ``count`` are marked now."""

        count: int

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("m", "toggle_mark", "Mark", tooltip="Mark / unmark the row for R (retry)"),
        Binding("escape", "clear_marks", "Unmark", tooltip="Clear the marks"),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
    ]

    COMPONENT_CLASSES = DataTable.COMPONENT_CLASSES | STATUS_CLASSES | {"history-table--error"}

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self.rows_by_key: dict[str, AttemptRow] = {}
        """The page's rows by row key (the attempt's id), for the detail screen."""
        self.tz: tzinfo | None = None
        """The zone times are shown in (the viewer's)."""
        self.clock: Callable[[], datetime] | None = None
        """Now: a page that is all from today shows times without the date."""
        self._rows: list[AttemptRow] = []
        self._widths: dict[str, int] = {}
        self.marked: dict[str, AttemptRow] = {}
        """The marked attempts by row key, in the order they were marked."""

    def on_mount(self) -> None:
        self._fill()

    def on_resize(self, event: events.Resize) -> None:
        if self._fit_cells()[1] != self._widths:
            self._fill()

    def show(self, rows: list[AttemptRow]) -> None:
        """Replace the page, keeping the cursor on the same attempt when it is still there."""
        self._rows = list(rows)
        self._fill()

    def _available(self) -> int:
        # the vertical scrollbar's room is kept whether or not it shows, so that
        # rows arriving (and the scrollbar appearing) never push a column out
        room = self.content_region.width - self.styles.scrollbar_size_vertical
        return room - self._mark_room()

    def _mark_room(self) -> int:
        """The cells the mark column takes (none while nothing is marked)."""
        return len(MARK) + 2 * self.cell_padding if self.marked else 0

    # -- marks ----------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "clear_marks":
            return bool(self.marked)  # without marks esc is not shown, and does nothing
        return True

    def action_toggle_mark(self) -> None:
        """Mark the row under the cursor, or unmark it; then on to the next row."""
        row = self.selected_row()
        if row is None:
            return
        key = str(row["id"])
        if self.marked.pop(key, None) is None:
            self.marked[key] = row
        self._marks_changed()
        self.action_cursor_down()

    def action_clear_marks(self) -> None:
        self.clear_marks()

    def clear_marks(self) -> None:
        """Unmark every row."""
        if self.marked:
            self.marked.clear()
            self._marks_changed()

    def _marks_changed(self) -> None:
        self._fill()
        self.refresh_bindings()
        self.post_message(self.MarksChanged(len(self.marked)))

    def _fit(self, cells: Sequence[Mapping[str, Text]]) -> dict[str, int]:
        natural = {
            c.key: max([cell_len(c.header), *(row[c.key].cell_len for row in cells)])
            for c in _COLUMNS
        }
        return fit_widths(self._available(), natural, gap=2 * self.cell_padding)

    def _today(self) -> date | None:
        if self.clock is None:
            return None
        now = self.clock()
        return (now.astimezone(self.tz) if self.tz is not None else now).date()

    def _fit_cells(self) -> tuple[list[dict[str, Text]], dict[str, int]]:
        """The page's cells and the column widths they get.

        When the task name would be cut to make room for the error, dated times
        drop their seconds first (the detail screen has them).
        """
        cells = self._cells(self._rows)
        widths = self._fit(cells)
        longest = max((c["task"].cell_len for c in cells), default=0)
        if widths["task"] < min(TASK_MAX, longest):
            compact = self._cells(self._rows, compact=True)
            compact_widths = self._fit(compact)
            if compact_widths["time"] < widths["time"]:
                return compact, compact_widths
        return cells, widths

    def _cells(self, rows: Sequence[AttemptRow], *, compact: bool = False) -> list[dict[str, Text]]:
        """Each row's cells at their full width, by column key (`compact`: no seconds)."""
        error_style = self.get_component_rich_style("history-table--error", partial=True)
        today = self._today()

        def day(value: Any) -> date | None:
            when = parse_timestamp(value)
            if when is None:
                return None
            return (when.astimezone(self.tz) if self.tz and when.tzinfo else when).date()

        # a page that is all from today needs no date: its room goes to the error
        dated = today is None or any(day(r.get("created_at")) != today for r in rows)
        cells = []
        for row in rows:
            error = " ".join(str(p) for p in (row.get("error_type"), row.get("error_message")) if p)
            # `taskmon retry` links (ids in the detail screen), ahead of the error
            links = ("↻ retry " if retry_of(row) else "") + (
                "↻ retried " if retried_as(row) else ""
            )
            error = links + error
            cells.append(
                {
                    "time": Text(self._time(row.get("created_at"), dated, compact)),
                    "status": styled_status(self, str(row.get("status")), width=10),
                    "task": Text(str(row.get("task_name", ""))),
                    "attempt": Text(str(row.get("attempt", 0)), justify="right"),
                    "duration": Text(duration(row.get("duration_ms")), justify="right"),
                    "worker": Text(str(row.get("worker") or "-")),
                    "error": Text(" ".join(error.split()), style=error_style),
                }
            )
        return cells

    def _time(self, value: Any, dated: bool, compact: bool) -> str:
        text = timestamp(value, self.tz, short_date=dated)
        # "11-28 12:00:03" → "11-28 12:00"; a time without its date keeps its seconds
        return text[:-3] if dated and compact and text != "-" else text

    def _fill(self) -> None:
        selected = self.selected_row()
        selected_key = str(selected["id"]) if selected else None
        cells, widths = self._fit_cells()
        self._widths = widths
        self.clear(columns=True)
        self.rows_by_key = {}
        shown = [c for c in _COLUMNS if c.key in widths]
        if self.marked:
            self.add_column(Text(""), key="mark", width=len(MARK))
        for column in shown:
            label = Text(column.header, justify="right" if column.right else "left")
            self.add_column(label, key=column.key, width=widths[column.key])
        for row, cell in zip(self._rows, cells, strict=True):
            key = str(row["id"])
            self.rows_by_key[key] = row
            texts = [_clipped(cell[c.key], widths[c.key]) for c in shown]
            if self.marked:
                texts.insert(0, Text(MARK if key in self.marked else "", style="bold"))
            self.add_row(*texts, key=key)
        if selected_key in self.rows_by_key:
            self.move_cursor(row=self.get_row_index(selected_key), animate=False, scroll=False)

    def selected_row(self) -> AttemptRow | None:
        """The attempt under the cursor."""
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except Exception:
            return None
        return self.rows_by_key.get(str(key))


def _clipped(text: Text, width: int) -> Text:
    """`text` cut to `width` cells at a word, with ``…`` (its style kept)."""
    if text.cell_len <= width:
        return text
    style = text.style if isinstance(text.style, Style | str) else ""
    return Text(clip(text.plain, width), style=style, justify=text.justify)
