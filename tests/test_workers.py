"""Worker heartbeats: alive, stale and stopped workers, and attempts lost within seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import helpers
import pytest
from helpers import Calls, app_client, record, wait_for

from taskmon.bus.postgres import CHANNEL, PgNotifyPublisher, unpack_payload
from taskmon.domain.events import Status
from taskmon.domain.filters import TaskFilter
from taskmon.store.db import connect
from taskmon.store.history import fetch_history
from taskmon.store.metrics import fetch_metrics
from taskmon.store.stats import fetch_stats
from taskmon.store.workers import WorkerRow, fetch_workers
from taskmon.worker.cleanup import mark_lost
from taskmon.worker.recorder import Recorder, WorkerIdentity

HEARTBEAT_S = 0.3


class Listener:
    """Events received on the NOTIFY channel by a connection of its own."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        assert isinstance(payload, str)
        self.events += unpack_payload(payload)


@pytest.fixture
async def listener(dsn: str) -> AsyncIterator[Listener]:
    found = Listener()
    conn = await connect(dsn)
    await conn.add_listener(CHANNEL, found.on_notify)
    yield found
    await conn.close()


@pytest.fixture
def worker_env(dsn: str, redis_url: str) -> dict[str, str]:
    return helpers.worker_env(dsn, redis_url, TEST_HEARTBEAT=str(HEARTBEAT_S))


@pytest.fixture
def worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskiq", "worker", "heartbeat_app:broker", "--workers", "1"],
        env=worker_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield proc
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()


@pytest.fixture
async def client(worker_env: dict[str, str]) -> AsyncIterator[Any]:
    async with app_client("heartbeat_app", worker_env) as app:
        yield app


async def _workers(db: asyncpg.Connection[Any]) -> list[WorkerRow]:
    return await fetch_workers(db)


@pytest.mark.slow
async def test_a_killed_worker_is_stale_and_its_attempt_lost_within_seconds(
    worker: subprocess.Popen[bytes],
    client: Any,
    db: asyncpg.Connection[Any],
    dsn: str,
    listener: Listener,
) -> None:
    # given a task without a timeout running in a real worker that beats
    task = await client.sleep_forever.kiq()
    row = await wait_for(
        lambda: db.fetchrow(
            "SELECT status, worker FROM task_execution_logs WHERE task_id = $1", task.task_id
        ),
        timeout=60,
        interval=0.1,
    )
    assert row["status"] == "running"
    [alive] = await wait_for(lambda: _workers(db))
    assert (alive["name"], alive["state"]) == (row["worker"], "alive")
    assert alive["queue"] == client.broker.queue_name
    assert alive["broker"] == "taskiq_redis.redis_broker.ListQueueBroker"
    assert alive["taskmon_version"] and alive["taskiq_version"]
    running = await wait_for(
        lambda: db.fetchval("SELECT running FROM taskmon_workers WHERE running > 0")
    )
    assert running == 1

    # when its process group is killed
    os.killpg(worker.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    await asyncio.to_thread(worker.wait, 30)

    # then within seconds (not an hour) history and stats show the attempt lost
    lost = TaskFilter(statuses=frozenset({"lost"}))

    async def shown_lost() -> list[Any]:
        return (await fetch_history(db, lost)).rows

    [shown] = await wait_for(shown_lost, timeout=30, interval=0.1)
    assert time.monotonic() - killed_at < 30
    assert (shown["task_id"], shown["status"]) == (task.task_id, "lost")
    stats = await fetch_stats(db, TaskFilter())
    assert (stats.lost, stats.running) == (1, 0)
    metrics = await fetch_metrics(db, [100.0])
    assert (metrics.lost, metrics.running) == (
        {"tests:sleep_forever": 1},
        {"tests:sleep_forever": 0},
    )
    running_only = TaskFilter(statuses=frozenset({"running"}))
    assert (await fetch_history(db, running_only)).rows == []
    # and its worker is stale
    [stale] = await _workers(db)
    assert stale["state"] == "stale"

    # and another worker's writer stores it as lost and announces it with its heartbeat
    other = Recorder(
        dsn,
        publisher=PgNotifyPublisher(),
        worker=WorkerIdentity("elsewhere:1"),
        heartbeat_interval=0.1,
    )
    await other.start(wait_connected=5)
    try:
        announced = await wait_for(lambda: [e for e in listener.events if e["status"] == "lost"])
    finally:
        await other.stop()
    assert [(e["data"]["task_id"], e["type"]) for e in announced] == [(task.task_id, "task_failed")]
    stored = await db.fetchrow(
        "SELECT status, error_message FROM task_execution_logs WHERE task_id = $1", task.task_id
    )
    assert stored is not None
    assert stored["status"] == "lost"
    assert "stopped sending heartbeats" in stored["error_message"]
    assert await mark_lost(db) == 0


@pytest.mark.slow
async def test_a_cleanly_stopped_worker_is_stopped_with_no_lost_attempts(
    worker: subprocess.Popen[bytes], client: Any, db: asyncpg.Connection[Any]
) -> None:
    # given a worker that ran some tasks
    for i in range(5):
        await client.double.kiq(i)
    await wait_for(
        lambda: db.fetchval("SELECT processed FROM taskmon_workers WHERE processed = 5"),
        timeout=60,
    )

    # when it is stopped the ordinary way
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 30) == 0

    # then its row says stopped, with its counts, and nothing of it is lost
    [row] = await _workers(db)
    assert (row["state"], row["processed"], row["failed"], row["running"]) == ("stopped", 5, 0, 0)
    assert row["stopped_at"] is not None
    await asyncio.sleep(HEARTBEAT_S * 4)  # well past the stale threshold: still stopped
    [row] = await _workers(db)
    assert row["state"] == "stopped"
    stats = await fetch_stats(db, TaskFilter())
    assert (stats.lost, stats.by_status.get("success")) == (0, 5)


