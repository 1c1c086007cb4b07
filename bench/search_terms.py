"""The param:, label: and queue: terms: what a filtered page costs, what their indexes cost.

Two parts, run by hand on a shared machine (figures are medians with their
spread; with and without are interleaved, A-B-B-A, after a warm-up):

``pages``: seeds N attempts (default 1 M; the target is at 10 M) whose calls
look like a real app's (``kwargs`` with a nested user id, a tenant, an order
id; a tenant label; five queues, one of them rare), then times the first
history page of 50 for each term, with the opt-in indexes
(``taskmon db search-indexes --params``) and without them.

``writes``: writes the same recorder batches into two fresh databases, one
with the indexes and one without, interleaved, and prints attempts per second
and the PostgreSQL backend's CPU per row of each.

    PYTHONPATH=. python bench/search_terms.py pages --rows 10000000
    PYTHONPATH=. python bench/search_terms.py writes --batches 40 --size 500 --repeat 3

The server is ``TASKMON_BENCH_DSN`` (default the local one); the bench's own
databases are created on it and kept (pages) or dropped (writes).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psutil
from common import (
    SERVER_DSN,
    drop_database,
    interleaved,
    scratch_database,
    spread,
    with_database,
)

from taskmon.domain.events import AttemptRecord, Status
from taskmon.domain.filters import parse
from taskmon.domain.params import CallSpec, ParamsPolicy, capture_call
from taskmon.store import history, ingest, maintenance, migrations, partitions
from taskmon.store.db import connect, connect_without_timeout
from taskmon.worker.encode import prepare, row_of

PAGES_DB = "taskmon_bench_terms"
PER_DAY = 333_000
CHUNK = 500_000
QUERIES = {
    "param:user.id=4242 (1 in 100 000)": "param:user.id=4242",
    "param:tenant=t7 (1 in 500)": "param:tenant=t7",
    "label:tenant=t7 (1 in 500)": "label:tenant=t7",
    "queue:reports (1 in 1 000)": "queue:reports",
    "param:user.id=4242 status:failed": "param:user.id=4242 status:failed",
    "param:order_id=12345 (one row)": "param:order_id=12345",
    "param:tenant=t7 since:1d": "param:tenant=t7 since:1d",
}

# Server-side rows: ten times faster than formatting them in Python at 10 M.
# $1 end, $2 n, $3..$4 the range of i, $5 PER_DAY
_SEED = """
INSERT INTO task_execution_logs (task_id, attempt, task_name, status, worker, queue, params,
    labels, error_type, enqueued_at, started_at, finished_at, duration_ms, queue_wait_ms,
    created_at)
SELECT 'st-' || i, 0, 'app.tasks:t' || i % 8,
       CASE WHEN i % 20 = 0 THEN 'failed' ELSE 'success' END,
       'worker-' || i % 16 || ':1',
       CASE WHEN i % 1000 = 0 THEN 'reports' ELSE (ARRAY['default', 'emails', 'billing',
           'images'])[1 + i % 4] END,
       jsonb_build_object('args', '[]'::jsonb, 'kwargs', jsonb_build_object(
           'user', jsonb_build_object('id', i % 100000), 'tenant', 't' || i % 500,
           'order_id', i, 'note', 'processed by the nightly batch')),
       jsonb_build_object('tenant', 't' || i % 500, '_retries', 0),
       CASE WHEN i % 20 = 0 THEN 'TimeoutError' END,
       created, created, created + interval '40 ms', 40.0, 2.0, created
FROM (SELECT i, $1::timestamptz - make_interval(secs => $2::float8 / $5 * 86400 * ($2 - i) / $2)
             AS created
      FROM generate_series($3::bigint, $4::bigint - 1) AS i) AS a
