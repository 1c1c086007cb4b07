"""Benchmark of history pages and window metrics at scale (run by hand).

    PYTHONPATH=. python bench/queries.py 1000000 --dsn postgresql://postgres@127.0.0.1:5432/taskmon_bench

Seeds N attempts (about 333 k a day, ending now) with ``COPY`` into
``task_execution_logs`` in chunks of 200 k rows: every chunk is one statement,
so the rollup triggers run on it exactly as on a recorder batch. Then prints
the median latency (client side, round trip included) of history pages and of
``fetch_stats`` for 1 h / 24 h / 7 d / 30 d, next to the same figures computed
from the raw rows with ``count(*)`` and ``percentile_cont``, and checks the
rollups' counts (exact) and percentiles (relative error) against them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from taskmon.filters import TaskFilter, parse
from taskmon.store import migrations, queries
from taskmon.store.db import connect

PER_DAY = 333_000
CHUNK = 200_000
TASKS = {  # name: (median duration ms, lognormal sigma, failure share)
    "app.tasks:extract": (120.0, 0.9, 0.06),
    "app.tasks:transform": (40.0, 0.6, 0.02),
    "app.tasks:load": (300.0, 1.0, 0.04),
    "app.email:send": (80.0, 0.5, 0.08),
    "app.reports:render": (2500.0, 0.8, 0.03),
    "app.images:resize": (15.0, 0.7, 0.01),
    "app.sync:pull": (900.0, 1.2, 0.10),
    "app.cleanup:vacuum": (6000.0, 0.5, 0.02),
}
ERRORS = [
    ("TimeoutError", "timed out after 30s"),
    ("ConnectionError", "connection reset by peer"),
    ("ValueError", "invalid literal for int() with base 10: 'x'"),
    ("KeyError", "'customer_id'"),
    ("RuntimeError", "upstream returned 503; it's down"),
]


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def _copy_text(value: Any) -> str:
    if value is None:
        return "\\N"
    s = str(value)
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _rows(n: int, end: datetime, rng: random.Random) -> list[bytes]:
    """`n` attempts spread evenly over the n / PER_DAY days before `end`, as COPY text lines."""
    span = n / PER_DAY * 86_400.0
    names = list(TASKS)
    lines = []
    for i in range(n):
        name = names[i % len(names)] if rng.random() < 0.5 else rng.choice(names)
        median, sigma, fail = TASKS[name]
        age = span * (n - i) / n  # oldest first, so ids grow with time
        created = end - timedelta(seconds=age)
        duration = median * math.exp(rng.gauss(0.0, sigma))
        wait = 5.0 * math.exp(rng.gauss(0.0, 1.5))
        r = rng.random()
        error_type = error_message = None
        if age < 120 and r < 0.5:
            status, duration_v = "running", None
        elif r < fail:
            status = "failed"
            error_type, error_message = ERRORS[rng.randrange(len(ERRORS))]
        elif r < fail * 1.5:
            status = "retrying"
            error_type, error_message = ERRORS[rng.randrange(len(ERRORS))]
        elif r < fail * 1.5 + 0.002:
            status = "lost"
        else:
            status = "success"
        duration_v = None if status in ("running", "lost") else round(duration, 3)
        finished = created + timedelta(milliseconds=duration_v) if duration_v else None
        fields = [
            f"{i:x}-{rng.getrandbits(48):012x}",
            0 if status != "retrying" else rng.randrange(3),
            name,
            status,
            f"worker-{i % 16}:{1000 + i % 7}",
            "default",
            f'{{"customer_id": {i % 10_000}}}',
            error_type,
            error_message,
            None,
            (created - timedelta(milliseconds=wait)).isoformat(),
            created.isoformat(),
            finished.isoformat() if finished else None,
            duration_v,
            round(wait, 3),
            created.isoformat(),
        ]
        lines.append(("\t".join(map(_copy_text, fields)) + "\n").encode())
    return lines


_COPY_COLUMNS = [
    "task_id", "attempt", "task_name", "status", "worker", "queue", "params",
    "error_type", "error_message", "timeout_s", "enqueued_at", "started_at",
    "finished_at", "duration_ms", "queue_wait_ms", "created_at",
]  # fmt: skip


async def seed(dsn: str, n: int) -> None:
    conn = await connect(dsn)
    try:
        await migrations.upgrade(conn)
        have = await conn.fetchval("SELECT count(*) FROM task_execution_logs")
        if have == n:
            print(f"database already holds {n} rows; not seeding")
            return
        await conn.execute(
            "TRUNCATE task_execution_logs, task_rollup_minute, task_rollup_hour, "
            "task_hist_5min, task_hist_hour, task_error_minute, task_error_hour, task_names"
        )
        rng = random.Random(42)
        end = datetime.now(UTC)
        lines = _rows(n, end, rng)
        t0 = time.perf_counter()
        for start in range(0, n, CHUNK):
            chunk = lines[start : start + CHUNK]

            async def source(chunk: list[bytes] = chunk) -> Any:
                for line in chunk:
                    yield line

            await conn.copy_to_table(
                "task_execution_logs", source=source(), columns=_COPY_COLUMNS, format="text"
            )
        took = time.perf_counter() - t0
        print(f"seeded {n} rows by COPY (triggers on) in {took:.1f}s ({n / took:,.0f} rows/s)")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def median_ms(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    await fn()  # warm the plan and the cache
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


RAW_COUNTS = """
SELECT status, count(*) FROM task_execution_logs
WHERE created_at >= $1 AND created_at < $2 GROUP BY status
"""
RAW_PERCENTILES = """
SELECT task_name,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms) AS d,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY queue_wait_ms) AS q
FROM task_execution_logs
WHERE created_at >= $1 AND created_at < $2
  AND status IN ('success', 'failed', 'retrying', 'lost')
