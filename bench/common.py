"""What the benchmarks in ``bench/`` share: where the servers are, scratch databases, figures.

A bench is run as a script, ``python bench/x.py`` (or ``PYTHONPATH=. python
bench/x.py``): ``bench/`` is then ``sys.path[0]``, and it imports this module
as ``from common import ...``. Importing it also puts the checkout's root on
``sys.path`` (right after ``bench/``), so that both forms measure the
``taskmon`` of this checkout, not another one installed in the environment.

Environment (see ``bench/README.md``):

* ``TASKMON_BENCH_DSN``: a PostgreSQL server where the benches create their
  databases (default ``postgresql://postgres@127.0.0.1:5432/postgres``);
* ``TASKMON_BENCH_REDIS_URL``: a Redis database the benches may flush
  (default ``redis://127.0.0.1:6379/14``).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
"""The checkout the benches belong to."""

if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

SERVER_DSN = os.environ.get("TASKMON_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
"""The PostgreSQL server the benches create their databases on (``TASKMON_BENCH_DSN``)."""

REDIS_URL = os.environ.get("TASKMON_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
"""The Redis database the benches use and flush (``TASKMON_BENCH_REDIS_URL``)."""

T = TypeVar("T")


def with_database(dsn: str, name: str) -> str:
    """`dsn` with its database replaced by `name` (user, host, port and options kept)."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def scratch_database(name: str, *, migrate: bool = True, server: str = SERVER_DSN) -> str:
    """Drop and create database `name` on `server`; its DSN.

    With `migrate`, the schema is brought up to date and the coming days'
    partitions are made, as a recorder leaves a database at its start, so that
    no measured run pays for it. Without, the database is empty (the caller
    migrates it its own way).
    """
    from taskmon.store import migrations, partitions
    from taskmon.store.db import connect

    admin = await connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(server, name)
    if migrate:
        conn = await connect(dsn)
        try:
            await migrations.upgrade(conn)
            await partitions.ensure(conn)
        finally:
            await conn.close()
    return dsn


async def drop_database(name: str, *, server: str = SERVER_DSN) -> None:
    """Drop database `name` on `server` if it exists (its sessions are ended)."""
    from taskmon.store.db import connect

    admin = await connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


_ALIGN_WIDTH = re.compile(r"^(?:.?[<>=^])?([-+ ]?z?#?)0?\d*")


def spread(values: Iterable[float], fmt: str) -> str:
    """``median (min-max)`` of `values`: the median formatted with `fmt`, e.g. ``">9.2f"``.

    The minimum and maximum take `fmt` without its alignment and width, so that a
    column lines up on the medians: ``spread([1, 2, 4], ">6.1f")`` is
    ``"   2.0 (1.0-4.0)"``.
    """
    ordered = list(values)
    mid = statistics.median(ordered)
    bare = _ALIGN_WIDTH.sub(r"\1", fmt, count=1)
    return f"{mid:{fmt}} ({min(ordered):{bare}}-{max(ordered):{bare}})"


def interleaved(kinds: Sequence[T]) -> list[T]:
    """One round of runs in the order A-B-…-B-A.

    On a shared machine a slow spell hits neighbouring runs alike: each kind
    runs once on the way there and once on the way back, so a drift over the
    round costs every kind the same.
    """
    return [*kinds, *reversed(kinds)]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a process a bench starts.

    This one's, without any ``TASKMON_*`` variable (a child is told what it
    needs on its command line or in `extra`, never by the caller's settings),
    with ``PYTHONPATH`` set to the checkout, then `extra` on top.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMON_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def callgrind_total(cmd: Sequence[str], env: Mapping[str, str] | None, out_path: Path) -> int:
    """Instructions executed by `cmd` under ``valgrind --tool=callgrind``.

    `env` is the command's environment (None: this process's); callgrind writes
    its profile to `out_path`. Raises RuntimeError with the end of valgrind's
    output when the command fails or no total is reported.
    """
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_path}", *cmd],
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(proc.stderr[-2000:])
    return int(found.group(1))
