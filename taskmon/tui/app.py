"""The Textual app and :func:`make_app`, the factory the command, tests and benchmark share."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen

from taskmon.tui.screens.alerts import AlertSource, AlertsPoller, AlertsScreen, banner_text
from taskmon.tui.screens.detail import DetailScreen
from taskmon.tui.screens.help import HelpScreen
from taskmon.tui.screens.main import MainScreen
from taskmon.tui.screens.schedules import SchedulesScreen, SchedulesSource
from taskmon.tui.screens.workers import WorkersPoller, WorkersScreen, WorkersSource, warning_text
from taskmon.tui.sources import DataSource, LiveSource
from taskmon.tui.view_state import ViewState
from taskmon.tui.widgets.filter_bar import FilterBar
from taskmon.tui.widgets.history_table import HistoryTable
from taskmon.tui.widgets.live_feed import LiveFeed
from taskmon.tui.widgets.status_bar import StatusBar
from taskmon.tui.widgets.task_table import TaskTable

if TYPE_CHECKING:
    from taskmon.service.alerts import AlertStatus
    from taskmon.service.resend import Retrier
    from taskmon.service.rows import QueueRow, WaitingRow, WorkerRow

__all__ = ["TaskmonApp", "make_app"]


def local_now() -> datetime:
    """The wall clock in the viewer's zone (times on screen are shown in it)."""
    return datetime.now().astimezone()


class TaskmonApp(App[None]):
    """``taskmon tui``: metrics, history and the live feed of TaskIQ tasks.

    | Key | Description |
    | :- | :- |
    | ? | Show every key. |
    | a | The alert rules and their states. |
    | W | Workers and queue backlogs. |
    | S | Schedules: did each run when it should have? |
    | q, ctrl+c | Quit. |
    """

    CSS_PATH = "app.tcss"
    TITLE = "taskmon"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", tooltip="Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True, tooltip="Quit"),
        Binding("question_mark", "help", "Help", tooltip="Show every key"),
        Binding("a", "alerts", "Alerts", show=False, tooltip="The alert rules and their states"),
        Binding("W", "workers", "Workers", show=False, tooltip="Workers and queue backlogs"),
        Binding(
            "S",
            "schedules",
            "Schedules",
            show=False,
            tooltip="Schedules: did each run when it should have?",
        ),
    ]

    def __init__(
        self,
        *,
        data: DataSource,
        live: LiveSource | None,
        state: ViewState,
        clock: Callable[[], datetime] = local_now,
        page_size: int = 50,
        close_sources: bool = True,
        alerts: AlertSource | None = None,
        retrier: Retrier | None = None,
        workers: WorkersSource | None = None,
        schedules: SchedulesSource | None = None,
    ) -> None:
        super().__init__()
        self.schedules = schedules
        """The user's schedules and their runs (None: no scheduler was given)."""
        self.data = data
        """Where history, metrics and attempts are read."""
        self.live = live
        """Where live events come from (None: no live feed)."""
        self.initial_state = state
        self.clock = clock
        """Now, in the zone times are shown in (tests freeze it)."""
        self.page_size = page_size
        self.close_sources = close_sources
        self.retrier = retrier
        """Sends a task again (`R`); None when no broker is configured."""
        self.last_key_at = 0.0
        """When the user last pressed a key (monotonic): auto-refreshes wait for a pause."""
        self.alerts = AlertsPoller(self, alerts, self._alerts_read) if alerts else None
        """Re-reads the alert rules' states (None: no rules configured)."""
        self.worker_poller = WorkersPoller(self, workers, self._workers_read) if workers else None
        """Re-reads the workers' heartbeats and queue samples (None: not shown)."""

    def on_mount(self) -> None:
        if self.alerts is not None:
            self.alerts.start()
        if self.worker_poller is not None:
            self.worker_poller.start()

    def _workers_read(
        self,
        workers: list[WorkerRow],
        queues: list[QueueRow],
        waiting: list[WaitingRow],
        error: str,
    ) -> None:
        self.main.query_one(StatusBar).worker_warning = warning_text(workers, queues, waiting)
        for screen in self.screen_stack:
            if isinstance(screen, WorkersScreen):
                screen.show(workers, queues, waiting, error)

    def action_workers(self) -> None:
        if isinstance(self.screen, WorkersScreen):
            return
        if self.worker_poller is None:
            self.notify("no workers source: start the TUI with a database", timeout=4)
            return
        self.worker_poller.refresh()
        self.push_screen(
            WorkersScreen(
                self.worker_poller.workers,
                self.worker_poller.queues,
                self.worker_poller.waiting,
                self.worker_poller.error,
            )
        )

    def open_history(self, query: str) -> None:
        """Show the main screen's history filtered by `query` (a screen's "history of this")."""
        main = self.main
        main.set_state(main.state.with_query(query, now=self.clock()))

    def action_schedules(self) -> None:
        if isinstance(self.screen, SchedulesScreen):
            return
        self.push_screen(SchedulesScreen(self.schedules, open_history=self.open_history))

    def _alerts_read(self, statuses: list[AlertStatus], error: str) -> None:
        self.main.query_one(StatusBar).alert = banner_text(statuses)
        for screen in self.screen_stack:
            if isinstance(screen, AlertsScreen):
                screen.show(statuses, error)

    def action_alerts(self) -> None:
        if isinstance(self.screen, AlertsScreen):
            return
        if self.alerts is None:
            self.notify("no alert rules: add [[alerts]] to the config file", timeout=4)
            return
        self.push_screen(
            AlertsScreen(
                self.alerts.statuses,
                tz=self.clock().tzinfo,
                open_history=self.open_history,
                error=self.alerts.error,
            )
        )

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self.last_key_at = time.monotonic()
        await super().on_event(event)

    def get_default_screen(self) -> Screen[None]:
        return MainScreen(
            data=self.data,
            live=self.live,
            clock=self.clock,
            state=self.initial_state,
            page_size=self.page_size,
        )

    @property
    def main(self) -> MainScreen:
        """The main screen (always at the bottom of the stack)."""
        screen = self.screen_stack[0]
        assert isinstance(screen, MainScreen)
        return screen

    async def on_unmount(self) -> None:
        if self.close_sources:
            await self.data.close()
            if self.live is not None:
                await self.live.close()
            if self.alerts is not None:
                await self.alerts.source.close()
            if self.worker_poller is not None:
                await self.worker_poller.source.close()

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.key_sections()))

    def key_sections(self) -> list[tuple[str, list[BindingType]]]:
        """Every binding, by where it applies (the help screen lists them all)."""
        return [
            ("App", list(TaskmonApp.BINDINGS)),
            ("Main", list(MainScreen.BINDINGS)),
            ("History", list(HistoryTable.BINDINGS)),
            ("Tasks", list(TaskTable.BINDINGS)),
            ("Feed", list(LiveFeed.BINDINGS)),
            ("Filter bar", list(FilterBar.BINDINGS)),
            ("Detail", list(DetailScreen.BINDINGS)),
            ("Alerts", list(AlertsScreen.BINDINGS)),
            ("Workers", list(WorkersScreen.BINDINGS)),
            ("Schedules", list(SchedulesScreen.BINDINGS)),
        ]

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The command palette offers the keyboard's actions too."""
        yield from super().get_system_commands(screen)
        main = self.main
        yield SystemCommand("Filter", "Open the filter bar (/)", main.action_open_filter)
        yield SystemCommand(
            "Cycle status filter",
            "all → failed → running → retrying → lost → pending (s)",
            main.action_cycle_status,
        )
        yield SystemCommand(
            "Cycle window", "15m → 1h → 24h → 7d → 30d (w)", main.action_cycle_window
        )
        yield SystemCommand(
            "Pause / resume feed", "Freeze the live feed (space)", main.action_toggle_pause
        )
        yield SystemCommand("Next page", "Next history page (n)", main.action_next_page)
        yield SystemCommand("Previous page", "Previous history page (p)", main.action_previous_page)
        yield SystemCommand("Refresh", "Re-read metrics and history (r)", main.action_refresh)
        yield SystemCommand("Workers", "Workers and queue backlogs (W)", self.action_workers)
        yield SystemCommand(
            "Schedules", "Did each schedule run when it should have? (S)", self.action_schedules
        )
        yield SystemCommand("Keys", "Show every key (?)", self.action_help)


