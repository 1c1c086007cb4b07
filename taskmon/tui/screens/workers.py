"""Workers and queues (key ``W``), and the status bar's warning when none is alive.

The screen reads the heartbeat rows and the queue samples the workers write,
and the tasks sent and not started for over a minute (the ``pending`` rows of
clients with ``record_enqueued``), through :class:`~taskmon.service.reader.Reader`;
:class:`WorkersPoller` re-reads them every :data:`WORKERS_REFRESH_S` seconds, for
the screen and for the status bar's warning: no worker alive, a backlog that
grows, or tasks left waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from taskmon.domain.display import duration, trend_label, worker_state_label
from taskmon.service.reader import Reader
from taskmon.service.rows import DEFAULT_WAITING_OVER_S
from taskmon.tui.format import error_line

if TYPE_CHECKING:
    from taskmon.service.rows import QueueRow, WaitingRow, WorkerRow

__all__ = [
    "WORKERS_REFRESH_S",
    "PgWorkersSource",
    "WorkersPoller",
    "WorkersScreen",
    "WorkersSource",
    "warning_text",
]

WORKERS_REFRESH_S = 5.0
"""How often the heartbeats and queue samples are re-read."""

STATE_STYLES = {"alive": "green", "stale": "bold red", "stopped": "dim"}


class WorkersSource(Protocol):
    """Where the workers and queues come from (:class:`PgWorkersSource`)."""

    async def workers(self) -> list[WorkerRow]:
        """Every worker with its state."""

    async def queues(self) -> list[QueueRow]:
        """Every queue sampled lately."""

    async def waiting(self) -> list[WaitingRow]:
        """The tasks sent over a minute ago and not started, by task and queue."""

    async def close(self) -> None:
        """Release connections."""


PgWorkersSource = Reader
"""Workers and queues of a real session: the application layer's reader."""


def warning_text(
    workers: Sequence[WorkerRow],
    queues: Sequence[QueueRow],
    waiting: Sequence[WaitingRow] = (),
) -> str:
    """What the status bar says: no worker alive, a growing backlog, tasks left waiting.

    Empty when all is fine. Nothing is said of workers before any has sent a
    heartbeat (older workers send none).
    """
    parts: list[str] = []
    if workers and not any(w["state"] == "alive" for w in workers):
        parts.append("✕ no worker alive (W)")
    growing = [q for q in queues if q["depth"] > 0 and (q["trend"] or 0) > 0]
    if growing:
        worst = max(growing, key=lambda q: q["trend"] or 0)
        name = worst["queue"] if len(worst["queue"]) <= 20 else worst["queue"][:19] + "…"
        parts.append(f"↑ backlog {name} {worst['depth']:,} (W)")
    if waiting:
        n = sum(w["waiting"] for w in waiting)
        parts.append(f"… {n:,} not started (W)")
    return " · ".join(parts)


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else duration(max(0.0, seconds) * 1000)