GROUP BY task_name
"""


async def bench(dsn: str, repeat: int) -> None:
    conn = await connect(dsn)
    try:
        n = await conn.fetchval("SELECT count(*) FROM task_execution_logs")
        sizes = await conn.fetch(
            "SELECT relname, n_live_tup FROM pg_stat_user_tables "
            "WHERE relname LIKE 'task_%' ORDER BY relname"
        )
        print(f"\n{n:,} rows; table sizes: " + ", ".join(f"{r[0]}={r[1]:,}" for r in sizes))

        print("\nhistory (median ms, first page of 50)")
        filters = {
            "no filter": "",
            "status:failed": "status:failed",
            "status:lost": "status:lost",
            "status:failed,retrying": "status:failed,retrying",
            "task:app.tasks:extract": "task:app.tasks:extract",
            "task:extract*": "task:extract*",
            "task+status": "task:extract* status:failed since:7d",
            "since:1h": "since:1h",
            "worker:worker-3": "worker:worker-3:",
            'error:"timed out"': 'error:"timed out"',
            "min_duration:10s": "min_duration:10s",
            "words (boom)": "boom",
        }
        for label, text in filters.items():
            flt = parse(text)

            async def page(flt: TaskFilter = flt) -> Any:
                return await queries.fetch_history(conn, flt, limit=50)

            print(f"  {label:<26} {await median_ms(page, repeat):8.2f}")
        for label, text in (("no filter", ""), ("status:failed", "status:failed")):
            flt = parse(text)
            params: list[object] = []
            cond = flt.to_sql(params, alias="r")
            row = await conn.fetchrow(
                f"SELECT created_at, id FROM task_execution_logs r WHERE {cond} "
                "ORDER BY created_at DESC, id DESC OFFSET 49999 LIMIT 1",
                *params,
            )
            if row is None:
                print(f"  page 1001, {label:<15} (fewer than 50 000 rows match)")
                continue
            cursor = queries.encode_cursor(row["created_at"], row["id"])

            async def deep(flt: TaskFilter = flt, cursor: str = cursor) -> Any:
                return await queries.fetch_history(conn, flt, limit=50, after=cursor)

            print(f"  page 1001, {label:<15} {await median_ms(deep, repeat):8.2f}")

        now = datetime.now(UTC)
        print("\nstats (median ms): rollups vs raw rows (count + percentile_cont)")
        print(f"  {'window':<7} {'rollups':>9} {'raw':>9} {'raw/rollups':>12}  counts  max p-err")
        for label, hours in (("1h", 1), ("24h", 24), ("7d", 168), ("30d", 720)):
            since, until = now - timedelta(hours=hours), now
            empty = TaskFilter()

            async def rollup(
                since: datetime = since, until: datetime = until, empty: TaskFilter = empty
            ) -> Any:
                return await queries.fetch_stats(conn, empty, since=since, until=until)

            async def raw(since: datetime = since, until: datetime = until) -> Any:
                counts = await conn.fetch(RAW_COUNTS, since, until)
                pct = await conn.fetch(RAW_PERCENTILES, since, until)
                return counts, pct

            reps = repeat if hours <= 24 else max(3, repeat // 4)
            t_roll = await median_ms(rollup, repeat)
            t_raw = await median_ms(raw, reps)
            stats: queries.Stats = await rollup()
            counts, pct = await raw()
            exact = {r["status"]: r["count"] for r in counts}
            same = all(stats.by_status.get(s, 0) == exact.get(s, 0) for s in queries.TERMINAL)
            worst = 0.0
            mine = {t.task_name: t for t in stats.tasks}
            for r in pct:
                t = mine[r["task_name"]]
                for got, want in zip((t.p50_ms, t.p95_ms, t.p99_ms), r["d"], strict=True):
                    if want:
                        worst = max(worst, abs((got or 0) - want) / want)
                if r["q"] and t.queue_wait_p95_ms:
                    worst = max(worst, abs(t.queue_wait_p95_ms - r["q"]) / r["q"])
            print(
                f"  {label:<7} {t_roll:9.2f} {t_raw:9.1f} {t_raw / t_roll:11.0f}x"
                f"  {'exact' if same else 'DIFFER'}  {worst:.2%}"
            )
    finally:
        await conn.close()


def process_time(dsn: str, runs: int) -> None:
    env = dict(os.environ, TASKMON_DSN=dsn)
    cmd = [sys.executable, "-m", "taskmon", "history", "--format", "json", "--status", "failed"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        times.append((time.perf_counter() - t0) * 1000)
    print(
        f"\n`taskmon history --format json --status failed` process: "
        f"median {statistics.median(times):.0f} ms, max {max(times):.0f} ms over {runs} runs"
    )


async def ensure_database(dsn: str) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(_with_database(dsn, "postgres"))
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows", type=int, help="attempts to seed (e.g. 1000000, 10000000)")
    ap.add_argument(
        "--dsn", default="postgresql://postgres@127.0.0.1:5432/taskmon_bench", help="bench database"
    )
    ap.add_argument("--repeat", type=int, default=21, help="runs per query (median)")
    ap.add_argument("--process-runs", type=int, default=10)
    args = ap.parse_args()
    asyncio.run(ensure_database(args.dsn))
    asyncio.run(seed(args.dsn, args.rows))
    asyncio.run(bench(args.dsn, args.repeat))
    process_time(args.dsn, args.process_runs)


if __name__ == "__main__":
    main()
