"""`taskmon demo`: everything taskmon does, on a machine with nothing installed.

Starts a private embedded PostgreSQL (its own temporary data directory, not
the user's default cluster), runs a realistic mix of TaskIQ tasks in-process
through the real :class:`~taskmon.worker.middleware.MonitoringMiddleware` (successes,
failures with tracebacks, retries, timeouts, slow tasks, a steady rate with
bursts), runs the websocket hub in-process and opens the TUI on it. Quitting
stops all of it and deletes the data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from taskiq import AsyncBroker, InMemoryBroker, SimpleRetryMiddleware

from taskmon.domain.events import AttemptRecord, Status
from taskmon.worker.middleware import MonitoringMiddleware
from taskmon.worker.recorder import Recorder

__all__ = [
    "DemoStop",
    "DemoStopped",
    "DemoSummary",
    "backfill",
    "demo_environment",
    "run_headless",
    "until_stopped",
]

logger = logging.getLogger("taskmon.demo")
T = TypeVar("T")


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
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
        # cancellation that arrives as the wait ends, and the load would go on
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(rng.expovariate(rate * burst)):
                await stop.wait()
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
    try:
        await recorder.start(wait_connected=30)
        from taskmon.store import partitions
        from taskmon.store.db import connect

        # the past day's partitions, so that the history does not wait in the default one
        conn = await connect(dsn)
        try:
            await partitions.ensure(conn, since=datetime.now(UTC) - timedelta(hours=hours))
        finally:
            await conn.close()
        _submit_past(recorder, rng, names, errors, hours, count)
        await recorder.flush(timeout=120)
    finally:
        # also when a signal ends the demo during start-up: no writer left behind
        await recorder.stop(timeout=1)


def _submit_past(
    recorder: Recorder,
    rng: random.Random,
    names: list[tuple[str, float, float]],
    errors: dict[str, tuple[str, str]],
    hours: int,
    count: int,
) -> None:
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


class DemoStopped(Exception):
    """A signal ended the demo before it had started; everything it started is removed."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"{signal_name} during start-up")
        self.signal_name = signal_name


class DemoStop:
    """Ends the demo cleanly on SIGHUP (the SSH session dropped) or SIGTERM, in any phase.

    Killed by either, the demo would leave its private PostgreSQL running in a
    temporary directory. Installed before anything is started, the handlers
    turn the first signal into an orderly end: during start-up (see
    :meth:`starting`) it cancels the start-up, whose clean-up then removes
    whatever was started; afterwards it sets :attr:`ended`. Later signals do
    nothing more, so a second one cannot kill the clean-up halfway.

    After SIGHUP the terminal is gone: file descriptors 1 and 2, where they are
    a terminal, are pointed at ``/dev/null`` at once, so that no write (the
    TUI's, a summary) can fail or block on it. Should the event loop still not
    finish within `grace` seconds of the signal (something blocked it), a
    watchdog thread removes the private PostgreSQL itself and ends the process.
    """

    def __init__(self, *, grace: float = 60.0) -> None:
        self.ended = asyncio.Event()
        """Set in the event loop by the first signal that arrives after start-up."""
        self.signal_name: str | None = None
        """``"SIGHUP"`` or ``"SIGTERM"`` once one arrived."""
        self.root: Path | None = None
        """The demo's temporary directory, for the watchdog (set by :func:`demo_environment`)."""
        self._grace = grace
        self._loop: asyncio.AbstractEventLoop | None = None
        self._starting: asyncio.Task[Any] | None = None
        self._cancelled_start = False
        self._signalled = threading.Event()
        self._finished = threading.Event()
        self._wakeup: tuple[socket.socket, socket.socket] | None = None
        self._old_wakeup_fd = -1

    def install(self) -> None:
        """Handle SIGHUP and SIGTERM from now on (call it in the running event loop, first)."""
        loop = self._loop = asyncio.get_running_loop()
        # Handlers run in the main thread between two bytecodes, even when the event loop
        # is blocked; the wake-up socket makes a signal that another thread received wake
        # the loop's select() at once instead of at its next timer.
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        self._wakeup = (reader, writer)
        self._old_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        loop.add_reader(reader.fileno(), self._drain_wakeup)
        for sig in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        threading.Thread(target=self._watch, name="taskmon-demo-watchdog", daemon=True).start()

    def finished(self) -> None:
        """Clean-up is done: the watchdog stands down. The handlers stay until exit."""
        self._finished.set()
        if self._wakeup is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._wakeup[0].fileno())
            signal.set_wakeup_fd(self._old_wakeup_fd)
            for sock in self._wakeup:
                sock.close()
            self._wakeup = None

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """While inside, a signal cancels the current task; leaving raises :class:`DemoStopped`."""
        task = asyncio.current_task()
        assert task is not None
        self._starting = task
        try:
            yield
        except asyncio.CancelledError:
            if self._cancelled_start and task.uncancel() == 0:
                # a plain exception, not a cancellation, so that the clean-up that
                # follows runs in a task that is no longer being cancelled
                raise DemoStopped(self.signal_name or "a signal") from None
            raise
        finally:
            self._starting = None

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            _silence_terminal()
        if self._signalled.is_set():
            return  # already ending: a second signal must not disturb the clean-up
        self.signal_name = signal.Signals(signum).name
        self._signalled.set()
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to end
                self._loop.call_soon_threadsafe(self._end)

    def _end(self) -> None:
        # runs in the event loop, so the phase it sees is the one the demo is in
        if self._starting is not None:
            self._cancelled_start = True
            self._starting.cancel()
        else:
            self.ended.set()

    def _drain_wakeup(self) -> None:
        if self._wakeup is not None:
            with contextlib.suppress(OSError):
                self._wakeup[0].recv(256)

    def _watch(self) -> None:
        self._signalled.wait()
        if self._finished.wait(self._grace):
            return
        with contextlib.suppress(Exception):
            sys.stderr.write(
                f"taskmon: the demo did not stop within {self._grace:g} s of "
                f"{self.signal_name}; removing its PostgreSQL and leaving\n"
            )
            sys.stderr.flush()
        if self.root is not None:
            _remove_cluster(self.root / "pg")
            shutil.rmtree(self.root, ignore_errors=True)
        os._exit(1)


