"""Schema migrations: ordered, recorded, safe to run from many processes at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from taskmon.store import migrations
from taskmon.store.db import connect


async def test_upgrade_applies_everything_once(empty_dsn: str) -> None:
    conn = await connect(empty_dsn)
    try:
        before = await migrations.status(conn)
        assert before and all(m.applied_at is None for m in before)
        applied = await migrations.upgrade(conn)
        assert [m.version for m in applied] == [m.version for m in migrations.available()]
        assert await migrations.upgrade(conn) == []
        after = await migrations.status(conn)
        assert all(m.applied_at is not None for m in after)
        assert await conn.fetchval("SELECT to_regclass('task_execution_logs') IS NOT NULL")
    finally:
        await conn.close()


async def test_many_processes_upgrading_at_once_is_safe(empty_dsn: str) -> None:
    # given twelve connections (as twelve worker processes starting together)
    conns = [await connect(empty_dsn) for _ in range(12)]
    try:
        # when all of them upgrade concurrently
        results = await asyncio.gather(*(migrations.upgrade(c) for c in conns))

        # then exactly one applied each migration and nobody failed
        applied = [m.version for r in results for m in r]
        assert sorted(applied) == [m.version for m in migrations.available()]
        rows = await conns[0].fetchval("SELECT count(*) FROM taskmon_schema_migrations")
        assert rows == len(migrations.available())
    finally:
        for c in conns:
            await c.close()


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in migrations.available()]
    assert versions == list(range(1, len(versions) + 1))


def _cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TASKMON_DSN": dsn}
    return subprocess.run(
        [sys.executable, "-m", "taskmon", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_db_status_and_upgrade_commands(empty_dsn: str) -> None:
    # reading a database nothing was recorded in says what to do, in one line
    for read in (("history",), ("stats",)):
        out = _cli(*read, dsn=empty_dsn)
        assert out.returncode == 1
        assert out.stderr.startswith("taskmon: error: the database has no taskmon tables yet")
        assert "taskmon db upgrade" in out.stderr and out.stderr.count("\n") == 1

    status = _cli("db", "status", dsn=empty_dsn)
    assert status.returncode == 0, status.stderr
    assert "0001_task_execution_logs" in status.stdout and "pending" in status.stdout

    upgrade = _cli("db", "upgrade", dsn=empty_dsn)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "applied 0001_task_execution_logs" in upgrade.stdout

    again = _cli("db", "upgrade", dsn=empty_dsn)
    assert again.stdout.strip() == "schema is up to date"
    assert "pending" not in _cli("db", "status", dsn=empty_dsn).stdout


def test_unreachable_database_is_one_line_not_a_traceback() -> None:
    out = _cli("db", "status", dsn="postgresql://postgres@127.0.0.1:1/none")
    assert out.returncode == 1
    assert out.stderr.startswith("taskmon: error:") and out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr


def test_search_indexes_command_builds_what_the_migration_skipped(dsn: str) -> None:
    # given a database whose error-search indexes are missing (as after migrating a large table)
    async def drop() -> None:
        conn = await connect(dsn)
        try:
            for name in (
                "idx_task_logs_errors_status",
                "idx_task_logs_error_message_trgm",
                "idx_task_logs_error_type_trgm",
            ):
                await conn.execute(f"DROP INDEX IF EXISTS {name}")
        finally:
            await conn.close()

    asyncio.run(drop())

    # when
    out = _cli("db", "search-indexes", dsn=dsn)

    # then all three are built, valid, and a second run finds them present
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": built") == 3

    async def valid() -> int:
        conn = await connect(dsn)
        try:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname LIKE 'idx_task_logs_error%' AND i.indisvalid"
            )
            return n
        finally:
            await conn.close()

    assert asyncio.run(valid()) == 3
    assert _cli("db", "search-indexes", dsn=dsn).stdout.count(": present") == 3
