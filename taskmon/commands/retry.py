"""`taskmon retry`: send a recorded task again through your broker, as a new, linked task.

Everything that can be checked is checked before anything is sent: the
input, the broker (imported, as ``taskiq worker`` imports it), the task on the
broker, and whether the recorded call can be sent faithfully. A refusal is
one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from taskmon.commands.common import DsnOption, fail, plural, primary_dsn, resolve_settings, run
from taskmon.commands.filter_options import QueryOption

if TYPE_CHECKING:
    from taskiq import AsyncBroker

    from taskmon.service.resend import RetryPlan

__all__ = ["retry"]

T = TypeVar("T")

FORMATS = ("table", "json")
MAX_LIMIT = 1000


def _describe(plan: RetryPlan) -> str:
    """``tests:fail("boom") · 3f2c… attempt 0, failed``."""
    line = (
        f"{plan.task_name}{plan.call_text()} · {plan.task_id} attempt {plan.attempt}, {plan.status}"
    )
    if plan.retried_as:
        line += f" · already retried as {', '.join(plan.retried_as)}"
    return line


def _confirm(question: str, yes: bool) -> None:
    """Ask `question`; without a terminal to ask on, refuse unless `yes`."""
    if yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        fail("retry sends tasks and asks first, but there is no terminal to ask on: pass --yes")
    if not typer.confirm(question, default=False, err=True):
        sys.stderr.write("nothing sent\n")
        raise typer.Exit(1)


def _broker(flag: str | None) -> tuple[str, AsyncBroker]:
    from taskmon.config import ConfigError
    from taskmon.service.resend import RetryError, load_broker, resolve_broker_spec

    try:
        spec = resolve_broker_spec(flag)
    except ConfigError as exc:
        fail(str(exc))
    if not spec:
        fail(
            "no broker to send with: pass --broker module:variable (as for `taskiq worker`), "
            "or set TASKMON_BROKER or `broker` in the config file"
        )
    try:
        return spec, load_broker(spec)
    except RetryError as exc:
        fail(str(exc))


def retry(
    task_id: Annotated[
        str | None,
        typer.Argument(
            help="The task to send again (its latest attempt, or --attempt).", show_default=False
        ),
    ] = None,
    attempt: Annotated[
        int | None,
        typer.Option(
            "--attempt",
            help="Send the params of this attempt (0, 1, …).",
            show_default=False,
            min=0,
        ),
    ] = None,
    query: QueryOption = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            "-n",
            help=f"With --query: at most this many tasks (1-{MAX_LIMIT}).",
            min=1,
            max=MAX_LIMIT,
        ),
    ] = 100,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent; send nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            help="Your broker as module:variable (as for `taskiq worker`). "
            "Default: $TASKMON_BROKER, then `broker` in the config file.",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    lost_after: Annotated[
        str | None,
        typer.Option(
            "--lost-after",
            help="A running attempt without a timeout counts as lost after this long "
            "(lost tasks can be retried). Default: $TASKMON_LOST_AFTER, then lost_after "
            "in the config file, then 1h.",
            show_default=False,
        ),
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Send a recorded task again, with the same arguments, through your broker.

    The new task is labelled taskmon_retry_of=<task id>: history and the TUI's
    detail show "retry of" and "retried as" once a worker has started it. A task
    whose recorded params were redacted or truncated is refused (exit 2): it
    could not be sent as it was called. Asks before sending, unless --yes.

    Bulk: --query sends each task with an attempt matching the filter once
    (its newest matching attempt), skipping those already retried; --dry-run
    lists them and sends nothing.
    """
    form = fmt.lower()
    if form not in FORMATS:
        fail(f"--format: {fmt!r} is not a format (accepted: {', '.join(FORMATS)})")
    if (task_id is None) == (query is None):
        fail(
            "give a TASK_ID or --query, not both"
            if task_id
            else "give a TASK_ID or --query FILTER: which task to send again"
        )
    if query is not None and attempt is not None:
        fail("--attempt goes with a TASK_ID, not with --query")
    settings = resolve_settings(dsn=dsn, broker=broker, lost_after=lost_after)
    lost_s = settings.lost_after_s
    flt = None
    if query is not None:
        from taskmon.commands.filter_options import build_filter

        flt = build_filter(status=None, task=None, error=None, worker=None, query=query)
    else:
        from taskmon.service.resend import RetryError, check_task_id

        try:
            task_id = check_task_id(task_id or "")
        except RetryError as exc:
            fail(str(exc))
    spec, the_broker = _broker(settings.broker)
    url = primary_dsn(settings)

    if task_id is not None:
        _retry_one(url, spec, the_broker, task_id, attempt, dry_run=dry_run, yes=yes, form=form)
    else:
        assert flt is not None
        _retry_many(url, spec, the_broker, flt, limit, lost_s, dry_run=dry_run, yes=yes, form=form)


