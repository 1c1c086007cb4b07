"""What one `/metrics` database read costs on large rollups (run by hand).

    PYTHONPATH=. python bench/metrics.py --tasks 50 --days 400

Creates (or reuses) database ``taskmon_bench_metrics`` on the server (``--dsn``,
default ``TASKMON_BENCH_DSN``) and fills the rollups
as `--days` of activity of `--tasks` tasks would, every hour of every day, in
every finished status (the worst case: a real installation has hours without
attempts, and those have no rows): ``task_rollup_hour`` gets tasks x 4 x 24 x
days rows, ``task_hist_day`` tasks x 4 x 2 x days histograms of some 200
occupied bins each. Then it times :func:`taskmon.store.metrics.fetch_metrics`
(the one statement a scrape runs once per cache period) and prints the
median and worst of `--repeat` reads: reading every rollup, and reading the
recent ones (since yesterday) plus the sum of the older ones read before, as
``/metrics`` does; then the time of that older sum, read every 5 minutes in
the background.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime

from common import SERVER_DSN, with_database

from taskmon.server.exporter import BOUNDS_S, SETTLED_TTL_S
from taskmon.store import migrations
from taskmon.store.db import connect
from taskmon.store.metrics import fetch_metrics, fetch_settled, settled_boundary

DATABASE = "taskmon_bench_metrics"

_FILL_HOURS = """
INSERT INTO task_rollup_hour
    (bucket, task_name, status, n, duration_sum_ms, duration_n, queue_wait_sum_ms, queue_wait_n)
SELECT date_bin('1 hour', now(), '2000-01-01') - make_interval(hours => h), 'app:task' || t, s,
       100, 100 * 50.0, 100, 100 * 5.0, 100
FROM generate_series(0, $1::int * 24 - 1) AS h, generate_series(1, $2::int) AS t,
     unnest(ARRAY['success', 'failed', 'retrying', 'lost']) AS s
ON CONFLICT DO NOTHING
"""

# about 200 occupied lanes (bins 60..260: 10 ms to 30 s), 1 to 999 each
_FILL_DAYS = """
WITH p AS (
    SELECT sum((1 + (lane * 7) % 999)::numeric * ('1e' || (12 * lane)::text)::numeric) AS h
    FROM generate_series(60 + 180, 260 + 180) AS lane
)
INSERT INTO task_hist_day (bucket, task_name, status, metric, h)
SELECT date_bin('1 day', now(), '2000-01-01') - make_interval(days => d), 'app:task' || t, s, m,
       p.h
FROM p, generate_series(0, $1::int - 1) AS d, generate_series(1, $2::int) AS t,
     unnest(ARRAY['success', 'failed', 'retrying', 'lost']) AS s,
     unnest(ARRAY[0, 1]::smallint[]) AS m
ON CONFLICT DO NOTHING
"""


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=SERVER_DSN, help="the server (TASKMON_BENCH_DSN)")
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--days", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    admin = await connect(args.dsn)
    exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
    if not exists:
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    await admin.close()
    conn = await connect(with_database(args.dsn, DATABASE))
    await migrations.upgrade(conn)
    started = time.perf_counter()
    await conn.execute(_FILL_HOURS, args.days, args.tasks)
    await conn.execute(_FILL_DAYS, args.days, args.tasks)
    await conn.execute("VACUUM ANALYZE task_rollup_hour")
    await conn.execute("VACUUM ANALYZE task_hist_day")
    hours = await conn.fetchval("SELECT count(*) FROM task_rollup_hour")
    days = await conn.fetchval("SELECT count(*) FROM task_hist_day")
    filled = time.perf_counter() - started
    print(f"rollups: {hours:,} hour rows, {days:,} day histograms ({filled:.1f}s to fill)")

    bounds_ms = [b * 1000 for b in BOUNDS_S]
    boundary = settled_boundary(datetime.now(UTC))
    for label, settled_read in (("everything", False), ("recent + settled sum", True)):
        times: list[float] = []
        settled = await fetch_settled(conn, boundary) if settled_read else None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            snap = await fetch_metrics(conn, bounds_ms, settled=settled)
            times.append(time.perf_counter() - t0)
        print(
            f"fetch_metrics, {label}: median {statistics.median(times) * 1000:.1f} ms, "
            f"worst {max(times) * 1000:.1f} ms over {args.repeat} reads "
            f"({len(snap.totals)} task/status totals, {len(snap.histograms)} histograms)"
        )
    t0 = time.perf_counter()
    await fetch_settled(conn, boundary)
    print(
        f"fetch_settled (every {SETTLED_TTL_S:g}s, in the background): "
        f"{(time.perf_counter() - t0) * 1000:.0f} ms"
    )
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
