"""Connections for the front ends, and what they say about a database.

A command that reads or writes through the application layer opens its
connection here: the store decides how taskmon talks to PostgreSQL
(:mod:`taskmon.store.db`), the front ends only ask for one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from taskmon.store.db import CONNECTION_ERRORS, connect, connect_without_timeout, redact_dsn

__all__ = ["CONNECTION_ERRORS", "connection", "redact_dsn"]


@asynccontextmanager
async def connection(dsn: str, *, long: bool = False) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to `dsn`, closed on exit.

    Args:
        dsn: the database.
        long: no statement timeout (migrations, index builds, a rollup rebuild).
    """
    conn = await (connect_without_timeout(dsn) if long else connect(dsn))
    try:
        yield conn
    finally:
        await conn.close()
