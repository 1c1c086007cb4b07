"""`taskmon alerts`: the alert rules of the config file, their states, and a check for cron."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from taskmon.commands.common import (
    DsnOption,
    SchedulerOption,
    check_scheduler,
    fail,
    primary_dsn,
    resolve_settings,
    run,
)
from taskmon.commands.history import LostAfterOption

if TYPE_CHECKING:
    from taskmon.service.alerts import AlertConfig, AlertStatus

__all__ = ["app"]

FORMATS = ("table", "json")
# a state as a symbol and a word, as well as a colour
STATE_STYLES: dict[str, tuple[str, str]] = {
    "firing": ("▲", "bold red"),
    "pending": ("…", "yellow"),
    "resolved": ("✓", "green"),
    "ok": ("✓", "green"),
    "unknown": ("?", "dim"),
}

app = typer.Typer(
    help="Alert rules (the alerts tables of the config file) and their states. Alone, it "
    "lists them, as `alerts list` does; `taskmon serve` checks them every 15 s, "
    "`taskmon alerts check` once (for cron).",
    short_help="Alert rules and their states; check them once, for cron.",
    invoke_without_command=True,
)

FormatOption = Annotated[str, typer.Option("--format", "-f", help="table or json.")]


def _config() -> AlertConfig:
    from taskmon.config import ConfigError
    from taskmon.service.alerts import load_alert_config

    try:
        return load_alert_config()
    except ConfigError as exc:
        fail(str(exc))


def _format(fmt: str) -> str:
    form = fmt.lower()
    if form not in FORMATS:
        fail(f"--format: {fmt!r} is not a format (accepted: {', '.join(FORMATS)})")
    return form


@app.callback()
def _default(
    ctx: typer.Context,
    fmt: FormatOption = "table",
    dsn: DsnOption = None,
) -> None:
    """Alert rules and their states; `taskmon alerts` alone lists them (as `alerts list`).

    Rules are evaluated by `taskmon serve` (every 15 s, config key
    alert_interval) or by `taskmon alerts check` from cron.
    """
    if ctx.invoked_subcommand is None:
        list_rules(fmt=fmt, dsn=dsn)


@app.command("list")
def list_rules(fmt: FormatOption = "table", dsn: DsnOption = None) -> None:
    """List the rules with their states as the last check left them (checks nothing)."""
    form = _format(fmt)
    config = _config()
    if not config.rules:
        _print([], form)
        if form == "table":
            sys.stderr.write("taskmon: no alert rules: add [[alerts]] to the config file\n")
        return
    settings = resolve_settings(dsn=dsn)
    primary_dsn(settings)

    async def go() -> list[AlertStatus]:
        from taskmon.service.alerts import list_statuses

        try:
            return await list_statuses(settings, config)
        except Exception as exc:
            _missing_table(exc)
            raise

    _print(run(go()), form)


@app.command("check")
def check(
    fmt: FormatOption = "table",
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Say what the check would do; change no state, notify nobody."
        ),
    ] = False,
    lost_after: LostAfterOption = None,
    scheduler: SchedulerOption = None,
    dsn: DsnOption = None,
) -> None:
    """Check every rule now, record the states and notify transitions (for cron).

    Prints every rule with its state. Exit status: 1 when a rule is firing or
    could not be checked, 0 when none is, 2 for bad input (a bad rule, say).
    A transition (firing or resolved) is notified once, whoever checks:
    `taskmon serve` and cron share the states in the database.
    """
    form = _format(fmt)
    settings = resolve_settings(dsn=dsn, lost_after=lost_after, scheduler=scheduler)
    config = _config()
    check_scheduler(settings)
    primary_dsn(settings)

    async def go() -> list[AlertStatus]:
        from taskmon.service.alerts import check as check_now

        try:
            result = await check_now(settings, config, dry_run=dry_run)
        except Exception as exc:
            _missing_table(exc)
            raise
        for delivery in result.failed:
            sys.stderr.write(
                f"taskmon: notifier {delivery.notifier} could not deliver "
                f"{delivery.rule!r} ({delivery.transition}): {delivery.error}\n"
            )
        return result.statuses

    statuses = run(go())
    _print(statuses, form)
    for status in statuses:
        if status.state is not None and status.state.error:
            sys.stderr.write(f"taskmon: alert {status.name!r}: {status.state.error}\n")
    if any(s.firing or (s.state is not None and s.state.error) for s in statuses):
        raise typer.Exit(1)


def _missing_table(exc: Exception) -> None:
    """A database from before the alerts migration: say what to run (exit status 1)."""
    if type(exc).__name__ == "UndefinedTableError" and "taskmon_alerts" in str(exc):
        from taskmon.service.maintenance import UPGRADE_HINT

        fail(f"{exc}: {UPGRADE_HINT} to add the alert states table", code=1)


def _print(statuses: list[AlertStatus], form: str) -> None:
    if form == "json":
        sys.stdout.write(json.dumps([s.to_dict() for s in statuses], ensure_ascii=False) + "\n")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("state", "rule", "when", "value", "since", "notify"):
        table.add_column(column, overflow="fold")
    for status in statuses:
        symbol, style = STATE_STYLES.get(status.state_name, ("·", ""))
        since = status.state.since if status.state is not None else None
        table.add_row(
            Text(f"{symbol} {status.state_name}", style=style),
            status.name,
            status.rule.describe(),
            status.value_text(),
            _when(since),
            ", ".join(status.rule.notify) or "-",
        )
    Console().print(table)


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
