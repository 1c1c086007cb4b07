"""One attempt in full: its error and traceback first, then every field, the attempts, params."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import tzinfo
from typing import ClassVar

from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from taskmon.domain.display import duration, status_label
from taskmon.service.rows import AttemptRow
from taskmon.tui.format import timestamp
from taskmon.tui.messages import AttemptsLoaded, LoadFailed
from taskmon.tui.sources import DataSource

__all__ = ["DetailScreen"]

_FIELDS = (
    "task_id",
    "task_name",
    "status",
    "attempt",
    "worker",
    "queue",
    "enqueued_at",
    "started_at",
    "finished_at",
    "created_at",
    "duration_ms",
    "queue_wait_ms",
    "error_type",
    "error_message",
)


class DetailScreen(Screen[None]):
    """Everything recorded about one attempt, scrollable.

    A failure opens on its error and traceback, the reason to open it, so they
    are read without scrolling at 80x24; the fields, the task's attempts and the
    params follow.

    | Key | Description |
    | :- | :- |
    | y | Copy the task id (OSC 52, where the terminal allows it). |
    | f | Filter the history by one of its params, labels or its queue. |
    | R | Send this task again, with this attempt's params (asks first). |
    | escape | Back to the main screen. |
    | j / k, up / down, pageup / pagedown, g / G | Scroll. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("y", "copy_task_id", "Copy task id"),
        Binding(
            "f", "filter_by", "Filter by", tooltip="Filter the history by a param, label or queue"
        ),
        Binding("R", "retry", "Retry", show=False),
        Binding("j", "scroll('down')", "Down", show=False),
        Binding("k", "scroll('up')", "Up", show=False),
        Binding("g", "scroll('home')", "Top", show=False),
        Binding("G", "scroll('end')", "Bottom", show=False),
    ]

    def __init__(
        self,
        row: AttemptRow,
        *,
        data: DataSource,
        tz: tzinfo | None,
        on_filter: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.row = row
        self.on_filter = on_filter
        """Applies a term to the history's filter (`f`); None where there is no history."""
        self.data = data
        self.tz = tz
        self.attempts: list[AttemptRow] | None = None
        """The task's attempts once loaded."""

    @property
    def task_id(self) -> str:
        return str(self.row.get("task_id", ""))

    @property
    def error_text(self) -> str:
        """``TimeoutError: upstream timed out after 30s`` (empty when the attempt has none)."""
        kind, message = self.row.get("error_type"), self.row.get("error_message")
        return ": ".join(str(p) for p in (kind, message) if p)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail-body"):
            yield Static(self._links(), id="detail-links")
            if self.error_text or self.row.get("traceback"):
                yield Static(self._error(), id="detail-error")
                yield Static(self._traceback(), id="detail-traceback")
                yield Static("Fields", classes="detail-heading")
            yield Static(self._fields(), id="detail-fields")
            yield Static("Attempts of this task", classes="detail-heading")
            yield DataTable(id="detail-attempts", cursor_type="row")
            yield Static("Params", classes="detail-heading")
            yield Static(self._params(), id="detail-params")
        yield Footer()

    def on_mount(self) -> None:
        body = self.query_one("#detail-body", VerticalScroll)
        body.border_title = (
            f"{self.row.get('task_name', '')} · attempt {self.row.get('attempt', 0)}"
            f" · {self._value('status')}"
        )
        body.focus()
        table: DataTable[str] = self.query_one("#detail-attempts", DataTable)
        table.add_columns("#", "status", "started", "duration", "worker", "error")
        self.load_attempts(self.task_id)
        self._show_links([])
        self.load_links(self.task_id)

    def _links(self, retried_as: list[str] | None = None) -> Text:
        """The attempt's links: ``⏱ schedule …`` (the scheduler sent it, ``S`` lists the
        schedules), ``retry of …`` (this task re-sends another) and ``retried as …``
        (`taskmon retry`)."""
        labels = self.row.get("labels")
        if not isinstance(labels, dict):
            labels = {}
        schedule, origin = labels.get("schedule_id"), labels.get("taskmon_retry_of")
        parts = [f"⏱ schedule {schedule}"] if schedule else []
        if origin:
            parts.append(f"↻ retry of {origin}")
        if retried_as:
            parts.append(f"↻ retried as {', '.join(retried_as)}")
        return Text("   ".join(parts), style="bold")

    @work(exclusive=True, group="links", exit_on_error=False)
    async def load_links(self, task_id: str) -> None:
        """Show the retries of `task_id` (a failure to read them only leaves them out)."""
        try:
            retried_as = await self.data.retried_as(task_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            return
        if task_id == self.task_id:
            self._show_links(retried_as)

    def _show_links(self, retried_as: list[str]) -> None:
        links = self.query_one("#detail-links", Static)
        text = self._links(retried_as)
        links.update(text)
        links.display = bool(text.plain)

    def action_filter_by(self) -> None:
        from taskmon.tui.screens.filter_picker import FilterPickerScreen, filter_choices

        on_filter = self.on_filter
        if on_filter is None:
            self.notify("no history to filter here", title="filter", severity="warning")
            return
        choices = filter_choices(self.row)
        if not choices:
            self.notify(
                "this attempt has no params, labels or queue to filter by",
                title="filter",
                timeout=4,
            )
            return

        def picked(term: str | None) -> None:
            if term is None:
                return
            self.dismiss()  # back to the list, which shows the new filter
            on_filter(term)

        self.app.push_screen(FilterPickerScreen(choices), picked)

    def action_retry(self) -> None:
        from taskmon.tui.screens.confirm_retry import retry_attempt

        retry_attempt(self, self.row)

    def _value(self, name: str) -> str:
        value = self.row.get(name)
        if value is None:
            return "-"
        if name.endswith("_at"):
            return timestamp(value, self.tz, with_date=True)
        if name.endswith("_ms") and isinstance(value, int | float):
            return duration(float(value))
        if name == "status":
            return status_label(str(value))
        return str(value)

    def _error(self) -> Text:
        # the status word goes with the colour, so the line reads the same without it
        return Text.assemble(
            (self._value("status"), "bold"), "  ", (self.error_text or "-", "bold")
        )

    def _fields(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for name in _FIELDS:
            table.add_row(name, self._value(name))
        for name in sorted(set(self.row) - set(_FIELDS) - {"params", "traceback"}):
            table.add_row(name, self._value(name))
        return table

    @property
    def params_text(self) -> str | None:
        """The params as pretty JSON (None when there are none)."""
        params = self.row.get("params")
        if params is None:
            return None
        if isinstance(params, str):
            try:
                params = json.loads(params)
            except ValueError:
                return params
        return json.dumps(params, indent=2, ensure_ascii=False, default=str, sort_keys=True)

    def _params(self) -> Syntax | Text:
        text = self.params_text
        if text is None:
            return Text("-")
        return Syntax(text, "json", theme="ansi_dark", background_color="default", word_wrap=True)

    def _traceback(self) -> Syntax | Text:
        tb = self.row.get("traceback")
        if not tb:
            return Text("-")
        return Syntax(
            str(tb).rstrip(), "pytb", theme="ansi_dark", background_color="default", word_wrap=True
        )

    @work(exclusive=True, group="attempts", exit_on_error=False)
    async def load_attempts(self, task_id: str) -> None:
        """Read every attempt of `task_id` and post :class:`AttemptsLoaded`."""
        try:
            attempts = await self.data.attempts(task_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.post_message(LoadFailed("attempts", f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(AttemptsLoaded(task_id, attempts))

    @on(AttemptsLoaded)
    def _attempts_loaded(self, message: AttemptsLoaded) -> None:
        if message.task_id != self.task_id:
            return
        self.attempts = message.attempts
        table: DataTable[str] = self.query_one("#detail-attempts", DataTable)
        table.clear()
        for a in message.attempts:
            error = " ".join(str(p) for p in (a.get("error_type"), a.get("error_message")) if p)
            table.add_row(
                str(a.get("attempt", "")),
                status_label(str(a.get("status"))),
                timestamp(a.get("started_at") or a.get("created_at"), self.tz, with_date=True),
                duration(a.get("duration_ms")),
                str(a.get("worker") or "-"),
                error[:80],
            )

    @on(LoadFailed)
    def _load_failed(self, message: LoadFailed) -> None:
        self.notify(f"{message.what}: {message.error}", title="database error", severity="error")

    def action_back(self) -> None:
        self.dismiss()

    def action_copy_task_id(self) -> None:
        self.app.copy_to_clipboard(self.task_id)
        self.notify(f"copied task id {self.task_id}", timeout=3)

    def action_scroll(self, where: str) -> None:
        body = self.query_one("#detail-body", VerticalScroll)
        if where == "down":
            body.scroll_down()
        elif where == "up":
            body.scroll_up()
        elif where == "home":
            body.scroll_home()
        else:
            body.scroll_end()
