"""Schedules (key ``S``): did each scheduled task run when it should have?

The same report as ``taskmon schedules``, over the last day: each schedule of
the user's TaskIQ scheduler (``--scheduler``) with its state, next fire, last
run, runs, missed and late fires, read through
:class:`~taskmon.service.schedules.ScheduleWatch` when the screen opens, every
:data:`SCHEDULES_REFRESH_S` seconds while it is open, and on ``r``. ``enter``
opens the history of the selected schedule's task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar, Protocol

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from taskmon.domain.display import duration, fire_in, ran_ago, schedule_state_label
from taskmon.domain.filters import TaskFilter
from taskmon.tui.format import error_line

if TYPE_CHECKING:
    from taskmon.domain.schedules import ScheduleReport, Unreadable

__all__ = ["NO_SCHEDULER", "SCHEDULES_REFRESH_S", "SchedulesScreen", "SchedulesSource"]

SCHEDULES_REFRESH_S = 30.0
"""How often an open schedules screen reads the schedules and their runs again."""

NO_SCHEDULER = (
    "No scheduler given: start the TUI with --scheduler module:variable (the form "
    "`taskiq scheduler` takes), or set TASKMON_SCHEDULER or scheduler in the config file."
)

STATE_STYLES = {
    "unreadable": "bold red",
    "missed": "bold red",
    "late": "yellow",
    "waiting": "",
    "no runs": "dim",
    "ok": "green",
}


class SchedulesSource(Protocol):
    """Where the schedule reports come from (:class:`~taskmon.service.schedules.ScheduleWatch`)."""

    async def reports(self) -> tuple[list[ScheduleReport], list[Unreadable]]:
        """Each schedule over the last day, and the sources that cannot be read."""


class SchedulesScreen(Screen[None]):
    """The user's schedules and whether each ran when it should have.

    | Key | Description |
    | :- | :- |
    | enter | The history of the selected schedule's task. |
    | r | Read the schedules again. |
    | escape, S | Back to the main screen. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,S", "back", "Back", tooltip="Back to the main screen"),
        Binding("r", "reload", "Refresh", tooltip="Read the schedules again"),
        Binding("enter", "history", "History", tooltip="The history of this schedule's task"),
    ]

    def __init__(
        self,
        source: SchedulesSource | None,
        *,
        open_history: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] | None = None,
        interval: float = SCHEDULES_REFRESH_S,
    ) -> None:
        super().__init__()
        self.source = source
        self.open_history = open_history
        self.clock = clock or (lambda: datetime.now(UTC))
        self.interval = interval
        self.reports: list[ScheduleReport] = []
        self.unreadable: list[Unreadable] = []
        self.error = ""
        self.loaded = False
        """Set once the first read ended, either way (tests wait on it)."""

    def compose(self) -> ComposeResult:
        with Vertical(id="schedules-body") as body:
            body.border_title = "Schedules"
            body.border_subtitle = "enter: history · r: refresh · esc: back"
            yield Static("reading the schedules…", id="schedules-note")
            yield DataTable(id="schedules-table", cursor_type="row", zebra_stripes=False)
            yield Static(id="schedules-extra")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#schedules-table", DataTable)
        # the counts before the times: at 80 columns the last ones scroll out of sight
        for column in ("state", "task", "miss", "late", "runs", "when", "next", "last run", "took"):
            table.add_column(column, key=column)
        table.focus()
        if self.source is None:
            self.query_one("#schedules-note", Static).update(NO_SCHEDULER)
            self.loaded = True
            return
        self.action_reload()
        self.set_interval(self.interval, self.action_reload, name="schedules")

    def action_reload(self) -> None:
        if self.source is not None:
            self.run_worker(self._load(), group="schedules", exclusive=True, exit_on_error=False)

    async def _load(self) -> None:
        assert self.source is not None
        try:
            reports, unreadable = await self.source.reports()
            error = ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reports, unreadable, error = self.reports, self.unreadable, error_line(exc)
        self.show(reports, unreadable, error)

    def show(
        self, reports: Sequence[ScheduleReport], unreadable: Sequence[Unreadable], error: str = ""
    ) -> None:
        """Replace the rows (the worst state first, as the CLI's table)."""
        now = self.clock()
        self.reports, self.unreadable, self.error = list(reports), list(unreadable), error
        table = self.query_one("#schedules-table", DataTable)
        table.clear()
        for i, r in enumerate(self.reports):
            last = r.last_run
            ran = (
                "-"
                if last is None
                else ran_ago(last.status, last.started_at or last.created_at, now)
            )
            table.add_row(
                Text(schedule_state_label(r.state), style=STATE_STYLES.get(r.state, "")),
                r.schedule.task_name,
                f"{r.missed_count:,}",
                f"{r.late_count:,}",
                f"{r.runs:,}",
                r.schedule.when,
                fire_in(r.next_fire, now),
                ran,
                duration(None if last is None else last.duration_ms),
                key=str(i),
            )
        note = self.query_one("#schedules-note", Static)
        if error:
            note.update(Text(f"✕ cannot read the schedules: {error}", style="red"))
        elif not self.reports:
            note.update("The scheduler has no schedules that taskmon can read.")
        else:
            states = {r.state for r in self.reports}
            counts = [
                f"{schedule_state_label(s)} {sum(1 for r in self.reports if r.state == s)}"
                for s in STATE_STYLES
                if s in states
            ]
            note.update(" · ".join(counts) + " · over the last day")
        lines = [f"{r.schedule.task_name}: {r.problem}" for r in self.reports if r.problem]
        lines += [f"{u.source}: not readable ({u.reason})" for u in self.unreadable]
        self.query_one("#schedules-extra", Static).update("\n".join(lines))
        self.loaded = True

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        # the table takes enter itself (select the cursor row): the same as the binding
        event.stop()
        self.action_history()

    def action_history(self) -> None:
        table = self.query_one("#schedules-table", DataTable)
        if self.open_history is None or not self.reports or table.cursor_row < 0:
            return
        report = self.reports[min(table.cursor_row, len(self.reports) - 1)]
        self.dismiss()
        self.open_history(TaskFilter(tasks=(report.schedule.task_name,)).to_query())

    def action_back(self) -> None:
        self.dismiss()
