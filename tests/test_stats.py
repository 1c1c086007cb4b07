"""Window metrics: rollup answers, the raw-row fallback, live counts and `taskmon stats`."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from test_rollups import insert

from taskmon.domain.filters import TaskFilter, parse
from taskmon.store import stats as store_stats

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
    stats = await store_stats.fetch_stats(db, TaskFilter(), now=NOW)
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
    fast = await store_stats.fetch_stats(db, flt, since=since, until=until)
    # a worker filter matching every row forces the raw path: same answer
    slow = await store_stats.fetch_stats(db, flt.merge(TaskFilter(workers=(":1",))), since=since,
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
    none = await store_stats.fetch_stats(db, parse("task:nosuchtask"), now=NOW)
    assert none.total == 0 and none.tasks == [] and none.p95_ms is None


def test_cli_stats_json_and_bad_input(dsn: str) -> None:
    env = dict(os.environ, TASKMON_DSN=dsn)
    ok = subprocess.run(
        [sys.executable, "-m", "taskmon", "stats", "--since", "90d", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["total"] == 0 and data["relative_error"] == store_stats.RELATIVE_ERROR
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


# Three days of attempts, one every 97 s from 2026-03-01 10:00 UTC, every error message
# distinct, so that a wrong example or an edge counted twice shows.
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
BOUND = store_stats.RELATIVE_ERROR + 1e-9


async def seed_days(conn: asyncpg.Connection[Any]) -> None:
    rng = random.Random(11)
    rows = []
    for i in range(3 * 86_400 // 97):
        status = ("success", "success", "failed", "success", "retrying", "lost", "success")[i % 7]
        failed = status in ("failed", "retrying")
        rows.append(
            {"task_id": f"d{i}", "task_name": ("app:mail", "app:report", "app:sync")[i % 3],
             "status": status, "worker": f"w{i % 2}:1",
             "duration_ms": None if status == "lost" else 50.0 * math.exp(rng.gauss(0, 1.2)),
             "queue_wait_ms": 3.0 * math.exp(rng.gauss(0, 1.0)),
             "error_type": ("TimeoutError", "KeyError", None)[i % 3] if failed else None,
             "error_message": f"boom {i}" if failed else None,
             "created_at": T0 + timedelta(seconds=97 * i)}
        )  # fmt: skip
    for start in range(0, len(rows), 500):
        await insert(conn, rows[start : start + 500])


async def assert_matches_raw(
    conn: asyncpg.Connection[Any], stats: store_stats.Stats, where: str, *args: Any
) -> None:
    """`stats` against count(*), percentile_cont and the error rows of the raw rows."""
    window = f"created_at >= $1 AND created_at < $2 AND {where}"
    since, until = stats.since, stats.until
    exact = dict(
        await conn.fetch(
            f"SELECT status, count(*) FROM task_execution_logs WHERE {window} GROUP BY 1",
            since, until, *args,
        )
    )  # fmt: skip
    assert {k: v for k, v in stats.by_status.items() if v} == exact
    step = timedelta(seconds=stats.bucket_seconds)
    series = dict(
        await conn.fetch(
            "SELECT date_bin($3, created_at, '2000-01-01 00:00:00+00'), count(*) "
            f"FROM task_execution_logs WHERE {window.replace('$3', '$4')} GROUP BY 1",
            since, until, step, *args,
        )
    )  # fmt: skip
    assert {t: n for t, n in stats.throughput if n} == series
    per_task = await conn.fetch(
        f"""SELECT task_name, count(*) AS n, avg(duration_ms) AS mean,
                   count(*) FILTER (WHERE status IN ('failed', 'lost')) AS failures,
                   percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms) AS d,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY queue_wait_ms) AS q
            FROM task_execution_logs WHERE {window} GROUP BY 1""",
        since, until, *args,
    )  # fmt: skip
    mine = {t.task_name: t for t in stats.tasks}
    assert set(mine) == {r["task_name"] for r in per_task}
    for r in per_task:
        t = mine[r["task_name"]]
        assert (t.count, t.failures) == (r["n"], r["failures"])
        assert t.mean_ms == pytest.approx(r["mean"], rel=1e-9)
        for got, want in zip((t.p50_ms, t.p95_ms, t.p99_ms), r["d"] or [None] * 3, strict=True):
            if want is None:  # lost attempts only: no duration
                assert got is None
            else:
                assert got is not None and abs(got - want) / want <= BOUND, (t, want)
        assert t.queue_wait_p95_ms is not None
        assert abs(t.queue_wait_p95_ms - r["q"]) / r["q"] <= BOUND
    errors = await conn.fetch(
        f"""SELECT DISTINCT ON (error_type) error_type,
                   count(*) OVER (PARTITION BY error_type) AS n,
                   created_at AS last_seen, error_message AS example
            FROM task_execution_logs WHERE {window} AND status <> 'success'
            ORDER BY error_type, created_at DESC""",
        since, until, *args,
    )  # fmt: skip
    got_errors = {e.error_type: (e.count, e.last_seen, e.example) for e in stats.errors}
    assert got_errors == {r["error_type"]: tuple(r)[1:] for r in errors}
    assert [e.count for e in stats.errors] == sorted((e.count for e in stats.errors), reverse=True)


@pytest.mark.parametrize(
    ("since", "until"),
    [
        # whole days inside; hours, 5 minutes, minutes and seconds at both edges
        (T0 + timedelta(hours=7, minutes=13, seconds=5.5),
         T0 + timedelta(days=2, hours=17, minutes=58, seconds=47.25)),
        # exactly two UTC days: no edges at all
        (datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC)),
        # 30 hours starting on an hour: hour and minute buckets only
        (datetime(2026, 3, 2, 5, tzinfo=UTC), datetime(2026, 3, 3, 11, 2, 30, tzinfo=UTC)),
        # 100 minutes (5-minute throughput buckets from minute rollups), and 3 minutes
        (T0 + timedelta(hours=30, minutes=2, seconds=1), T0 + timedelta(hours=31, minutes=42)),
        (T0 + timedelta(hours=5, minutes=1, seconds=1), T0 + timedelta(hours=5, minutes=4)),
    ],
)  # fmt: skip
async def test_windows_of_days_match_the_raw_rows(
    db: asyncpg.Connection[Any], since: datetime, until: datetime
) -> None:
    await seed_days(db)
    stats = await store_stats.fetch_stats(db, TaskFilter(), since=since, until=until)
    assert stats.total > 0
    await assert_matches_raw(db, stats, "TRUE")
    # the status and task filters read the same rollups
    flt = parse("status:failed,retrying task:report")
    stats = await store_stats.fetch_stats(db, flt, since=since, until=until)
    await assert_matches_raw(
        db, stats, "status IN ('failed', 'retrying') AND task_name = $3", "app:report"
    )
    # and the raw path (a worker filter) gives the same answer
    slow = await store_stats.fetch_stats(db, flt.merge(TaskFilter(workers=(":1",))), since=since,
                                     until=until)  # fmt: skip
    assert dataclasses.replace(slow, tasks=[]) == dataclasses.replace(stats, tasks=[])
    assert [dataclasses.replace(t, mean_ms=None) for t in slow.tasks] == [
        dataclasses.replace(t, mean_ms=None) for t in stats.tasks
    ]


async def test_error_examples_at_a_cut_minute_and_after_minute_rollups_are_deleted(
    db: asyncpg.Connection[Any],
) -> None:
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def failure(i: int, at: datetime, kind: str, message: str) -> dict[str, Any]:
        return {"task_id": f"e{i}", "task_name": "app:x", "status": "failed",
                "error_type": kind, "error_message": message, "created_at": at}  # fmt: skip

    await insert(db, [
        failure(1, noon - timedelta(minutes=90), "KeyError", "old key"),
        failure(2, noon + timedelta(seconds=10), "TimeoutError", "in the window"),
        failure(3, noon + timedelta(seconds=50), "TimeoutError", "after the window"),
    ])  # fmt: skip
    # retention has deleted the minute rollups of the hours before noon
    await db.execute("DELETE FROM task_error_minute WHERE bucket < $1", noon)
    since, until = noon - timedelta(hours=3), noon + timedelta(seconds=30)

    stats = await store_stats.fetch_stats(db, TaskFilter(), since=since, until=until)

    # the window ends inside the minute of both timeouts: the example is the one in it;
    # the key error's example comes from its hour, its minute being gone
    assert {e.error_type: (e.count, e.example) for e in stats.errors} == {
        "TimeoutError": (1, "in the window"),
        "KeyError": (1, "old key"),
    }
    # a status filter applies to the example too
    lost = await store_stats.fetch_stats(db, parse("status:lost"), since=since, until=until)
    assert lost.errors == []


def test_split_covers_the_window_once_on_each_level_s_boundaries() -> None:
    rng = random.Random(5)
    steps = (timedelta(minutes=5), timedelta(hours=1), timedelta(days=1))
    for _ in range(2000):
        since = T0 + timedelta(seconds=rng.choice([0, rng.uniform(0, 4 * 86_400)]))
        since = since.replace(microsecond=0) if rng.random() < 0.3 else since
        length = rng.choice([0, 60, 300, 3600, 86_400, rng.uniform(0, 5 * 86_400)])
        until = since + timedelta(seconds=length)
        levels, raw = store_stats._split(since, until, steps)
        spans = [s for s in raw if s[0] < s[1]]
        for step, pair in zip(steps, levels, strict=True):
            for a, b in pair:
                if a < b:
                    assert store_stats.floor_bucket(a, step) == a
                    assert store_stats.floor_bucket(b, step) == b
                    spans.append((a, b))
        spans.sort()
        # disjoint and gapless: together exactly [since, until)
        assert all(x[1] == y[0] for x, y in itertools.pairwise(spans))
        if spans:
            assert (spans[0][0], spans[-1][1]) == (since, until)
        else:
            assert since == until
