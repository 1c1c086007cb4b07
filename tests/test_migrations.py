"""Schema migrations: ordered, recorded with checksums, safe to run from many processes at once.

Extra migration files are handed to the runner (``source=``, or the hidden
``--sql-dir`` of the commands) rather than added to the package.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from taskmon.store import migrations
from taskmon.store.db import connect
from taskmon.store.migrations import Migration

SHIPPED = migrations.available()
NEXT = len(SHIPPED) + 1


def mig(version: int, name: str, sql: str) -> Migration:
    """A migration as if read from the file ``NNNN_name.sql``."""
    return migrations.parse(f"{version:04d}_{name}.sql", sql)


def _cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TASKMON_DSN": dsn}
    return subprocess.run(
        [sys.executable, "-m", "taskmon", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def sql_dir(tmp_path: Path, extra: dict[str, str]) -> Path:
    """A copy of the shipped sql/ files plus `extra` (file name → text)."""
    folder = tmp_path / "sql"
    folder.mkdir()
    shipped = resources.files("taskmon").joinpath("sql")
    for m in SHIPPED:
        (folder / m.filename).write_text(shipped.joinpath(m.filename).read_text("utf-8"))
    for name, text in extra.items():
        (folder / name).write_text(text)
    return folder


async def tables(conn: asyncpg.Connection[Any]) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows}


async def recorded(conn: asyncpg.Connection[Any]) -> dict[int, str | None]:
    rows = await conn.fetch("SELECT version, checksum FROM taskmon_schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


# -- the shipped migrations ------------------------------------------------------


async def test_upgrade_applies_everything_once(empty_dsn: str) -> None:
    conn = await connect(empty_dsn)
    try:
        before = await migrations.status(conn)
        assert before and all(m.applied_at is None for m in before)
        applied = await migrations.upgrade(conn)
        assert [m.version for m in applied.applied] == [m.version for m in SHIPPED]
        again = await migrations.upgrade(conn)
        assert again.applied == () and again.notice is None
        after = await migrations.status(conn)
        assert all(m.applied_at is not None and not m.edited for m in after)
        assert await conn.fetchval("SELECT to_regclass('task_execution_logs') IS NOT NULL")
        assert await recorded(conn) == {m.version: m.checksum for m in SHIPPED}
    finally:
        await conn.close()


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in SHIPPED]
    assert versions == list(range(1, len(versions) + 1))


# -- markers ---------------------------------------------------------------------


def test_markers_are_read_from_the_header_only() -> None:
    both = mig(9, "x", "-- Why.\n--\n-- taskmon: manual, no-transaction\nSELECT 1;\n")
    assert both.manual and not both.transactional
    lines = mig(9, "x", "-- taskmon: manual\n-- TASKMON: No-Transaction\n\nSELECT 1;")
    assert lines.manual and not lines.transactional
    plain = mig(9, "x", "-- nothing special\nSELECT 1;\n-- taskmon: manual\n")
    assert not plain.manual and plain.transactional


def test_a_misspelt_marker_is_an_error_naming_the_file() -> None:
    with pytest.raises(ValueError, match=r"0009_x\.sql: unknown marker 'taskmon: manuel'"):
        mig(9, "x", "-- taskmon: manuel\nSELECT 1;")


def test_files_are_named_and_numbered_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"4_x\.sql: a migration file is named NNNN_name\.sql"):
        migrations.parse("4_x.sql", "SELECT 1")
    (tmp_path / "0004_a.sql").write_text("SELECT 1;")
    (tmp_path / "0004_b.sql").write_text("SELECT 2;")
    (tmp_path / "README").write_text("not a migration")
    with pytest.raises(ValueError, match=r"0004_a\.sql and 0004_b\.sql have the same number"):
        migrations.load(tmp_path)


def test_statements_split_at_top_level_semicolons_only() -> None:
    sql = """-- a header; with a semicolon
