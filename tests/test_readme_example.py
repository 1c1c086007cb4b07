"""The README's "Recording your tasks" example, run as written by a real `taskiq worker`.

The broker module is the README's own code block (only its Redis URL and DSN
point at the test services), so a README change that breaks it fails here.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
from helpers import wait_for

README = Path(__file__).parent.parent / "README.md"
README_REDIS_URL = '"redis://localhost:6379"'
README_DSN = '"postgresql://taskmon@db/app"'
IDLE_SECONDS = 7.0  # longer than redis-py 8's default socket_timeout (5 s)
STOP_SECONDS = 15.0  # SIGTERM to exit, idle: the README promises about 3 s


def readme_example() -> str:
    """The first Python block under "## Recording your tasks"."""
    section = README.read_text().split("## Recording your tasks", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no Python example under 'Recording your tasks'"
    return match.group(1)


@pytest.fixture
def app_dir(tmp_path: Path, dsn: str, redis_url: str) -> Iterator[Path]:
    code = readme_example()
    assert README_REDIS_URL in code and README_DSN in code
    code = code.replace(README_REDIS_URL, repr(redis_url)).replace(README_DSN, repr(dsn))
    queue = f"readme-{uuid.uuid4().hex[:8]}"
    code = code.replace(repr(redis_url), f"{redis_url!r}, queue_name={queue!r}", 1)
    code += """

@broker.task(task_name="readme:add")
async def add(a: int, b: int) -> int:
    return a + b
"""
    (tmp_path / "readme_app.py").write_text(code)
    yield tmp_path


@pytest.fixture
def worker(app_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (app_dir / "worker.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMON_")}
    env["TASKMON_CONFIG"] = os.devnull  # empty: no settings (a named missing file is an error)
    env["PYTHONPATH"] = os.pathsep.join([str(app_dir), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskiq", "worker", "readme_app:broker", "--workers", "2"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=app_dir,
    )  # fmt: skip
    yield proc
    if proc.poll() is None:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture
async def client(app_dir: Path) -> AsyncIterator[Any]:
    sys.path.insert(0, str(app_dir))
    try:
        sys.modules.pop("readme_app", None)
        app = importlib.import_module("readme_app")
        await app.broker.startup()
        try:
            yield app
        finally:
            await app.broker.shutdown()
    finally:
        sys.modules.pop("readme_app", None)
        sys.path.remove(str(app_dir))


@pytest.mark.slow
async def test_the_readme_example_survives_idling_records_and_stops_on_sigterm(
    worker: subprocess.Popen[bytes], client: Any, db: asyncpg.Connection[Any], app_dir: Path
) -> None:
    # given the README's worker, two processes, left idle longer than redis-py's time-out
    await wait_for(lambda: len(psutil.Process(worker.pid).children()) == 2, timeout=60)
    children = {p.pid for p in psutil.Process(worker.pid).children()}
    log = app_dir / "worker.log"
    await wait_for(lambda: log.read_text().count("Listening started") == 2, timeout=60)
    idle_until = time.monotonic() + IDLE_SECONDS
    while time.monotonic() < idle_until:  # idling is the condition under test
        assert worker.poll() is None, log.read_text()
        await asyncio.sleep(0.2)
    assert {p.pid for p in psutil.Process(worker.pid).children()} == children, log.read_text()
    assert "Error" not in log.read_text()

    # when a task is kicked
    task = await client.add.kiq(2, 3)

    # then a worker runs it and MonitoringMiddleware records it in PostgreSQL
    row = await wait_for(
        lambda: db.fetchrow(
            "SELECT * FROM task_execution_logs WHERE task_id = $1 AND status = 'success'",
            task.task_id,
        ),
        timeout=30,
        interval=0.1,
    )
    assert row["task_name"] == "readme:add"
    assert int(row["worker"].rsplit(":", 1)[1]) in children

    # and SIGTERM stops the idle worker promptly
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait, STOP_SECONDS)
    assert time.monotonic() - started < STOP_SECONDS
    assert not [p for p in children if _running(p)], log.read_text()
    assert "Error" not in log.read_text()


def _running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
