"""`taskmon demo`: everything taskmon does, on a machine with nothing installed.

Starts a private embedded PostgreSQL (its own temporary data directory, not
the user's default cluster), runs a realistic mix of TaskIQ tasks in-process
through the real :class:`~taskmon.middleware.MonitoringMiddleware` (successes,
failures with tracebacks, retries, timeouts, slow tasks, a steady rate with
bursts), runs the websocket hub in-process and opens the TUI on it. Quitting
stops all of it and deletes the data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from taskiq import AsyncBroker, InMemoryBroker, SimpleRetryMiddleware

from taskmon.events import AttemptRecord, Status
from taskmon.middleware import MonitoringMiddleware
from taskmon.recorder import Recorder

__all__ = ["DemoSummary", "demo_environment", "end_on_hangup", "run_headless"]

logger = logging.getLogger("taskmon.demo")


class CardDeclinedError(Exception):
    """A payment provider said no (the demo's business error)."""


class SmtpTemporaryError(ConnectionError):
    """A mail server asked us to come back later (retried)."""


def _register_tasks(broker: AsyncBroker, rng: random.Random) -> dict[str, Any]:
    @broker.task(task_name="shop.orders:process_order")
    async def process_order(order_id: int, items: list[dict[str, Any]]) -> dict[str, Any]:
        await asyncio.sleep(rng.lognormvariate(-3.5, 0.6))
        if rng.random() < 0.03:
            raise ValueError(f"order {order_id}: item {items[0]['sku']} is out of stock")
        return {"order_id": order_id, "total": sum(i["qty"] * 9.99 for i in items)}

    @broker.task(task_name="shop.emails:send_email", retry_on_error=True, max_retries=3)
    async def send_email(to: str, template: str, smtp_password: str) -> None:
        await asyncio.sleep(rng.lognormvariate(-2.5, 0.5))
        if rng.random() < 0.15:
            raise SmtpTemporaryError("421 4.7.0 try again later")

    @broker.task(task_name="billing:charge_card")
    async def charge_card(customer: str, amount_cents: int, card_token: str) -> str:
        await asyncio.sleep(rng.lognormvariate(-2.0, 0.4))
        if rng.random() < 0.08:
            raise CardDeclinedError(f"card declined for {customer}: insufficient funds")
        return f"ch_{rng.randrange(10**8)}"

    @broker.task(task_name="etl.reports:build_report", timeout=2.5)
    async def build_report(report: str, day: str) -> int:
        await asyncio.sleep(rng.uniform(0.4, 3.0))  # sometimes beyond its 2.5 s timeout
        return rng.randrange(1000)

    @broker.task(task_name="media:resize_image")
    def resize_image(path: str, width: int) -> str:
        time.sleep(rng.lognormvariate(-3.0, 0.5))  # a sync task, run in a thread
        if path.endswith(".bmp"):
            raise OSError(f"cannot identify image file {path!r}")
        return path.replace(".", f"_{width}.")

    return {
        "process_order": process_order,
        "send_email": send_email,
        "charge_card": charge_card,
        "build_report": build_report,
        "resize_image": resize_image,
    }


async def _kick_one(tasks: dict[str, Any], rng: random.Random, n: int) -> None:
    pick = rng.random()
    if pick < 0.40:
        items = [{"sku": f"SKU-{rng.randrange(100, 999)}", "qty": rng.randint(1, 3)}]
        await tasks["process_order"].kiq(10_000 + n, items)
    elif pick < 0.65:
        await tasks["send_email"].kiq(
            f"user{n}@example.com", "receipt", smtp_password="hunter2-not-stored"
        )
    elif pick < 0.80:
        await tasks["charge_card"].kiq(f"cus_{n:05d}", rng.randrange(500, 9000), "tok_live_SECRET")
    elif pick < 0.88:
        await tasks["build_report"].kiq("daily-sales", datetime.now(UTC).date().isoformat())
    else:
        ext = ".bmp" if rng.random() < 0.1 else ".jpg"
        await tasks["resize_image"].kiq(f"/uploads/img{n}{ext}", 640)


async def _load(tasks: dict[str, Any], rng: random.Random, rate: float, stop: asyncio.Event) -> int:
    """Kick tasks at `rate` per second, with a burst of 5x every 20 s. Returns the count."""
    n = 0
    started = time.monotonic()
    while not stop.is_set():
        elapsed = time.monotonic() - started
        burst = 5.0 if elapsed % 20 < 2 else 1.0
        await _kick_one(tasks, rng, n)
        n += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.expovariate(rate * burst))
    return n


