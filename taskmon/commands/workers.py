"""`taskmon workers` and `taskmon queues`: who is alive, and how much is waiting.

Workers come from their heartbeat rows; queues from the depth samples the
workers take with their heartbeat, or, with ``--broker module:variable``, from
the broker itself, now. Only the table format loads rich.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from taskmon.commands.common import (
    DsnOption,
    ReadDsnOption,
    fail,
    plural,
    resolve_settings,
    round_durations,
    run,
)

if TYPE_CHECKING:
    from taskmon.service.reader import Reader
    from taskmon.service.rows import QueueRow, WaitingRow, WorkerRow

T = TypeVar("T")

__all__ = ["queues", "workers"]

FORMATS = ("table", "json")

FormatOption = Annotated[str, typer.Option("--format", "-f", help="table or json.")]


def _format(value: str) -> str:
    low = value.lower()
    if low not in FORMATS:
        fail(f"--format: {value!r} is not a format (accepted: {', '.join(FORMATS)})")
    return low


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _window(value: str, flag: str = "--window", *, zero: bool = False) -> float:
    """`flag` (90s, 5m, 1h, 2d) in seconds; without the filter language's import cost."""
    text = value.strip().lower()
    try:
        seconds = float(text[:-1]) * _UNITS[text[-1:]]
    except (KeyError, ValueError):
        seconds = -1.0
    if not (seconds >= 0 if zero else seconds > 0) or seconds > 30 * 86400:
        fail(f"{flag}: {value!r} is not a duration (e.g. 90s, 5m, 1h; at most 30d)")
    return seconds


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    from taskmon.domain.events import iso

    data = {k: iso(v) if isinstance(v, datetime) else v for k, v in row.items()}
    rounded: dict[str, Any] = round_durations(data)
    return rounded


def _read(dsn: str | None, read_dsn: str | None, ask: Callable[[Reader], Awaitable[T]]) -> T:
    """What `ask` reads through the application layer's reader, on the read DSN."""
    settings = resolve_settings(dsn=dsn, read_dsn=read_dsn)

    async def go() -> T:
        from taskmon.service.reader import Reader

        async with Reader.for_settings(settings, pool_size=1) as reader:
            return await ask(reader)

    return run(go())


def _print_json(rows: Sequence[Mapping[str, Any]]) -> None:
    import json

    sys.stdout.write(json.dumps([_jsonable(dict(r)) for r in rows], ensure_ascii=False) + "\n")


def _ago(seconds: float | None) -> str:
    from taskmon.domain.display import duration

    return "-" if seconds is None else duration(max(0.0, seconds) * 1000) + " ago"


def _console() -> Any:
    import os

    from rich.console import Console

    return Console(no_color="NO_COLOR" in os.environ or None, highlight=False, soft_wrap=False)


_STATE_STYLES = {"alive": "green", "stale": "bold red", "stopped": "dim"}


def workers(
    fmt: FormatOption = "table",
    dsn: DsnOption = None,
    read_dsn: ReadDsnOption = None,
) -> None:
    """Worker processes and their heartbeats: alive, stale or stopped.

    A worker is alive while its heartbeat is fresh, stale when it has missed
    3 heartbeats without stopping (it died or hangs: its running attempts are
    lost), stopped after a clean shutdown. Throughput is attempts finished per
    minute since the worker started.
    """
    form = _format(fmt)

    rows: list[WorkerRow] = _read(dsn, read_dsn, lambda reader: reader.workers())
    if form == "json":
        _print_json(rows)
        return
    from rich.table import Table
    from rich.text import Text

    from taskmon.domain.display import worker_state_label

    console = _console()
    if not rows:
        console.print(
            "No worker has sent a heartbeat: start one with MonitoringMiddleware "
            "(taskmon 0.1 or later)."
        )
        return
    table = Table(box=None, pad_edge=False)
    for name, justify in (
        ("STATE", "left"),
        ("WORKER", "left"),
        ("QUEUE", "left"),
        ("LAST SEEN", "right"),
        ("RUNNING", "right"),
        ("PROCESSED", "right"),
        ("FAILED", "right"),
        ("PER MIN", "right"),
        ("UP SINCE", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            Text(worker_state_label(r["state"]), style=_STATE_STYLES.get(r["state"], "")),
            r["name"],
            r["queue"] or "-",
            _ago(r["last_seen_s"]),
            f"{r['running']:,}",
            f"{r['processed']:,}",
            f"{r['failed']:,}",
            "-" if r["per_minute"] is None else f"{r['per_minute']:,.1f}",
            r["started_at"].astimezone().strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
    counts = {s: sum(1 for r in rows if r["state"] == s) for s in ("alive", "stale", "stopped")}
    console.print(
        f"{plural(len(rows), 'worker')}: "
        + ", ".join(f"{n} {state}" for state, n in counts.items())
    )


def queues(
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            help="Inspect this broker now (module:variable, as `taskiq worker` takes it) "
            "instead of reading the workers' samples.",
            show_default=False,
        ),
    ] = None,
    window: Annotated[
        str, typer.Option("--window", help="How far back the trend looks (e.g. 5m, 1h).")
    ] = "5m",
    pending: Annotated[
        bool,
        typer.Option(
            "--pending",
            help="List only the tasks sent and not started (with --format json: "
            "those rows instead of the queues').",
        ),
    ] = False,
    waiting_over: Annotated[
        str,
        typer.Option(
            "--waiting-over",
            help="Show a sent task not started once it has waited this long (e.g. 30s, 5m).",
        ),
    ] = "1m",
    fmt: FormatOption = "table",
    dsn: DsnOption = None,
    read_dsn: ReadDsnOption = None,
) -> None:
    """Queue backlog: messages waiting, the oldest one's wait, and the trend.

    Workers sample their own queue with each heartbeat (taskiq-redis
    ListQueueBroker and RedisStreamBroker; other brokers are not inspectable).
    The trend is the change of depth over --window; the oldest wait needs the
    enqueue label that MonitoringMiddleware stamps on the client side.

    Below the queues, the tasks sent and not started for longer than
    --waiting-over, by name: the pending attempts a client with
    MonitoringMiddleware(record_enqueued=True) records (any broker).
    """
    form = _format(fmt)
    window_s = _window(window)
    over_s = _window(waiting_over, "--waiting-over", zero=True)
    if broker is not None:
        _inspect(broker, form)
        return

    async def ask(reader: Reader) -> tuple[list[QueueRow], list[WaitingRow]]:
        queued = [] if pending else await reader.queues(window_s)
        return queued, await reader.waiting(over_s)

    rows, waiting = _read(dsn, read_dsn, ask)
    if form == "json":
        _print_json(waiting if pending else rows)
        return
    console = _console()
    if not rows and not pending:
        console.print(
            "No queue was sampled in the window: workers sample their queue with their "
            "heartbeat (taskiq-redis brokers only); try --broker module:variable."
        )
    elif rows:
        _print_queues(console, rows)
    _print_waiting(console, waiting, over_s, first=pending)


