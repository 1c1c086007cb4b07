"""`taskmon schedules`: did each scheduled task run when it should have?

The schedules come from the user's TaskIQ scheduler (``--scheduler
module:variable``); what ran comes from the recorded attempts, matched by the
``schedule_id`` label TaskIQ's scheduler stamps. Only the table format loads rich.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from taskmon.commands.common import (
    DsnOption,
    ReadDsnOption,
    fail,
    plural,
    resolve_settings,
    run,
)

if TYPE_CHECKING:
    from taskmon.domain.schedules import Run, Schedule, ScheduleReport, Unreadable

__all__ = ["schedules"]

FORMATS = ("table", "json")


def _seconds(value: str, what: str, *, allow_zero: bool = False) -> float:
    from taskmon.config import ConfigError
    from taskmon.service.settings import parse_lost_after

    if allow_zero and value.strip() in ("0", "0s"):
        return 0.0
    try:
        return parse_lost_after(value, what=what)
    except ConfigError as exc:
        fail(str(exc))


def _ms(value: float | None) -> float | None:
    """A duration as ``round_durations`` leaves it: to three decimals."""
    return None if value is None else round(value, 3)


def _run_json(run_: Run | None) -> dict[str, Any] | None:
    from taskmon.domain.events import iso

    if run_ is None:
        return None
    return {
        "task_id": run_.task_id,
        "attempt": run_.attempt,
        "status": run_.status,
        "schedule_id": run_.schedule_id,
        "enqueued_at": iso(run_.enqueued_at),
        "started_at": iso(run_.started_at or run_.created_at),
        "duration_ms": _ms(run_.duration_ms),
    }


def _schedule_json(s: Schedule) -> dict[str, Any]:
    from taskmon.service.schedules import schedule_json

    return {**schedule_json(s), "interval_s": _ms(s.interval_s)}


def report_json(r: ScheduleReport) -> dict[str, Any]:
    """One schedule's report as ``taskmon schedules --format json`` prints it."""
    from taskmon.domain.events import iso

    return {
        **_schedule_json(r.schedule),
        "state": r.state,
        "problem": r.problem,
        "next_fire": iso(r.next_fire),
        "last_run": _run_json(r.last_run),
        "runs": r.runs,
        "missed": r.missed_count,
        "late": r.late_count,
        "fires": [
            {
                "expected_at": iso(f.expected_at),
                "state": f.state,
                "task_id": None if f.run is None else f.run.task_id,
                "delay_s": _ms(f.delay_s),
            }
            for f in r.fires
        ],
    }


def _last(run_: Run | None, now: datetime) -> str:
    from taskmon.domain.display import ran_ago

    return "-" if run_ is None else ran_ago(run_.status, run_.started_at or run_.created_at, now)


_STYLES = {
    "unreadable": "bold red",
    "missed": "bold red",
    "late": "yellow",
    "waiting": "",
    "no runs": "dim",
    "ok": "green",
}


def _print_table(
    reports: list[ScheduleReport], unreadable: list[Unreadable], now: datetime, window_s: float
) -> None:
    import os

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from taskmon.domain.display import duration, fire_in, schedule_state_label, span

    console = Console(no_color="NO_COLOR" in os.environ or None, highlight=False, soft_wrap=False)
    if reports:
        table = Table(box=None, pad_edge=False)
        longest = max(len(r.schedule.task_name) for r in reports)
        for name, justify in (
            ("STATE", "left"),
            ("TASK", "left"),
            ("WHEN", "left"),
            ("NEXT", "left"),
            ("LAST RUN", "left"),
            ("TOOK", "right"),
            ("RUNS", "right"),
            ("MISSED", "right"),
            ("LATE", "right"),
        ):
            # a long task name folds rather than being cut: it is what the user greps for
            table.add_column(
                name,
                justify=justify,  # type: ignore[arg-type]
                overflow="fold",
                min_width=min(longest, 24) if name == "TASK" else None,
                no_wrap=name not in ("TASK", "WHEN", "LAST RUN", "NEXT"),
            )
        for r in reports:
            table.add_row(
                Text(schedule_state_label(r.state), style=_STYLES.get(r.state, "")),
                r.schedule.task_name,
                r.schedule.when,
                fire_in(r.next_fire, now),
                _last(r.last_run, now),
                duration(None if r.last_run is None else r.last_run.duration_ms),
                f"{r.runs:,}",
                f"{r.missed_count:,}",
                f"{r.late_count:,}",
            )
        console.print(table)
        for r in reports:
            if r.problem:
                console.print(f"{r.schedule.task_name}: {r.problem}")
            for f in r.missed[-3:]:
                console.print(
                    f"{r.schedule.task_name}: missed the fire of "
                    f"{f.expected_at.astimezone().strftime('%Y-%m-%d %H:%M:%S')}"
                )
    else:
        console.print("The scheduler has no schedules that taskmon can read.")
    for u in unreadable:
        console.print(f"{u.source}: {u.reason}")
    if reports:
        counts = {
            s: sum(1 for r in reports if r.state == s)
            for s in _STYLES
            if any(r.state == s for r in reports)
        }
        console.print(
            f"{plural(len(reports), 'schedule')} over the last {span(window_s)}: "
            + ", ".join(f"{n} {state}" for state, n in counts.items())
        )