"""


async def _kept(name: str) -> str:
    """Database `name`, created if missing (kept between runs: seeding 10 M rows takes long)."""
    admin = await asyncpg.connect(SERVER_DSN)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(SERVER_DSN, name)
    conn = await connect(dsn)
    try:
        await migrations.upgrade(conn)
    finally:
        await conn.close()
    return dsn


async def _set_indexes(conn: asyncpg.Connection[Any], present: bool) -> None:
    if present:
        await maintenance.build_search_indexes(conn, lambda _n, _s: None, params=True)
    else:
        for name in maintenance.PARAM_INDEXES:
            await conn.execute(f'DROP INDEX IF EXISTS "{name}"')


# --- pages ----------------------------------------------------------------------


async def seed(dsn: str, n: int) -> None:
    """Load `n` attempts (triggers off: the rollups play no part here) unless already there."""
    conn = await connect_without_timeout(dsn)
    try:
        have = await conn.fetchval("SELECT count(*) FROM task_execution_logs")
        if have == n:
            print(f"database already holds {n:,} rows; not seeding")
            return
        await conn.execute("TRUNCATE task_execution_logs")
        end = datetime.now(UTC)
        await partitions.ensure(conn, since=end - timedelta(days=n / PER_DAY + 1))
        await conn.execute("SET session_replication_role = replica")
        t0 = time.perf_counter()
        for start in range(0, n, CHUNK):
            await conn.execute(_SEED, end, n, start, min(start + CHUNK, n), PER_DAY)
            print(f"  seeded {min(start + CHUNK, n):,} rows", flush=True)
        await conn.execute("RESET session_replication_role")
        print(f"seeded {n:,} rows in {time.perf_counter() - t0:.0f}s")
        await conn.execute("VACUUM ANALYZE task_execution_logs")
    finally:
        await conn.close()


async def _page_ms(conn: asyncpg.Connection[Any], query: str, repeat: int) -> list[float]:
    flt = parse(query)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await history.fetch_history(conn, flt, limit=50)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


async def pages(n: int, repeat: int) -> None:
    dsn = await _kept(PAGES_DB)
    await seed(dsn, n)
    conn = await connect_without_timeout(dsn)
    try:
        t0 = time.perf_counter()
        await _set_indexes(conn, True)
        print(f"search indexes (--params) present after {time.perf_counter() - t0:.0f}s")
        await conn.execute("ANALYZE task_execution_logs")
        with_ix: dict[str, list[float]] = {}
        for label, query in QUERIES.items():
            await _page_ms(conn, query, 3)  # warm-up
            with_ix[label] = await _page_ms(conn, query, repeat)
        rows = {
            label: len((await history.fetch_history(conn, parse(q), limit=50)).rows)
            for label, q in QUERIES.items()
        }
        # without: in a transaction that drops them, measured, then rolled back
        without: dict[str, list[float]] = {}
        dropped = conn.transaction()
        await dropped.start()
        try:
            await _set_indexes(conn, False)
            for label, query in QUERIES.items():
                await _page_ms(conn, query, 1)
                without[label] = await _page_ms(conn, query, max(3, repeat // 5))
        finally:
            await dropped.rollback()
    finally:
        await conn.close()
    print(f"\nfirst history page of 50 at {n:,} rows (ms: median (min-max))")
    print(f"  {'term':<38} {'rows':>5} {'with indexes':>22} {'without':>24}")
    for label in QUERIES:
        w, wo = with_ix[label], without[label]
        print(f"  {label:<38} {rows[label]:>5} {spread(w, '>9.2f')} {spread(wo, '>10.1f')}")


# --- writes ---------------------------------------------------------------------

POLICY = ParamsPolicy()
SPEC = CallSpec(("user", "tenant", "order_id", "note"))


def _batch(tag: str, size: int) -> list[tuple[object, ...]]:
    now = datetime.now(UTC)
    rows = []
    for i in range(size):
        call = [{"id": i % 1000}, f"t{i % 50}", i, "processed by the nightly batch"]
        record = AttemptRecord(
            task_id=f"{tag}-{i}", attempt=0, task_name="bench:order", status=Status.SUCCESS,
            worker="bench:1", queue="emails", labels={"tenant": f"t{i % 50}", "_retries": 0},
            enqueued_at=now, started_at=now, finished_at=now, duration_ms=0.5,
            queue_wait_ms=1.0, raw_params=capture_call(call, {}, SPEC),
        )  # fmt: skip
        rows.append(row_of(prepare(record, POLICY), 4096))
    return rows


async def _write(conn: asyncpg.Connection[Any], statement: str, work: list[Any]) -> None:
    for rows in work:
        async with conn.transaction():
            await ingest.upsert_taking_seqs(conn, rows, len(rows), statement)


async def writes(batches: int, size: int, repeat: int) -> None:
    names = {"without": "taskmon_bench_terms_plain", "with": "taskmon_bench_terms_gin"}
    conns: dict[str, asyncpg.Connection[Any]] = {}
    try:
        for kind, name in names.items():
            conns[kind] = await connect(await scratch_database(name))
            await _set_indexes(conns[kind], kind == "with")
        statements = {k: await ingest.prepare_connection(c) for k, c in conns.items()}
        servers = {k: psutil.Process(c.get_server_pid()) for k, c in conns.items()}
        rate: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        for round_ in range(repeat + 1):  # round 0 warms up
            for kind in interleaved(("without", "with")):
                work = [_batch(uuid.uuid4().hex, size) for _ in range(batches)]
                s0 = sum(servers[kind].cpu_times()[:2])
                t0 = time.perf_counter()
                await _write(conns[kind], statements[kind], work)
                took = time.perf_counter() - t0
                used = sum(servers[kind].cpu_times()[:2]) - s0
                if round_:
                    rate[kind].append(batches * size / took)
                    cpu[kind].append(used / (batches * size) * 1e6)
    finally:
        for c in conns.values():
            await c.close()
        for name in names.values():
            await drop_database(name)
    print(f"\nrecorder batches of {size}, {batches} per run, {repeat} A-B-B-A rounds")
    print(f"  {'':8} {'attempts/s':>26} {'server CPU µs/row':>26}")
    for kind in names:
        r, c = rate[kind], cpu[kind]
        print(f"  {kind:8} {spread(r, '>12,.0f')} {spread(c, '>12.1f')}")
    base, gin = statistics.median(cpu["without"]), statistics.median(cpu["with"])
    slower = statistics.median(rate["without"]) / statistics.median(rate["with"]) - 1
    print(f"  the indexes add {gin / base - 1:+.0%} server CPU per row, {slower:+.0%} write time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("pages", help="filtered history pages, with and without the indexes")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=21)
    w = sub.add_parser("writes", help="recorder batches, with and without the indexes")
    w.add_argument("--batches", type=int, default=40)
    w.add_argument("--size", type=int, default=500)
    w.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.part == "pages":
        asyncio.run(pages(args.rows, args.repeat))
    else:
        asyncio.run(writes(args.batches, args.size, args.repeat))


if __name__ == "__main__":
    main()