CREATE INDEX CONCURRENTLY a ON t (x);
/* block; /* nested; */ still comment; */
INSERT INTO t VALUES ('it''s; fine', E'back\\'slash;', "odd;name");
DO $body$ BEGIN PERFORM 1; END $body$;
SELECT $$;$$, $1x;
;  -- nothing here
SELECT 2"""
    assert migrations.split_statements(sql) == [
        "-- a header; with a semicolon\nCREATE INDEX CONCURRENTLY a ON t (x)",
        "/* block; /* nested; */ still comment; */\n"
        "INSERT INTO t VALUES ('it''s; fine', E'back\\'slash;', \"odd;name\")",
        "DO $body$ BEGIN PERFORM 1; END $body$",
        "SELECT $$;$$, $1x",
        "-- nothing here\nSELECT 2",
    ]


# -- manual migrations -------------------------------------------------------------


async def test_a_manual_migration_stops_workers_until_db_upgrade_runs_it(
    dsn: str, tmp_path: Path
) -> None:
    extra = {
        f"{NEXT:04d}_slow.sql": "-- taskmon: manual\nCREATE TABLE slow_done (n int);\n",
        f"{NEXT + 1:04d}_after.sql": "CREATE TABLE after_done (n int);\n",
    }
    source = migrations.load(sql_dir(tmp_path, extra))
    conn = await connect(dsn)
    try:
        # when a worker upgrades (the default)
        result = await migrations.upgrade(conn, source=source)

        # then it applies nothing from the manual one on and says so in one line
        assert result.applied == ()
        assert [m.version for m in result.waiting] == [NEXT, NEXT + 1]
        assert result.notice is not None and "\n" not in result.notice
        assert f"migration {NEXT:04d}_slow.sql and 1 more is not run by workers" in result.notice
        assert "run `taskmon db upgrade`" in result.notice
        assert not {"slow_done", "after_done"} & await tables(conn)
        # and the next worker does the same
        assert (await migrations.upgrade(conn, source=source)).waiting == result.waiting
    finally:
        await conn.close()

    # when an operator runs `taskmon db upgrade`
    out = _cli("db", "upgrade", "--sql-dir", str(tmp_path / "sql"), dsn=dsn)

    # then both are applied, one line each with the time taken
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{NEXT:04d}_slow.sql (manual) … applied in ")
    assert lines[0].endswith(" s")
    assert lines[1].startswith(f"{NEXT + 1:04d}_after.sql … applied in ")
    assert lines[2].startswith("2 migrations applied in ")
    conn = await connect(dsn)
    try:
        assert {"slow_done", "after_done"} <= await tables(conn)
        result = await migrations.upgrade(conn, source=source)
        assert result.applied == () and result.notice is None
    finally:
        await conn.close()


async def test_workers_apply_what_comes_before_a_manual_migration(dsn: str) -> None:
    source = [
        *SHIPPED,
        mig(NEXT, "quick", "CREATE TABLE quick_done (n int);"),
        mig(NEXT + 1, "slow", "-- taskmon: manual\nCREATE TABLE slow_done (n int);"),
    ]
    conn = await connect(dsn)
    try:
        result = await migrations.upgrade(conn, source=source)
        assert [m.version for m in result.applied] == [NEXT]
        assert [m.version for m in result.waiting] == [NEXT + 1]
        assert "quick_done" in await tables(conn) and "slow_done" not in await tables(conn)
        statuses = {s.version: s for s in await migrations.status(conn, source=source)}
        assert statuses[NEXT + 1].manual and statuses[NEXT + 1].applied_at is None
    finally:
        await conn.close()


async def test_a_worker_does_not_wait_behind_an_operators_long_upgrade(dsn: str) -> None:
    source = [*SHIPPED, mig(NEXT, "slow", "-- taskmon: manual\nSELECT pg_sleep(60);")]
    operator = await connect(dsn)
    worker = await connect(dsn)
    try:
        # given an operator's `taskmon db upgrade` holding the lock through a long migration
        await operator.execute("SELECT pg_advisory_lock($1)", migrations.LOCK_KEY)

        # when a worker starts, then it returns at once with the manual one waiting
        result = await asyncio.wait_for(migrations.upgrade(worker, source=source), 10)
        assert [m.version for m in result.waiting] == [NEXT]
    finally:
        await operator.close()
        await worker.close()


# -- no-transaction migrations ---------------------------------------------------------


async def index_validity(conn: asyncpg.Connection[Any], name: str) -> bool | None:
    valid: bool | None = await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", name
    )
    return valid


async def test_a_no_transaction_migration_builds_indexes_concurrently(
    db: asyncpg.Connection[Any],
) -> None:
    source = [
        *SHIPPED,
        mig(
            NEXT,
            "concurrently",
            "-- taskmon: no-transaction\n"
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_by_worker\n"
            "    ON taskmon_workers (host);\n"
            'CREATE INDEX CONCURRENTLY "Idx By Queue" ON taskmon_workers (queue);\n',
        ),
    ]
    result = await migrations.upgrade(db, source=source)
    assert [m.version for m in result.applied] == [NEXT]
    assert await index_validity(db, "idx_by_worker") is True
    assert await index_validity(db, '"Idx By Queue"') is True
    assert (await recorded(db))[NEXT] == source[-1].checksum


async def test_an_interrupted_concurrent_build_is_dropped_and_built_again(
    db: asyncpg.Connection[Any],
) -> None:
    # given a unique index that cannot be built on the rows as they are
    await db.execute("CREATE TABLE codes (code text)")
    await db.execute("INSERT INTO codes VALUES ('a'), ('a'), ('b')")
    source = [
        *SHIPPED,
        mig(
            NEXT,
            "unique_codes",
            "-- taskmon: no-transaction\n"
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS codes_code ON codes (code);",
        ),
    ]
    with pytest.raises(migrations.MigrationFailed) as failed:
        await migrations.upgrade(db, worker=False, source=source)
    message = str(failed.value)
    assert message.startswith(f"migration {NEXT:04d}_unique_codes.sql failed: could not create")
    assert "\n" not in message
    # the failed build left an INVALID index, which IF NOT EXISTS alone would keep
    assert await index_validity(db, "codes_code") is False
    assert NEXT not in await recorded(db)

    # when the data is fixed and the upgrade runs again
    await db.execute("DELETE FROM codes WHERE ctid = (SELECT min(ctid) FROM codes)")
    result = await migrations.upgrade(db, worker=False, source=source)

    # then the index is built for real
    assert [m.version for m in result.applied] == [NEXT]
    assert await index_validity(db, "codes_code") is True


# -- checksums -------------------------------------------------------------------------


async def test_an_edited_applied_file_is_refused(dsn: str, tmp_path: Path) -> None:
    edited = SHIPPED[1].sql + "\n-- a harmless-looking afterthought\n"
    source = [*SHIPPED[:1], mig(2, SHIPPED[1].name, edited), *SHIPPED[2:]]
    source.append(mig(NEXT, "next", "CREATE TABLE next_done (n int);"))
    conn = await connect(dsn)
    try:
        # an operator's upgrade raises, naming the file, and applies nothing
        with pytest.raises(migrations.ChecksumMismatch) as refused:
            await migrations.upgrade(conn, worker=False, source=source)
        assert str(refused.value).startswith(
            f"{SHIPPED[1].filename} was edited after it was applied"
        )
        # a worker applies nothing either, and says why in one line
        result = await migrations.upgrade(conn, source=source)
        assert result.applied == () and [m.version for m in result.waiting] == [NEXT]
        assert result.notice is not None and "\n" not in result.notice
        assert result.notice.startswith(f"not migrating: {SHIPPED[1].filename} was edited")
        assert "next_done" not in await tables(conn)
        statuses = await migrations.status(conn, source=source)
        assert [s.version for s in statuses if s.edited] == [2]
    finally:
        await conn.close()

    # and `taskmon db upgrade` says it in one line, exit status 1
    (sql_dir(tmp_path, {}) / SHIPPED[1].filename).write_text(edited)
    out = _cli("db", "upgrade", "--sql-dir", str(tmp_path / "sql"), dsn=dsn)
    assert out.returncode == 1
    assert out.stderr.startswith(f"taskmon: error: {SHIPPED[1].filename} was edited")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    status = _cli("db", "status", "--sql-dir", str(tmp_path / "sql"), dsn=dsn)
    assert status.returncode == 1 and "(EDITED)" in status.stdout


async def test_rows_recorded_before_checksums_get_them_from_the_files(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        # given the migrations table as taskmon made it before checksums existed
        await conn.execute("ALTER TABLE taskmon_schema_migrations DROP COLUMN checksum")
        assert all(not s.edited for s in await migrations.status(conn))

        # when a worker upgrades
        result = await migrations.upgrade(conn)

        # then every row has the checksum of its shipped file, trusted as applied
        assert result.applied == () and len(result.filled) == len(SHIPPED)
        assert await recorded(conn) == {m.version: m.checksum for m in SHIPPED}
        # and from then on an edit is refused
        edited = [mig(1, SHIPPED[0].name, SHIPPED[0].sql + " "), *SHIPPED[1:]]
        with pytest.raises(migrations.ChecksumMismatch, match=SHIPPED[0].filename):
            await migrations.upgrade(conn, worker=False, source=edited)
    finally:
        await conn.close()


async def test_db_upgrade_fills_checksums_of_old_rows(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        await conn.execute("UPDATE taskmon_schema_migrations SET checksum = NULL")
    finally:
        await conn.close()
    out = _cli("db", "upgrade", dsn=dsn)
    assert out.returncode == 0, out.stderr
    assert f"recorded the checksums of {len(SHIPPED)} migrations" in out.stdout
    conn = await connect(dsn)
    try:
        assert await recorded(conn) == {m.version: m.checksum for m in SHIPPED}
    finally:
        await conn.close()


def test_a_crlf_checkout_is_not_an_edit() -> None:
    text = SHIPPED[0].sql
    assert mig(1, "x", text.replace("\n", "\r\n")).checksum == SHIPPED[0].checksum


# -- many processes at once ---------------------------------------------------------


async def test_many_processes_upgrading_at_once_apply_each_migration_once(empty_dsn: str) -> None:
    # given extra migrations that count their own runs, one of them built
    # CONCURRENTLY (which waits for every older snapshot) and one manual
    source = [
        *SHIPPED,
        mig(NEXT, "runs", f"CREATE TABLE runs (version int); INSERT INTO runs VALUES ({NEXT});"),
        mig(
            NEXT + 1,
            "index",
            "-- taskmon: no-transaction\n"
            f"INSERT INTO runs VALUES ({NEXT + 1});\n"
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_by_worker\n"
            "    ON taskmon_workers (host);",
        ),
        mig(NEXT + 2, "manual", f"-- taskmon: manual\nINSERT INTO runs VALUES ({NEXT + 2});"),
    ]
    # and twelve connections: eight workers starting together and four operators
    conns = [await connect(empty_dsn) for _ in range(12)]
    try:
        # when all of them upgrade concurrently
        results = await asyncio.gather(
            *(migrations.upgrade(c, worker=i < 8, source=source) for i, c in enumerate(conns))
        )

        # then each migration was applied exactly once, and nobody failed
        applied = sorted(m.version for r in results for m in r.applied)
        assert applied == [m.version for m in source]
        runs = [r[0] for r in await conns[0].fetch("SELECT version FROM runs ORDER BY 1")]
        assert runs == [NEXT, NEXT + 1, NEXT + 2]
        assert await index_validity(conns[0], "idx_by_worker") is True
        assert set(await recorded(conns[0])) == {m.version for m in source}
    finally:
        for c in conns:
            await c.close()


# -- the commands --------------------------------------------------------------------


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
    assert "0001_task_execution_logs.sql … applied in " in upgrade.stdout
    assert f"{len(SHIPPED)} migrations applied in " in upgrade.stdout
    # the bookkeeping's own IF NOT EXISTS chatter is not shown
    assert "already exists" not in upgrade.stderr

    again = _cli("db", "upgrade", dsn=empty_dsn)
    assert again.stdout.strip() == "schema is up to date"
    assert "pending" not in _cli("db", "status", dsn=empty_dsn).stdout


def test_a_failed_migration_is_one_line_naming_the_file(dsn: str, tmp_path: Path) -> None:
    extra = {f"{NEXT:04d}_broken.sql": "CREATE TABLE ok_part (n int);\nSELECT no_such_column;\n"}
    out = _cli("db", "upgrade", "--sql-dir", str(sql_dir(tmp_path, extra)), dsn=dsn)
    assert out.returncode == 1
    assert out.stdout == f"{NEXT:04d}_broken.sql … failed\n"
    assert out.stderr == (
        f"taskmon: error: migration {NEXT:04d}_broken.sql failed: "
        'column "no_such_column" does not exist\n'
    )

    async def left() -> set[str]:
        conn = await connect(dsn)
        try:
            return await tables(conn)
        finally:
            await conn.close()

    assert "ok_part" not in asyncio.run(left())  # rolled back whole


def test_db_upgrade_has_no_statement_timeout(dsn: str, tmp_path: Path) -> None:
    # given a server-side statement timeout for the role (as some deployments set)
    async def set_timeout(value: str) -> None:
        conn = await connect(dsn)
        try:
            db = await conn.fetchval("SELECT current_database()")
            await conn.execute(f"ALTER DATABASE \"{db}\" SET statement_timeout = '{value}'")
        finally:
            await conn.close()

    asyncio.run(set_timeout("200ms"))
    extra = {f"{NEXT:04d}_long.sql": "-- taskmon: manual\nSELECT pg_sleep(0.5);\n"}
    out = _cli("db", "upgrade", "--sql-dir", str(sql_dir(tmp_path, extra)), dsn=dsn)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{NEXT:04d}_long.sql (manual) … applied in ")


def test_postgres_notices_of_a_migration_are_shown(empty_dsn: str, tmp_path: Path) -> None:
    extra = {f"{NEXT:04d}_notice.sql": "DO $$ BEGIN RAISE NOTICE 'taskmon: heads up'; END $$;"}
    out = _cli("db", "upgrade", "--sql-dir", str(sql_dir(tmp_path, extra)), dsn=empty_dsn)
    assert out.returncode == 0, out.stderr
    assert "notice: taskmon: heads up\n" in out.stderr


def test_unreachable_database_is_one_line_not_a_traceback() -> None:
    for command in (("db", "status"), ("db", "upgrade"), ("db", "rebuild-rollups")):
        out = _cli(*command, dsn="postgresql://postgres@127.0.0.1:1/none")
        assert out.returncode == 1
        assert out.stderr.startswith("taskmon: error:") and out.stderr.count("\n") == 1
        assert "Traceback" not in out.stderr


def test_rebuild_rollups_command_recomputes_them_from_the_rows(dsn: str) -> None:
    raw_hour = """
        SELECT date_bin('1 hour', created_at, '2000-01-01 00:00:00+00') AS bucket,
               task_name, status, count(*) AS n
        FROM task_execution_logs WHERE status IN ('success', 'failed', 'retrying', 'lost')
        GROUP BY 1, 2, 3"""
    rolled = "SELECT bucket, task_name, status, n FROM task_rollup_hour WHERE n <> 0"

    async def prepare() -> None:
        conn = await connect(dsn)
        try:
            # given rows loaded with the rollup triggers off (a bulk load), so no rollups
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(
                "INSERT INTO task_execution_logs (task_id, task_name, status, duration_ms, "
                "created_at) SELECT 't' || i, 'app:' || (i % 3), "
                "(ARRAY['success', 'failed', 'lost'])[1 + i % 3], i, "
                "timestamptz '2026-03-01 10:00+00' + i * interval '7 minutes' "
                "FROM generate_series(1, 300) AS i"
            )
            assert await conn.fetchval("SELECT count(*) FROM task_rollup_hour") == 0
        finally:
            await conn.close()

    async def compare() -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
        conn = await connect(dsn)
        try:
            raw = {tuple(r) for r in await conn.fetch(raw_hour)}
            return raw, {tuple(r) for r in await conn.fetch(rolled)}
        finally:
            await conn.close()

    asyncio.run(prepare())
    out = _cli("db", "rebuild-rollups", dsn=dsn)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("rollups rebuilt in ")
    raw, rollup = asyncio.run(compare())
    assert len(raw) > 10 and rollup == raw


def test_search_indexes_command_builds_what_the_migration_skipped(dsn: str) -> None:
    # given a database whose error-search and schedule-run indexes are missing (as after
    # migrating a large table)
    async def drop() -> None:
        conn = await connect(dsn)
        try:
            for name in (
                "idx_task_logs_errors_status",
                "idx_task_logs_error_message_trgm",
                "idx_task_logs_error_type_trgm",
                "idx_task_logs_scheduled",
            ):
                await conn.execute(f"DROP INDEX IF EXISTS {name}")
        finally:
            await conn.close()

    asyncio.run(drop())

    # when
    out = _cli("db", "search-indexes", dsn=dsn)

    # then all four are built, valid, and a second run finds them present
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": built") == 4

    async def valid() -> int:
        conn = await connect(dsn)
        try:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE (c.relname LIKE 'idx_task_logs_error%' OR c.relname = "
                "'idx_task_logs_scheduled') AND i.indisvalid"
            )
            return n
        finally:
            await conn.close()

    assert asyncio.run(valid()) == 4
    assert _cli("db", "search-indexes", dsn=dsn).stdout.count(": present") == 4