def schedules(
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            help="Your TaskiqScheduler as module:variable, the form `taskiq scheduler` takes. "
            "Default: $TASKMON_SCHEDULER, then the config file's scheduler.",
            show_default=False,
        ),
    ] = None,
    window: Annotated[
        str, typer.Option("--window", help="How far back fires are checked (e.g. 1h, 24h, 7d).")
    ] = "24h",
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            help="How long after its time a fire may start before it counts as missed.",
        ),
    ] = "5m",
    late_after: Annotated[
        str,
        typer.Option(
            "--late-after",
            help="A fire sent or started more than this after its time is late.",
        ),
    ] = "1m",
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Import the scheduler again even if its label schedules were read "
            "less than an hour ago and none of its files changed since.",
        ),
    ] = False,
    dsn: DsnOption = None,
    read_dsn: ReadDsnOption = None,
) -> None:
    """Each schedule of your scheduler: when it fires, its last run, missed and late fires.

    A fire is missed when no attempt of it was recorded within --grace of its
    time (the scheduler or the workers were down, or the message was lost), and
    late when it was sent or started more than --late-after after its time.
    Runs are matched by the schedule_id label TaskIQ's scheduler stamps; for
    LabelScheduleSource schedules without an explicit schedule_id (a new id at
    each scheduler start) by task name. Sources: LabelScheduleSource and the
    taskiq-redis schedule sources; others are listed as not readable. The
    schedules of a scheduler with label sources only are kept in the cache
    directory and reused while its files are unchanged (an hour at most;
    --refresh reads them now); Redis sources are read every time.
    """
    form = fmt.lower()
    if form not in FORMATS:
        fail(f"--format: {fmt!r} is not a format (accepted: {', '.join(FORMATS)})")
    window_s = _seconds(window, "--window")
    grace_s = _seconds(grace, "--grace", allow_zero=True)
    late_s = _seconds(late_after, "--late-after", allow_zero=True)
    settings = resolve_settings(dsn=dsn, read_dsn=read_dsn, scheduler=scheduler)
    if not settings.scheduler:
        fail(
            "no scheduler: give --scheduler module:variable (the form `taskiq scheduler` "
            "takes), TASKMON_SCHEDULER, or scheduler in the config file"
        )
    spec = settings.scheduler
    now = datetime.now(UTC)

    async def go() -> tuple[list[ScheduleReport], list[Unreadable]]:
        from taskmon.service import schedules as service
        from taskmon.service.reader import Reader

        try:
            found, unreadable = await service.read_cached(spec, refresh=refresh)
        except service.SpecError as exc:
            fail(str(exc))
        async with Reader.for_settings(settings, pool_size=1) as reader:
            reports = await reader.schedules(
                found, now=now, window_s=window_s, grace_s=grace_s, late_after_s=late_s
            )
        return reports, unreadable

    reports, unreadable = run(go())
    if form == "json":
        import json

        data = {
            "window_s": _ms(window_s),
            "schedules": [report_json(r) for r in reports],
            "unreadable": [{"source": u.source, "reason": u.reason} for u in unreadable],
        }
        # durations are rounded where each is put in (see _ms): thousands of fires
        # are not walked again
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        return
    _print_table(reports, unreadable, now, window_s)