async def test_a_failing_heartbeat_loses_no_record(dsn: str, db: asyncpg.Connection[Any]) -> None:
    # given a database whose workers table is gone (the heartbeat statement fails)
    await db.execute("DROP TABLE taskmon_workers CASCADE")
    rec = Recorder(dsn, flush_interval=0.01, worker=WorkerIdentity("h:1"), heartbeat_interval=0.05)
    await rec.start(wait_connected=5)
    try:
        # when attempts are recorded across many failed heartbeats
        for i in range(20):
            rec.submit(record(i, Status.SUCCESS))
            await asyncio.sleep(0.01)  # attempts spread over heartbeat intervals (0.05 s)
        await rec.flush()
    finally:
        await rec.stop()

    # then every record was written and the writer never broke
    assert await db.fetchval("SELECT count(*) FROM task_execution_logs") == 20
    assert (rec.stats.heartbeats, rec.stats.unwritten, rec.stats.outages) == (0, 0, 0)


async def test_heartbeat_counts_what_the_writer_wrote(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    rec = Recorder(
        dsn,
        flush_interval=0.01,
        worker=WorkerIdentity("h:2", queue="q", running=lambda: 3),
        heartbeat_interval=0.05,
    )
    await rec.start(wait_connected=5)
    rec.submit(record(1, Status.SUCCESS))
    rec.submit(record(2, Status.FAILED))
    rec.submit(record(3, Status.RUNNING))
    await rec.flush()

    async def counted() -> Any:
        return await db.fetchrow(
            "SELECT running, processed, failed FROM taskmon_workers WHERE processed = 2"
        )

    row = await wait_for(counted)
    assert tuple(row) == (3, 2, 1)
    await rec.stop()
    [stopped] = await fetch_workers(db)
    assert (stopped["name"], stopped["state"], stopped["running"]) == ("h:2", "stopped", 0)


async def test_retention_removes_workers_gone_for_a_week(db: asyncpg.Connection[Any]) -> None:
    from datetime import timedelta

    from taskmon.worker.cleanup import cleanup

    # given a worker stopped 8 days ago, one stale for 8 days, one stopped yesterday
    for name, days, stopped in (("old:1", 8, True), ("dead:2", 8, False), ("recent:3", 1, True)):
        await db.execute(
            "INSERT INTO taskmon_workers (name, host, pid, heartbeat_s, started_at, last_seen,"
            " stopped_at) VALUES ($1, 'h', 1, 5, now() - make_interval(days => $2),"
            " now() - make_interval(days => $2), CASE WHEN $3 THEN now() END)",
            name,
            days,
            stopped,
        )

    # when retention runs
    result = await cleanup(db, older_than=timedelta(days=30))

    # then only the rows not seen for a week are gone
    assert result.workers_deleted == 2
    assert [w["name"] for w in await fetch_workers(db)] == ["recent:3"]


async def test_workers_cli_json_and_table(dsn: str, db: asyncpg.Connection[Any]) -> None:
    from taskmon.store.workers import WorkerBeat, beat

    # given an alive, a stale and a stopped worker
    for name, stopped in (("alive:1", False), ("stale:2", False), ("stopped:3", True)):
        host, pid = name.split(":")
        await beat(
            db,
            WorkerBeat(name, host, int(pid), "b.Broker", "q", "0.1.0", "0.11", 5.0, 1, 10, 2),
        )
        if stopped:
            await beat(
                db,
                WorkerBeat(
                    name, host, int(pid), "b.Broker", "q", "0.1.0", "0.11", 5.0, 0, 10, 2, True
                ),
            )
    await db.execute(
        "UPDATE taskmon_workers SET last_seen = now() - interval '1 minute' WHERE name = 'stale:2'"
    )
    env = helpers.unconfigured_env(TASKMON_DSN=dsn, NO_COLOR="1", COLUMNS="120")

    # when listed as JSON
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskmon", "workers", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # then each has its state as a word, alive first, with its counts
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["name"], r["state"]) for r in rows] == [
        ("alive:1", "alive"),
        ("stale:2", "stale"),
        ("stopped:3", "stopped"),
    ]
    assert (rows[0]["running"], rows[0]["processed"], rows[0]["failed"]) == (1, 10, 2)
    assert rows[1]["last_seen_s"] >= 60
    assert set(rows[0]) >= {"last_seen", "started_at", "per_minute", "queue", "heartbeat_s"}

    # and as a table, each state is a symbol and a word, without colour
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskmon", "workers"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "● alive" in out.stdout and "⚠ stale" in out.stdout and "■ stopped" in out.stdout
    assert "\x1b[" not in out.stdout
    assert "3 workers: 1 alive, 1 stale, 1 stopped" in out.stdout


