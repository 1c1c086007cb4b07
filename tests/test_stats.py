"""Window metrics: rollup answers, the raw-row fallback, live counts and `taskmon stats`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from test_rollups import insert

from taskmon.filters import TaskFilter, parse
from taskmon.store import queries

NOW = datetime.now(UTC).replace(microsecond=0)


async def seed(conn: asyncpg.Connection[Any]) -> None:
    rows = []
    for i in range(300):
        status = ("success", "success", "failed", "retrying", "lost", "success")[i % 6]
        rows.append(
            {"task_id": f"s{i}", "task_name": "app:mail" if i % 2 else "app:report",
             "status": status, "worker": f"w{i % 2}:1", "duration_ms": float(10 + i),
             "queue_wait_ms": float(i % 7),
             "error_type": {"failed": "TimeoutError", "retrying": "KeyError"}.get(status),
             "error_message": f"err {i}" if status in ("failed", "retrying") else None,
             "created_at": NOW - timedelta(minutes=4 * i + 1)}
        )  # fmt: skip
    rows += [
        {"task_id": "run1", "task_name": "app:mail", "status": "running",
         "created_at": NOW - timedelta(minutes=2)},
        {"task_id": "run2", "task_name": "app:mail", "status": "running",
         "created_at": NOW - timedelta(hours=3)},
        {"task_id": "run3", "task_name": "app:report", "status": "running", "timeout_s": 10.0,
         "created_at": NOW - timedelta(minutes=3)},
    ]  # fmt: skip
    await insert(conn, rows)


async def test_counts_rates_live_and_errors(db: asyncpg.Connection[Any]) -> None:
    await seed(db)
    stats = await queries.fetch_stats(db, TaskFilter(), now=NOW)
    in_window = [i for i in range(300) if 4 * i + 1 < 24 * 60]  # i < 360: all 300
    assert len(in_window) == 300
    assert stats.by_status == {"success": 150, "failed": 50, "retrying": 50, "lost": 52,
                               "running": 1, "pending": 0}  # fmt: skip
    assert (stats.running, stats.lost, stats.total) == (1, 52, 303)
    assert stats.failure_rate == (50 + 52) / (150 + 50 + 52)
    assert sum(n for _, n in stats.throughput) == 300
    assert stats.bucket_seconds == 3600 and len(stats.throughput) in (24, 25)
    mail = next(t for t in stats.tasks if t.task_name == "app:mail")
    # odd i: success, retrying, success; plus run2, running for 3 h: lost
    assert (mail.count, mail.retrying, mail.failures) == (151, 50, 1)
    assert mail.failure_rate == 1 / 101
    errors = {e.error_type: e for e in stats.errors}
    assert errors["TimeoutError"].count == 50 and errors["KeyError"].count == 50
    assert errors["TimeoutError"].example == "err 2"  # the latest one
    assert errors["TimeoutError"].last_seen == NOW - timedelta(minutes=9)
    assert errors[None].count == 50  # lost attempts, no error recorded
    json.dumps(stats.to_dict())


async def test_filters_rollups_and_raw_fallback_agree(db: asyncpg.Connection[Any]) -> None:
    await seed(db)
    since, until = NOW - timedelta(hours=7, minutes=13, seconds=5), NOW - timedelta(minutes=41)
    flt = parse("status:failed,success task:mail")
    fast = await queries.fetch_stats(db, flt, since=since, until=until)
    # a worker filter matching every row forces the raw path: same answer
    slow = await queries.fetch_stats(db, flt.merge(TaskFilter(workers=(":1",))), since=since,
                                     until=until)  # fmt: skip
    assert fast.by_status == slow.by_status and fast.by_status["retrying"] == 0
    assert [(t.task_name, t.count, t.p50_ms, t.p95_ms) for t in fast.tasks] == [
        (t.task_name, t.count, t.p50_ms, t.p95_ms) for t in slow.tasks
    ]
    assert fast.throughput == slow.throughput
    exact = await db.fetchval(
        "SELECT count(*) FROM task_execution_logs WHERE created_at >= $1 AND created_at < $2 "
        "AND status IN ('failed', 'success') AND task_name = 'app:mail'",
        since,
        until,
    )
    assert fast.total == exact > 0
    none = await queries.fetch_stats(db, parse("task:nosuchtask"), now=NOW)
    assert none.total == 0 and none.tasks == [] and none.p95_ms is None


def test_cli_stats_json_and_bad_input(dsn: str) -> None:
    env = dict(os.environ, TASKMON_DSN=dsn)
    ok = subprocess.run(
        [sys.executable, "-m", "taskmon", "stats", "--since", "90d", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["total"] == 0 and data["relative_error"] == queries.RELATIVE_ERROR
    table = subprocess.run(
        [sys.executable, "-m", "taskmon", "stats"],
        env=dict(env, NO_COLOR="1"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert table.returncode == 0 and "failure rate" in table.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "taskmon", "stats", "--since", "7x"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
