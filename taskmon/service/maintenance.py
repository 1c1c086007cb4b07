"""Looking after the database: migrations, partitions, indexes, rollups, retention.

``taskmon db`` and ``taskmon cleanup`` call these; each opens its own
connection (without a statement timeout where the work is long by nature) and
returns what happened, for the command to word.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from taskmon.config import embedded_data_dir
from taskmon.service.database import connection
from taskmon.store import maintenance, migrations, partitions
from taskmon.store.embedded import EmbeddedError, stop_embedded
from taskmon.store.migrations import (
    NOT_PARTITIONED,
    UPGRADE_COMMAND,
    UPGRADE_HINT,
    Migration,
    MigrationError,
    MigrationStatus,
    Progress,
    Upgrade,
)
from taskmon.store.partitions import ConvertResult, Partition
from taskmon.store.partitions import Settings as PartitionSettings
from taskmon.worker.cleanup import (
    Archive,
    ArchiveError,
    CleanupResult,
    cleanup,
    retention_days_setting,
)

__all__ = [
    "NOT_PARTITIONED",
    "UPGRADE_COMMAND",
    "UPGRADE_HINT",
    "Archive",
    "ArchiveError",
    "CleanupResult",
    "ConvertResult",
    "EmbeddedError",
    "Migration",
    "MigrationError",
    "MigrationStatus",
    "NotPartitioned",
    "Partition",
    "PartitionSettings",
    "Progress",
    "SchemaStatus",
    "Upgraded",
    "build_search_indexes",
    "load_migrations",
    "partition_layout",
    "rebuild_rollups",
    "retention_days_setting",
    "run_cleanup",
    "schema_status",
    "stop_embedded_server",
    "upgrade",
]

load_migrations = migrations.load
"""Migrations read from another folder than the shipped one (``--sql-dir``)."""


class NotPartitioned(Exception):
    """``task_execution_logs`` is not partitioned yet: ``taskmon db upgrade`` does it."""


@dataclass(frozen=True)
class Upgraded:
    """What ``taskmon db upgrade`` did: the migrations, then the online partitioning if any."""

    result: Upgrade
    converted: ConvertResult | None


async def upgrade(
    dsn: str,
    *,
    source: list[Migration] | None,
    progress: Progress,
    notice: Callable[[str], None],
    say: Callable[[str], None],
) -> Upgraded:
    """Apply every pending migration, the manual ones too, then partition a plain table.

    Args:
        dsn: the primary.
        source: other migrations than the shipped ones (then nothing is partitioned).
        progress: told of each step.
        notice: PostgreSQL's notices, as they come.
        say: the partitioning's progress lines, when a table is converted.

    Raises:
        MigrationError: a migration failed or was refused; nothing after it ran.
    """
    # a long migration is why this exists: no limit on the client or the server
    async with connection(dsn, long=True) as conn:
        conn.add_log_listener(lambda _conn, msg: notice(msg.message))
        result = await migrations.upgrade(conn, worker=False, source=source, progress=progress)
        converted = None
        if (
            source is None
            and await partitions.supported(conn)
            and await partitions.is_partitioned(conn) is False
        ):
            say("partitioning task_execution_logs online (writers go on recording):")
            converted = await partitions.convert(conn, say=lambda text: say(f"  {text}"))
        return Upgraded(result, converted)


@dataclass(frozen=True)
class SchemaStatus:
    """Each migration and whether it is applied, and whether the table is partitioned."""

    migrations: list[MigrationStatus]
    partitioned: bool | None


async def schema_status(dsn: str, *, source: list[Migration] | None = None) -> SchemaStatus:
    """The migrations' states and the table's layout."""
    async with connection(dsn) as conn:
        rows = await migrations.status(conn, source=source)
        return SchemaStatus(rows, await partitions.is_partitioned(conn))


async def rebuild_rollups(dsn: str) -> None:
    """Recompute the metrics rollups from the recorded rows (no statement timeout)."""
    async with connection(dsn, long=True) as conn:
        await maintenance.rebuild_rollups(conn)


async def build_search_indexes(
    dsn: str, report: Callable[[str, str], None], *, params: bool = False
) -> None:
    """Build the search indexes concurrently; `report(name, state)` at each step.

    Args:
        dsn: the primary.
        report: told of each index: present, building, built.
        params: also the indexes of the ``param:``, ``label:`` and ``queue:`` terms.
    """
    async with connection(dsn, long=True) as conn:
        await maintenance.build_search_indexes(conn, report, params=params)


def stop_embedded_server() -> tuple[bool, Path]:
    """Stop the user's embedded server: whether it ran, and its data directory.

    Raises:
        EmbeddedError: it runs and could not be stopped.
    """
    path = embedded_data_dir()
    return stop_embedded(path), path


async def partition_layout(
    dsn: str, *, span: timedelta | None = None, ahead: timedelta | None = None
) -> tuple[PartitionSettings, list[Partition]]:
    """The partitions of ``task_execution_logs``, after changing how new ones are made.

    Raises:
        NotPartitioned: the table is not partitioned yet.
        ValueError: `span` or `ahead` is out of range (one line for the user).
    """
    async with connection(dsn) as conn:
        if await partitions.is_partitioned(conn) is not True:
            raise NotPartitioned(NOT_PARTITIONED)
        if span is not None or ahead is not None:
            await partitions.set_settings(conn, span=span, ahead=ahead)
            await partitions.ensure(conn)
        return await partitions.settings(conn), await partitions.list_partitions(conn)


async def run_cleanup(
    dsn: str,
    *,
    older_than: timedelta,
    rollups_older_than: timedelta | None,
    batch_size: int,
    archive: Archive | None,
    dry_run: bool,
    lost_after_s: float,
) -> CleanupResult:
    """Mark lost attempts, then delete (and archive) old rows and rollups.

    Raises:
        ArchiveError: the archive could not be written; nothing more was deleted.
    """
    async with connection(dsn) as conn:
        return await cleanup(
            conn,
            older_than=older_than,
            rollups_older_than=rollups_older_than,
            batch_size=batch_size,
            archive=archive,
            dry_run=dry_run,
            lost_after_s=lost_after_s,
        )
