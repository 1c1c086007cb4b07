"""Partitioning a populated table online, with writers recording meanwhile (run by hand).

    PYTHONPATH=. python bench/partition_upgrade.py [--dsn postgresql://…/taskmon_legacy]

The database (default ``taskmon_legacy`` on the ``TASKMON_BENCH_DSN`` server)
must hold a plain ``task_execution_logs`` (seed it with the previous taskmon,
e.g. ``bench/queries.py 10000000 --bulk --seed-only --dsn …/taskmon_legacy``
from an older checkout). Two writers upsert one attempt at a time, as started and
then finished, timing every write, while :func:`taskmon.store.partitions.convert`
(what ``taskmon db upgrade`` runs) converts the table. Prints the conversion's
steps and times, the writers' longest waits, and checks that every row is there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import asyncpg
from common import SERVER_DSN, with_database

from taskmon.store import ingest, migrations, partitions
from taskmon.store.db import connect_without_timeout


async def _writer(dsn: str, name: str, stop: asyncio.Event, waits: list[float]) -> int:
    conn = await asyncpg.connect(dsn)
    statement = await ingest.prepare_connection(conn)
    n = 0
    try:
        while not stop.is_set():
            now = time.time()
            for status, finished in (("running", None), ("success", now + 0.001)):
                row = (
                    f"{name}-{n}", 0, "bench:partition", status, name, "default",
                    json.dumps({}), json.dumps({"args": [n], "kwargs": {}}),
                    None, None, None, None,
                    now, now, finished, 1.0 if finished else None, None, now,
                )  # fmt: skip
                t0 = time.perf_counter()
                while True:
                    try:
                        async with conn.transaction():
                            await ingest.upsert(conn, [row], statement)
                        break
                    except asyncpg.InvalidColumnReferenceError:
                        # the table was swapped: the recorder asks for the new key the same way
                        statement = await ingest.prepare_connection(conn)
                waits.append(time.perf_counter() - t0)
            n += 1
            await asyncio.sleep(0.005)
    finally:
        await conn.close()
    return n


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dsn",
        default=with_database(SERVER_DSN, "taskmon_legacy"),
        help="the database (default: taskmon_legacy on the TASKMON_BENCH_DSN server)",
    )
    args = ap.parse_args()
    conn = await connect_without_timeout(args.dsn)
    before: int = await conn.fetchval("SELECT count(*) FROM task_execution_logs")
    print(f"rows before: {before:,}")
    # the migrations a worker runs at start: 0008 leaves a large table plain
    result = await migrations.upgrade(conn)
    print("migrations applied:", [m.filename for m in result.applied])
    print("partitioned:", await partitions.is_partitioned(conn))

    stop = asyncio.Event()
    waits: list[float] = []
    writers = [asyncio.create_task(_writer(args.dsn, f"w{i}", stop, waits)) for i in range(2)]
    await asyncio.sleep(2)
    t0 = time.perf_counter()
    done = await partitions.convert(
        conn, say=lambda text: print(f"  {time.perf_counter() - t0:7.1f}s  {text}")
    )
    await asyncio.sleep(2)
    stop.set()
    written = sum(await asyncio.gather(*writers))
    after: int = await conn.fetchval("SELECT count(*) FROM task_execution_logs")
    print(
        f"converted={done.converted} in {done.seconds:.1f}s;"
        f" swap {done.swap_seconds * 1000:.0f} ms; bound {done.bound}"
    )
    waits.sort()
    print(
        f"writes: {len(waits)}; median {statistics.median(waits) * 1000:.1f} ms,"
        f" p99 {waits[int(len(waits) * 0.99)] * 1000:.1f} ms, max {waits[-1] * 1000:.0f} ms"
    )
    whole = after == before + written
    print(f"rows after: {after:,} = before {before:,} + written {written:,}: {whole}")
    for part in await partitions.list_partitions(conn):
        print(f"  {part.name:<34} {part.lo} .. {part.hi}")
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
