"""`taskmon db`: schema migrations and the embedded server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from taskmon.commands.common import DsnOption, database_url, fail, run

if TYPE_CHECKING:
    from taskmon.service.maintenance import Migration

app = typer.Typer(help="Database schema and the embedded PostgreSQL.", no_args_is_help=True)


# Another set of migration files instead of the shipped ones: how the tests
# exercise markers and checksums through the real command. Hidden, since a
# database upgraded from other files no longer matches this taskmon.
SqlDirOption = Annotated[
    Path | None,
    typer.Option("--sql-dir", hidden=True, exists=True, file_okay=False, show_default=False),
]


class _Lines:
    """`taskmon db upgrade`'s progress: one line per migration, with the time it took.

    PostgreSQL's notices (e.g. 0003 saying it skipped its indexes) go to stderr
    after the migration's line, so the line stays whole on a terminal.
    """

    def __init__(self) -> None:
        self.open_line = False
        self.notices: list[str] = []

    def notice(self, message: str) -> None:
        if self.open_line:
            self.notices.append(message)
        else:
            typer.echo(f"notice: {message}", err=True)

    def waiting(self) -> None:
        typer.echo("waiting for another upgrade to finish…")

    def started(self, migration: Migration) -> None:
        kind = [k for k, on in (("manual", migration.manual),
                                ("no transaction", not migration.transactional)) if on]  # fmt: skip
        note = f" ({', '.join(kind)})" if kind else ""
        typer.echo(f"{migration.filename}{note} … ", nl=False)
        self.open_line = True

    def finished(self, migration: Migration, seconds: float) -> None:
        self.end(f"applied in {_took(seconds)}")

    def end(self, word: str) -> None:
        if self.open_line:
            typer.echo(word)
            self.open_line = False
        for message in self.notices:
            typer.echo(f"notice: {message}", err=True)
        self.notices.clear()


def _took(seconds: float) -> str:
    # a run's wall time, to the hundredth of a second (tests pin this wording)
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"


@app.command()
def upgrade(dsn: DsnOption = None, sql_dir: SqlDirOption = None) -> None:
    """Apply every pending schema migration, the manual ones included.

    Runs without a statement timeout, showing each migration as it is applied.
    Safe to run from many processes at once: each migration is applied once.
    """

    async def go() -> None:
        from taskmon.service import maintenance

        source = maintenance.load_migrations(sql_dir) if sql_dir is not None else None
        began = time.monotonic()
        lines = _Lines()
        try:
            done = await maintenance.upgrade(
                database_url(dsn),
                source=source,
                progress=lines,
                notice=lines.notice,
                say=typer.echo,
            )
        except maintenance.MigrationError as exc:
            lines.end("failed")
            fail(str(exc), code=1)
        except BaseException:
            lines.end("interrupted")
            raise
        result, converted = done.result, done.converted
        if result.filled:
            typer.echo(
                f"recorded the checksums of {len(result.filled)} migrations applied before "
                "checksums were kept"
            )
        if converted is not None and converted.converted:
            typer.echo(
                f"task_execution_logs partitioned in {_took(converted.seconds)}; writers waited "
                f"at most {_took(converted.swap_seconds)} (the swap)"
            )
        if result.applied:
            n = len(result.applied)
            typer.echo(
                f"{n} migration{'s' if n > 1 else ''} applied in {_took(time.monotonic() - began)}"
            )
        else:
            typer.echo("schema is up to date")

    run(go())


@app.command()
def status(dsn: DsnOption = None, sql_dir: SqlDirOption = None) -> None:
    """Show each migration and whether it is applied."""

    async def go() -> tuple[int, int]:
        from taskmon.service import maintenance
        from taskmon.service.database import redact_dsn

        source = maintenance.load_migrations(sql_dir) if sql_dir is not None else None
        url = database_url(dsn)
        found = await maintenance.schema_status(url, source=source)
        rows, layout = found.migrations, found.partitioned
        typer.echo(f"database: {redact_dsn(url)}")
        for row in rows:
            when = row.applied_at.isoformat(timespec="seconds") if row.applied_at else "pending"
            notes = [n for n, on in (("manual", row.manual), ("EDITED", row.edited)) if on]
            note = f"  ({', '.join(notes)})" if notes else ""
            typer.echo(f"{row.version:04d}_{row.name:<32} {when}{note}")
        pending = sum(1 for r in rows if r.applied_at is None)
        partitioning = next((r for r in rows if r.name == "partitions"), None)
        if layout is False and partitioning is not None and partitioning.applied_at is not None:
            typer.echo(maintenance.NOT_PARTITIONED)
        return pending, sum(1 for r in rows if r.edited)

    pending, edited = run(go())
    from taskmon.service.maintenance import UPGRADE_COMMAND, UPGRADE_HINT

    if edited:
        fail(
            f"{edited} applied migration file{'s were' if edited > 1 else ' was'} edited "
            f"afterwards (marked EDITED); `{UPGRADE_COMMAND}` refuses to run",
            code=1,
        )
    if pending:
        typer.echo(f"{pending} pending; {UPGRADE_HINT}")


@app.command("rebuild-rollups")
def rebuild_rollups(dsn: DsnOption = None) -> None:
    """Recompute the metrics rollups from the recorded rows (after a bulk load).

    Runs without a statement timeout: on a large table it takes a while.
    """

    async def go() -> float:
        from taskmon.service import maintenance

        url = database_url(dsn)
        began = time.monotonic()
        await maintenance.rebuild_rollups(url)
        return time.monotonic() - began

    typer.echo(f"rollups rebuilt in {_took(run(go()))}")


@app.command()
def stop() -> None:
    """Stop the embedded PostgreSQL server, if it runs."""
    from taskmon.service.maintenance import EmbeddedError, stop_embedded_server

    try:
        stopped, path = stop_embedded_server()
    except EmbeddedError as exc:
        fail(str(exc), code=1)
    typer.echo("stopped" if stopped else f"not running ({path})")


_INDEX_STATES = {"present": "present", "building": "building…", "built": "built"}


@app.command("search-indexes")
def search_indexes(
    dsn: DsnOption = None,
    params: Annotated[
        bool,
        typer.Option(
            "--params",
            help="Also index the param:, label: and queue: filter terms (GIN on params and "
            "labels): faster searches by argument, at a cost on every write.",
        ),
    ] = False,
) -> None:
    """Build the search indexes without blocking writers (CREATE INDEX CONCURRENTLY).

    The error-search indexes: migration 0003 skips them on a table that is
    already large, since inside a migration they would lock out inserts for
    the whole build. With --params, those of the param:, label: and queue:
    terms too (opt-in: they cost every write). Safe to re-run: an index left
    invalid by an interrupted build is dropped and built again.
    """

    async def go() -> None:
        from taskmon.service.maintenance import build_search_indexes

        await build_search_indexes(
            database_url(dsn),
            lambda name, state: typer.echo(f"{name}: {_INDEX_STATES[state]}"),
            params=params,
        )

    run(go())


@app.command("partitions")
def partitions_command(
    dsn: DsnOption = None,
    span: Annotated[
        str | None,
        typer.Option(
            "--span",
            help="Width of the partitions made from now on, e.g. 1d (the default) or 6h; "
            "between 1h and 31d. Existing partitions stay as they are.",
            show_default=False,
        ),
    ] = None,
    ahead: Annotated[
        str | None,
        typer.Option(
            "--ahead",
            help="How far ahead of now partitions are made (default 2d).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """List the partitions of task_execution_logs (and change how new ones are made).

    Partitions are made ahead of time by every writer and by `taskmon cleanup`;
    a row that no partition covers lands in the default partition, never lost.
    `taskmon cleanup` drops whole partitions older than the retention.
    """
    from taskmon.commands.cleanup import age_option, describe_age

    new_span = age_option("--span", span) if span is not None else None
    new_ahead = age_option("--ahead", ahead) if ahead is not None else None

    async def go() -> None:
        from taskmon.service.maintenance import NotPartitioned, partition_layout

        try:
            cfg, parts = await partition_layout(database_url(dsn), span=new_span, ahead=new_ahead)
        except NotPartitioned as exc:
            fail(str(exc), code=1)
        except ValueError as exc:
            fail(str(exc))
        span_text, ahead_text = describe_age(cfg.span), describe_age(cfg.ahead)
        typer.echo(f"new partitions span {span_text}, made {ahead_text} ahead")
        for part in parts:
            if part.is_default:
                where = "rows no other partition covers"
            else:
                lo = part.lo.isoformat(timespec="minutes") if part.lo else "the beginning"
                hi = part.hi.isoformat(timespec="minutes") if part.hi else "the end"
                where = f"{lo} … {hi}"
            rows = "?" if part.rows < 0 else f"~{part.rows:,}"
            typer.echo(f"{part.name:<34} {where:<38} {rows:>12} rows {_size(part.bytes):>9}")

    run(go())


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
