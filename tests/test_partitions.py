"""Time-partitioned task_execution_logs: kept ahead, strays, retention by partition, upgrade."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import publish, record, wait_for
from test_rollups import assert_rollups_match, insert

from taskmon.domain.events import Status
from taskmon.store import migrations, partitions
from taskmon.store.db import connect
from taskmon.worker.cleanup import Archive, ArchiveError, cleanup
from taskmon.worker.recorder import Recorder

BEFORE_PARTITIONS = [m for m in migrations.available() if m.version < 8]


async def _partition_of(db: asyncpg.Connection[Any], task_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT tableoid::regclass::text AS part FROM task_execution_logs WHERE task_id = $1",
        task_id,
    )
    return [r["part"] for r in rows]


async def test_a_new_database_is_partitioned_by_day_from_today_on(
    db: asyncpg.Connection[Any],
) -> None:
    parts = await partitions.list_partitions(db)
    days = [p for p in parts if not p.is_default]
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    # today's partition and at least two days ahead, a day each, then the default one
    assert days[0].lo is not None and days[0].lo <= today
    assert days[-1].hi is not None and days[-1].hi >= today + timedelta(days=3)
    assert all(p.hi is not None and p.lo is not None for p in days)
    assert all(p.hi - p.lo == timedelta(days=1) for p in days if p.hi and p.lo)
    assert parts[-1].is_default and parts[-1].name == partitions.DEFAULT_PARTITION
    assert await partitions.is_partitioned(db) is True


async def test_an_attempt_is_one_row_through_its_states(
    db: asyncpg.Connection[Any], pg_recorder: Recorder
) -> None:
    # given an attempt recorded as running, then as failed, through the real writer
    first = record(1, Status.RUNNING)
    await publish(pg_recorder, [first])
    finished = replace(first, status=Status.FAILED, error_type="E", error_message="boom")
    await publish(pg_recorder, [finished])

    # then it is one row, in today's partition, with the outcome
    rows = await db.fetch(
        "SELECT status, tableoid::regclass::text AS part FROM task_execution_logs"
        " WHERE task_id = $1",
        first.task_id,
    )
    assert [r["status"] for r in rows] == ["failed"]
    assert rows[0]["part"].startswith("task_execution_logs_p")
    await assert_rollups_match(db)


async def test_a_row_no_partition_covers_waits_in_the_default_one_and_moves(
    db: asyncpg.Connection[Any],
) -> None:
    # given a row stamped far in the future (a clock off by a month)
    later = datetime.now(UTC) + timedelta(days=30)
    await insert(db, [{"task_id": "stray", "task_name": "tests:a", "status": "success",
                       "created_at": later}])  # fmt: skip
    assert await _partition_of(db, "stray") == [partitions.DEFAULT_PARTITION]

    # when partitions are made up to then
    created = await partitions.ensure(db, upto=later + timedelta(seconds=1))

    # then the gap is filled, a day a partition, and the row moved into its day's
    assert created >= 27
    assert (await _partition_of(db, "stray"))[0] == "task_execution_logs_p" + later.strftime(
        "%Y%m%d"
    )
    assert await db.fetchval(f"SELECT count(*) FROM {partitions.DEFAULT_PARTITION}") == 0
    # and nothing overlaps or is left out between today and then
    days = [p for p in await partitions.list_partitions(db) if not p.is_default]
    for a, b in itertools.pairwise(days):
        assert a.hi == b.lo


async def test_concurrent_callers_create_each_partition_once(dsn: str) -> None:
    conns = [await connect(dsn) for _ in range(4)]
    try:
        upto = datetime.now(UTC) + timedelta(days=12)
        await asyncio.gather(*(partitions.ensure(c, upto=upto) for c in conns))
        await partitions.ensure(conns[0], upto=upto)  # whoever lost the race: now complete
        days = [p for p in await partitions.list_partitions(conns[0]) if not p.is_default]
        assert len({p.lo for p in days}) == len(days)
        assert days[-1].hi is not None and days[-1].hi >= upto
    finally:
        for c in conns:
            await c.close()


async def test_the_span_of_new_partitions_can_change(db: asyncpg.Connection[Any]) -> None:
    await partitions.set_settings(db, span=timedelta(hours=6))
    last = [p for p in await partitions.list_partitions(db) if not p.is_default][-1]
    assert last.hi is not None
    await partitions.ensure(db, upto=last.hi + timedelta(hours=12))
    added = [p for p in await partitions.list_partitions(db) if p.lo and p.lo >= last.hi]
    assert [p.hi - p.lo for p in added if p.hi and p.lo] == [timedelta(hours=6)] * 2
    assert added[0].name.endswith("_000000") or added[0].name[-8:].isdigit()
    with pytest.raises(ValueError, match="between 1 hour and 31 days"):
        await partitions.set_settings(db, span=timedelta(minutes=5))


# -- retention by partition ------------------------------------------------------------


async def _ten_days(db: asyncpg.Connection[Any]) -> datetime:
    """Partitions for the last ten days, four attempts a day in each (rows 6 h apart)."""
    now = datetime.now(UTC)
    await partitions.ensure(db, since=now - timedelta(days=10))
    rows = [
        {"task_id": f"r{h}", "task_name": "tests:old", "status": "success",
         "duration_ms": 1.0, "created_at": now - timedelta(hours=h)}
        for h in range(1, 240, 6)
    ]  # fmt: skip
    await insert(db, rows)
    return now


async def test_cleanup_drops_whole_days_and_trims_the_day_astride_the_cutoff(
    db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    # given ten days of rows, a day a partition
    now = await _ten_days(db)
    older_than = timedelta(days=5, hours=12)
    cutoff = now - older_than
    expect_gone = await db.fetchval(
        "SELECT count(*) FROM task_execution_logs WHERE created_at < $1", cutoff
    )
    whole = [p.name for p in await partitions.expired(db, cutoff)]
    assert len(whole) >= 4

    # when cleanup runs with an archive
    archive = Archive(tmp_path / "old.jsonl.gz")
    result = await cleanup(db, older_than=older_than, archive=archive)
    archive.close()

    # then the whole days went as partitions, and the one astride the cutoff was trimmed
    assert result.partitions_dropped == whole
    names = {p.name for p in await partitions.list_partitions(db)}
    assert not names & set(whole)
    assert result.deleted == expect_gone == result.archived
    assert (
        await db.fetchval("SELECT count(*) FROM task_execution_logs WHERE created_at < $1", cutoff)
        == 0
    )
    assert await db.fetchval("SELECT count(*) FROM task_execution_logs") == 40 - expect_gone
    # and every deleted row is in the archive, once, in time order
    with gzip.open(tmp_path / "old.jsonl.gz", "rt") as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == expect_gone
    assert len({line["task_id"] for line in lines}) == expect_gone
    assert all(line["status"] == "success" for line in lines)
    # nothing is left detached
    assert await partitions.leftovers(db) == []


async def test_a_failed_archive_keeps_the_partition(db: asyncpg.Connection[Any]) -> None:
    # given days past the retention, and an archive that cannot be written (disk full)
    await _ten_days(db)
    before = await db.fetchval("SELECT count(*) FROM task_execution_logs")
    parts = {p.name for p in await partitions.list_partitions(db)}
    holding = {
        p for p in parts if await db.fetchval(f'SELECT EXISTS (SELECT FROM "{p}")')
    }  # fmt: skip
    archive = Archive("/dev/full")

    # when cleanup runs, it fails on the archive
    with pytest.raises(ArchiveError, match="cannot write the archive"):
        await cleanup(db, older_than=timedelta(days=5), archive=archive)

    # then no row and no partition holding one was lost: the detached one was
    # attached again (an empty partition ahead of it, ten days back at this hour
    # of the day, archives nothing, so it may have gone)
    assert await db.fetchval("SELECT count(*) FROM task_execution_logs") == before
    after = {p.name for p in await partitions.list_partitions(db)}
    assert holding <= after
    assert after - parts == set()
    assert all(p not in holding for p in parts - after)
    assert await partitions.leftovers(db) == []


async def test_a_partition_left_detached_is_attached_again(db: asyncpg.Connection[Any]) -> None:
    # given a cleanup that died between detaching a partition and dropping it
    await _ten_days(db)
    before = await db.fetchval("SELECT count(*) FROM task_execution_logs")
    victim = (await partitions.expired(db, datetime.now(UTC) - timedelta(days=6)))[0]
    await partitions.detach(db, victim.name)
    assert await partitions.leftovers(db) == [victim.name]

    # when the next cleanup runs (with nothing old enough to expire)
    await cleanup(db, older_than=timedelta(days=30))

    # then the partition is back, rows and all
    assert await partitions.leftovers(db) == []
    assert await db.fetchval("SELECT count(*) FROM task_execution_logs") == before


async def test_detaching_waits_out_a_long_reader_without_holding_writers(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    # given a day to expire and a reader holding the table (an open transaction)
    await _ten_days(db)
    victim = (await partitions.expired(db, datetime.now(UTC) - timedelta(days=6)))[0]
    reader = await connect(dsn)
    tx = reader.transaction()
    await tx.start()
    await reader.fetchval("SELECT count(*) FROM task_execution_logs")
    retries = 0

    def retried() -> None:
        nonlocal retries
        retries += 1

    try:
        detaching = asyncio.create_task(partitions.detach(db, victim.name, on_retry=retried))
        # when a writer inserts while the detach keeps asking for its lock
        writer = await connect(dsn)
        waits = []
        for i in range(10):
            t0 = asyncio.get_running_loop().time()
            row = {"task_id": f"w{i}", "task_name": "tests:a", "status": "success",
                   "created_at": datetime.now(UTC)}  # fmt: skip
            await insert(writer, [row])
            waits.append(asyncio.get_running_loop().time() - t0)
            await asyncio.sleep(0.05)  # inserts spread over the detach's tries
        await writer.close()
        await wait_for(lambda: retries >= 1, what="the detach retrying for its lock")
        # then the writer was never held up for long, and the detach kept retrying
        assert max(waits) < 1.0, waits
        assert retries >= 1
        assert not detaching.done()
    finally:
        await tx.rollback()
        await reader.close()
    await detaching  # the reader is gone: it gets its lock
    assert await partitions.leftovers(db) == [victim.name]


# -- upgrading a database populated under the previous schema -----------------------


async def test_upgrade_partitions_a_populated_table_while_a_worker_records(
    empty_dsn: str,
) -> None:
    # given a database of the previous schema with rows in it, one attempt still running
    conn = await connect(empty_dsn)
    await migrations.upgrade(conn, source=BEFORE_PARTITIONS)
    old = [
        {"task_id": f"old{i}", "task_name": "tests:old", "status": "success",
         "duration_ms": float(i), "created_at": datetime.now(UTC) - timedelta(hours=i)}
        for i in range(200)
    ]  # fmt: skip
    await insert(conn, old)
    top_id = await conn.fetchval("SELECT max(id) FROM task_execution_logs")
    # and a worker of this version recording into it: the start-up migration leaves a
    # table it considers large as it is (here: any size)
    # the name from the server, not the DSN: an embedded server's DSN ends in ?host=…&port=…
    name = await conn.fetchval("SELECT current_database()")
    await conn.execute(f'ALTER DATABASE "{name}" SET taskmon.partition_inline_max_bytes = 0')
    rec = Recorder(empty_dsn, flush_interval=0.01)
    await rec.start(wait_connected=10)
    assert await partitions.is_partitioned(conn) is False
    running = record(1000, Status.RUNNING)
    await publish(rec, [running])

    # when the operator converts it while the worker keeps recording
    async def keep_recording() -> list[str]:
        ids = []
        for i in range(40):
            r = record(2000 + i)
            rec.submit(r)
            ids.append(r.task_id)
            await asyncio.sleep(0.01)  # a steady stream, so that some attempts meet the swap
        return ids

    recording = asyncio.create_task(keep_recording())
    upgrader = await connect(empty_dsn, command_timeout=None)
    result = await partitions.convert(upgrader)
    ids = await recording
    # and the running attempt finishes after the swap
    await publish(rec, [replace(running, status=Status.SUCCESS, duration_ms=5.0)])
    await rec.flush()
    await rec.stop()
    await upgrader.close()

    # then the table is partitioned, the old rows in one partition of their own
    assert result.converted and result.bound is not None
    assert await partitions.is_partitioned(conn) is True
    names = [p.name for p in await partitions.list_partitions(conn)]
    assert partitions.LEGACY_PARTITION in names and partitions.DEFAULT_PARTITION in names
    # and no row was lost or doubled: the old ones, the running one (now one success row)
    # and all that were recorded during the conversion
    statuses = dict(await conn.fetch("SELECT task_id, status FROM task_execution_logs"))
    assert len(statuses) == await conn.fetchval("SELECT count(*) FROM task_execution_logs")
    assert {r["task_id"] for r in old} <= set(statuses)
    assert set(ids) <= set(statuses)
    assert statuses[running.task_id] == "success"
    assert rec.stats.unwritten == 0 and rec.stats.rejected == 0
    # new rows get ids past the old ones, and the rollups still match the rows
    assert (
        await conn.fetchval(
            "SELECT min(id) FROM task_execution_logs WHERE task_id = ANY($1::text[])", ids
        )
        > top_id
    )
    await assert_rollups_match(conn)
    # and a second upgrade has nothing to do
    assert (await partitions.convert(conn)).converted is False
    await conn.close()


async def test_a_small_table_is_partitioned_by_the_start_up_migration(empty_dsn: str) -> None:
    conn = await connect(empty_dsn)
    await migrations.upgrade(conn, source=BEFORE_PARTITIONS)
    await insert(conn, [{"task_id": "a", "task_name": "tests:a", "status": "success",
                         "created_at": datetime.now(UTC) - timedelta(days=3)}])  # fmt: skip
    await migrations.upgrade(conn)
    assert await partitions.is_partitioned(conn) is True
    assert await _partition_of(conn, "a") == [partitions.LEGACY_PARTITION]
    await conn.close()


# -- the commands ---------------------------------------------------------------------


def _cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TASKMON_DSN": dsn, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "taskmon", *args], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip


def test_db_partitions_lists_them_and_changes_the_span(dsn: str) -> None:
    out = _cli("db", "partitions", dsn=dsn)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "new partitions span 1d, made 2d ahead"
    assert lines[-1].startswith(partitions.DEFAULT_PARTITION)
    assert any(line.startswith("task_execution_logs_p") for line in lines)

    changed = _cli("db", "partitions", "--span", "12h", "--ahead", "3d", dsn=dsn)
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.splitlines()[0] == "new partitions span 12h, made 3d ahead"

    bad = _cli("db", "partitions", "--span", "5m", dsn=dsn)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "taskmon: error: a partition spans between 1 hour and 31 days"
    ]


def test_db_upgrade_partitions_what_the_workers_left_plain(empty_dsn: str) -> None:
    # given a populated database of the previous schema, migrated by a worker that found
    # its table too large to convert at start-up
    async def prepare() -> None:
        conn = await connect(empty_dsn)
        await migrations.upgrade(conn, source=BEFORE_PARTITIONS)
        await insert(conn, [{"task_id": f"o{i}", "task_name": "tests:old", "status": "success",
                             "created_at": datetime.now(UTC) - timedelta(minutes=i)}
                            for i in range(50)])  # fmt: skip
        await conn.execute("SET taskmon.partition_inline_max_bytes = 0")
        await migrations.upgrade(conn)
        assert await partitions.is_partitioned(conn) is False
        await conn.close()

    asyncio.run(prepare())
    status = _cli("db", "status", dsn=empty_dsn)
    assert "task_execution_logs is not partitioned yet: run `taskmon db upgrade`" in status.stdout

    # when the operator upgrades
    out = _cli("db", "upgrade", dsn=empty_dsn)

    # then the table is partitioned, every row kept
    assert out.returncode == 0, out.stderr
    assert "partitioning task_execution_logs online" in out.stdout
    assert "task_execution_logs partitioned in " in out.stdout

    async def check() -> None:
        conn = await connect(empty_dsn)
        assert await partitions.is_partitioned(conn) is True
        assert await conn.fetchval("SELECT count(*) FROM task_execution_logs") == 50
        await conn.close()

    asyncio.run(check())
    assert "not partitioned" not in _cli("db", "status", dsn=empty_dsn).stdout
