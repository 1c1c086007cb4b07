"""Lost attempts: still ``running`` past twice their timeout (else a threshold), worker gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import helpers
import pytest
from helpers import app_client, wait_for

from taskmon.bus.postgres import CHANNEL, unpack_payload
from taskmon.domain.filters import TaskFilter
from taskmon.store.db import connect
from taskmon.store.history import fetch_history
from taskmon.store.schema import AttemptRow
from taskmon.store.stats import fetch_stats
from taskmon.worker.cleanup import mark_lost

_INSERT = """
INSERT INTO task_execution_logs
    (task_id, attempt, task_name, status, worker, timeout_s, params, started_at, created_at)
VALUES ($1, 0, $2, $3, 'host-1:4242', $4, '{"args": [1]}'::jsonb,
        now() - make_interval(secs => $5), now() - make_interval(secs => $5))
"""


class Listener:
    """Events received on the NOTIFY channel by a connection of its own."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.conn: asyncpg.Connection[Any] | None = None
        self.fences: list[int] = []

    def on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        assert isinstance(payload, str)
        for item in unpack_payload(payload):
            if "fence" in item:
                self.fences.append(item["fence"])
            else:
                self.events.append(item)

    async def fence(self, db: asyncpg.Connection[Any]) -> None:
        """Wait until everything committed before now has been received.

        PostgreSQL delivers notifications in commit order, so a fence notified
        now arrives after every event committed before it: the test waits for
        that, not for a while in which late events "should" have come.
        """
        n = len(self.fences) + 1
        await db.execute("SELECT pg_notify($1, $2)", CHANNEL, json.dumps({"fence": n}))
        await wait_for(lambda: n in self.fences, what=f"fence {n} on {CHANNEL}")


@pytest.fixture
async def listener(dsn: str) -> AsyncIterator[Listener]:
    found = Listener()
    conn = await connect(dsn)
    await conn.add_listener(CHANNEL, found.on_notify)
    yield found
    await conn.close()


async def test_mark_lost_stores_lost_and_publishes_one_event_per_row(
    db: asyncpg.Connection[Any], listener: Listener
) -> None:
    # given running attempts on both sides of their thresholds, and a finished one
    rows = {
        "timed-out": ("tests:a", "running", 1.0, 5.0),  # 5 s > 2 x 1 s: lost
        "in-time": ("tests:a", "running", 100.0, 5.0),  # 5 s < 2 x 100 s
        "stale": ("tests:b", "running", None, 7200.0),  # 2 h > 1 h default
        "fresh": ("tests:b", "running", None, 600.0),  # 10 min < 1 h
        "done": ("tests:b", "success", None, 7200.0),
    }
    for task_id, (name, status, timeout_s, age) in rows.items():
        await db.execute(_INSERT, task_id, name, status, timeout_s, age)

    # when they are marked, one row per transaction
    marked = await mark_lost(db, batch_size=1)

    # then exactly the stale running rows are stored as lost, unfinished
    assert marked == 2
    stored = {
        r["task_id"]: r
        for r in await db.fetch(
            "SELECT task_id, status, error_type, error_message, finished_at"
            " FROM task_execution_logs"
        )
    }
    assert {k: r["status"] for k, r in stored.items()} == {
        "timed-out": "lost",
        "in-time": "running",
        "stale": "lost",
        "fresh": "running",
        "done": "success",
    }
    assert stored["timed-out"]["error_type"] == "Lost"
    assert stored["timed-out"]["error_message"] == (
        "no outcome recorded within 2×timeout (2s); the worker probably died"
    )
    assert stored["stale"]["error_message"] == (
        "no outcome recorded within 3600s; the worker probably died"
    )
    assert stored["stale"]["finished_at"] is None

    # and each was announced as a failed attempt with status lost and its own seq
    events = await wait_for(lambda: len(listener.events) >= 2 and listener.events)
    assert sorted(e["data"]["task_id"] for e in events) == ["stale", "timed-out"]
    assert {(e["type"], e["status"]) for e in events} == {("task_failed", "lost")}
    assert events[0]["data"]["error_type"] == "Lost"
    assert events[0]["data"]["params"] == {"args": [1]}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 2 and min(seqs) > 0

    # and the rollups count them as lost from now on
    counted = await db.fetchval(
        "SELECT coalesce(sum(n), 0) FROM task_rollup_hour WHERE status = 'lost'"
    )
    assert counted == 2

    # and a second run finds nothing more to do
    assert await mark_lost(db) == 0
    await listener.fence(db)
    assert len(listener.events) == 2


async def test_mark_lost_honours_the_threshold(db: asyncpg.Connection[Any]) -> None:
    # given a running attempt without a timeout, 10 minutes old
    await db.execute(_INSERT, "t", "tests:a", "running", None, 600.0)

    # when the threshold is longer, then shorter than its age
    kept = await mark_lost(db, lost_after_s=3600)
    marked = await mark_lost(db, lost_after_s=300)

    # then only the second run marks it
    assert (kept, marked) == (0, 1)
    assert await db.fetchval("SELECT error_message FROM task_execution_logs") == (
        "no outcome recorded within 300s; the worker probably died"
    )


