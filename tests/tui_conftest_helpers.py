"""Fixed data and small in-memory sources for the TUI's snapshot tests and benchmark.

Snapshots check layout, so they use these fakes (deterministic rows, a frozen
clock); the functional tests in ``test_tui.py`` use the real PostgreSQL and hub.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from helpers import attempt_row
from rich.console import Console
from textual.app import App

from taskmon.domain.filters import TaskFilter
from taskmon.store.history import HistoryPage
from taskmon.store.schema import AttemptRow
from taskmon.store.stats import Stats, TaskStats
from taskmon.tui.sources import LiveConnected, LiveEvent, LiveItem

FROZEN_NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)

TASKS = ("app.tasks:extract", "app.tasks:transform", "app.tasks:load", "app.tasks:notify")
WORKERS = ("host-1:4242", "host-2:5151")

TRACEBACK = """Traceback (most recent call last):
  File "/srv/app/tasks.py", line 42, in extract
    rows = await source.fetch(batch)
  File "/srv/app/source.py", line 17, in fetch
    raise TimeoutError("upstream timed out after 30s")
TimeoutError: upstream timed out after 30s"""


def frozen_clock() -> datetime:
    return FROZEN_NOW


def screen_text(app: App[Any]) -> str:
    """What the terminal shows right now, as plain text (one line per row).

    Asserting on it checks what a user can read without scrolling, which a
    widget's own state (its full content, scrolled or not) cannot.
    """
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system=None,
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text(styles=False)


def sample_rows(n: int = 60) -> list[AttemptRow]:
    """`n` attempts, newest first, one every 37 s before :data:`FROZEN_NOW`."""
    rows: list[AttemptRow] = []
    for i in range(n):
        created = FROZEN_NOW - timedelta(seconds=37 * (i + 1))
        status = ("success", "success", "failed", "success", "retrying", "running", "success")[
            i % 7
        ]
        failed = status in ("failed", "retrying")
        duration = None if status == "running" else 120.0 + (i * 97) % 3000
        rows.append(
            attempt_row(
                id=1000 - i,
                task_id=f"{i:04d}c0ffee{i:04d}",
                task_name=TASKS[i % len(TASKS)],
                status=status,
                attempt=1 if status == "retrying" else 0,
                worker=WORKERS[i % 2],
                queue="default",
                labels={},
                params={"args": [i], "kwargs": {"batch": i * 10, "source": "s3://bucket/x"}},
                error_type="TimeoutError" if failed else None,
                error_message="upstream timed out after 30s" if failed else None,
                traceback=TRACEBACK if failed else None,
                timeout_s=60.0,
                enqueued_at=created - timedelta(milliseconds=12),
                started_at=created,
                finished_at=None
                if duration is None
                else created + timedelta(milliseconds=duration),
                duration_ms=duration,
                queue_wait_ms=12.0,
                created_at=created,
                updated_at=created,
            )
        )
    return rows


def _matches(row: AttemptRow, flt: TaskFilter) -> bool:
    if flt.statuses and row["status"] not in flt.statuses:
        return False
    return not flt.tasks or row["task_name"] in flt.tasks


class FakeData:
    """A :class:`~taskmon.tui.sources.DataSource` over :func:`sample_rows`.

    Its statistics scale with the window, so cycling the window changes them.
    """

    label = "postgresql://taskmon@db.example:5432/app"

    def __init__(self, rows: list[AttemptRow] | None = None) -> None:
        self.rows = sample_rows() if rows is None else rows
        self.history_calls = 0
        self.stats_calls = 0

    async def history(
        self, flt: TaskFilter, *, limit: int = 50, after: str | None = None
    ) -> HistoryPage:
        self.history_calls += 1
        rows = [r for r in self.rows if _matches(r, flt)]
        start = int(after) if after else 0
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        return HistoryPage(rows=page, next_cursor=str(start + limit) if more else None)

    async def stats(
        self, flt: TaskFilter, *, since: datetime, until: datetime | None, now: datetime
    ) -> Stats:
        self.stats_calls += 1
        scale = max(1, int((now - since).total_seconds() // 900))
        tasks = [
            TaskStats(
                task_name=name,
                count=(40 - 7 * i) * scale,
                failures=(3 - i % 3) * scale,
                failure_rate=(3 - i % 3) / (40 - 7 * i),
                p50_ms=180.0 + 40 * i,
                p95_ms=900.0 + 300 * i,
                p99_ms=2400.0 + 500 * i,
                queue_wait_p95_ms=15.0,
            )
            for i, name in enumerate(TASKS)
        ]
        total = sum(t.count for t in tasks) + 3
        failed = sum(t.failures for t in tasks)
        step = (now - since) / 30
        throughput = [(since + step * i, 5 + (i * 7) % 13) for i in range(30)]
        return Stats(
            since=since,
            until=now,
            total=total,
            by_status={"success": total - failed - 3, "failed": failed, "running": 2, "lost": 1},
            failure_rate=failed / (total - 3),
            running=2,
            lost=1,
            p95_ms=1450.0,
            bucket_seconds=int(step.total_seconds()),
            throughput=throughput,
            tasks=tasks,
            errors=[],
            relative_error=0.01,
        )

    async def attempts(self, task_id: str) -> list[AttemptRow]:
        return [r for r in self.rows if r["task_id"] == task_id]

    async def attempts_by_key(self, keys: Sequence[tuple[str, int]]) -> list[AttemptRow]:
        wanted = set(keys)
        return [r for r in self.rows if (r["task_id"], r["attempt"]) in wanted]

    async def retried_as(self, task_id: str) -> list[str]:
        return [
            r["task_id"]
            for r in self.rows
            if r.get("labels", {}).get("taskmon_retry_of") == task_id
        ]

    async def close(self) -> None:
        return None


def sample_event(i: int, *, status: str = "success", when: datetime = FROZEN_NOW) -> dict[str, Any]:
    failed = status in ("failed", "retrying")
    return {
        "v": 1,
        "seq": i,
        "type": {"running": "task_started", "success": "task_completed"}.get(status, "task_failed"),
        "task_name": TASKS[i % len(TASKS)],
        "status": status,
        "timestamp": (when + timedelta(milliseconds=10 * i)).isoformat(),
        "data": {
            "task_id": f"ev{i:06d}",
            "attempt": 0,
            "worker": WORKERS[i % 2],
            "duration_ms": None if status == "running" else 100.0 + i % 900,
            "queue_wait_ms": 3.0,
            "error_type": "ValueError" if failed else None,
            "error_message": "bad input" if failed else None,
            "params": {"args": [i]},
        },
    }


class FakeLive:
    """A :class:`~taskmon.tui.sources.LiveSource` fed by the test through :meth:`push`."""

    label = "fake hub"

    def __init__(self, initial: list[LiveItem] | None = None) -> None:
        self.queue: asyncio.Queue[LiveItem] = asyncio.Queue()
        for item in [LiveConnected(False), *(initial or [])]:
            self.queue.put_nowait(item)

    def push(self, item: LiveItem) -> None:
        self.queue.put_nowait(item)

    def push_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.queue.put_nowait(LiveEvent(event))

    async def stream(self) -> AsyncIterator[LiveItem]:
        while True:
            yield await self.queue.get()

    async def close(self) -> None:
        return None
