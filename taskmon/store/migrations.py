"""Forward-only schema migrations from the ``sql/`` files shipped in the package.

Each file ``NNNN_name.sql`` is applied once, in order, in one transaction
under an advisory lock, so any number of worker processes may start at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import asyncpg

__all__ = ["Migration", "MigrationStatus", "available", "status", "upgrade"]

# pg_advisory_xact_lock key: "taskmon" in ASCII, so it won't collide by chance
LOCK_KEY = 0x7461736B6D6F6E
_NAME = re.compile(r"^(\d{4})_([\w-]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None


def available() -> list[Migration]:
    """Every migration shipped with this version of taskmon, in order."""
    found = []
    for entry in resources.files("taskmon").joinpath("sql").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    return sorted(found, key=lambda mig: mig.version)


_CREATE = """
CREATE TABLE IF NOT EXISTS taskmon_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def upgrade(conn: asyncpg.Connection[Any]) -> list[Migration]:
    """Apply what is missing; returns the migrations applied now (maybe none)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(_CREATE)
        done = {
            r["version"] for r in await conn.fetch("SELECT version FROM taskmon_schema_migrations")
        }
        applied = []
        for mig in available():
            if mig.version in done:
                continue
            await conn.execute(mig.sql)
            await conn.execute(
                "INSERT INTO taskmon_schema_migrations (version, name) VALUES ($1, $2)",
                mig.version,
                mig.name,
            )
            applied.append(mig)
    return applied


async def status(conn: asyncpg.Connection[Any]) -> list[MigrationStatus]:
    """Every known migration with the time it was applied (None: pending)."""
    exists = await conn.fetchval("SELECT to_regclass('taskmon_schema_migrations') IS NOT NULL")
    rows = (
        await conn.fetch("SELECT version, applied_at FROM taskmon_schema_migrations")
        if exists
        else []
    )
    applied = {r["version"]: r["applied_at"] for r in rows}
    return [MigrationStatus(m.version, m.name, applied.get(m.version)) for m in available()]
