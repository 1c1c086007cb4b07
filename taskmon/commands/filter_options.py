"""The filter flags shared by `history`, `stats` and `tail`, and the filter they make."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from taskmon.commands.common import fail

if TYPE_CHECKING:
    from taskmon.filters import TaskFilter

__all__ = [
    "ErrorOption",
    "QueryOption",
    "StatusOption",
    "TaskOption",
    "UntilOption",
    "WorkerOption",
    "build_filter",
]

StatusOption = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        "-s",
        help="pending, running, success, failed, retrying or lost; repeat or use a comma list.",
        show_default=False,
    ),
]
TaskOption = Annotated[
    list[str] | None,
    typer.Option(
        "--task",
        "-t",
        help="Task name: a substring, or a glob such as 'extract*'.",
        show_default=False,
    ),
]
ErrorOption = Annotated[
    list[str] | None,
    typer.Option("--error", "-e", help="Text in the error type or message.", show_default=False),
]
WorkerOption = Annotated[
    list[str] | None,
    typer.Option("--worker", "-w", help="Text in the worker name (host:pid).", show_default=False),
]
UntilOption = Annotated[
    str | None,
    typer.Option("--until", help="Window end: 1h (ago) or an ISO date/time.", show_default=False),
]
QueryOption = Annotated[
    str | None,
    typer.Option(
        "--query",
        "-q",
        help="Filter language, e.g. 'status:failed task:extract* error:\"timed out\"'.",
        show_default=False,
    ),
]


def build_filter(
    *,
    status: list[str] | None,
    task: list[str] | None,
    since: str | None = None,
    until: str | None = None,
    error: list[str] | None,
    worker: list[str] | None,
    query: str | None,
) -> TaskFilter:
    """One filter from the flags and the query text (the query's single values win)."""
    from taskmon.filters import FilterError, TaskFilter, parse

    flt = TaskFilter()
    flags: list[tuple[str, str, Any]] = [
        ("--status", "status", status),
        ("--task", "task", task),
        ("--since", "since", since),
        ("--until", "until", until),
        ("--error", "error", error),
        ("--worker", "worker", worker),
    ]
    for flag, key, value in flags:
        if value is None or value == []:
            continue
        try:
            flt = flt.merge(TaskFilter.from_dict({key: value}))
        except FilterError as exc:
            message = str(exc).removeprefix(f"{key}: ")
            fail(f"{flag}: {message}")
    if query:
        try:
            flt = flt.merge(parse(query))
        except FilterError as exc:
            fail(f"--query: {exc}")
    if flt.since is not None and flt.until is not None and flt.since > flt.until:
        fail(f"since {flt.since.isoformat()} is later than until {flt.until.isoformat()}")
    return flt
