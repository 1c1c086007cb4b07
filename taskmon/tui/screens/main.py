"""The main view: status bar, metrics, per-task table, history and live feed.

Every database read runs in a worker (``@work``) that posts a past-tense
message; the handlers below apply results only if they still answer the
current question (``generation``), so a slow answer to an old filter never
overwrites a newer one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from taskmon.domain.events import TERMINAL_STATUSES
from taskmon.domain.filters import FilterError, TaskFilter
from taskmon.service.maintenance import UPGRADE_COMMAND
from taskmon.tui.format import parse_timestamp, timestamp
from taskmon.tui.messages import (
    EventsReceived,
    GapFilled,
    HistoryLoaded,
    HubConnected,
    HubDisconnected,
    HubGapReported,
    LoadFailed,
    MetricsLoaded,
    ReplicaLagMeasured,
)
from taskmon.tui.sources import (
    DataSource,
    LiveConnected,
    LiveDisconnected,
    LiveEvent,
    LiveGap,
    LiveSource,
    PgDataSource,
)
from taskmon.tui.view_state import ViewState
from taskmon.tui.widgets.filter_bar import FilterBar
from taskmon.tui.widgets.history_table import HistoryTable
from taskmon.tui.widgets.live_feed import FEED_LINES, LiveFeed
from taskmon.tui.widgets.metrics_panel import MetricsPanel
from taskmon.tui.widgets.status_bar import StatusBar
from taskmon.tui.widgets.task_table import TaskTable
from taskmon.tui.widgets.too_small import MIN_HEIGHT, MIN_WIDTH, TooSmall

if TYPE_CHECKING:
    from taskmon.service.rows import AttemptRow, HistoryPage

__all__ = ["MainScreen"]

HISTORY_REFRESH_S = 0.5
"""Events mark the history stale; it is re-read at most this often."""
METRICS_REFRESH_S = 2.0
"""Live events re-read the metrics at most this often."""
METRICS_IDLE_REFRESH_S = 10.0
"""With no events, the metrics (running, lost…) are re-read this often."""
RETRY_S = 2.0
"""After a failed read, the next try waits this long."""
BATCH_S = 0.05
"""Live events are handed to the UI in batches at most this often."""
USER_IDLE_S = 1.0
"""The history does not re-read under the cursor of someone moving it: it waits this long."""
OFFLINE_AFTER = 5
"""Reconnection attempts after which the hub is shown as offline."""
REPLICA_LAG_S = 2.0
"""How often the read replica's lag is measured (when reads go to one)."""


def describe_error(exc: BaseException) -> str:
    """One line for the status bar."""
    if type(exc).__name__ == "UndefinedTableError":  # asyncpg's, not imported here for it
        return f"no taskmon tables — run {UPGRADE_COMMAND}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


