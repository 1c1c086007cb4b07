"""`taskmon demo --headless`: the one-command demo, end to end, on its own embedded server."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_headless_demo_records_tasks_and_delivers_every_event() -> None:
    # given no configuration at all (the demo brings its own PostgreSQL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMON_")}

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