class WorkersScreen(Screen[None]):
    """Worker processes (alive, stale, stopped) and queue backlogs.

    | Key | Description |
    | :- | :- |
    | escape, W | Back to the main screen. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,W", "back", "Back", tooltip="Back to the main screen"),
    ]

    def __init__(
        self,
        workers: Sequence[WorkerRow],
        queues: Sequence[QueueRow],
        waiting: Sequence[WaitingRow] = (),
        error: str = "",
    ) -> None:
        super().__init__()
        self.worker_rows = list(workers)
        self.queue_rows = list(queues)
        self.waiting_rows = list(waiting)
        self.error = error

    def compose(self) -> ComposeResult:
        with Vertical(id="workers-body") as body:
            body.border_title = "Workers"
            body.border_subtitle = "esc: back"
            yield Static(id="workers-note")
            yield DataTable(id="workers-table", cursor_type="row", zebra_stripes=False)
            yield Static("Queues", id="queues-title")
            yield DataTable(id="queues-table", cursor_type="row", zebra_stripes=False)
            yield Static(id="waiting-title")
            yield DataTable(id="waiting-table", cursor_type="row", zebra_stripes=False)
        yield Footer()

    def on_mount(self) -> None:
        workers = self.query_one("#workers-table", DataTable)
        for column in ("state", "worker", "seen", "run", "done", "fail", "/min"):
            workers.add_column(column, key=column)
        queues = self.query_one("#queues-table", DataTable)
        for column in ("queue", "depth", "oldest", "trend", "sampled"):
            queues.add_column(column, key=column)
        waiting = self.query_one("#waiting-table", DataTable)
        for column in ("task", "queue", "waiting", "oldest"):
            waiting.add_column(column, key=column)
        self.show(self.worker_rows, self.queue_rows, self.waiting_rows, self.error)
        workers.focus()

    def show(
        self,
        workers: Sequence[WorkerRow],
        queues: Sequence[QueueRow],
        waiting: Sequence[WaitingRow] = (),
        error: str = "",
    ) -> None:
        """Replace the rows."""
        self.worker_rows, self.queue_rows, self.error = list(workers), list(queues), error
        self.waiting_rows = list(waiting)
        table = self.query_one("#workers-table", DataTable)
        table.clear()
        for w in self.worker_rows:
            table.add_row(
                Text(worker_state_label(w["state"]), style=STATE_STYLES.get(w["state"], "")),
                w["name"],
                _ago(w["last_seen_s"]),
                f"{w['running']:,}",
                f"{w['processed']:,}",
                f"{w['failed']:,}",
                "-" if w["per_minute"] is None else f"{w['per_minute']:,.1f}",
                key=w["name"],
            )
        qtable = self.query_one("#queues-table", DataTable)
        qtable.clear()
        for q in self.queue_rows:
            wait = q["oldest_wait_s"]
            qtable.add_row(
                q["queue"],
                f"{q['depth']:,}",
                "-" if wait is None else duration(wait * 1000),
                trend_label(q["trend"]),
                _ago(q["age_s"]),
                key=f"{q['broker']}/{q['queue']}",
            )
        wtable = self.query_one("#waiting-table", DataTable)
        wtable.clear()
        for r in self.waiting_rows:
            wtable.add_row(
                r["task_name"],
                r["queue"] or "-",
                f"{r['waiting']:,}",
                duration(r["oldest_wait_s"] * 1000),
                key=f"{r['task_name']}/{r['queue']}",
            )
        total = sum(r["waiting"] for r in self.waiting_rows)
        after = duration(DEFAULT_WAITING_OVER_S * 1000)
        self.query_one("#waiting-title", Static).update(
            f"… Not started after {after}: {total:,}"
            if total
            else f"… Not started after {after}: none (recorded with record_enqueued=True)"
        )
        wtable.display = bool(self.waiting_rows)
        note = self.query_one("#workers-note", Static)
        counts = {s: sum(1 for w in self.worker_rows if w["state"] == s) for s in STATE_STYLES}
        if error:
            note.update(Text(f"✕ cannot read the workers: {error}", style="red"))
        elif not self.worker_rows:
            note.update("no worker has sent a heartbeat yet")
        else:
            note.update(" · ".join(worker_state_label(s) + f" {n}" for s, n in counts.items()))

    def action_back(self) -> None:
        self.dismiss()


class WorkersPoller:
    """Re-reads workers and queues and hands them to the status bar and an open screen.

    Args:
        app: the app whose workers read.
        source: the heartbeats and samples.
        apply: called with workers, queues, the tasks left waiting and an error text
            ('' when the read worked).
        interval: seconds between reads.
    """

    def __init__(
        self,
        app: App[None],
        source: WorkersSource,
        apply: Callable[[list[WorkerRow], list[QueueRow], list[WaitingRow], str], None],
        *,
        interval: float = WORKERS_REFRESH_S,
    ) -> None:
        self.app = app
        self.source = source
        self.apply = apply
        self.interval = interval
        self.workers: list[WorkerRow] = []
        self.queues: list[QueueRow] = []
        self.waiting: list[WaitingRow] = []
        self.error = ""

    def start(self) -> None:
        self.refresh()
        self.app.set_interval(self.interval, self.refresh, name="workers")

    def refresh(self) -> None:
        self.app.run_worker(self._load(), group="workers", exclusive=True, exit_on_error=False)

    async def _load(self) -> None:
        try:
            workers, queues = await self.source.workers(), await self.source.queues()
            waiting, error = await self.source.waiting(), ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            workers, queues, waiting = self.workers, self.queues, self.waiting
            error = error_line(exc)
        self.workers, self.queues, self.waiting, self.error = workers, queues, waiting, error
        self.apply(workers, queues, waiting, error)
