"""Rich tables for the CLI's `history` and `stats` (CLI only: the core never imports this).

Status is always a symbol and a word as well as a colour, so it reads the same
with NO_COLOR, on a monochrome terminal or in a copy-paste; symbols and
durations read as in the TUI (:mod:`taskmon.domain.display`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from taskmon.commands.common import plural
from taskmon.domain.display import duration, span, status_label

if TYPE_CHECKING:
    from taskmon.domain.filters import TaskFilter
    from taskmon.service.rows import AttemptRow, Stats

__all__ = [
    "STATUS_STYLES",
    "print_history",
    "print_stats",
    "sparkline",
    "status_text",
]

STATUS_STYLES: dict[str, str] = {
    "success": "green",
    "failed": "bold red",
    "retrying": "yellow",
    "running": "cyan",
    "pending": "dim",
    "lost": "magenta",
}
"""The colour of each status; its symbol and word: :func:`taskmon.domain.display.status_label`."""
_BLOCKS = "▁▂▃▄▅▆▇█"


def status_text(status: str) -> Text:
    """``✓ success`` in green, and so on."""
    return Text(status_label(status), style=STATUS_STYLES.get(status, ""))


def sparkline(values: list[int]) -> str:
    """One block character per value, scaled to the largest."""
    top = max(values, default=0)
    if top <= 0:
        return _BLOCKS[0] * len(values)
    return "".join(_BLOCKS[min(len(_BLOCKS) - 1, v * len(_BLOCKS) // (top + 1))] for v in values)


# piped output is not cut: a line is as long as its content (grep and cut see it all)
_PIPE_WIDTH = 4096


def _console() -> Console:
    """A console for stdout: the terminal's width, or no narrower than the content when piped.

    Without a terminal rich assumes 80 columns and would cut task names and
    errors; ``COLUMNS`` still decides when it is set.
    """
    console = Console()
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(width=_PIPE_WIDTH)


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    local = value.astimezone()
    if (now - value).total_seconds() < 20 * 3600:
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M")


def _error(row: AttemptRow) -> str:
    kind, message = row.get("error_type"), row.get("error_message")
    if kind and message:
        text = f"{kind}: {' '.join(str(message).split())}"
    else:
        text = str(kind or message or "")
    # `taskmon retry` links (taskmon.store.retry_links.add_retry_links), ahead of the error
    from taskmon.service.rows import retried_as, retry_of

    origin, retries = retry_of(row), retried_as(row)
    links = [f"retry of {origin}"] if origin else []
    if retries:
        links.append(f"retried as {', '.join(retries)}")
    return " · ".join([*links, text] if text else links)


def print_history(rows: list[AttemptRow], next_cursor: str | None, flt: TaskFilter) -> None:
    """A table of attempts that fits the terminal, then the next page's cursor."""
    console = _console()
    piped = console.width == _PIPE_WIDTH
    now = datetime.now(UTC)
    cells = [
        (
            _when(row["created_at"], now),
            status_text(row["status"]),
            row["task_name"],
            str(row["attempt"]),
            duration(row["duration_ms"]),
            row.get("worker") or "-",
            Text(_error(row), style="red" if row["status"] in ("failed", "retrying") else ""),
        )
        for row in rows
    ]

    def widest(i: int, header: str) -> int:
        return max([len(header), *(len(str(c[i])) for c in cells)])

    # the short columns and the task keep their full width; worker and error share the rest
    table = Table(box=None, header_style="bold", pad_edge=False, expand=not piped)
    table.add_column("started", no_wrap=True, min_width=widest(0, "started"))
    table.add_column("status", no_wrap=True, min_width=widest(1, "status"))
    # the task name is what a reader scans for: it keeps up to 30 cells before error does
    table.add_column(
        "task", overflow="ellipsis", no_wrap=True, min_width=min(30, widest(2, "task"))
    )
    table.add_column("#", justify="right", no_wrap=True, min_width=widest(3, "#"))
    table.add_column("duration", justify="right", no_wrap=True, min_width=widest(4, "duration"))
    table.add_column("worker", overflow="ellipsis", no_wrap=True, ratio=1, min_width=8)
    table.add_column("error", overflow="ellipsis", no_wrap=True, ratio=3, min_width=10)
    for cell in cells:
        table.add_row(*cell)
    if rows and piped:
        # the last column is padded to its widest cell: no trailing blanks in a pipe
        with console.capture() as captured:
            console.print(table)
        sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    elif rows:
        console.print(table)
    else:
        what = flt.to_query()
        console.print(f"no attempts{' match ' + what if what else ' recorded yet'}")
    footer = plural(len(rows), "row")
    if next_cursor:
        footer += f" · next page: --after {next_cursor}"
    console.print(Text(footer, style="dim"))


def print_stats(stats: Stats, flt: TaskFilter) -> None:
    """The window's summary, throughput, per-task table and error groups."""
    console = Console()
    now = datetime.now(UTC)
    span = f"{_when(stats.since, now)} → {_when(stats.until, now)}"
    header = Text(f"{span} · {plural(stats.total, 'attempt')} · failure rate ", style="bold")
    header.append(f"{stats.failure_rate:.1%}", style="red" if stats.failure_rate else "green")
    # the span above already says since and until
    query = dataclasses.replace(flt, since=None, until=None).to_query()
    if query:
        header.append(f" · {query}", style="dim")
    console.print(header)
    line = Text()
    for status, n in stats.by_status.items():
        if n or status in ("success", "failed"):
            line.append_text(status_text(status))
            line.append(f" {n}   ")
    console.print(line)
    console.print(
        f"running now {stats.running} · lost {stats.lost} · p95 {duration(stats.p95_ms)}"
        f" (percentiles ±{stats.relative_error:.0%})"
    )
    if stats.throughput:
        width = max(10, console.width - 30)
        values = [n for _, n in stats.throughput][-width:]
        step = _step_label(stats.bucket_seconds)
        console.print(
            Text("throughput ", style="bold")
            + Text(sparkline(values), style="cyan")
            + Text(f" per {step}, max {max(values)}", style="dim")
        )
    if stats.tasks:
        table = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
        table.add_column("task", overflow="ellipsis", no_wrap=True, ratio=1)
        for name in ("count", "failed", "rate", "p50", "p95", "p99", "wait p95"):
            table.add_column(name, justify="right", no_wrap=True)
        for t in stats.tasks:
            table.add_row(
                t.task_name,
                str(t.count),
                Text(str(t.failures), style="red" if t.failures else ""),
                f"{t.failure_rate:.1%}",
                duration(t.p50_ms),
                duration(t.p95_ms),
                duration(t.p99_ms),
                duration(t.queue_wait_p95_ms),
            )
        console.print(table)
    if stats.errors:
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("error", no_wrap=True, style="red")
        table.add_column("count", justify="right", no_wrap=True)
        table.add_column("last seen", no_wrap=True)
        table.add_column("example", overflow="ellipsis", no_wrap=True, ratio=1)
        for e in stats.errors:
            table.add_row(
                e.error_type or "(no type)",
                str(e.count),
                _when(e.last_seen, stats.until),
                " ".join((e.example or "").split()),
            )
        console.print(table)


def _step_label(seconds: int) -> str:
    return span(seconds)