def make_app(
    data: DataSource,
    live: LiveSource | None = None,
    *,
    window: str = "1h",
    query: str = "",
    clock: Callable[[], datetime] = local_now,
    page_size: int = 50,
    close_sources: bool = True,
    alerts: AlertSource | None = None,
    retrier: Retrier | None = None,
    workers: WorkersSource | None = None,
    schedules: SchedulesSource | None = None,
) -> TaskmonApp:
    """Build the app around a database source and an optional live source.

    Args:
        data: history, metrics and attempts (e.g. :class:`~taskmon.tui.sources.PgDataSource`).
        live: live events (:class:`~taskmon.tui.sources.HubLiveSource`,
            :class:`~taskmon.tui.sources.InProcessHubSource`), or None for none.
        window: the initial metrics window (15m, 1h, 24h, 7d or 30d).
        query: the initial filter, in the filter language.
        clock: now, with the zone to show times in; tests pass a frozen one.
        page_size: history rows per page.
        close_sources: close both sources when the app exits.
        alerts: the alert rules' states (:class:`~taskmon.server.alerts.AlertReader`), or None.
        retrier: sends a task again on `R` (None: `R` says how to configure a broker).
        workers: heartbeats and queue samples
            (:class:`~taskmon.tui.screens.workers.PgWorkersSource`), or None.
        schedules: the user's schedules and their runs
            (:class:`~taskmon.service.schedules.ScheduleWatch`), or None.

    Raises:
        FilterError: `query` does not parse.
        ValueError: `window` is not one of the windows.
    """
    state = ViewState.initial(window=window, query=query, now=clock())
    return TaskmonApp(
        data=data,
        live=live,
        state=state,
        clock=clock,
        page_size=page_size,
        close_sources=close_sources,
        alerts=alerts,
        retrier=retrier,
        workers=workers,
        schedules=schedules,
    )