def _retry_one(
    url: str,
    spec: str,
    broker: AsyncBroker,
    task_id: str,
    attempt: int | None,
    *,
    dry_run: bool,
    yes: bool,
    form: str,
) -> None:
    from taskmon.service.resend import plan_task

    async def plan() -> RetryPlan:
        from taskmon.service.database import connection

        async with connection(url) as conn:
            return await plan_task(conn, broker, task_id, attempt)

    the_plan = _run(plan())
    if the_plan.refused:
        fail(f"cannot retry {task_id}: {the_plan.refused}; nothing sent")
    if dry_run:
        _report([the_plan], {}, form, dry_run=True)
        return
    _confirm(f"send {_describe(the_plan)} again through {spec}?", yes)
    sent = _send(broker, [the_plan])
    _report([the_plan], sent, form, dry_run=False)


def _retry_many(
    url: str,
    spec: str,
    broker: AsyncBroker,
    flt: Any,
    limit: int,
    lost_s: float,
    *,
    dry_run: bool,
    yes: bool,
    form: str,
) -> None:
    from taskmon.service.resend import plan_matching

    async def plan() -> list[RetryPlan]:
        from taskmon.service.database import connection

        async with connection(url) as conn:
            return await plan_matching(conn, broker, flt, limit=limit, lost_after_s=lost_s)

    plans = _run(plan())
    ready = [p for p in plans if p.refused is None and not p.retried_as]
    refused = any(p.refused for p in plans)
    if ready and not dry_run:
        if not yes:
            for p in plans:
                sys.stderr.write(_line(p, None, dry_run=True) + "\n")
        _confirm(f"send {plural(len(ready), 'task')} again through {spec}?", yes)
        sent = _send(broker, ready)
    else:
        sent = {}
    _report(plans, sent, form, dry_run=dry_run)
    if refused:
        raise typer.Exit(2)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """:func:`run`, with a refused retry as one line and exit status 2."""
    from taskmon.commands.common import UsageError
    from taskmon.service.resend import RetryError

    async def guarded() -> T:
        try:
            return await coro
        except RetryError as exc:
            raise UsageError(str(exc)) from exc

    return run(guarded())


def _send(broker: AsyncBroker, plans: list[RetryPlan]) -> dict[str, str]:
    """Send each plan; at a broker error, say what was sent before it, and end."""
    from taskmon.commands.common import UsageError
    from taskmon.service.resend import RetryError, send, started

    sent: dict[str, str] = {}

    async def go() -> None:
        try:
            async with started(broker):
                for p in plans:
                    sent[p.task_id] = await send(broker, p)
        except RetryError as exc:
            for task_id, new_id in sent.items():
                sys.stderr.write(f"sent {task_id} as {new_id} before the error\n")
            raise UsageError(str(exc)) from exc

    run(go())
    return sent


def _line(plan: RetryPlan, sent_as: str | None, *, dry_run: bool) -> str:
    if plan.refused:
        return f"refused  {plan.task_name} {plan.task_id}: {plan.refused}"
    if plan.retried_as and sent_as is None:
        return (
            f"skipped  {plan.task_name} {plan.task_id}: already retried as "
            f"{', '.join(plan.retried_as)} (retry it by id to send it again)"
        )
    if sent_as is not None:
        return f"sent     {_describe(plan)} → {sent_as}"
    return f"{'would send' if dry_run else 'not sent'}  {_describe(plan)}"


def _report(plans: list[RetryPlan], sent: dict[str, str], form: str, *, dry_run: bool) -> None:
    if form == "json":
        rows = [{**p.to_dict(), "sent_as": sent.get(p.task_id)} for p in plans]
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, default=str) + "\n")
        return
    for p in plans:
        typer.echo(_line(p, sent.get(p.task_id), dry_run=dry_run))
    n = sum(1 for p in plans if p.refused is None and not p.retried_as)
    if not plans:
        typer.echo("no task matches: nothing to send")
    elif dry_run:
        typer.echo(f"dry run: would send {plural(n, 'task')}; nothing sent")
    elif not sent:
        typer.echo("nothing to send")