async def backfill(dsn: str, *, hours: int = 24, count: int = 3000, seed: int = 7) -> None:
    """Record a day of past attempts through the real writer, so every window has data."""
    rng = random.Random(seed)
    names = [
        ("shop.orders:process_order", 0.03, 30.0),
        ("shop.emails:send_email", 0.02, 80.0),
        ("billing:charge_card", 0.08, 140.0),
        ("etl.reports:build_report", 0.12, 1600.0),
        ("media:resize_image", 0.05, 50.0),
    ]
    errors = {
        "shop.orders:process_order": ("ValueError", "item SKU-123 is out of stock"),
        "shop.emails:send_email": ("SmtpTemporaryError", "421 4.7.0 try again later"),
        "billing:charge_card": ("CardDeclinedError", "card declined: insufficient funds"),
        "etl.reports:build_report": ("TimeoutError", ""),
        "media:resize_image": ("OSError", "cannot identify image file"),
    }
    recorder = Recorder(dsn, flush_interval=0.05)
    await recorder.start(wait_connected=30)
    now = datetime.now(UTC)
    for i in range(count):
        name, fail_rate, median_ms = rng.choice(names)
        started = now - timedelta(seconds=rng.uniform(60, hours * 3600))
        duration = rng.lognormvariate(0, 0.5) * median_ms
        failed = rng.random() < fail_rate
        error_type, message = errors[name] if failed else (None, None)
        recorder.submit(
            AttemptRecord(
                task_id=f"backfill-{i:05d}",
                attempt=0,
                task_name=name,
                status=Status.FAILED if failed else Status.SUCCESS,
                worker="demo-host:1",
                params={"args": [i], "kwargs": {}},
                error_type=error_type,
                error_message=message,
                traceback=f"Traceback (most recent call last):\n{error_type}: {message}"
                if failed
                else None,
                started_at=started,
                enqueued_at=started - timedelta(milliseconds=rng.expovariate(1 / 20)),
                finished_at=started + timedelta(milliseconds=duration),
                duration_ms=duration,
                queue_wait_ms=rng.expovariate(1 / 20),
            )
        )
    await recorder.flush(timeout=120)
    await recorder.stop()


@dataclass
class DemoEnvironment:
    """What the demo started: stopped again by leaving :func:`demo_environment`."""

    dsn: str
    hub_url: str
    broker: InMemoryBroker
    monitor: MonitoringMiddleware
    kicked: Callable[[], int]
    stop_load: Callable[[], None]
    data_dir: Path
    _extra: dict[str, Any] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def demo_environment(
    *, rate: float = 15.0, seed: int | None = None, data_dir: Path | None = None
) -> AsyncIterator[DemoEnvironment]:
    """Start the private database, the hub, the broker and the task load; stop them on exit."""
    from taskmon.hub import Hub
    from taskmon.store.embedded import embedded_dsn

    # the demo's tasks fail on purpose: TaskIQ would print each traceback on stderr
    logging.getLogger("taskiq").setLevel(logging.CRITICAL)
    own_dir = data_dir is None
    root = data_dir or Path(tempfile.mkdtemp(prefix="taskmon-demo-"))
    dsn = await asyncio.to_thread(embedded_dsn, root / "pg", keep=False)
    hub = Hub(dsn=dsn)
    broker: InMemoryBroker | None = None
    stop = asyncio.Event()
    load: asyncio.Task[int] | None = None
    counter = {"n": 0}
    try:
        await backfill(dsn)
        hub_url = await hub.start("127.0.0.1", 0)
        monitor = MonitoringMiddleware(dsn=dsn, flush_interval=0.1)
        broker = InMemoryBroker(max_async_tasks=200).with_middlewares(
            SimpleRetryMiddleware(default_retry_count=3), monitor
        )
        await broker.startup()
        rng = random.Random(seed)
        tasks = _register_tasks(broker, rng)

        async def counted_load() -> int:
            n = 0
            with contextlib.suppress(asyncio.CancelledError):
                n = await _load(_Counting(tasks, counter), rng, rate, stop)
            return n

        load = asyncio.create_task(counted_load(), name="taskmon-demo-load")
        yield DemoEnvironment(dsn, hub_url, broker, monitor, lambda: counter["n"], stop.set, root)
    finally:
        stop.set()
        if load is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(load, 5)
        if broker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_drain(broker), 10)
            with contextlib.suppress(Exception):
                await broker.shutdown()
        with contextlib.suppress(Exception):
            await hub.stop()
        await asyncio.to_thread(_remove_cluster, root / "pg")
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