async def test_heartbeats_through_a_database_outage_lose_no_record(
    dsn: str, db: asyncpg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from test_outage import Proxy

    proxy = Proxy(dsn)
    await proxy.start()
    rec = Recorder(
        proxy.dsn, flush_interval=0.01, worker=WorkerIdentity("h:9"), heartbeat_interval=0.05
    )
    await rec.start(wait_connected=5)
    try:
        await wait_for(lambda: rec.stats.heartbeats >= 2)

        # when the database goes away while attempts arrive and heartbeats fall due
        caplog.set_level(logging.WARNING, logger="taskmon.worker.recorder")
        beats_due = Calls(rec, "_beat")
        await proxy.cut()
        for i in range(30):
            rec.submit(record(i, Status.SUCCESS))
        # many heartbeats fall due, and fail, here
        await wait_for(lambda: beats_due.calls >= 3, what="three heartbeats due in the outage")
        beats = rec.stats.heartbeats
        assert await db.fetchval("SELECT count(*) FROM task_execution_logs") == 0

        # then once it is back every record arrives and the heartbeat goes on
        await proxy.start()
        await rec.flush(timeout=30)
        await wait_for(lambda: rec.stats.heartbeats > beats, timeout=30)
    finally:
        await rec.stop()
        await proxy.cut()
    assert await db.fetchval("SELECT count(*) FROM task_execution_logs") == 30
    assert (rec.stats.dropped, rec.stats.unwritten) == (0, 0)
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    [row] = await fetch_workers(db)
    assert (row["name"], row["state"], row["processed"]) == ("h:9", "stopped", 30)
