"""`taskmon history` and `taskmon stats`: the recorded attempts and their metrics.

Input is checked before any connection is made: a bad value is one line on
stderr and exit status 2. Only the table format loads rich (``taskmon.commands.render``);
the machine formats need neither rich nor textual, so they start fast.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from taskmon.commands.common import (
    DsnOption,
    ReadDsnOption,
    fail,
    resolve_settings,
    round_durations,
    run,
)
from taskmon.commands.filter_options import (
    ErrorOption,
    QueryOption,
    StatusOption,
    TaskOption,
    UntilOption,
    WorkerOption,
    build_filter,
)

if TYPE_CHECKING:
    from taskmon.service.rows import AttemptRow

__all__ = ["history", "stats"]

HISTORY_FORMATS = ("table", "json", "jsonl", "csv")
STATS_FORMATS = ("table", "json")
MAX_LIMIT = 10_000

LostAfterOption = Annotated[
    str | None,
    typer.Option(
        "--lost-after",
        help="A running attempt without a timeout counts as lost after this long (90m, 2h). "
        "Default: $TASKMON_LOST_AFTER, then lost_after in the config file, then 1h.",
        show_default=False,
    ),
]


def _choice(flag: str, value: str, accepted: tuple[str, ...]) -> str:
    low = value.lower()
    if low not in accepted:
        fail(f"{flag}: {value!r} is not a format (accepted: {', '.join(accepted)})")
    return low


def seconds_option(flag: str, value: str) -> float:
    """A duration option (90s, 15m, 1h, 7d) in seconds; bad input ends the command."""
    from taskmon.domain.filters import FilterError, parse_window

    try:
        return parse_window(value).total_seconds()
    except FilterError as exc:
        fail(f"{flag}: {exc}")


def _limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        fail(f"--limit: {value!r} is not a number of rows (use 1 to {MAX_LIMIT})")
    return limit


def history(
    status: StatusOption = None,
    task: TaskOption = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Window start: 7d, 24h, 90m or an ISO date/time."),
    ] = None,
    until: UntilOption = None,
    error: ErrorOption = None,
    worker: WorkerOption = None,
    query: QueryOption = None,
    limit: Annotated[str, typer.Option("--limit", "-n", help="Rows per page (1-10000).")] = "50",
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            help="Show the page after this cursor (printed below each page).",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="table, json, jsonl or csv.")
    ] = "table",
    lost_after: LostAfterOption = None,
    dsn: DsnOption = None,
    read_dsn: ReadDsnOption = None,
) -> None:
    """Recorded task attempts, newest first, one page at a time.

    With json, jsonl and csv the next page's cursor goes to stderr
    ("next page: --after CURSOR") so stdout stays machine-readable.
    """
    flt = build_filter(
        status=status, task=task, since=since, until=until, error=error, worker=worker, query=query
    )
    rows_per_page = _limit(limit)
    form = _choice("--format", fmt, HISTORY_FORMATS)
    settings = resolve_settings(dsn=dsn, read_dsn=read_dsn, lost_after=lost_after)
    if after is not None:
        from taskmon.service.rows import CursorError, check_cursor

        try:
            check_cursor(after)
        except CursorError as exc:
            fail(str(exc))

    async def go() -> Any:
        from taskmon.service.reader import Reader

        async with Reader.for_settings(settings, pool_size=1) as reader:
            return await reader.history(flt, limit=rows_per_page, after=after)

    page = run(go())
    if form == "table":
        from taskmon.commands.render import print_history

        print_history(page.rows, page.next_cursor, flt)
        return
    _print_rows(page.rows, form)
    if page.next_cursor:
        sys.stderr.write(f"next page: --after {page.next_cursor}\n")


def _json_row(row: AttemptRow) -> dict[str, Any]:
    """The documented JSON shape of a row (:func:`taskmon.service.rows.json_row`), rounded."""
    from taskmon.service.rows import json_row

    data = json_row(row)
    # durations as measured (30.226469039916992) are noise past a microsecond
    rounded: dict[str, Any] = round_durations(data)
    return rounded


def _print_rows(rows: list[AttemptRow], form: str) -> None:
    import json

    from taskmon.service.rows import JSON_KEYS

    out = sys.stdout
    if form == "json":
        json.dump([_json_row(r) for r in rows], out, ensure_ascii=False, default=str)
        out.write("\n")
    elif form == "jsonl":
        for row in rows:
            out.write(json.dumps(_json_row(row), ensure_ascii=False, default=str) + "\n")
    else:
        import csv

        writer = csv.writer(out, lineterminator="\n")
        keys = JSON_KEYS
        writer.writerow(keys)
        for row in rows:
            data = _json_row(row)
            writer.writerow(
                [
                    json.dumps(v, ensure_ascii=False, default=str)
                    if isinstance(v, dict | list)
                    else ("" if v is None else v)
                    for v in (data[k] for k in keys)
                ]
            )


def stats(
    status: StatusOption = None,
    task: TaskOption = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Window start: 24h, 7d, 90d or an ISO date/time.  [default: 24h]"
        ),
    ] = None,
    until: UntilOption = None,
    error: ErrorOption = None,
    worker: WorkerOption = None,
    query: QueryOption = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    lost_after: LostAfterOption = None,
    dsn: DsnOption = None,
    read_dsn: ReadDsnOption = None,
) -> None:
    """Counts, failure rate, throughput, per-task percentiles and errors for a window.

    Failure rate is (failed + lost) / (success + failed + lost); retrying
    attempts are shown apart. Percentiles come from histograms, within the
    relative error printed with them.
    """
    flt = build_filter(
        status=status,
        task=task,
        since=since,
        until=until,
        error=error,
        worker=worker,
        query=query,
        default_since="24h",
    )
    form = _choice("--format", fmt, STATS_FORMATS)
    settings = resolve_settings(dsn=dsn, read_dsn=read_dsn, lost_after=lost_after)

    async def go() -> Any:
        from taskmon.service.reader import Reader

        async with Reader.for_settings(settings, pool_size=1) as reader:
            return await reader.stats(flt)

    result = run(go())
    if form == "json":
        import json

        data = round_durations(result.to_dict())
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        return
    from taskmon.commands.render import print_stats

    print_stats(result, flt)
