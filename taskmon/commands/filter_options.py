"""The filter flags shared by `history`, `stats` and `tail`, and the filter they make."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from taskmon.commands.common import fail

if TYPE_CHECKING:
    from taskmon.domain.filters import TaskFilter

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
    default_since: str | None = None,
    ignored: tuple[str, str] | None = None,
) -> TaskFilter:
    """One filter from the flags and the query text.

    A value that both a flag and the query set (``--since 7d -q since:1d``)
    is refused, like a query key given twice.

    Args:
        status, task, since, until, error, worker: the flags' values.
        query: the ``--query`` text.
        default_since: the window start when neither ``--since`` nor the query sets one.
        ignored: query keys this command does not use, and why: ``("since,until",
            "a live tail has no time window")``; typing one of them is refused.
    """
    from taskmon.domain.filters import KEYS, FilterError, TaskFilter, parse

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
        unused = () if ignored is None else tuple(ignored[0].split(","))
        try:
            typed = parse(query, keys=[k for k in KEYS if k not in unused])
        except FilterError as exc:
            key = str(exc).partition(":")[0]
            if ignored is not None and str(exc).startswith(f"{key}: has no effect here"):
                fail(f"--query: {key}: {ignored[1]}")
            fail(f"--query: {exc}")
        for flag, key in (("--since", "since"), ("--until", "until")):
            if getattr(flt, key) is not None and getattr(typed, key) is not None:
                fail(f"{flag} and {key}: in --query both set {key}; give one")
        try:
            flt = flt.merge(typed)
        except FilterError as exc:
            fail(f"--query: {exc}")
    if default_since is not None and flt.since is None:
        flt = flt.merge(TaskFilter.from_dict({"since": default_since}))
    if flt.since is not None and flt.until is not None and flt.since > flt.until:
        fail(f"since {flt.since.isoformat()} is later than until {flt.until.isoformat()}")
    return flt
