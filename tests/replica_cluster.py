"""A real primary and a real streaming hot standby, started from the machine's PostgreSQL.

The machine's own server is shared and does not allow replication
connections, so the test starts a primary of its own (``initdb``, whose
default ``pg_hba.conf`` trusts replication from loopback) in a temporary
directory, copies it with ``pg_basebackup -R`` into another, and starts that
copy as a hot standby on another port. Both run as the ``postgres`` OS user
when the tests run as root (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Replication", "replication"]


@dataclass(frozen=True)
class Replication:
    primary: str
    """DSN of the primary's ``taskmon`` database."""
    standby: str
    """DSN of the same database on the standby."""
    root: Path


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if found:
        return Path(found[-1])
    pg_config = shutil.which("pg_config")
    assert pg_config, "no PostgreSQL server binaries on this machine (/usr/lib/postgresql/*/bin)"
    out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_server_user(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


def _run(args: list[str]) -> None:
    out = subprocess.run(_as_server_user(args), capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"{' '.join(args)} failed: {out.stdout}{out.stderr}"


def _wait_ready(bindir: Path, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ready = subprocess.run(
            [str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)], check=False
        )
        if ready.returncode == 0:
            return
        assert time.monotonic() < deadline, f"PostgreSQL on port {port} did not start"
        time.sleep(0.1)


@contextlib.contextmanager
def replication() -> Iterator[Replication]:
    """Start a primary with a ``taskmon`` database and a streaming standby of it; stop both."""
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="taskmon-replica-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    primary_dir, standby_dir = root / "primary", root / "standby"
    primary_port, standby_port = _free_port(), _free_port()
    started: list[Path] = []

    def start(data: Path, port: int) -> None:
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", f"{data}.log", "-o", options,
              "-w", "-t", "60", "start"])  # fmt: skip
        started.append(data)
        _wait_ready(bindir, port)

    try:
        _run([str(bindir / "initdb"), "-D", str(primary_dir), "-U", "postgres",
              "--auth=trust", "--no-sync"])  # fmt: skip
        start(primary_dir, primary_port)
        _run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(primary_port),
              "-U", "postgres", "taskmon"])  # fmt: skip
        _run([str(bindir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary_port),
              "-U", "postgres", "-D", str(standby_dir), "-R", "-X", "stream",
              "-c", "fast", "--no-sync"])  # fmt: skip
        start(standby_dir, standby_port)
        yield Replication(
            primary=f"postgresql://postgres@127.0.0.1:{primary_port}/taskmon",
            standby=f"postgresql://postgres@127.0.0.1:{standby_port}/taskmon",
            root=root,
        )
    finally:
        for data in reversed(started):
            subprocess.run(
                _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                 "-w", "stop"]),
                capture_output=True, check=False,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
