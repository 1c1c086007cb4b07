"""`taskmon demo --headless`: the one-command demo, end to end, on its own embedded server."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    # every attempt announces its start and its outcome, and none is missed
    assert events == 2 * attempts
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
    tmp_path: Path, sig: signal.Signals
) -> None:
    # given a demo running on its own PostgreSQL under TMPDIR (an SSH session, say)
    env = unconfigured_env(TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskmon", "demo", "--headless", "--duration", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("taskmon-demo-*/pg/postmaster.pid")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        [root] = tmp_path.glob("taskmon-demo-*")

        # when the session goes away
        time.sleep(2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)

        # then it ends as after its duration: a summary, the server stopped and deleted
        assert proc.returncode == 0, err
        assert "attempts recorded:" in out
        assert not root.exists()
        commands = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
        assert not [c for c in commands if str(root) in c]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for left in tmp_path.glob("taskmon-demo-*"):  # a failed run must not leave a server
            stop_embedded(left / "pg")