# -- a real worker killed mid-task --------------------------------------------


@pytest.fixture
def worker_env(dsn: str, redis_url: str) -> dict[str, str]:
    return helpers.worker_env(dsn, redis_url)


@pytest.fixture
def worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskiq", "worker", "lost_worker_app:broker", "--workers", "1"],
        env=worker_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the test can kill all of it
    )
    yield proc
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()


@pytest.fixture
async def client(worker_env: dict[str, str]) -> AsyncIterator[Any]:
    async with app_client("lost_worker_app", worker_env) as app:
        yield app


@pytest.mark.slow
async def test_attempt_of_a_killed_worker_becomes_lost(
    worker: subprocess.Popen[bytes],
    client: Any,
    db: asyncpg.Connection[Any],
    listener: Listener,
) -> None:
    # given a task running in a real worker process
    task = await client.hang.kiq()
    row = await wait_for(
        lambda: db.fetchrow(
            "SELECT status, timeout_s, worker FROM task_execution_logs WHERE task_id = $1",
            task.task_id,
        ),
        timeout=60,
        interval=0.1,
    )
    assert (row["status"], row["timeout_s"]) == ("running", client.TIMEOUT_S)

    # when the worker's whole process group is killed mid-task
    os.killpg(worker.pid, signal.SIGKILL)
    await asyncio.to_thread(worker.wait, 30)

    # then history shows the attempt as lost once 2 x timeout has passed,
    # although the table still says running (no cleanup has run)
    lost = TaskFilter(statuses=frozenset({"lost"}))

    async def shown_lost() -> list[AttemptRow]:
        return (await fetch_history(db, lost)).rows

    [shown] = await wait_for(shown_lost, timeout=30, interval=0.2)
    assert (shown["task_id"], shown["status"]) == (task.task_id, "lost")
    stored = await db.fetchval(
        "SELECT status FROM task_execution_logs WHERE task_id = $1", task.task_id
    )
    assert stored == "running"
    stats = await fetch_stats(db, TaskFilter())
    assert (stats.lost, stats.running) == (1, 0)

    # and marking lost stores it and announces it
    assert await mark_lost(db) == 1
    stored = await db.fetchval(
        "SELECT status FROM task_execution_logs WHERE task_id = $1", task.task_id
    )
    assert stored == "lost"
    announced = await wait_for(lambda: [e for e in listener.events if e["status"] == "lost"])
    assert [(e["data"]["task_id"], e["type"]) for e in announced] == [(task.task_id, "task_failed")]
    assert announced[0]["data"]["worker"] == row["worker"]


async def test_an_outcome_arriving_after_mark_lost_replaces_the_lost_error(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    from datetime import UTC, datetime, timedelta

    from taskmon.domain.events import AttemptRecord, Status
    from taskmon.worker.recorder import Recorder

    # given an attempt that was marked lost while it was in fact still running
    started = datetime.now(UTC) - timedelta(hours=2)
    base: dict[str, Any] = dict(task_id="slow-1", attempt=0, task_name="app:slow", worker="w:1")
    recorder = Recorder(dsn, flush_interval=0.01)
    await recorder.start(wait_connected=5)
    recorder.submit(AttemptRecord(**base, status=Status.RUNNING, started_at=started))
    await recorder.flush()
    assert await mark_lost(db, lost_after_s=60) == 1

    # when its real outcome arrives
    finished = datetime.now(UTC)
    recorder.submit(
        AttemptRecord(
            **base,
            status=Status.SUCCESS,
            started_at=started,
            finished_at=finished,
            duration_ms=7_200_000.0,
        )
    )
    await recorder.flush()
    await recorder.stop()

    # then the row tells the truth: success, and no "no outcome recorded" error
    row = await db.fetchrow("SELECT * FROM task_execution_logs WHERE task_id = 'slow-1'")
    assert row is not None
    assert (row["status"], row["error_type"], row["error_message"]) == ("success", None, None)
    assert row["duration_ms"] == 7_200_000.0


async def test_detail_and_history_agree_on_lost_with_a_short_lost_after(
    db: asyncpg.Connection[Any], dsn: str
) -> None:
    """The detail screen's attempts use the same threshold as the history page."""
    from taskmon.tui.sources import PgDataSource

    # given an attempt without a timeout, running for 10 minutes
    await db.execute(_INSERT, "ten-minutes", "tests:a", "running", None, 600.0)
    source = PgDataSource(dsn, lost_after_s=300.0)  # `--lost-after 5m`
    try:
        # when the history and the task's attempts are read with a 5 min threshold
        page = await source.history(TaskFilter())
        attempts = await source.attempts("ten-minutes")
        by_key = await source.attempts_by_key([("ten-minutes", 0)])
    finally:
        await source.close()

    # then all three say lost
    assert [r["status"] for r in page.rows] == ["lost"]
    assert [r["status"] for r in attempts] == ["lost"]
    assert [r["status"] for r in by_key] == ["lost"]