class MainScreen(Screen[None]):
    """Metrics, history and the live feed on one screen."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "open_filter", "Filter", tooltip="Open the filter bar"),
        Binding(
            "s",
            "cycle_status",
            "Status",
            tooltip="Status filter: all → failed → running → retrying → lost → pending",
        ),
        Binding("w", "cycle_window", "Window", tooltip="Metrics window: 15m → 1h → 24h → 7d → 30d"),
        Binding("space", "toggle_pause", "Pause", tooltip="Pause / resume the live feed"),
        Binding("n", "next_page", "Next page", show=False, tooltip="Next history page"),
        Binding("p", "previous_page", "Prev page", show=False, tooltip="Previous history page"),
        Binding("r", "refresh", "Refresh", show=False, tooltip="Re-read metrics and history"),
        Binding(
            "R",
            "retry",
            "Retry",
            show=False,
            tooltip="Send the selected task again, or every marked one (m)",
        ),
    ]
    """
    | Key | Description |
    | :- | :- |
    | / | Open the filter bar. |
    | s | Cycle the status filter: all, failed, running, retrying, lost. |
    | w | Cycle the metrics window: 15m, 1h, 24h, 7d, 30d. |
    | space | Pause / resume the live feed. |
    | n / p | Next / previous history page. |
    | r | Re-read metrics and history. |
    | R | Send the selected history row's task again, or every marked row's (asks first). |
    """

    # Screen declares these as instance attributes, so no ClassVar here (mypy)
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]  # noqa: RUF012
    VERTICAL_BREAKPOINTS = [(0, "-short"), (34, "-tall")]  # noqa: RUF012

    def __init__(
        self,
        *,
        data: DataSource,
        live: LiveSource | None,
        clock: Callable[[], datetime],
        state: ViewState,
        page_size: int = 50,
    ) -> None:
        super().__init__()
        self.data = data
        self.live = live
        self.clock = clock
        self.state = state
        """The question on screen; replaced (never mutated) on every change."""
        self.page_size = page_size
        self.cursors: list[str | None] = [None]
        """Keyset cursors of the pages seen so far; ``cursors[i]`` starts page i."""
        self.page_index = 0
        self.stats: Any = None
        """The newest statistics shown."""
        self.history_rows: list[AttemptRow] = []
        self.connection = "connecting"
        self._history_stale = False
        self._metrics_stale = False
        self._metrics_loaded_at = 0.0
        self._history_busy = False
        self._metrics_busy = False
        self._retry_at = 0.0
        self._last_error = ""
        self._offline_since: datetime | None = None
        self._filled_to: datetime | None = None
        self._started_at = clock()

    # -- layout -------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status-bar")
        with Container(id="body"):
            with Horizontal(id="top"):
                yield MetricsPanel(id="metrics")
                yield TaskTable(id="tasks")
            yield HistoryTable(id="history")
            yield LiveFeed(id="feed")
        yield FilterBar(id="filter-bar")
        yield TooSmall(id="too-small")
        yield Footer()

    def on_mount(self) -> None:
        tz = self.clock().tzinfo
        history = self.query_one(HistoryTable)
        history.tz = tz
        history.clock = self.clock
        self.query_one(LiveFeed).tz = tz
        bar = self.query_one(StatusBar)
        bar.database = self.data.label
        if self.live is None:
            bar.connection = "offline"
        self.query_one("#filter-bar", FilterBar).display = False
        self.query_one("#tasks", TaskTable).border_title = "Tasks"
        self._sync_titles()
        self.query_one(HistoryTable).focus()
        self.reload()
        if self.live is not None:
            self.follow_live()
        self.set_interval(HISTORY_REFRESH_S, self._refresh_if_stale, name="stale-check")
        if isinstance(self.data, PgDataSource) and self.data.replica:
            self.measure_replica_lag()
            self.set_interval(REPLICA_LAG_S, self.measure_replica_lag, name="replica-lag")

    def on_resize(self, event: events.Resize) -> None:
        width, height = event.size
        small = width < MIN_WIDTH or height < MIN_HEIGHT
        self.set_class(small, "-too-small")
        if small:
            self.query_one(TooSmall).show_size(width, height)

    # -- the question ---------------------------------------------------------------

    def set_state(self, state: ViewState) -> None:
        """Ask a new question: back to the first page, re-read everything."""
        self.state = state
        self.cursors = [None]
        self.page_index = 0
        self._sync_titles()
        self.reload()

    def reload(self) -> None:
        self.load_metrics(self.state)
        self.load_history(self.state, self.page_index, self.cursors[self.page_index])

    def _sync_titles(self) -> None:
        bar = self.query_one(StatusBar)
        bar.window = self.state.window_label
        bar.filter_text = self.state.describe()
        history = self.query_one(HistoryTable)
        marked = len(history.marked)
        title = f"History · page {self.page_index + 1}"
        history.border_title = f"{title} · {marked} marked" if marked else title
        history.border_subtitle = (
            "R: retry marked · esc: clear marks" if marked else "enter: detail · n/p: page"
        )

    @on(HistoryTable.MarksChanged)
    def _marks_changed(self, message: HistoryTable.MarksChanged) -> None:
        self._sync_titles()

    # -- workers ------------------------------------------------------------------

    @work(exclusive=True, group="metrics", exit_on_error=False)
    async def load_metrics(self, state: ViewState) -> None:
        """Read the window's statistics and post :class:`MetricsLoaded`."""
        self._metrics_busy = True
        try:
            now = self.clock()
            flt = state.filter_at(now)
            # a typed since: is the window (the statistics read it first); say so to the source
            since = flt.since or now - state.window_delta
            stats = await self.data.stats(flt, since=since, until=None, now=now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.post_message(LoadFailed("metrics", describe_error(exc)))
            return
        finally:
            self._metrics_busy = False
            self._metrics_loaded_at = time.monotonic()
        self.post_message(MetricsLoaded(stats, state.generation))

    @work(exclusive=True, group="history", exit_on_error=False)
    async def load_history(self, state: ViewState, page_index: int, after: str | None) -> None:
        """Read one history page and post :class:`HistoryLoaded`."""
        self._history_busy = True
        try:
            page: HistoryPage = await self.data.history(
                state.filter_at(self.clock()), limit=self.page_size, after=after
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.post_message(LoadFailed("history", describe_error(exc)))
            return
        finally:
            self._history_busy = False
        self.post_message(HistoryLoaded(page, state.generation, page_index))

    @work(exclusive=True, group="live", exit_on_error=False)
    async def follow_live(self) -> None:
        """Feed the UI from the live stream for as long as the screen lives.

        Events are gathered for up to :data:`BATCH_S` and posted as one
        :class:`EventsReceived`, so thousands of events a second cost the UI
        twenty messages, not thousands.
        """
        assert self.live is not None
        batch: list[dict[str, Any]] = []
        wake = asyncio.Event()

        def flush() -> None:
            if batch:
                self.post_message(EventsReceived(batch[:]))
                batch.clear()

        async def read(live: LiveSource) -> None:
            failures = 0
            while True:
                try:
                    async for item in live.stream():
                        if isinstance(item, LiveEvent):
                            batch.append(item.event)
                            wake.set()
                            continue
                        flush()  # what came before a state change is posted before it
                        if isinstance(item, LiveConnected):
                            failures = 0
                            self.post_message(HubConnected(item.reconnected))
                        elif isinstance(item, LiveDisconnected):
                            self.post_message(HubDisconnected(item.error, item.attempt, item.final))
                        elif isinstance(item, LiveGap):
                            self.post_message(HubGapReported(item.reason))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    flush()
                    self.post_message(HubDisconnected(describe_error(exc), failures))
                    await asyncio.sleep(min(0.2 * 2**failures, 5.0))
                else:
                    # a stream is not meant to end; start it again
                    failures += 1
                    flush()
                    self.post_message(HubDisconnected("stream ended", failures))
                    await asyncio.sleep(min(0.2 * 2**failures, 5.0))

        reader = asyncio.create_task(read(self.live), name="taskmon-live-reader")
        try:
            while True:
                await wake.wait()
                wake.clear()
                flush()
                await asyncio.sleep(BATCH_S)
        finally:
            reader.cancel()

    @work(group="gap", exit_on_error=False)
    async def fill_gap(
        self,
        state: ViewState,
        since: datetime,
        reason: str,
        quiet: bool = False,
        open_attempts: Sequence[tuple[str, int]] = (),
    ) -> None:
        """Read what the live stream missed since `since`; post :class:`GapFilled`.

        That is the attempts begun since then, and the end of those among
        `open_attempts` (shown running) that ended meanwhile.
        """
        until = datetime.now(since.tzinfo)
        try:
            current = state.filter_at(self.clock())
            page = await self.data.history(current.merge(TaskFilter(since=since)), limit=FEED_LINES)
            ended = await self.data.attempts_by_key(open_attempts) if open_attempts else []
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.post_message(LoadFailed("gap fill", describe_error(exc)))
            return
        rows = list(reversed(page.rows))
        seen = {row["id"] for row in rows}
        rows[:0] = [
            row
            for row in ended
            if row["status"] in TERMINAL_STATUSES
            and row["id"] not in seen
            and (not current.statuses or row["status"] in current.statuses)
        ]
        self.post_message(GapFilled(since, until, rows, reason, quiet))

    # -- results ------------------------------------------------------------------

    @on(MetricsLoaded)
    def _metrics_loaded(self, message: MetricsLoaded) -> None:
        if message.generation != self.state.generation:
            return  # an answer to an older question
        self._clear_error()
        self.stats = message.stats
        self.query_one(MetricsPanel).show(message.stats, self.state.window_title)
        tasks = self.query_one(TaskTable)
        tasks.show(message.stats.tasks)
        tasks.border_title = f"Tasks · {len(message.stats.tasks)}"

    @on(HistoryLoaded)
    def _history_loaded(self, message: HistoryLoaded) -> None:
        if message.generation != self.state.generation or message.page_index != self.page_index:
            return
        self._clear_error()
        self.history_rows = message.page.rows
        if len(self.cursors) <= message.page_index + 1:
            self.cursors.append(message.page.next_cursor)
        else:
            self.cursors[message.page_index + 1] = message.page.next_cursor
        self.query_one(HistoryTable).show(message.page.rows)
        self._sync_titles()

    @work(exclusive=True, group="replica", exit_on_error=False)
    async def measure_replica_lag(self) -> None:
        assert isinstance(self.data, PgDataSource)
        try:
            text = (await self.data.replica_status()).describe()
        except Exception:
            text = "?"  # the read itself says what is wrong, in the error field
        self.post_message(ReplicaLagMeasured(text))

    @on(ReplicaLagMeasured)
    def _replica_lag_measured(self, message: ReplicaLagMeasured) -> None:
        self.query_one(StatusBar).replica_lag = message.text

    @on(LoadFailed)
    def _load_failed(self, message: LoadFailed) -> None:
        self.query_one(StatusBar).error = message.error
        self._retry_at = time.monotonic() + RETRY_S
        if message.what == "history":
            self._history_stale = True
        else:
            self._metrics_stale = True
        if message.error != self._last_error:
            self._last_error = message.error
            self.notify(
                f"{message.what}: {message.error} (retrying)",
                title="database error",
                severity="error",
            )

    def _clear_error(self) -> None:
        if self._last_error:
            self._last_error = ""
            self.query_one(StatusBar).error = ""

    def _refresh_if_stale(self) -> None:
        """Re-read what live events (or an error) made stale, a few times a second at most."""
        now = time.monotonic()
        if now < self._retry_at:
            return
        typing = now - getattr(self.app, "last_key_at", 0.0) < USER_IDLE_S
        if self._history_stale and not self._history_busy and not typing:
            self._history_stale = False
            self.load_history(self.state, self.page_index, self.cursors[self.page_index])
        since_metrics = now - self._metrics_loaded_at
        due = (self._metrics_stale and since_metrics >= METRICS_REFRESH_S) or (
            since_metrics >= METRICS_IDLE_REFRESH_S
        )
        if due and not self._metrics_busy:
            self._metrics_stale = False
            self.load_metrics(self.state)

    # -- live -----------------------------------------------------------------------

    def _matches(self, event: dict[str, Any]) -> bool:
        flt = self.state.filter
        if flt.is_empty():
            return True
        try:
            return flt.matches(event)
        except Exception:
            return True  # an odd event is shown rather than hidden

    @on(EventsReceived)
    def _events_received(self, message: EventsReceived) -> None:
        feed = self.query_one(LiveFeed)
        accepted = feed.add_events(message.events, self._matches)
        self.query_one(StatusBar).last_event = timestamp(feed.last_event_at, self.clock().tzinfo)
        if accepted:
            self._metrics_stale = True
            # only the first page moves; a user reading page 3 keeps their place
            if self.page_index == 0:
                self._history_stale = True

    @on(HubConnected)
    def _hub_connected(self, message: HubConnected) -> None:
        self.connection = "live"
        bar = self.query_one(StatusBar)
        bar.connection = "live"
        bar.attempt = 0
        if message.reconnected:
            self._start_gap_fill("reconnected")
        self._offline_since = None

    @on(HubDisconnected)
    def _hub_disconnected(self, message: HubDisconnected) -> None:
        bar = self.query_one(StatusBar)
        if message.final:  # given up: say why instead of counting retries
            self.connection = bar.connection = "offline"
            bar.offline_reason = message.error
            self.query_one(LiveFeed).add_note(f"live feed offline: {message.error}")
            return
        self.connection = "offline" if message.attempt >= OFFLINE_AFTER else "reconnecting"
        bar.connection = self.connection
        bar.attempt = message.attempt
        if self._offline_since is None:
            self._offline_since = self._gap_start()
            self.query_one(LiveFeed).add_note(f"live connection lost ({message.error}); retrying")

    @on(HubGapReported)
    def _hub_gap(self, message: HubGapReported) -> None:
        self._start_gap_fill(f"missed events ({message.reason})")

    def _gap_start(self) -> datetime:
        last = parse_timestamp(self.query_one(LiveFeed).last_event_at)
        start = last if last is not None else self._started_at
        # an attempt written in the same second as the last event seen may be missing too
        return start - timedelta(seconds=1)

    def _start_gap_fill(self, reason: str) -> None:
        since = self._offline_since or self._gap_start()
        quiet = False
        if self._filled_to is not None and self._filled_to > since:
            # a reconnect and the hub's gap report usually come together: read once
            since, quiet = self._filled_to, True
        self._filled_to = datetime.now(since.tzinfo)
        # a follow-up reads only what came after the first fill, which asked for these
        open_attempts = [] if quiet else list(self.query_one(LiveFeed).open_attempts)
        self.fill_gap(self.state, since, reason, quiet, open_attempts)

    @on(GapFilled)
    def _gap_filled(self, message: GapFilled) -> None:
        if message.quiet and not message.rows:
            return
        tz = self.clock().tzinfo
        span = f"{timestamp(message.since, tz)}–{timestamp(message.until, tz)}"
        self.query_one(LiveFeed).add_note(
            f"{message.reason}: filled {len(message.rows)} "
            f"attempt{'' if len(message.rows) == 1 else 's'} from the database ({span})",
            message.rows,
        )
        self._history_stale = self.page_index == 0
        self._metrics_stale = True

    # -- actions --------------------------------------------------------------------

    def action_open_filter(self) -> None:
        # what the status bar shows is what is edited, the status key's choice included
        self.query_one(FilterBar).open(self.state.describe())

    @on(FilterBar.Applied)
    def _filter_applied(self, message: FilterBar.Applied) -> None:
        try:
            state = self.state.with_query(message.query)
        except FilterError as exc:  # parsed a moment ago; a relative time may still fail
            self.notify(str(exc), severity="error")
            return
        self.query_one(FilterBar).close()
        self.query_one(HistoryTable).focus()
        self.set_state(state)

    @on(FilterBar.Cleared)
    def _filter_cleared(self) -> None:
        self.query_one(FilterBar).close()
        self.query_one(HistoryTable).focus()
        if self.state.query:
            self.set_state(self.state.with_query(""))

    def action_cycle_status(self) -> None:
        self.set_state(self.state.next_status())

    def action_cycle_window(self) -> None:
        self.set_state(self.state.next_window())

    def action_toggle_pause(self) -> None:
        self.query_one(LiveFeed).toggle_pause()

    def action_next_page(self) -> None:
        following = (
            self.cursors[self.page_index + 1] if self.page_index + 1 < len(self.cursors) else None
        )
        if following is None:
            self.notify("this is the last page", timeout=2)
            return
        self.page_index += 1
        self._sync_titles()
        self.load_history(self.state, self.page_index, following)

    def action_previous_page(self) -> None:
        if self.page_index == 0:
            self.notify("this is the first page", timeout=2)
            return
        self.page_index -= 1
        self._sync_titles()
        self.load_history(self.state, self.page_index, self.cursors[self.page_index])

    def action_refresh(self) -> None:
        self.state = self.state.refreshed()
        self._retry_at = 0.0
        self.reload()

    def action_retry(self) -> None:
        from taskmon.tui.screens.confirm_retry import retry_attempt

        history = self.query_one(HistoryTable)
        if history.marked:
            from taskmon.tui.screens.confirm_retry import retry_attempts

            retry_attempts(self, list(history.marked.values()), on_sent=history.clear_marks)
            return
        retry_attempt(self, history.selected_row())

    @on(DataTable.RowSelected, "#history")
    def _history_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        row = self.query_one(HistoryTable).rows_by_key.get(str(event.row_key.value))
        if row is not None:
            from taskmon.tui.screens.detail import DetailScreen

            self.app.push_screen(
                DetailScreen(row, data=self.data, tz=self.clock().tzinfo, on_filter=self.apply_term)
            )

    def apply_term(self, term: str) -> None:
        """Add one term (``param:user.id=42``) to the typed filter; see ViewState.with_term."""
        try:
            state = self.state.with_term(term, now=self.clock())
        except FilterError as exc:
            self.notify(str(exc), title="filter", severity="error")
            return
        self.query_one(HistoryTable).focus()
        self.set_state(state)

    @on(DataTable.RowSelected, "#tasks")
    def _task_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.set_state(self.state.with_task(str(event.row_key.value), now=self.clock()))
