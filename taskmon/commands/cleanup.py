"""`taskmon cleanup`: mark lost attempts, archive and delete old rows, trim old rollups."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from taskmon.commands.common import DsnOption, fail, plural, primary_dsn, resolve_settings, run
from taskmon.domain.display import span

if TYPE_CHECKING:
    from taskmon.service.maintenance import Archive, CleanupResult


def age_option(option: str, text: str) -> timedelta:
    from taskmon.domain.filters import FilterError, parse_window

    try:
        return parse_window(text.strip())
    except FilterError as exc:
        fail(f"{option}: {exc}")


def describe_age(age: timedelta) -> str:
    """``5d``, ``12h``: an age as the options take it."""
    return span(age.total_seconds())


def _report(result: CleanupResult, older_than: timedelta, archive: Path | None) -> None:
    would = "would " if result.dry_run else ""
    cutoff = result.cutoff.isoformat(timespec="seconds")
    running = plural(result.marked_lost, "running attempt")
    typer.echo(f"would mark {running} lost" if result.dry_run else f"marked {running} lost")
    verb = "delete" if result.dry_run else "deleted"
    typer.echo(
        f"{would}{verb} {plural(result.deleted, 'attempt')} older than {describe_age(older_than)} "
        f"(created before {cutoff})"
        + ("" if result.dry_run else f" in {plural(result.batches, 'batch', 'batches')}")
    )
    if result.partitions_dropped:
        typer.echo(
            f"{would}{'drop' if result.dry_run else 'dropped'} "
            f"{plural(len(result.partitions_dropped), 'whole partition')}: "
            + ", ".join(result.partitions_dropped)
        )
    if archive is not None and not result.dry_run:
        typer.echo(f"archived {plural(result.archived, 'row')} to {archive}")
    for table, n in result.rollups_deleted.items():
        typer.echo(f"{would}{verb} {plural(n, 'row')} of {table}")
    if not result.dry_run:
        typer.echo(f"done in {result.seconds:.1f}s")


def cleanup(
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Delete attempts older than this (e.g. 30d, 12h). "
            "Default: $TASK_LOG_RETENTION_DAYS days, else 30d.",
            show_default=False,
        ),
    ] = None,
    archive: Annotated[
        Path | None,
        typer.Option(
            "--archive",
            help="Append every deleted row to this gzip JSON-lines file before deleting it.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be marked and deleted.")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per transaction.")] = 5000,
    rollups_older_than: Annotated[
        str,
        typer.Option(
            "--rollups-older-than",
            help="Delete hour rollups older than this ('never' keeps them). Minute "
            "rollups go with the raw rows of the same time.",
        ),
    ] = "400d",
    lost_after: Annotated[
        str | None,
        typer.Option(
            "--lost-after",
            help="A running attempt without a timeout label is lost after this "
            "(with one: after twice its timeout). Default: $TASKMON_LOST_AFTER, then "
            "lost_after in the config file, then 1h.",
            show_default=False,
        ),
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Mark lost attempts, then delete (optionally archive) old rows and old rollups."""
    from taskmon.config import ConfigError
    from taskmon.service.maintenance import Archive, retention_days_setting

    if older_than is None:
        try:
            age = timedelta(days=retention_days_setting())
        except (ValueError, ConfigError) as exc:
            fail(str(exc))
    else:
        age = age_option("--older-than", older_than)
    rollup_age = (
        None
        if rollups_older_than.strip().lower() == "never"
        else age_option("--rollups-older-than", rollups_older_than)
    )
    settings = resolve_settings(dsn=dsn, lost_after=lost_after)
    if batch_size < 1:
        fail(f"--batch-size must be at least 1, not {batch_size}")

    # open the archive before touching the database: an unwritable path must
    # fail before anything is deleted
    sink: Archive | None = None
    if archive is not None and not dry_run:
        try:
            sink = Archive(archive)
        except OSError as exc:
            fail(f"cannot write the archive {archive}: {exc.strerror or exc}")

    url = primary_dsn(settings)

    async def go() -> CleanupResult | str:
        from taskmon.service.maintenance import ArchiveError, run_cleanup

        try:
            return await run_cleanup(
                url,
                older_than=age,
                rollups_older_than=rollup_age,
                batch_size=batch_size,
                archive=sink,
                dry_run=dry_run,
                lost_after_s=settings.lost_after_s,
            )
        except ArchiveError as exc:
            return str(exc)

    try:
        result = run(go())
    finally:
        if sink is not None:
            try:
                sink.close()
            except OSError as exc:
                fail(f"cannot finish the archive {archive}: {exc.strerror or exc}", code=1)
    if isinstance(result, str):
        fail(result, code=1)
    _report(result, age, archive)
