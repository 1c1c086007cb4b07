"""Rollups kept by the statement triggers of sql/0002_rollups.sql, checked against raw rows."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from taskmon.domain.events import AttemptRecord, Status
from taskmon.domain.filters import TaskFilter
from taskmon.store import maintenance
from taskmon.store import stats as store_stats
from taskmon.worker.recorder import Recorder

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
BOUND = store_stats.RELATIVE_ERROR + 1e-9  # the issue asks for 5 %; the histograms promise 2 %

RAW_MINUTE = """
SELECT date_bin('1 minute', created_at, '2000-01-01 00:00:00+00') AS bucket, task_name, status,
       count(*) AS n, coalesce(sum(duration_ms), 0) AS ds
FROM task_execution_logs WHERE status IN ('success', 'failed', 'retrying', 'lost')
GROUP BY 1, 2, 3
"""
RAW_HOUR = RAW_MINUTE.replace("'1 minute'", "'1 hour'")


_DEFAULTS: dict[str, Any] = {"attempt": 0, "labels": {}}  # the columns' defaults, NOT NULL


async def insert(conn: asyncpg.Connection[Any], rows: list[dict[str, Any]]) -> None:
    """One multi-row INSERT (one trigger firing) of attempts given as column dicts.

    ``params`` and ``labels`` are dicts (stored as jsonb), in the recorder's
    stored form: params as ``{"kwargs": {...}}``.
    """
    cols = ["task_id", "attempt", "task_name", "status", "worker", "duration_ms",
            "queue_wait_ms", "error_type", "error_message", "timeout_s", "created_at",
            "queue", "params", "labels"]  # fmt: skip
    await conn.execute(
        f"INSERT INTO task_execution_logs ({', '.join(cols)}) "
        "SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], "
        "$6::float8[], $7::float8[], $8::text[], $9::text[], $10::float8[], $11::timestamptz[], "
        "$12::text[], $13::jsonb[], $14::jsonb[])",
        *[[r.get(c, _DEFAULTS.get(c)) for r in rows] for c in cols],
    )


async def rollup(conn: asyncpg.Connection[Any], table: str) -> dict[tuple[Any, ...], Any]:
    rows = await conn.fetch(
        f"SELECT bucket, task_name, status, n, duration_sum_ms AS ds FROM {table} WHERE n <> 0"
    )
    return {(r["bucket"], r["task_name"], r["status"]): (r["n"], round(r["ds"], 6)) for r in rows}


async def raw(conn: asyncpg.Connection[Any], sql: str) -> dict[tuple[Any, ...], Any]:
    rows = await conn.fetch(sql)
    return {(r["bucket"], r["task_name"], r["status"]): (r["n"], round(r["ds"], 6)) for r in rows}


async def assert_rollups_match(conn: asyncpg.Connection[Any]) -> None:
    assert await rollup(conn, "task_rollup_minute") == await raw(conn, RAW_MINUTE)
    assert await rollup(conn, "task_rollup_hour") == await raw(conn, RAW_HOUR)


async def test_recorder_batches_keep_rollups_exact(dsn: str, db: asyncpg.Connection[Any]) -> None:
    # given: attempts recorded as running first, then finished (the ON CONFLICT UPDATE path)
    rec = Recorder(dsn, batch_size=50)
    await rec.start()
    records = []
    for i in range(120):
        start = T0 + timedelta(seconds=37 * i)
        r = AttemptRecord(
            task_id=f"t{i}", attempt=0, task_name=f"app:job{i % 3}", status=Status.RUNNING,
            worker="w:1", started_at=start,
        )  # fmt: skip
        records.append(r)
        rec.submit(r)
    await rec.flush()
    assert await db.fetchval("SELECT count(*) FROM task_rollup_minute") == 0  # running: not yet
    outcomes = [Status.SUCCESS, Status.FAILED, Status.RETRYING, Status.SUCCESS]
    for i, r in enumerate(records[:100]):
        rec.submit(
            AttemptRecord(
                task_id=r.task_id, attempt=0, task_name=r.task_name, status=outcomes[i % 4],
                worker="w:1", started_at=r.started_at, duration_ms=10.0 + i,
                error_type=None if i % 4 in (0, 3) else "ValueError", error_message=f"bad {i}",
            )
        )  # fmt: skip
    # and brand-new attempts finishing in the same batch (the INSERT path)
    for i in range(30):
        rec.submit(
            AttemptRecord(
                task_id=f"n{i}", attempt=1, task_name="app:new", status=Status.SUCCESS,
                worker="w:2", started_at=T0 + timedelta(minutes=3 * i), duration_ms=5.0,
            )
        )  # fmt: skip
    await rec.flush()
    # a late "running" for a finished attempt must not be counted again
    rec.submit(records[0])
    await rec.flush()
    await rec.stop()

    # then
    await assert_rollups_match(db)
    total = await db.fetchval("SELECT sum(n) FROM task_rollup_hour")
    assert total == 130
    errors = await db.fetchval("SELECT sum(n) FROM task_error_hour WHERE error_type = 'ValueError'")
    assert errors == 50
    names = {r[0] for r in await db.fetch("SELECT task_name FROM task_names")}
    assert names == {"app:job0", "app:job1", "app:job2", "app:new"}


async def test_updates_move_counts_and_rebuild_agrees(db: asyncpg.Connection[Any]) -> None:
    await insert(
        db,
        [
            {"task_id": f"a{i}", "task_name": "app:a", "status": "success",
             "duration_ms": 100.0 + i, "created_at": T0 + timedelta(seconds=50 * i)}
            for i in range(200)
        ],
    )  # fmt: skip
    # when: a status change, a task rename and a time change, each one UPDATE statement
    await db.execute("UPDATE task_execution_logs SET status = 'lost' WHERE task_id LIKE 'a1%'")
    await db.execute("UPDATE task_execution_logs SET task_name = 'app:b' WHERE task_id LIKE 'a2%'")
    await db.execute(
        "UPDATE task_execution_logs SET created_at = created_at + interval '3 hours' "
        "WHERE task_id LIKE 'a3%'"
    )
    await db.execute("UPDATE task_execution_logs SET status = 'running' WHERE task_id = 'a4'")
    # then
    await assert_rollups_match(db)
    by_status = dict(await db.fetch("SELECT status, sum(n) FROM task_rollup_hour GROUP BY 1"))
    # a1, a10-a19, a100-a199 lost; a4 back to running (uncounted); 200 - 111 - 1 = 88
    assert by_status == {"success": 88, "lost": 111}
    before = await rollup(db, "task_rollup_minute")
    hist_before = await db.fetch("SELECT * FROM task_hist_hour WHERE h <> 0 ORDER BY 1, 2, 3, 4")
    await maintenance.rebuild_rollups(db)
    assert await rollup(db, "task_rollup_minute") == before
    hist_after = await db.fetch("SELECT * FROM task_hist_hour ORDER BY 1, 2, 3, 4")
    assert [tuple(r) for r in hist_after] == [tuple(r) for r in hist_before]
    # deleting raw rows (retention) keeps what was counted
    await db.execute("DELETE FROM task_execution_logs")
    assert await rollup(db, "task_rollup_minute") == before


async def test_bins_agree_between_python_and_sql(db: asyncpg.Connection[Any]) -> None:
    values = [0.0, -3.0, 1e-6, 0.0123, 1.0, 1.0408163265306123, 99.9, 100.0, 12345.678, 1e12]
    got = await db.fetch("SELECT taskmon_bin(v) AS b FROM unnest($1::float8[]) AS v", values)
    assert [r["b"] for r in got] == [store_stats.bin_of(v) for v in values]
    assert await db.fetchval("SELECT taskmon_bin('NaN')") is None
    for v in values[2:]:
        est = store_stats.bin_value(store_stats.bin_of(v) or 0)
        assert abs(est - v) / v <= store_stats.RELATIVE_ERROR + 1e-12


async def test_percentiles_within_bound_and_counts_exact_at_window_edges(
    db: asyncpg.Connection[Any],
) -> None:
    # given: 6000 attempts every 2.5 s from 10:00, lognormal durations, two tasks
    rng = random.Random(7)
    rows = []
    for i in range(6000):
        rows.append(
            {
                "task_id": f"p{i}", "task_name": "app:slow" if i % 3 else "app:fast",
                "status": "failed" if i % 17 == 0 else "success",
                "duration_ms": (900.0 if i % 3 else 20.0) * math.exp(rng.gauss(0, 1)),
                "queue_wait_ms": 5 * math.exp(rng.gauss(0, 1.5)),
                "created_at": T0 + timedelta(seconds=2.5 * i),
            }
        )  # fmt: skip
    for start in range(0, len(rows), 1000):
        await insert(db, rows[start : start + 1000])
    # window edges inside minutes, inside 5 minutes and inside hours; rows at the very edges
    since = T0 + timedelta(minutes=7, seconds=12.5)
    until = T0 + timedelta(hours=3, minutes=58, seconds=47.5)
    await insert(
        db,
        [
            {"task_id": "edge-a", "task_name": "app:fast", "status": "success",
             "duration_ms": 1.0, "created_at": since},
            {"task_id": "edge-b", "task_name": "app:fast", "status": "success",
             "duration_ms": 1.0, "created_at": until},
            {"task_id": "edge-c", "task_name": "app:fast", "status": "success",
             "duration_ms": 1.0, "created_at": until - timedelta(microseconds=1)},
        ],
    )  # fmt: skip

    # when
    stats = await store_stats.fetch_stats(db, TaskFilter(), since=since, until=until)

    # then: counts are exactly the raw counts of [since, until)
    exact = dict(
        await db.fetch(
            "SELECT status, count(*) FROM task_execution_logs "
            "WHERE created_at >= $1 AND created_at < $2 GROUP BY 1",
            since,
            until,
        )
    )
    assert {k: v for k, v in stats.by_status.items() if v} == exact
    assert sum(n for _, n in stats.throughput) == sum(exact.values())
    # and percentiles are within the bound of percentile_cont
    pct = await db.fetch(
        """SELECT task_name,
                  percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms) AS d,
                  percentile_cont(0.95) WITHIN GROUP (ORDER BY queue_wait_ms) AS q
           FROM task_execution_logs WHERE created_at >= $1 AND created_at < $2 GROUP BY 1""",
        since,
        until,
    )
    mine = {t.task_name: t for t in stats.tasks}
    assert set(mine) == {"app:slow", "app:fast"}
    for r in pct:
        t = mine[r["task_name"]]
        for got, want in zip((t.p50_ms, t.p95_ms, t.p99_ms), r["d"], strict=True):
            assert got is not None
            assert abs(got - want) / want <= BOUND, (r["task_name"], got, want)
        assert t.queue_wait_p95_ms is not None
        assert abs(t.queue_wait_p95_ms - r["q"]) / r["q"] <= BOUND
    assert stats.relative_error == store_stats.RELATIVE_ERROR


RAW_HIST_DAY = """
SELECT date_bin('1 day', created_at, '2000-01-01 00:00:00+00') AS bucket, task_name, status,
       metric, sum(unit) AS h
