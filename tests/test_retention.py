"""Retention: old rows archived and deleted in batches, rollups kept, the scheduled task."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from taskiq import InMemoryBroker
from taskiq.schedule_sources import LabelScheduleSource

from taskmon.worker.cleanup import (
    Archive,
    ArchiveError,
    cleanup,
    register_cleanup,
    retention_days_setting,
)

DAY = 86400.0

# one finished attempt `age` seconds old; inserted as the recorder does, so
# the rollup triggers count it
_INSERT = """
INSERT INTO task_execution_logs
    (task_id, attempt, task_name, status, worker, params, error_type, error_message,
     duration_ms, started_at, finished_at, created_at)
SELECT 'task-' || $1 || '-' || g, 0, $2, $3, 'host-1:4242', jsonb_build_object('n', g),
       CASE WHEN $3 = 'failed' THEN 'ValueError' END,
       CASE WHEN $3 = 'failed' THEN 'bad input' END,
       12.5, now() - make_interval(secs => $4), now() - make_interval(secs => $4 - 0.0125),
       now() - make_interval(secs => $4)
FROM generate_series(1, $5::int) AS g
"""


async def _seed(
    db: asyncpg.Connection[Any], tag: str, age_s: float, n: int, status: str = "success"
) -> None:
    await db.execute(_INSERT, tag, "tests:job", status, age_s, n)


async def _rollups(db: asyncpg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    rows = await db.fetch(f"SELECT * FROM {table} ORDER BY 1, 2, 3")
    return [tuple(r) for r in rows]


async def _count(db: asyncpg.Connection[Any]) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM task_execution_logs")
    return n


async def test_cleanup_deletes_old_rows_in_batches_and_keeps_rollups(
    db: asyncpg.Connection[Any],
) -> None:
    # given 7 rows 40 days old, 3 from 500 days ago, 1 just past 30 days, 4 from yesterday
    await _seed(db, "old", 40 * DAY, 7, "failed")
    await _seed(db, "ancient", 500 * DAY, 3)
    await _seed(db, "edge", 30 * DAY + 5, 1)
    await _seed(db, "new", 1 * DAY, 4)
    hours_before = await _rollups(db, "task_rollup_hour")
    minutes_before = await _rollups(db, "task_rollup_minute")

    # when rows older than 30 days go, 3 per transaction
    result = await cleanup(db, older_than=timedelta(days=30), batch_size=3)

    # then every old row went, in 4 batches, and the recent ones stayed
    assert (result.deleted, result.batches) == (11, 4)
    names = await db.fetch("SELECT task_id FROM task_execution_logs ORDER BY task_id")
    assert [r["task_id"] for r in names] == [f"task-new-{i}" for i in range(1, 5)]

    # and deleting raw rows took nothing from the rollups: hour rollups of the
    # last 400 days are as they were, minute rollups of the whole hours before
    # the cutoff went (the hour of the cutoff may still have raw rows)
    assert result.rollup_cutoff is not None
    hours_after = await _rollups(db, "task_rollup_hour")
    assert hours_after == [r for r in hours_before if r[0] >= result.rollup_cutoff]
    assert sorted(r[3] for r in hours_after if r[2] == "failed") == [7]  # n, 40 days ago
    assert len(hours_after) == 3  # 40 days ago, 30 days ago, yesterday
    hour = result.cutoff.replace(minute=0, second=0, microsecond=0)
    minutes_after = await _rollups(db, "task_rollup_minute")
    assert minutes_after == [r for r in minutes_before if r[0] >= hour]
    assert [r[3] for r in minutes_after if r[1:3] == ("tests:job", "success")][-1] == 4
    assert result.rollups_deleted["task_rollup_hour"] == 1
    assert result.rollups_deleted["task_rollup_minute"] == len(minutes_before) - len(minutes_after)
    assert result.rollups_deleted["task_error_hour"] == 0  # the failures are 40 days old
    assert await db.fetchval("SELECT count(*) FROM task_error_hour") == 1

    # and a second run has nothing left to do
    again = await cleanup(db, older_than=timedelta(days=30), batch_size=3)
    assert (again.deleted, sum(again.rollups_deleted.values())) == (0, 0)


async def test_dry_run_counts_and_changes_nothing(db: asyncpg.Connection[Any]) -> None:
    # given old, recent and stale running rows
    await _seed(db, "old", 40 * DAY, 5)
    await _seed(db, "new", 60, 2)
    await _seed(db, "stuck", 2 * 3600, 1, "running")

    # when a dry run looks at them
    result = await cleanup(db, older_than=timedelta(days=30), dry_run=True)

    # then it reports what it would do and does none of it
    assert (result.deleted, result.marked_lost) == (5, 1)
    assert result.rollups_deleted["task_rollup_minute"] == 1
    assert await _count(db) == 8
    assert await db.fetchval("SELECT count(*) FROM task_execution_logs WHERE status = 'lost'") == 0


async def test_archive_holds_every_deleted_row_as_history_json(
    db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    # given 5 old rows and an archive that already holds an earlier run
    await _seed(db, "old", 40 * DAY, 5, "failed")
    await _seed(db, "new", 60, 1)
    path = tmp_path / "archive.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write('{"earlier": true}\n')

    # when cleanup archives them, 2 per batch
    archive = Archive(path)
    try:
        result = await cleanup(db, older_than=timedelta(days=30), batch_size=2, archive=archive)
    finally:
        archive.close()

    # then the archive holds the earlier run, then every deleted row, in order
    assert (result.deleted, result.archived) == (5, 5)
    with gzip.open(path, "rt") as fh:
        lines = [json.loads(line) for line in fh]
    assert lines[0] == {"earlier": True}
    rows = lines[1:]
    assert [r["task_id"] for r in rows] == [f"task-old-{i}" for i in range(1, 6)]
    first = rows[0]
    assert list(first)[:6] == ["id", "task_id", "task_name", "status", "attempt", "worker"]
    assert (first["status"], first["error_type"], first["params"]) == (
        "failed",
        "ValueError",
        {"n": 1},
    )
    assert first["created_at"].endswith("+00:00") and "T" in first["created_at"]
    assert first["duration_ms"] == 12.5 and first["finished_at"] is not None
    assert await _count(db) == 1


async def test_failing_archive_deletes_nothing_of_its_batch(
    db: asyncpg.Connection[Any],
) -> None:
    # given old rows and an archive on a device that is always full
    await _seed(db, "old", 40 * DAY, 3)
    archive = Archive("/dev/full")

    # when cleanup tries to archive them
    with pytest.raises(ArchiveError, match="cannot write the archive /dev/full"):
        await cleanup(db, older_than=timedelta(days=30), archive=archive)

    # then no row was deleted
    assert await _count(db) == 3


def test_unwritable_archive_fails_on_open(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Archive(tmp_path / "missing-dir" / "a.jsonl.gz")
    with pytest.raises(OSError):
        Archive(tmp_path)


async def test_cleanup_refuses_nonsense(db: asyncpg.Connection[Any]) -> None:
    with pytest.raises(ValueError, match="positive"):
        await cleanup(db, older_than=timedelta(0))
    with pytest.raises(ValueError, match="batch size"):
        await cleanup(db, older_than=timedelta(days=1), batch_size=0)


def test_retention_days_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TASKMON_CONFIG", os.devnull)
    monkeypatch.delenv("TASK_LOG_RETENTION_DAYS", raising=False)
    assert retention_days_setting() == 30
    monkeypatch.setenv("TASK_LOG_RETENTION_DAYS", "7")
    assert retention_days_setting() == 7
    assert retention_days_setting(2.5) == 2.5
    for bad in ("0", "-3", "soon", "nan"):
        monkeypatch.setenv("TASK_LOG_RETENTION_DAYS", bad)
        with pytest.raises(ValueError, match="TASK_LOG_RETENTION_DAYS"):
            retention_days_setting()


# -- the scheduled task --------------------------------------------------------


async def test_registered_task_is_scheduled_and_deletes_old_rows(
    db: asyncpg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # given a broker with the cleanup registered, retention from the environment
    monkeypatch.setenv("TASKMON_CONFIG", os.devnull)
    monkeypatch.setenv("TASK_LOG_RETENTION_DAYS", "35")
    await _seed(db, "old", 40 * DAY, 4)
    await _seed(db, "kept", 32 * DAY, 2)
    broker = InMemoryBroker()
    task = register_cleanup(broker, dsn=dsn)

    # then TaskIQ's label schedule source runs it daily at 03:00
    assert task.labels["schedule"] == [{"cron": "0 3 * * *"}]
    source = LabelScheduleSource(broker)
    await source.startup()
    [schedule] = await source.get_schedules()
    assert (schedule.task_name, schedule.cron) == ("taskmon:cleanup", "0 3 * * *")

    # when it runs
    await broker.startup()
    try:
        sent = await task.kiq()
        result = await sent.wait_result(timeout=30)
    finally:
        await broker.shutdown()

    # then it deleted the rows older than 35 days and returned their count
    assert not result.is_err, result.error
    assert result.return_value == 4
    ids = await db.fetch("SELECT task_id FROM task_execution_logs ORDER BY task_id")
    assert [r["task_id"] for r in ids] == ["task-kept-1", "task-kept-2"]


def test_register_cleanup_takes_its_own_cron() -> None:
    broker = InMemoryBroker()
    task = register_cleanup(broker, cron="*/5 * * * *", task_name="x:cleanup")
    assert broker.find_task("x:cleanup") is task
    assert task.labels["schedule"] == [{"cron": "*/5 * * * *"}]
    with pytest.raises(ValueError):
        register_cleanup(broker, retention_days=0)


# -- the command ---------------------------------------------------------------


async def _taskmon(*args: str, dsn: str) -> tuple[int, str, str]:
    env = dict(os.environ, TASKMON_DSN=dsn)
    env.pop("TASK_LOG_RETENTION_DAYS", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskmon",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "0d"], "--older-than: '0d' is not a positive duration"),
        (["--older-than", "-3d"], "--older-than: '-3d' is not a duration"),
        (["--older-than", "soon"], "--older-than: 'soon' is not a duration"),
        (["--older-than", "30d", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--rollups-older-than", "0h"], "--rollups-older-than"),
    ],
)
async def test_command_refuses_bad_input(
    db: asyncpg.Connection[Any], dsn: str, args: list[str], message: str
) -> None:
    await _seed(db, "old", 40 * DAY, 2)
    code, out, err = await _taskmon("cleanup", *args, dsn=dsn)
    assert out == ""
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert await _count(db) == 2


async def test_command_with_unwritable_archive_deletes_nothing(
    db: asyncpg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    await _seed(db, "old", 40 * DAY, 2)
    await _seed(db, "stuck", 2 * 3600, 1, "running")
    target = tmp_path / "no-such-dir" / "a.jsonl.gz"
    code, _out, err = await _taskmon(
        "cleanup", "--older-than", "30d", "--archive", str(target), dsn=dsn
    )
    assert code == 2
    assert err.startswith("taskmon: error: cannot write the archive") and err.count("\n") == 1
    assert await _count(db) == 3
    assert await db.fetchval("SELECT count(*) FROM task_execution_logs WHERE status = 'lost'") == 0


async def test_command_archives_deletes_and_reports(
    db: asyncpg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    # given old rows, a recent one and one stuck running
    await _seed(db, "old", 40 * DAY, 3)
    await _seed(db, "new", 60, 1)
    await _seed(db, "stuck", 2 * 3600, 1, "running")
    target = tmp_path / "a.jsonl.gz"

    # when a dry run, then the real thing, runs
    code, dry, _ = await _taskmon("cleanup", "--older-than", "30d", "--dry-run", dsn=dsn)
    assert code == 0
    assert "would mark 1 running attempt lost" in dry
    assert "would delete 3 attempts older than 30d" in dry
    assert await _count(db) == 5
    code, out, err = await _taskmon(
        "cleanup", "--older-than", "30d", "--archive", str(target), "--batch-size", "2", dsn=dsn
    )

    # then it reports what it did and did it
    assert (code, err) == (0, "")
    assert "marked 1 running attempt lost" in out
    assert "deleted 3 attempts older than 30d" in out and "in 2 batches" in out
    assert f"archived 3 rows to {target}" in out
    assert await _count(db) == 2
    with gzip.open(target, "rt") as fh:
        assert [json.loads(line)["task_id"] for line in fh] == [
            "task-old-1",
            "task-old-2",
            "task-old-3",
        ]