_BROKER_WORDS = {"ListQueueBroker": "redis list", "RedisStreamBroker": "redis stream"}


def _print_queues(console: Any, rows: list[QueueRow]) -> None:
    from rich.table import Table

    from taskmon.commands.render import sparkline
    from taskmon.domain.display import duration, trend_label

    table = Table(box=None, pad_edge=False)
    for name, justify in (
        ("QUEUE", "left"),
        ("BROKER", "left"),
        ("DEPTH", "right"),
        ("OLDEST WAIT", "right"),
        ("TREND", "right"),
        ("", "left"),
        ("SAMPLED", "right"),
    ):
        # a long queue name folds rather than being cut: it is what the user greps for
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        wait = r["oldest_wait_s"]
        table.add_row(
            r["queue"],
            _BROKER_WORDS.get(r["broker"], r["broker"]),
            f"{r['depth']:,}",
            "-" if wait is None else duration(wait * 1000),
            trend_label(r["trend"]),
            sparkline(r["samples"][-10:]),
            _ago(r["age_s"]),
        )
    console.print(table)


def _print_waiting(console: Any, rows: list[WaitingRow], over_s: float, *, first: bool) -> None:
    from rich.table import Table

    from taskmon.domain.display import duration

    over = duration(over_s * 1000)
    if not rows:
        if first:
            console.print(
                f"Nothing sent has waited over {over} unstarted (recorded by clients "
                "with MonitoringMiddleware(record_enqueued=True))."
            )
        return
    total = sum(r["waiting"] for r in rows)
    if not first:
        console.print()
    console.print(f"Sent, not started for over {over}: {plural(total, 'task')}")
    table = Table(box=None, pad_edge=False)
    for name, justify in (
        ("TASK", "left"),
        ("QUEUE", "left"),
        ("WAITING", "right"),
        ("OLDEST WAIT", "right"),
        ("OLDEST SENT", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r["task_name"],
            r["queue"] or "-",
            f"{r['waiting']:,}",
            duration(r["oldest_wait_s"] * 1000),
            r["oldest_sent_at"].astimezone().strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


def _inspect(spec: str, form: str) -> None:
    from taskmon.service import backlog
    from taskmon.service.backlog import NotInspectable

    try:
        obj = backlog.load(spec)
    except ValueError as exc:
        fail(str(exc))

    async def go() -> Any:
        try:
            return await backlog.inspect(obj)
        except NotInspectable as exc:
            return exc
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                fail(f"cannot inspect {spec}: {type(exc).__name__}: {exc}", code=1)
            raise

    result = run(go())
    queue = getattr(obj, "queue_name", None)
    if isinstance(result, NotInspectable):
        reason = str(result)
        if form == "json":
            import json

            data = {"broker": type(obj).__name__, "queue": queue, "inspectable": False}
            sys.stdout.write(json.dumps({**data, "reason": reason}) + "\n")
        else:
            typer.echo(f"{spec}: not inspectable ({reason})")
        return
    row: dict[str, Any] = {
        "broker": result.broker,
        "queue": result.queue,
        "inspectable": True,
        "depth": result.depth,
        "oldest_wait_s": result.oldest_wait_s,
    }
    if form == "json":
        import json

        sys.stdout.write(json.dumps(round_durations(row)) + "\n")
        return
    from taskmon.domain.display import duration

    wait = result.oldest_wait_s
    typer.echo(
        f"{result.queue} ({result.broker}): {plural(result.depth, 'message')} waiting, "
        f"oldest {'-' if wait is None else duration(wait * 1000)}"
    )