class _Counting(dict[str, Any]):
    """The task table, counting each kick (the summary reports how many ran)."""

    def __init__(self, tasks: dict[str, Any], counter: dict[str, int]) -> None:
        super().__init__({k: _CountingTask(v, counter) for k, v in tasks.items()})


class _CountingTask:
    def __init__(self, task: Any, counter: dict[str, int]) -> None:
        self._task = task
        self._counter = counter

    async def kiq(self, *args: Any, **kwargs: Any) -> Any:
        self._counter["n"] += 1
        return await self._task.kiq(*args, **kwargs)


async def _drain(broker: InMemoryBroker) -> None:
    # a retry kicks a new task while the old one finishes: wait until none is left
    while True:
        await broker.wait_all()
        await asyncio.sleep(0.05)
        if not broker._running_tasks:
            return


def _remove_cluster(pgdata: Path) -> None:
    from taskmon.store.embedded import stop_embedded

    stop_embedded(pgdata)
    shutil.rmtree(pgdata, ignore_errors=True)


@dataclass(frozen=True)
class DemoSummary:
    """What a headless demo run did."""

    seconds: float
    kicked: int
    attempts_recorded: int
    by_status: dict[str, int]
    failures: int
    retries: int
    events_delivered: int
    dsn: str

    def lines(self) -> list[str]:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        return [
            f"demo ran {self.seconds:.1f} s: {self.kicked} tasks kicked",
            f"attempts recorded: {self.attempts_recorded} ({statuses})",
            f"failures: {self.failures}, retried attempts: {self.retries}",
            f"events delivered to a live subscriber: {self.events_delivered}",
        ]


def end_on_hangup(end: Callable[[], object]) -> None:
    """From now on, call `end` on SIGHUP (the SSH session dropped) or SIGTERM, instead of dying.

    Killed by either, the demo would leave its private PostgreSQL running in a
    temporary directory; ended through `end`, it stops and deletes it as on `q`.
    The handlers stay until the event loop closes, so that a second signal during
    that clean-up calls `end` again rather than killing it halfway.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGHUP, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no such signals on Windows
            loop.add_signal_handler(sig, end)


async def run_headless(
    duration: float, *, rate: float = 15.0, seed: int | None = None
) -> DemoSummary:
    """Run the demo without the TUI for `duration` seconds and summarise it."""
    from taskmon.client import EventReceived, subscribe
    from taskmon.store.db import connect

    started = time.monotonic()
    async with demo_environment(rate=rate, seed=seed) as env:
        delivered = 0

        async def listen() -> None:
            nonlocal delivered
            async for message in subscribe(env.hub_url, since_seq=0):
                if isinstance(message, EventReceived):
                    delivered += 1

        listener = asyncio.create_task(listen())
        ended = asyncio.Event()
        end_on_hangup(ended.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), duration)
        env.stop_load()
        kicked = env.kicked()
        await _drain(env.broker)
        assert env.monitor.recorder is not None
        await env.monitor.recorder.flush(timeout=30)
        await asyncio.sleep(0.5)  # let the last events cross the hub
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        conn = await connect(env.dsn)
        try:
            rows = await conn.fetch(
                "SELECT status, count(*) AS n FROM task_execution_logs "
                "WHERE task_id NOT LIKE 'backfill-%' GROUP BY status"
            )
        finally:
            await conn.close()
        by_status = {r["status"]: r["n"] for r in rows}
        return DemoSummary(
            seconds=time.monotonic() - started,
            kicked=kicked,
            attempts_recorded=sum(by_status.values()),
            by_status=by_status,
            failures=by_status.get("failed", 0),
            retries=by_status.get("retrying", 0),
            events_delivered=delivered,
            dsn=env.dsn,
        )
