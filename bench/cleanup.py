"""Benchmark of `taskmon cleanup` on a large table while a writer keeps inserting (run by hand).

    PYTHONPATH=. python bench/cleanup.py --rows 10000000 --expired 1000000

Creates (or reuses) database ``taskmon_bench_cleanup`` on the server
(``--dsn``, default ``TASKMON_BENCH_DSN``), seeds
``--rows`` attempts of which ``--expired`` are older than 30 days (the rest
spread over the last 30 days), all in ``created_at`` order as a live table
would be. Seeding skips the rollup triggers (``session_replication_role``):
they do not take part in deleting. A reused database is topped up: only the
expired rows that a previous run deleted are inserted again.

Then, while an inserter writes one recorder-sized batch (50 rows, rollup
triggers on) after another and times each, it runs the same cleanup as
``taskmon cleanup --older-than 30d`` (whole days go as partitions, detached
and dropped) and prints rows/s, the total time, and
the inserter's worst and 99th-percentile batch latency during the cleanup,
next to the same figures measured just before it. ``--archive FILE`` archives
the deleted rows first, as ``taskmon cleanup --archive``. ``--strategy ctid`` runs
the naive alternative (``DELETE ... WHERE ctid = ANY(ARRAY(SELECT ctid ...
LIMIT n))``, always from the oldest row) instead, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import timedelta
from typing import Any

import asyncpg
from common import SERVER_DSN, with_database

from taskmon.store import migrations, partitions
from taskmon.store.db import connect
from taskmon.worker import cleanup as retention

DATABASE = "taskmon_bench_cleanup"
CHUNK = 500_000
DAY = 86400.0

_SEED = """
INSERT INTO task_execution_logs (
    task_id, attempt, task_name, status, worker, queue, labels, params,
    error_type, error_message, enqueued_at, started_at, finished_at,
    duration_ms, queue_wait_ms, created_at
)
SELECT md5($5 || g::text), 0,
       (ARRAY['app.tasks:extract', 'app.tasks:transform', 'app.tasks:load', 'app.email:send',
              'app.reports:render', 'app.images:resize', 'app.sync:pull',
              'app.cleanup:vacuum'])[1 + g % 8],
       CASE WHEN g % 20 = 0 THEN 'failed' ELSE 'success' END,
       'bench-host:' || (1000 + g % 16), 'default', '{}'::jsonb,
       jsonb_build_object('args', jsonb_build_array(g, 'customer-' || (g % 977)),
                          'kwargs', '{}'::jsonb),
       CASE WHEN g % 20 = 0 THEN 'ValueError' END,
       CASE WHEN g % 20 = 0 THEN 'invalid input ' || g END,
       ts - interval '12 ms', ts, ts + make_interval(secs => (40 + g % 500) / 1000.0),
       40 + g % 500, 12, ts
FROM (
    SELECT g, $3::timestamptz + (g - $1) * make_interval(secs => $4) AS ts
    FROM generate_series($1::bigint, $2::bigint) AS g
) AS s
"""

_INSERT = """
INSERT INTO task_execution_logs (task_id, attempt, task_name, status, worker, duration_ms,
                                 created_at, started_at, finished_at)
SELECT t, 0, 'app.tasks:live', 'success', 'bench-writer:1', 5, now(), now(), now()
FROM unnest($1::text[]) AS t
"""


async def _seed_range(
    conn: asyncpg.Connection[Any], lo: int, hi: int, start_s: float, step_s: float, tag: str
) -> None:
    for first in range(lo, hi, CHUNK):
        last = min(hi, first + CHUNK) - 1
        start = await conn.fetchval(
            "SELECT now() - make_interval(secs => $1)", start_s - (first - lo) * step_s
        )
        await conn.execute(_SEED, first, last, start, step_s, tag)
        print(f"  seeded {last + 1 - lo:,} / {hi - lo:,} {tag} rows", flush=True)


async def seed(dsn: str, rows: int, expired: int) -> None:
    """Bring the table to `rows` rows, `expired` of them 31-60 days old."""
    conn = await connect(dsn, command_timeout=None)
    try:
        await migrations.upgrade(conn)
        # a partition for each day the rows span, as writers and cleanup would have made
        await partitions.ensure(
            conn, since=await conn.fetchval("SELECT now() - interval '61 days'")
        )
        await conn.execute("SET session_replication_role = replica")  # no rollup triggers
        cutoff = await conn.fetchval("SELECT now() - interval '30 days'")
        old = await conn.fetchval(
            "SELECT count(*) FROM task_execution_logs WHERE created_at < $1", cutoff
        )
        recent = await conn.fetchval(
            "SELECT count(*) FROM task_execution_logs WHERE created_at >= $1 "
            "AND task_name <> 'app.tasks:live'",
            cutoff,
        )
        fresh = rows - expired
        t0 = time.monotonic()
        bulk = (fresh - recent) + (expired - old) > 1_000_000
        if bulk:
            # building indexes once is far faster than maintaining them row by row
            indexes = await _drop_indexes(conn)
        if recent < fresh:
            # the last 30 days minus an hour, oldest first
            span = 30 * DAY - 3600
            await _seed_range(conn, recent, fresh, span, span / fresh, "recent")
        if old < expired:
            # 31 to 60 days ago, in their own id range after the recent rows: a
            # top-up after a previous run, as if they had been restored
            span = 29 * DAY
            start = 60 * DAY
            await _seed_range(
                conn, old, expired, start, span / expired, f"expired-{int(time.time())}"
            )
        if bulk:
            print(f"rows in {time.monotonic() - t0:.0f}s; building indexes ...", flush=True)
            await conn.execute("SET maintenance_work_mem = '1GB'")
            for statement in indexes:
                await conn.execute(statement)
        if recent < fresh or old < expired:
            print(f"seeded in {time.monotonic() - t0:.0f}s; vacuum analyze ...", flush=True)
            await conn.execute("VACUUM ANALYZE task_execution_logs")
    finally:
        await conn.close()


async def _drop_indexes(conn: asyncpg.Connection[Any]) -> list[str]:
    """Drop the table's secondary indexes and unique constraint; return how to rebuild them."""
    rebuild: list[str] = []
    for row in await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE conrelid = 'task_execution_logs'::regclass AND contype = 'u'"
    ):
        rebuild.append(
            f'ALTER TABLE task_execution_logs ADD CONSTRAINT "{row["conname"]}" {row["def"]}'
        )
        await conn.execute(f'ALTER TABLE task_execution_logs DROP CONSTRAINT "{row["conname"]}"')
    for row in await conn.fetch(
        "SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS def "
        "FROM pg_index WHERE indrelid = 'task_execution_logs'::regclass AND NOT indisprimary"
    ):
        # a partitioned table's index reads "ON ONLY": built so, it would cover no partition
        rebuild.append(row["def"].replace(" ON ONLY ", " ON ", 1))
        await conn.execute(f"DROP INDEX {row['name']}")
    return rebuild