def _silence_terminal() -> None:
    """Point stdout and stderr, where they are a terminal, at /dev/null.

    After a hang-up, writes to the terminal fail (and a writer that fails can
    leave others waiting on it); a pipe or a file still has its reader.
    """
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            # S_ISCHR, not isatty: a terminal that has hung up no longer answers isatty
            with contextlib.suppress(OSError):
                if stat.S_ISCHR(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd)
        os.close(devnull)


async def until_stopped(
    main: Callable[[DemoStop], Awaitable[T]], *, grace: float = 60.0
) -> T | DemoStopped:
    """Run `main` with SIGHUP and SIGTERM handled by a :class:`DemoStop` installed first.

    Returns what `main` returns, or the :class:`DemoStopped` that a signal during
    start-up raised (after everything started so far was removed).
    """
    stop = DemoStop(grace=grace)
    stop.install()
    try:
        return await main(stop)
    except DemoStopped as stopped:
        return stopped
    finally:
        stop.finished()


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
    ready_at: float
    """``time.monotonic()`` when start-up ended and the task load began."""
    _extra: dict[str, Any] = field(default_factory=dict)


def _say(line: str) -> None:
    # start-up takes seconds: say on stderr what the wait is for
    with contextlib.suppress(OSError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


@contextlib.asynccontextmanager
async def demo_environment(
    *,
    rate: float = 15.0,
    seed: int | None = None,
    data_dir: Path | None = None,
    stop: DemoStop | None = None,
    progress: Callable[[str], None] = _say,
) -> AsyncIterator[DemoEnvironment]:
    """Start the private database, the hub, the broker and the task load; stop them on exit.

    With `stop`, a signal during start-up raises :class:`DemoStopped` out of the
    ``async with`` once everything started so far is stopped and deleted.
    """
    from taskmon.server.hub import Hub
    from taskmon.store.embedded import embedded_dsn

    stop = stop or DemoStop()
    # the demo's tasks fail on purpose: TaskIQ would print each traceback on stderr
    logging.getLogger("taskiq").setLevel(logging.CRITICAL)
    own_dir = data_dir is None
    root = data_dir or Path(tempfile.mkdtemp(prefix="taskmon-demo-"))
    stop.root = root
    loop = asyncio.get_running_loop()
    server: asyncio.Future[str] | None = None
    hub: Hub | None = None
    broker: InMemoryBroker | None = None
    halt = asyncio.Event()
    load: asyncio.Task[int] | None = None
    counter = {"n": 0}
    try:
        with stop.starting():
            progress("starting a private PostgreSQL…")
            server = loop.run_in_executor(None, lambda: embedded_dsn(root / "pg", keep=False))
            # shielded: a signal must not abandon the thread that is starting the server
            dsn = await asyncio.shield(server)
            progress("recording a day of past tasks…")
            await backfill(dsn)
            progress("starting the event hub and the demo tasks…")
            hub = Hub(dsn=dsn)
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
                n = await _load(_Counting(tasks, counter), rng, rate, halt)
            return n

        load = asyncio.create_task(counted_load(), name="taskmon-demo-load")
        yield DemoEnvironment(
            dsn,
            hub_url,
            broker,
            monitor,
            lambda: counter["n"],
            halt.set,
            root,
            ready_at=time.monotonic(),
        )
    finally:
        halt.set()
        if load is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(load, 5)
        if broker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(_drain(broker), 10)
            with contextlib.suppress(Exception):
                await broker.shutdown()
        if hub is not None:
            with contextlib.suppress(Exception):
                await hub.stop()
        if server is not None and not server.done():
            # a signal came while the server was starting: let the start finish, then
            # stop it (its failure, say pg_ctl killed by the same hang-up, changes nothing)
            await asyncio.wait([server])
        if server is not None and server.done() and not server.cancelled():
            server.exception()  # retrieved: a failed start is cleaned up below like any
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
    _kill_leftover_postgres(pgdata)
    shutil.rmtree(pgdata, ignore_errors=True)


def _kill_leftover_postgres(pgdata: Path) -> None:
    """End any server still running on `pgdata` that ``pg_ctl stop`` could not stop.

    A hang-up reaches ``pg_ctl start`` too (it runs in the terminal's process
    group) while the server it launched, in a session of its own, lives on
    before it has written the ``postmaster.pid`` that ``pg_ctl stop`` needs.
    """
    import psutil

    leftovers = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in cmdline:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
                leftovers.append(proc)
    _, alive = psutil.wait_procs(leftovers, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


@dataclass(frozen=True)
class DemoSummary:
    """What a headless demo run did."""

    seconds: float
    """How long the task load ran (start-up not included)."""
    startup_seconds: float
    kicked: int
    attempts_recorded: int
    by_status: dict[str, int]
    failures: int
    retries: int
    events_delivered: int
    dsn: str
    outcomes_delivered: int = 0
    """Events announcing an attempt's outcome (each attempt's last event)."""
    ended_by: str | None = None
    """The signal that ended the run early, if one did."""

    def lines(self) -> list[str]:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        ended = f", ended by {self.ended_by}" if self.ended_by else ""
        return [
            f"demo ran {self.seconds:.1f} s{ended} (after {self.startup_seconds:.1f} s of "
            f"start-up): {self.kicked} task{'' if self.kicked == 1 else 's'} kicked",
            f"attempts recorded: {self.attempts_recorded} ({statuses})",
            f"failures: {self.failures}, retried attempts: {self.retries}",
            f"events delivered to a live subscriber: {self.events_delivered} "
            f"({self.outcomes_delivered} outcomes)",
        ]


async def run_headless(
    duration: float,
    *,
    rate: float = 15.0,
    seed: int | None = None,
    stop: DemoStop | None = None,
) -> DemoSummary:
    """Run the demo without the TUI for `duration` seconds and summarise it.

    With `stop`, its signal ends the load early (the summary says so), or, during
    start-up, raises :class:`DemoStopped`.
    """
    from taskmon.server.client import EventReceived, subscribe
    from taskmon.store.db import connect
    from taskmon.store.history import count_by_status

    stop = stop or DemoStop()
    started = time.monotonic()
    async with demo_environment(rate=rate, seed=seed, stop=stop) as env:
        delivered = 0
        outcomes = 0

        async def listen() -> None:
            nonlocal delivered, outcomes
            async for message in subscribe(env.hub_url, since_seq=0):
                if isinstance(message, EventReceived):
                    delivered += 1
                    if message.event.get("type") != "task_started":
                        outcomes += 1

        listener = asyncio.create_task(listen())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.ended.wait(), duration)
        env.stop_load()
        ran = time.monotonic() - env.ready_at
        kicked = env.kicked()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_drain(env.broker), 20)
        assert env.monitor.recorder is not None
        await env.monitor.recorder.flush(timeout=30)
        await asyncio.sleep(0.5)  # let the last events cross the hub
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        conn = await connect(env.dsn)
        try:
            # the backfilled history is not what this run recorded
            by_status = await count_by_status(conn, task_id_not_like="backfill-%")
        finally:
            await conn.close()
        return DemoSummary(
            seconds=ran,
            startup_seconds=env.ready_at - started,
            kicked=kicked,
            attempts_recorded=sum(by_status.values()),
            by_status=by_status,
            failures=by_status.get("failed", 0),
            retries=by_status.get("retrying", 0),
            events_delivered=delivered,
            outcomes_delivered=outcomes,
            dsn=env.dsn,
            ended_by=stop.signal_name if stop.ended.is_set() else None,
        )
