"""A real `taskiq worker --workers 2` on a Redis ListQueueBroker, rows checked in PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import helpers
import psutil
import pytest
from helpers import app_client, wait_for


@pytest.fixture
def worker_env(dsn: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    return helpers.worker_env(dsn, redis_url, TEST_STATE_DIR=str(tmp_path))


@pytest.fixture
def worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taskiq",
            "worker",
            "worker_app:broker",
            "--workers",
            "2",
            "--shutdown-timeout",
            "6",
        ],
        env=worker_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


@pytest.fixture
async def client(worker_env: dict[str, str]) -> AsyncIterator[Any]:
    # the test process is a TaskIQ client of the same app (pre_send stamps the enqueue time)
    async with app_client("worker_app", worker_env) as app:
        yield app


async def _final_rows(db: asyncpg.Connection[Any], expected: int) -> list[asyncpg.Record]:
    async def done() -> list[asyncpg.Record] | None:
        rows = await db.fetch(
            "SELECT * FROM task_execution_logs WHERE status <> 'running' ORDER BY task_name"
        )
        return rows if len(rows) >= expected else None

    rows: list[asyncpg.Record] = await wait_for(done, timeout=60, interval=0.2)
    return rows


@pytest.mark.slow
async def test_worker_processes_record_every_attempt(
    worker: subprocess.Popen[bytes], client: Any, db: asyncpg.Connection[Any]
) -> None:
    # given a running worker with two processes
    app = client

    # when tasks are kicked from this process
    adds = [await app.add.kiq(i, 1) for i in range(20)]
    await app.fail.kiq("bad input")
    flaky = await app.flaky.kiq(f"flaky-{uuid.uuid4().hex}")

    # then every attempt lands, one row each
    rows = await _final_rows(db, 20 + 1 + 3)
    by_name: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_name.setdefault(row["task_name"], []).append(row)
    assert len(by_name["tests:add"]) == 20
    assert {r["task_id"] for r in by_name["tests:add"]} == {t.task_id for t in adds}
    assert all(r["status"] == "success" for r in by_name["tests:add"])
    assert all(r["queue_wait_ms"] is not None for r in rows)
    [failed] = by_name["tests:fail"]
    assert (failed["status"], failed["error_type"], failed["error_message"]) == (
        "failed",
        "ValueError",
        "bad input",
    )
    attempts = sorted(by_name["tests:flaky"], key=lambda r: r["attempt"])
    assert [(r["attempt"], r["status"]) for r in attempts] == [
        (0, "retrying"),
        (1, "retrying"),
        (2, "success"),
    ]
    assert {r["task_id"] for r in attempts} == {flaky.task_id}

    # and the rows were written by the worker's child processes, not by us
    children = {p.pid for p in psutil.Process(worker.pid).children(recursive=True)}
    pids = {int(r["worker"].rsplit(":", 1)[1]) for r in rows}
    assert pids <= children
    assert os.getpid() not in pids


@pytest.mark.slow
async def test_worker_shutdown_drains_buffered_rows(
    worker: subprocess.Popen[bytes], client: Any, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    # given tasks that are running when the worker is asked to stop
    await wait_for(lambda: len(psutil.Process(worker.pid).children()) == 2, timeout=60)
    log = tmp_path / "worker.log"  # the worker fixture's
    await wait_for(
        lambda: log.read_text().count("Listening started") == 2,
        timeout=60,
        what="both worker processes to have started up",
    )
    tasks = [await client.sleep.kiq(0.5) for _ in range(4)]
    await wait_for(lambda: db.fetchval("SELECT count(*) FROM task_execution_logs"), timeout=30)

    # when the worker is stopped gracefully
    worker.send_signal(signal.SIGINT)
    await asyncio.to_thread(worker.wait, 30)

    # then each attempt that ran has its outcome recorded, none left "running"
    rows = await db.fetch("SELECT task_id, status FROM task_execution_logs")
    assert rows, "no attempt was recorded"
    assert {r["task_id"] for r in rows} <= {t.task_id for t in tasks}
    assert {r["status"] for r in rows} == {"success"}
