"""The middleware's added cost per task in instructions, a figure noise does not move.

CPU time on a shared machine moves with whatever else runs (the same no-op task
cost 39 µs one day and 105 µs another here). Instructions executed do not:
each configuration runs under ``valgrind --tool=callgrind`` twice, with N and
3N no-op tasks on an ``InMemoryBroker`` loop shaped like a worker's (the writer
runs meanwhile and everything is written before the run ends), and the
difference divided by 2N is the per-task count, start-up excluded. Only this
process is counted: PostgreSQL's own work is not.

    python bench/overhead_instructions.py [--tasks 1000] [--floor]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from common import SERVER_DSN, callgrind_total, child_env, scratch_database

HERE = Path(__file__).resolve().parent

CHILD = """
import asyncio, sys
sys.path.insert(0, {here!r})
from overhead import _loop_run
asyncio.run(_loop_run(int(sys.argv[1]), sys.argv[2] or None, sys.argv[3] or None))
"""


def _instructions(n: int, dsn: str | None, floor: str | None = None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        child = CHILD.format(here=str(HERE))
        cmd = [sys.executable, "-c", child, str(n), dsn or "", floor or ""]
        return callgrind_total(cmd, child_env(), Path(tmp) / "callgrind.out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also the empty and capture-only middlewares of overhead.py --floor",
    )
    parser.add_argument("--dsn", default=SERVER_DSN, help="the server (TASKMON_BENCH_DSN)")
    args = parser.parse_args()
    from overhead import DB, FLOORS

    # migrated here, not inside a measured run
    dsn = asyncio.run(scratch_database(DB, server=args.dsn))
    n = args.tasks
    per_task: dict[str, float] = {}
    runs: list[tuple[str, str | None, str | None]] = [
        ("bare", None, None),
        ("monitored", dsn, None),
    ]
    if args.floor:
        runs += [(floor, None, floor) for floor in FLOORS]
    for kind, target, floor in runs:
        small, large = _instructions(n, target, floor), _instructions(3 * n, target, floor)
        per_task[kind] = (large - small) / (2 * n)
    bare = per_task["bare"]
    print(f"instructions per no-op task ({n} and {3 * n} tasks, start-up excluded)")
    print(f"   without the middleware   {bare:12,.0f}")
    print(f"   with the middleware      {per_task['monitored']:12,.0f}")
    for kind in per_task:
        if kind != "bare":
            added = per_task[kind] - bare
            label = "added" if kind == "monitored" else f"added by {kind} (floor)"
            print(f"   {label:24} {added:12,.0f} ({added / bare:.0%} of bare)")


if __name__ == "__main__":
    main()
