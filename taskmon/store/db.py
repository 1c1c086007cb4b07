"""Connections: one place that knows how taskmon talks to PostgreSQL."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, unquote

import asyncpg

__all__ = [
    "CONNECTION_ERRORS",
    "DsnError",
    "check_dsn",
    "connect",
    "connect_without_timeout",
    "redact_dsn",
]

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


class DsnError(ValueError):
    """A DSN that cannot name a PostgreSQL server: bad input, not an outage.

    The message is one line that names what is wrong and shows the DSN
    without its password. Retrying cannot help, so a writer that meets it
    says so once instead of retrying.
    """


_SCHEMES = ("postgresql", "postgres")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def check_dsn(dsn: str) -> str:
    """Check what asyncpg would otherwise reject with a raw Python error (or a traceback).

    Checks the scheme, every ``host:port`` of the host list (``[ipv6]:port``
    included) and the ``host``, ``port`` and ``sslmode`` query parameters. No I/O: a DSN
    that passes may still name a server that is down.

    Args:
        dsn: a ``postgresql://`` URL.

    Returns:
        `dsn`, unchanged.

    Raises:
        DsnError: the DSN is malformed; the message names the part that is wrong.
    """
    if not isinstance(dsn, str) or not dsn.strip():
        raise DsnError("the DSN is empty (use postgresql://user@host:5432/database)")
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise DsnError(
            f"bad DSN {_shown(dsn)}: it must start with postgresql:// "
            "(e.g. postgresql://user@host:5432/database)"
        )
    # asyncpg reads user@host1:port1,host2:port2 up to the path or the query
    netloc = re.split(r"[/?]", rest, maxsplit=1)[0]
    hostlist = netloc.rpartition("@")[2]
    try:
        for spec in hostlist.split(","):
            _check_hostspec(spec)
        query = rest.partition("?")[2]
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "port":
                for port in value.split(","):
                    _check_port(port)
            elif key == "host":
                for spec in value.split(","):
                    _check_hostspec(spec)
            elif key == "sslmode" and value not in _SSLMODES:
                raise DsnError(f"sslmode {value!r} is not one of {', '.join(_SSLMODES)}")
    except DsnError as exc:
        raise DsnError(f"bad DSN {_shown(dsn)}: {exc}") from None
    return dsn


def _check_hostspec(spec: str) -> None:
    if not spec or spec.startswith("/"):  # the default host, or a Unix socket directory
        return
    if spec.startswith("["):
        close = spec.find("]")
        if close < 0:
            raise DsnError(f"the IPv6 address in {spec!r} has no closing ']'")
        if close == 1:
            raise DsnError(f"{spec!r} has an empty IPv6 address")
        after = spec[close + 1 :]
        if after and not after.startswith(":"):
            raise DsnError(f"{after!r} after the IPv6 address {spec[: close + 1]!r}")
        if after:
            _check_port(after[1:])
        return
    host, colon, port = spec.partition(":")
    if colon:
        _check_port(port, host)


def _check_port(text: str, host: str = "") -> None:
    port = unquote(text)
    where = f" of {unquote(host)!r}" if host else ""
    if not port.isascii() or not port.isdigit():
        raise DsnError(f"port {port!r}{where} is not a number (1-65535)")
    if not 1 <= int(port) <= 65535:
        raise DsnError(f"port {port}{where} is out of range (1-65535)")


def _shown(dsn: str) -> str:
    """The DSN for an error message: without its password, and never very long."""
    text = redact_dsn(dsn)
    if text == _UNPARSEABLE:
        # urllib could not split it: hide whatever sits between ':' and '@'
        text = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", dsn)
    return repr(text if len(text) <= 200 else text[:199] + "…")


async def _init(conn: asyncpg.Connection[Any]) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
        )


async def connect(dsn: str, *, timeout: float = 10.0, **kwargs: Any) -> asyncpg.Connection[Any]:
    """Open a connection with JSON codecs installed.

    Raises:
        DsnError: `dsn` is malformed (checked before any I/O; asyncpg's own
            DSN errors are turned into it as well).
        OSError, asyncpg.PostgresError: as asyncpg raises them (see
            :data:`CONNECTION_ERRORS`).
    """
    check_dsn(dsn)
    try:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            dsn, timeout=timeout, server_settings={"application_name": "taskmon"}, **kwargs
        )
    except asyncpg.exceptions.ClientConfigurationError as exc:
        # asyncpg's word for a DSN (or option) it cannot use: no retry can help
        raise DsnError(f"bad DSN {_shown(dsn)}: {' '.join(str(exc).split())}") from None
    except ValueError as exc:
        if isinstance(exc, asyncpg.PostgresError):
            raise
        # asyncpg parses the DSN before any I/O; its plain ValueErrors are about the DSN
        raise DsnError(f"bad DSN {_shown(dsn)}: {' '.join(str(exc).split())}") from None
    await _init(conn)
    return conn


async def connect_without_timeout(dsn: str) -> asyncpg.Connection[Any]:
    """A connection for long maintenance (``taskmon db``): no statement timeout anywhere.

    Neither asyncpg's command timeout nor the server's ``statement_timeout``
    (which a role or database setting may impose) cuts a long migration or
    index build short.
    """
    conn = await connect(dsn, command_timeout=None)
    try:
        await conn.execute("SET statement_timeout = 0")
    except BaseException:
        conn.terminate()
        raise
    return conn


_UNPARSEABLE = "<unparseable dsn>"


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for status lines and logs."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(dsn)
    except ValueError:
        return _UNPARSEABLE
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)
