"""`taskmon serve` (the websocket hub) and `taskmon tail` (live events, one line each)."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from taskmon.commands.common import (
    REPLICA_ONLY,
    DsnOption,
    ReadDsnOption,
    SchedulerOption,
    TokenOption,
    check_scheduler,
    fail,
    primary_dsn,
    resolve_settings,
    round_durations,
    run,
)
from taskmon.commands.filter_options import (
    ErrorOption,
    QueryOption,
    StatusOption,
    TaskOption,
    WorkerOption,
    build_filter,
)
from taskmon.commands.history import LostAfterOption
from taskmon.domain.display import duration

if TYPE_CHECKING:
    from taskmon.service.live import ClientMessage

__all__ = ["serve", "tail"]

TAIL_FORMATS = ("text", "jsonl")

RedisOption = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        help="Read events from this Redis stream instead of PostgreSQL NOTIFY. "
        "Default: $TASKMON_REDIS_URL, then the config file.",
        show_default=False,
    ),
]


async def _bus_failed(exc: Exception, source: str | None) -> NoReturn:
    """Say why the hub could not start: a standby named as the primary gets its own words."""
    from taskmon.service.live import is_standby, redact_dsn

    if source and await is_standby(source):
        fail(
            f"{redact_dsn(source)} is a standby (a read replica): it cannot LISTEN, and "
            "PostgreSQL NOTIFY is the event bus; give the primary with --dsn (and the "
            "replica with --read-dsn), or use the Redis bus (--redis-url)",
            code=1,
        )
    fail(str(exc), code=1)


def _log_to_stderr() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # one line per handshake is noise for an operator; failures still show
    logging.getLogger("websockets").setLevel(logging.WARNING)


def serve(
    host: Annotated[
        str,
        typer.Option("--host", help="Address to listen on; anything but loopback needs a token."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port).")] = 8765,
    token: TokenOption = None,
    dsn: DsnOption = None,
    redis_url: RedisOption = None,
    ring_size: Annotated[
        int, typer.Option("--ring-size", help="Recent events kept for clients that resume.")
    ] = 10_000,
    client_queue: Annotated[
        int,
        typer.Option(
            "--client-queue", help="Events a client may fall behind before it gets a gap."
        ),
    ] = 1_000,
    alert_interval: Annotated[
        float | None,
        typer.Option(
            "--alert-interval",
            help="Seconds between checks of the alert rules. Default: alert_interval in "
            "the config file, else 15.",
            show_default=False,
        ),
    ] = None,
    lost_after: LostAfterOption = None,
    scheduler: SchedulerOption = None,
    read_dsn: ReadDsnOption = None,
) -> None:
    """Run the websocket hub: read the event bus once, fan events out to TUIs and tails.

    Clients connect to ws://HOST:PORT/ (protocol: docs/protocol.md); load
    balancers can probe http://HOST:PORT/healthz; Prometheus scrapes
    http://HOST:PORT/metrics (with the token, when one is set, as a Bearer
    header or ?token=). With alert rules in the config file it also checks
    them and notifies (see `taskmon alerts`).
    """
    from taskmon.service.live import is_loopback

    if not 0 <= port <= 65535:
        fail(f"--port: {port} is not a TCP port (0-65535)")
    if ring_size < 1 or client_queue < 1:
        fail("--ring-size and --client-queue must be at least 1")
    settings = resolve_settings(
        dsn=dsn,
        read_dsn=read_dsn,
        redis_url=redis_url,
        hub_token=token,
        lost_after=lost_after,
        scheduler=scheduler,
    )
    check_scheduler(settings)
    secret, redis = settings.hub_token, settings.redis_url
    if not secret and not is_loopback(host):
        fail(
            f"a token is required to listen on {host}: pass --token or set "
            "TASKMON_HUB_TOKEN (or bind 127.0.0.1)"
        )
    if alert_interval is not None and not alert_interval >= 1:
        fail(f"--alert-interval: {alert_interval:g} is not a number of seconds >= 1")
    from taskmon.config import ConfigError
    from taskmon.service.alerts import load_alert_config

    try:
        alert_config = load_alert_config()
    except ConfigError as exc:
        fail(str(exc))
    replica = settings.configured_read_dsn
    if replica and not redis and not settings.configured_dsn:
        fail(REPLICA_ONLY)

    async def go() -> None:
        import asyncio

        from taskmon.service.alerts import alert_runner
        from taskmon.service.live import HubError, redact_dsn, served_hub

        source = None if redis else primary_dsn(settings)
        # the rules read the database even when events come from Redis
        alert_dsn = (source or primary_dsn(settings)) if alert_config.rules else None
        # on the Redis bus, /metrics reads attempts from a database only if one is named
        configured = replica or (settings.configured_dsn if redis else None)
        hub = served_hub(
            settings,
            source=source,
            token=secret,
            ring_size=ring_size,
            client_queue=client_queue,
            metrics_dsn=configured,
        )
        try:
            url = await hub.start(host, port)
        except HubError as exc:
            await _bus_failed(exc, source)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", code=1)
        # logging starts after the hub did: it logs its start at INFO, and the
        # line below says the same with the bus and the token, once
        _log_to_stderr()
        where = redis if redis else redact_dsn(source or "")
        if replica:
            where += f"; reads from {redact_dsn(replica)}"
        sys.stderr.write(
            f"taskmon: hub listening on {url} (bus: {hub.bus} at {where}; "
            f"{'token required' if secret else 'no token'}); Ctrl-C to stop\n"
        )
        alerts = None
        if alert_dsn is not None:
            # the same lost rule as the hub's: `serve --lost-after` rules both
            alerts = alert_runner(settings, alert_config, dsn=alert_dsn, interval=alert_interval)
            await alerts.start()
            sys.stderr.write(
                f"taskmon: checking {len(alert_config.rules)} alert rule(s) every "
                f"{alerts.interval:g}s\n"
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            if alerts is not None:
                await alerts.stop()
            await hub.stop()

    run(go())


def tail(
    status: StatusOption = None,
    task: TaskOption = None,
    error: ErrorOption = None,
    worker: WorkerOption = None,
    query: QueryOption = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or jsonl.")] = "text",
    hub_url: Annotated[
        str | None,
        typer.Option(
            "--hub-url",
            help="The hub to follow. Default: $TASKMON_HUB_URL, then the config file, "
            "then a hub run inside this command.",
            show_default=False,
        ),
    ] = None,
    token: TokenOption = None,
    dsn: DsnOption = None,
    redis_url: RedisOption = None,
) -> None:
    """Print task events as they happen, one line each, until Ctrl-C.

    Follows a hub (`taskmon serve`) or, without one, reads the event bus
    itself. Survives hub restarts, saying on stderr that it reconnected and
    whether events were missed (`taskmon history` has them all).
    """
    flt = build_filter(
        status=status,
        task=task,
        error=error,
        worker=worker,
        query=query,
        ignored=(
            "since,until",
            "a live tail has no time window (it shows events as they happen; "
            "`taskmon history --since` looks back)",
        ),
    )
    form = fmt.lower()
    if form not in TAIL_FORMATS:
        fail(f"--format: {fmt!r} is not a format (accepted: {', '.join(TAIL_FORMATS)})")
    settings = resolve_settings(dsn=dsn, redis_url=redis_url, hub_url=hub_url, hub_token=token)
    url, secret = settings.hub_url, settings.hub_token
    redis = None if url else settings.redis_url
    if url and not url.startswith(("ws://", "wss://")):
        fail(f"--hub-url: {url!r} is not a ws:// or wss:// URL")

    async def go() -> int:
        import asyncio

        from taskmon.service.live import subscribe

        hub: Any = None
        target, key = url, secret
        if target is None:
            from taskmon.service.live import HubError, local_hub

            source = None if redis else primary_dsn(settings)
            hub, key = local_hub(settings, source=source)
            try:
                target = await hub.start("127.0.0.1", 0)
            except HubError as exc:
                await _bus_failed(exc, source)
        printer = _Printer(target, form)

        async def follow() -> None:
            async for message in subscribe(target, token=key, filters=flt):
                printer.show(message)

        # Ctrl-C and SIGTERM end it through an event rather than by cancelling
        # whatever is running when they come: a cancellation that lands as an
        # inner wait_for completes can be lost, and the process would stay
        caught: list[int] = []
        stopped = asyncio.Event()

        def on_signal(signum: int) -> None:
            caught.append(signum)
            stopped.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, int(sig))
        follower = asyncio.create_task(follow())
        stopper = asyncio.create_task(stopped.wait())
        try:
            await asyncio.wait({follower, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if follower.done():
                follower.result()  # its error, if it ended on one
        finally:
            stopper.cancel()
            while not follower.done():
                follower.cancel()
                await asyncio.wait({follower}, timeout=1.0)
            if hub is not None:
                await hub.stop()
        return 128 + caught[0] if caught else 0

    code = run(go())
    if code:
        raise typer.Exit(code)  # 130 after Ctrl-C, as a shell expects


class _Printer:
    """Turns client messages into stdout lines (events) and stderr notes (the connection)."""

    def __init__(self, url: str, form: str) -> None:
        self.url = url
        self.form = form
        self.reconnecting = False
        self.down_said = False

    def note(self, text: str) -> None:
        sys.stderr.write(f"taskmon: {text}\n")
        sys.stderr.flush()

    def show(self, message: ClientMessage) -> None:
        from taskmon.service.live import Connected, Disconnected, EventReceived, Gap

        if isinstance(message, EventReceived):
            self._event(message.event)
        elif isinstance(message, Gap):
            after = "" if message.after_seq is None else f" after seq {message.after_seq}"
            prefix = f"reconnected to {self.url}; " if self.reconnecting else ""
            self.reconnecting = False
            self.note(
                f"{prefix}events{after} may be missing ({message.reason}); "
                "`taskmon history` has them"
            )
        elif isinstance(message, Connected):
            self.down_said = False
            if not message.reconnected:
                self.note(f"following {self.url} (bus: {message.hello.get('bus')}); Ctrl-C to stop")
            elif message.resumed:
                self.note(f"reconnected to {self.url}; nothing missed")
            else:
                self.reconnecting = True  # the gap that follows says what was missed
        elif isinstance(message, Disconnected):
            if message.refused:
                fail(f"{self.url}: {message.error}; check --token or TASKMON_HUB_TOKEN", code=1)
            if message.final:
                fail(
                    f"cannot reach the hub at {self.url} ({message.error}); "
                    "is `taskmon serve` running there?",
                    code=1,
                )
            if not self.down_said:
                self.down_said = True
                self.note(f"lost the hub at {self.url} ({message.error}); reconnecting…")

    def _event(self, event: dict[str, Any]) -> None:
        from taskmon.domain.events import dumps

        line = dumps(round_durations(event)) if self.form == "jsonl" else format_event(event)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def format_event(event: dict[str, Any]) -> str:
    """One text line: time, status, task, id#attempt, duration, worker, error."""
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    assert isinstance(data, dict)
    when = str(event.get("timestamp") or "")
    with contextlib.suppress(ValueError):
        when = datetime.fromisoformat(when).astimezone().strftime("%H:%M:%S.%f")[:-3]
    took = data.get("duration_ms")
    took_text = duration(float(took)) if isinstance(took, int | float) else "-"
    parts = [
        when,
        f"{event.get('status', '?'):<8}",
        str(event.get("task_name", "?")),
        f"{str(data.get('task_id', '?'))[:12]}#{data.get('attempt', 0)}",
        took_text,
        str(data.get("worker") or "-"),
    ]
    if data.get("error_type") or data.get("error_message"):
        text = " ".join(str(data.get("error_message") or "").split())
        error = f"{data.get('error_type') or 'Error'}: {text}" if text else data.get("error_type")
        parts.append(str(error)[:200])
    return "  ".join(parts)
