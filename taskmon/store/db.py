"""Connections: one place that knows how taskmon talks to PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

__all__ = ["CONNECTION_ERRORS", "connect", "redact_dsn"]

# What "the database is unreachable or went away" looks like; anything else
# raised by a statement is a problem with the statement or its data.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    # a backend terminated under a live connection leaves its protocol confused
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InvalidCatalogNameError,
)


async def _init(conn: asyncpg.Connection[Any]) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


async def connect(dsn: str, *, timeout: float = 10.0, **kwargs: Any) -> asyncpg.Connection[Any]:
    """Open a connection with JSON codecs installed."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        dsn, timeout=timeout, server_settings={"application_name": "taskmon"}, **kwargs
    )
    await _init(conn)
    return conn


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for status lines and logs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable dsn>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)