class Inserter:
    """Inserts 50-row batches back to back and records how long each took."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.latencies: list[tuple[float, float]] = []  # (start, seconds)
        self._stop = asyncio.Event()
        self._n = 0

    async def run(self) -> None:
        conn = await connect(self.dsn)
        try:
            while not self._stop.is_set():
                ids = [f"live-{time.time_ns()}-{self._n}-{i}" for i in range(50)]
                self._n += 1
                t0 = time.monotonic()
                await conn.execute(_INSERT, ids)
                self.latencies.append((t0, time.monotonic() - t0))
                await asyncio.sleep(0.01)  # a busy recorder flushes about this often
        finally:
            await conn.close()

    def stop(self) -> None:
        self._stop.set()

    def between(self, t0: float, t1: float) -> list[float]:
        return [d for s, d in self.latencies if t0 <= s < t1]


def _summary(label: str, values: list[float]) -> str:
    if not values:
        return f"{label}: no inserts"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{label}: {len(values):,} batches, median {statistics.median(values) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )


async def _ctid_cleanup(conn: asyncpg.Connection[Any], older_than: timedelta, n: int) -> int:
    cutoff = await conn.fetchval("SELECT now() - $1::interval", older_than)
    total = 0
    while True:
        status = await conn.execute(
            "DELETE FROM task_execution_logs WHERE ctid = ANY(ARRAY("
            "SELECT ctid FROM task_execution_logs WHERE created_at < $1 LIMIT $2))",
            cutoff,
            n,
        )
        done = int(status.rsplit(" ", 1)[1])
        total += done
        if done < n:
            return total


async def bench(dsn: str, batch_size: int, strategy: str, archive_path: str | None) -> None:
    conn = await connect(dsn, command_timeout=None)
    try:
        total, size = await conn.fetchrow(
            "SELECT sum(c.reltuples)::bigint, pg_size_pretty(sum(pg_total_relation_size(c.oid)))"
            " FROM pg_class AS c WHERE c.oid IN (SELECT inhrelid FROM pg_inherits"
            "              WHERE inhparent = 'task_execution_logs'::regclass)"
        )
        print(f"table: about {total:,} rows, {size} with indexes")
        await conn.execute("CHECKPOINT")  # start from a quiet disk
        inserter = Inserter(dsn)
        writer = asyncio.create_task(inserter.run())
        await asyncio.sleep(5.0)
        t0 = time.monotonic()
        if strategy == "keyset":
            archive = retention.Archive(archive_path) if archive_path else None
            try:
                result = await retention.cleanup(
                    conn,
                    older_than=timedelta(days=30),
                    batch_size=batch_size,
                    rollups_older_than=None,
                    archive=archive,
                )
            finally:
                if archive is not None:
                    archive.close()
            deleted = result.deleted
            print(f"whole partitions dropped: {len(result.partitions_dropped)}")
        else:
            deleted = await _ctid_cleanup(conn, timedelta(days=30), batch_size)
        t1 = time.monotonic()
        await asyncio.sleep(2.0)
        inserter.stop()
        await writer
    finally:
        await conn.close()
    seconds = t1 - t0
    print(f"strategy {strategy}, batch size {batch_size:,}, archive {archive_path or 'none'}")
    print(f"deleted {deleted:,} rows in {seconds:.1f}s = {deleted / seconds:,.0f} rows/s")
    print(_summary("inserts before cleanup", inserter.between(t0 - 5.0, t0)))
    print(_summary("inserts during cleanup", inserter.between(t0, t1)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dsn", default=SERVER_DSN, help="the server (TASKMON_BENCH_DSN)")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--expired", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=retention.DEFAULT_BATCH_SIZE)
    parser.add_argument("--strategy", choices=("keyset", "ctid"), default="keyset")
    parser.add_argument("--archive", help="archive the deleted rows to this file (keyset only)")
    args = parser.parse_args()

    admin = await asyncpg.connect(args.dsn)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    dsn = with_database(args.dsn, DATABASE)
    await seed(dsn, args.rows, args.expired)
    await bench(dsn, args.batch_size, args.strategy, args.archive)


if __name__ == "__main__":
    asyncio.run(main())
