"""Benchmark of the TUI under a live event storm (run by hand).

    PYTHONPATH=. python bench/tui_feed.py [--dsn postgresql://…/taskmon_bench]

Runs the real app headless (120x36) on the given database (default
``taskmon_bench`` on the ``TASKMON_BENCH_DSN`` server), feeds it
``--rate`` events a second for ``--seconds`` seconds, presses ``j``/``k``
every ``--key-interval`` seconds (0.5) and reports:

* first screen: seconds from start until metrics and history are shown
  (seed a large table first with ``bench/queries.py 1000000``);
* key press to repaint: from posting the key to the first paint showing the
  moved cursor (p50 / p95 / max);
* CPU (user + system over wall time) and memory (peak RSS, RSS at 10 s and
  at the end: a bounded feed keeps it flat);
* events: produced vs counted by the feed (none may be lost).

``--source synthetic`` (default) generates events inside the process, as the
websocket client would hand them over; ``--source hub`` writes attempts with
a real :class:`~taskmon.worker.recorder.Recorder` (PostgreSQL NOTIFY) and receives
them through an in-process :class:`~taskmon.server.hub.Hub`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from common import SERVER_DSN, with_database
from textual import events

from taskmon.tui.app import make_app
from taskmon.tui.sources import (
    InProcessHubSource,
    LiveConnected,
    LiveEvent,
    LiveItem,
    LiveSource,
    PgDataSource,
)
from taskmon.tui.widgets.history_table import HistoryTable
from taskmon.tui.widgets.live_feed import LiveFeed

TASKS = ("app.tasks:extract", "app.tasks:transform", "app.tasks:load", "app.email:send")


def _event(i: int) -> dict[str, Any]:
    status = "failed" if i % 17 == 0 else "success"
    return {
        "v": 1,
        "seq": i,
        "type": "task_failed" if status == "failed" else "task_completed",
        "task_name": TASKS[i % len(TASKS)],
        "status": status,
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {
            "task_id": f"bench{i:09d}",
            "attempt": 0,
            "worker": "bench:1",
            "duration_ms": float(i % 500),
            "queue_wait_ms": 1.0,
            "error_type": "ValueError" if status == "failed" else None,
            "error_message": "bad input" if status == "failed" else None,
            "params": {"args": [i]},
        },
    }


class SyntheticLive:
    """Yields `rate` events a second for `seconds` seconds, paced against the clock."""

    label = "synthetic"

    def __init__(self, rate: int, seconds: float) -> None:
        self.rate = rate
        self.seconds = seconds
        self.produced = 0
        self.go = asyncio.Event()

    async def stream(self) -> AsyncIterator[LiveItem]:
        yield LiveConnected(False)
        await self.go.wait()
        start = time.monotonic()
        total = int(self.rate * self.seconds)
        while self.produced < total:
            due = min(total, int((time.monotonic() - start) * self.rate))
            while self.produced < due:
                self.produced += 1
                yield LiveEvent(_event(self.produced))
            await asyncio.sleep(0.005)
        await asyncio.Event().wait()  # a live stream does not end

    async def close(self) -> None:
        return None


async def _hub_producer(dsn: str, rate: int, seconds: float, counter: list[int]) -> None:
    from taskmon.bus.postgres import PgNotifyPublisher
    from taskmon.domain.events import AttemptRecord, Status
    from taskmon.worker.recorder import Recorder

    rec = Recorder(dsn, publisher=PgNotifyPublisher(), auto_migrate=False)
    await rec.start(wait_connected=5)
    start = time.monotonic()
    total = int(rate * seconds)
    try:
        while counter[0] < total:
            due = min(total, int((time.monotonic() - start) * rate))
            while counter[0] < due:
                counter[0] += 1
                now = datetime.now(UTC)
                rec.submit(
                    AttemptRecord(
                        task_id=f"bench{counter[0]:09d}-{os.getpid()}",
                        attempt=0,
                        task_name=TASKS[counter[0] % len(TASKS)],
                        status=Status.SUCCESS,
                        worker="bench:1",
                        started_at=now,
                        finished_at=now,
                        duration_ms=1.0,
                    )
                )
            await asyncio.sleep(0.005)
        await rec.flush(30)
    finally:
        await rec.stop()


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


async def run(dsn: str, rate: int, seconds: float, source: str, every: float) -> None:
    counter = [0]
    synthetic = SyntheticLive(rate, seconds) if source == "synthetic" else None
    live: LiveSource = synthetic if synthetic is not None else InProcessHubSource(dsn)
    app = make_app(PgDataSource(dsn), live)
    paints: list[tuple[float, int]] = []
    started = time.perf_counter()
    async with app.run_test(size=(120, 36)) as pilot:
        running = time.perf_counter()
        main = app.main
        history = main.query_one(HistoryTable)
        feed = main.query_one(LiveFeed)
        while main.stats is None or not main.history_rows:  # noqa: ASYNC110 (polls the app's state)
            await asyncio.sleep(0.01)
        first_screen = time.perf_counter() - started
        after_start = time.perf_counter() - running
        if source == "hub":
            while main.connection != "live":  # noqa: ASYNC110 (polls the app's state)
                await asyncio.sleep(0.05)

        original = app._display

        def display(screen: Any, renderable: Any) -> None:
            original(screen, renderable)
            paints.append((time.perf_counter(), history.cursor_row))

        app._display = display  # type: ignore[method-assign]
        await pilot.pause(0.2)

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.perf_counter()
        if synthetic is not None:
            synthetic.go.set()
            producer = None
        else:
            producer = asyncio.create_task(_hub_producer(dsn, rate, seconds, counter))
        latencies: list[float] = []
        rss: list[tuple[float, float]] = []
        missed = 0
        key = "j"
        while time.perf_counter() - wall0 < seconds:
            await asyncio.sleep(every)
            rss.append((time.perf_counter() - wall0, _rss_mb()))
            want = history.cursor_row + (1 if key == "j" else -1)
            mark = len(paints)
            t0 = time.perf_counter()
            app.post_message(events.Key(key, key))
            while True:
                hit = next((t for t, row in paints[mark:] if row == want), None)
                if hit is not None:
                    latencies.append(hit - t0)
                    break
                if time.perf_counter() - t0 > 2.0:
                    missed += 1
                    break
                await asyncio.sleep(0.001)
            key = "k" if key == "j" else "j"
        produced = synthetic.produced if synthetic is not None else counter[0]
        if producer is not None:
            await producer
        deadline = time.monotonic() + 15
        while feed.received < produced and time.monotonic() < deadline:  # noqa: ASYNC110 (polls the app's state)
            await asyncio.sleep(0.1)
        wall = time.perf_counter() - wall0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        received = feed.received
        lines = feed.line_count
        await pilot.exit(None)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    latencies.sort()
    p95 = latencies[max(0, int(len(latencies) * 0.95) - 1)] if latencies else float("nan")
    early = next((m for t, m in rss if t >= 10), rss[0][1] if rss else 0.0)
    print(f"source            {source}, {rate} events/s for {seconds:g} s, a key every {every:g} s")
    print(
        f"first screen      {first_screen * 1000:.0f} ms from launch, "
        f"{after_start * 1000:.0f} ms after the app was up"
    )
    print(
        f"key -> repaint    p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p95 {p95 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms "
        f"({len(latencies)} presses, {missed} without a repaint within 2 s)"
    )
    print(f"cpu               {cpu / wall * 100:.0f}% of one core ({cpu:.1f} s over {wall:.1f} s)")
    print(
        f"memory            peak RSS {peak_mb:.0f} MB;"
        f" RSS at 10 s {early:.0f} MB, at the end {rss[-1][1] if rss else 0:.0f} MB"
    )
    print(
        f"events            produced {produced}, counted by the feed {received}, lines kept {lines}"
    )
    if received != produced:
        raise SystemExit(f"lost events: {produced - received}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dsn",
        default=with_database(SERVER_DSN, "taskmon_bench"),
        help="a migrated database (default: taskmon_bench on the TASKMON_BENCH_DSN server)",
    )
    parser.add_argument("--rate", type=int, default=2000, help="events per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--source", choices=("synthetic", "hub"), default="synthetic")
    parser.add_argument(
        "--key-interval",
        type=float,
        default=0.5,
        help="seconds between key presses (above 1 s the history re-reads between presses)",
    )
    args = parser.parse_args()
    asyncio.run(run(args.dsn, args.rate, args.seconds, args.source, args.key_interval))


if __name__ == "__main__":
    main()