FROM (
    SELECT created_at, task_name, status, 0 AS metric, taskmon_hist_unit(duration_ms) AS unit
    FROM task_execution_logs WHERE duration_ms IS NOT NULL
    UNION ALL
    SELECT created_at, task_name, status, 1, taskmon_hist_unit(queue_wait_ms)
    FROM task_execution_logs WHERE queue_wait_ms IS NOT NULL
) AS s
WHERE status IN ('success', 'failed', 'retrying', 'lost')
GROUP BY 1, 2, 3, 4 HAVING sum(unit) <> 0
"""
RAW_ERROR_DAY = """
SELECT date_bin('1 day', created_at, '2000-01-01 00:00:00+00') AS bucket, task_name, status,
       coalesce(error_type, '') AS error_type, count(*) AS n, max(created_at) AS last_seen,
       (array_agg(error_message ORDER BY created_at DESC))[1] AS example
FROM task_execution_logs WHERE status IN ('failed', 'retrying', 'lost')
GROUP BY 1, 2, 3, 4
"""


async def day_rollups(
    conn: asyncpg.Connection[Any], *, last_seen: bool
) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    """(histogram rows, error rows) of the day rollups and the same computed from raw rows."""
    cols = "bucket, task_name, status, error_type, n" + (
        ", last_seen, example" if last_seen else ""
    )
    hist = {tuple(r) for r in await conn.fetch("SELECT * FROM task_hist_day WHERE h <> 0")}
    errors = {tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM task_error_day WHERE n <> 0")}
    raw_hist = {tuple(r) for r in await conn.fetch(RAW_HIST_DAY)}
    raw_errors = {tuple(r) for r in await conn.fetch(f"SELECT {cols} FROM ({RAW_ERROR_DAY}) AS e")}
    assert hist == raw_hist
    assert errors == raw_errors
    return hist, errors


async def test_day_rollups_follow_inserts_updates_and_rebuild(db: asyncpg.Connection[Any]) -> None:
    # given: attempts over three UTC days (from 2026-03-01 10:00), recorded in two batches
    rows = [
        {"task_id": f"d{i}", "task_name": f"app:job{i % 2}",
         "status": ("success", "failed", "retrying", "lost")[i % 4],
         "duration_ms": None if i % 4 == 3 else 3.0 * (i % 50 + 1), "queue_wait_ms": float(i % 7),
         "error_type": ("ValueError", None)[i % 3 % 2] if i % 4 in (1, 2) else None,
         "error_message": f"bad {i}" if i % 4 in (1, 2) else None,
         "created_at": T0 + timedelta(minutes=47 * i)}
        for i in range(150)
    ]  # fmt: skip
    await insert(db, rows[:70])
    await insert(db, rows[70:])
    hist, errors = await day_rollups(db, last_seen=True)
    assert len({r[0] for r in hist}) == 6 and errors  # days 2026-03-01 .. 03-06

    # when: status changes and a move across midnight, each one UPDATE statement
    await db.execute("UPDATE task_execution_logs SET status = 'failed' WHERE task_id LIKE 'd1%'")
    await db.execute(
        "UPDATE task_execution_logs SET created_at = created_at + interval '13 hours' "
        "WHERE task_id LIKE 'd2%'"
    )
    # then: counts and histograms follow (last_seen only grows, as in the hour rollups)
    await day_rollups(db, last_seen=False)
    # and a rebuild recomputes the same, examples included
    await maintenance.rebuild_rollups(db)
    await day_rollups(db, last_seen=True)
