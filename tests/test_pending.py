"""``record_enqueued``: a task sent with no worker to take it is ``pending``, by name.

A real Redis ``ListQueueBroker``, a real ``taskiq worker`` process started late,
rows read in PostgreSQL and through ``taskmon history``; and the writer's rules
for the client's and the worker's states of one attempt, in either order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import helpers
import pytest
from helpers import app_client, wait_for
from test_rollups import insert

from taskmon.config import ConfigError
from taskmon.domain.events import AttemptRecord, Status
from taskmon.server.alerts import Evaluator, parse_alert_config
from taskmon.worker.recorder import Recorder


@pytest.fixture
def env(dsn: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    return helpers.worker_env(
        dsn, redis_url, TEST_STATE_DIR=str(tmp_path), TEST_RECORD_ENQUEUED="1"
    )


@pytest.fixture
async def client(env: dict[str, str]) -> AsyncIterator[Any]:
    async with app_client("worker_app", env) as app:
        yield app


@pytest.fixture
def start_worker(env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker{len(procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskiq", "worker", "worker_app:broker", "--workers", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _history(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "taskmon", "history", "--format", "jsonl", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows: list[dict[str, Any]] = [json.loads(line) for line in out.stdout.splitlines() if line]
    return rows


async def _rows(db: asyncpg.Connection[Any], task_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT * FROM task_execution_logs WHERE task_id = $1 ORDER BY attempt", task_id
    )
    return rows


@pytest.mark.slow
async def test_a_task_sent_with_no_worker_is_pending_then_its_attempt(
    client: Any, start_worker: Any, db: asyncpg.Connection[Any], env: dict[str, str]
) -> None:
    # given no worker running, a task is sent by a client that records what it sends
    sent = await client.add.kiq(2, 3)

    # then it is recorded as pending, by name, with its arguments and no worker
    async def pending() -> list[asyncpg.Record] | None:
        rows = await _rows(db, sent.task_id)
        return rows if rows and rows[0]["status"] == "pending" else None

    [row] = await wait_for(pending, timeout=30, what="the pending row")
    assert (row["task_name"], row["attempt"], row["worker"]) == ("tests:add", 0, None)
    assert row["params"] == {"args": [], "kwargs": {"a": 2, "b": 3}}
    assert row["enqueued_at"] is not None and row["started_at"] is None
    assert row["created_at"] == row["enqueued_at"]
    assert "taskmon_pending" not in row["labels"]
    # and `taskmon history --status pending` shows it
    listed = await asyncio.to_thread(_history, env, "--status", "pending")
    assert [(r["task_id"], r["status"], r["task_name"]) for r in listed] == [
        (sent.task_id, "pending", "tests:add")
    ]

    # when a worker starts
    start_worker()

    # then the same row becomes the attempt: one row, success, its wait measured
    async def done() -> list[asyncpg.Record] | None:
        rows = await _rows(db, sent.task_id)
        return rows if rows and rows[-1]["status"] == "success" else None

    [final] = await wait_for(done, timeout=60, what="the attempt's success")
    assert final["id"] == row["id"]
    assert final["created_at"] == row["created_at"]
    assert final["worker"] is not None and final["started_at"] is not None
    assert final["queue_wait_ms"] is not None and final["queue_wait_ms"] > 0
    assert await asyncio.to_thread(_history, env, "--status", "pending") == []


@pytest.mark.slow
async def test_retries_sent_by_the_worker_are_one_row_per_attempt(
    client: Any, start_worker: Any, db: asyncpg.Connection[Any]
) -> None:
    # given a worker and a task that fails twice before it succeeds
    start_worker()
    sent = await client.flaky.kiq(f"flaky-{uuid.uuid4().hex}")

    # then each attempt, sent as pending by the worker's retry, is one row
    async def done() -> list[asyncpg.Record] | None:
        rows = await _rows(db, sent.task_id)
        return rows if rows and rows[-1]["status"] == "success" else None

    rows = await wait_for(done, timeout=60, what="the third attempt's success")
    assert [(r["attempt"], r["status"]) for r in rows] == [
        (0, "retrying"),
        (1, "retrying"),
        (2, "success"),
    ]
    assert all(r["started_at"] is not None for r in rows)


T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


def _sent(task_id: str, sent_at: datetime) -> AttemptRecord:
    """The client's record of a send (as ``record_enqueued`` makes it)."""
    return AttemptRecord(
        task_id=task_id,
        attempt=0,
        task_name="app:work",
        status=Status.PENDING,
        worker=None,
        labels={"from": "client"},
        enqueued_at=sent_at,
        anchor=sent_at,
    )


def _started(task_id: str, sent_at: datetime, status: Status) -> AttemptRecord:
    """The worker's state of the same attempt, keyed by the client's enqueue time."""
    now = datetime.now(UTC)
    return AttemptRecord(
        task_id=task_id,
        attempt=0,
        task_name="app:work",
        status=status,
        worker="host-1:42",
        labels={"from": "worker"},
        enqueued_at=sent_at,
        started_at=now,
        finished_at=None if status is Status.RUNNING else now,
        duration_ms=None if status is Status.RUNNING else 1.0,
        anchor=sent_at,
    )


@pytest.mark.parametrize("status", [Status.RUNNING, Status.SUCCESS])
async def test_a_late_pending_never_replaces_the_workers_state(
    pg_recorder: Recorder, db: asyncpg.Connection[Any], status: Status
) -> None:
    # given an attempt the worker recorded before the client's batch arrived
    sent_at = datetime.now(UTC) - timedelta(seconds=5)
    task_id = uuid.uuid4().hex
    await helpers.publish(pg_recorder, [_started(task_id, sent_at, status)])

    # when the client's pending record of it is written afterwards
    await helpers.publish(pg_recorder, [_sent(task_id, sent_at)])

    # then the row keeps the worker's state and labels: one row
    [row] = await _rows(db, task_id)
    assert (row["status"], row["worker"], row["labels"]) == (
        status.value,
        "host-1:42",
        {"from": "worker"},
    )
    assert row["created_at"] == sent_at


async def test_pending_then_started_in_one_batch_is_the_start(
    pg_recorder: Recorder, db: asyncpg.Connection[Any]
) -> None:
    # given the send and the start of one attempt buffered together (InMemoryBroker)
    sent_at = datetime.now(UTC)
    task_id = uuid.uuid4().hex
    pg_recorder.submit(_started(task_id, sent_at, Status.RUNNING))
    pg_recorder.submit(_sent(task_id, sent_at))
    await pg_recorder.flush()

    # then what is written is the start, at the row of the send
    [row] = await _rows(db, task_id)
    assert (row["status"], row["created_at"]) == ("running", sent_at)


async def test_a_pending_attempt_is_never_lost_and_its_wait_is_no_part_of_its_run(
    pg_recorder: Recorder, db: asyncpg.Connection[Any], dsn: str
) -> None:
    # given an attempt sent two hours ago that started just now
    sent_at = datetime.now(UTC) - timedelta(hours=2)
    waiting, started = uuid.uuid4().hex, uuid.uuid4().hex
    await helpers.publish(
        pg_recorder,
        [_sent(waiting, sent_at), _started(started, sent_at, Status.RUNNING)],
    )

    # then with the default lost rule (an hour) neither counts as lost
    listed = await asyncio.to_thread(_history, helpers.unconfigured_env(TASKMON_DSN=dsn))
    shown = {r["task_id"]: r["status"] for r in listed}
    assert shown == {waiting: "pending", started: "running"}


async def test_pending_oldest_fires_and_clears_when_the_task_starts(
    db: asyncpg.Connection[Any],
) -> None:
    cfg = parse_alert_config(
        tomllib.loads(
            '[[alerts]]\nname = "stuck exports"\nwhen = "pending_oldest > 5m"\n'
            'over = "15m"\nfilter = "task:app:export"\n'
        ),
        "test",
    )
    evaluator = Evaluator(cfg)
    # a task sent 20 minutes ago (before the rule's window) and never started,
    # another one of another task (not watched), and one sent just now
    await insert(
        db,
        [
            {"task_id": "old", "task_name": "app:export", "status": "pending", "worker": None,
             "created_at": T0 - timedelta(minutes=20)},
            {"task_id": "other", "task_name": "app:sync", "status": "pending", "worker": None,
             "created_at": T0 - timedelta(hours=2)},
            {"task_id": "new", "task_name": "app:export", "status": "pending", "worker": None,
             "created_at": T0 - timedelta(minutes=1)},
        ],
    )  # fmt: skip
    (fired,) = await evaluator.evaluate(db, T0)
    assert (fired.state_name, fired.value_text()) == ("firing", "20.0m waiting (app:export)")
    # once the worker picks the old one up, the oldest waits a minute: the rule resolves
    await db.execute("UPDATE task_execution_logs SET status = 'running' WHERE task_id = 'old'")
    (ok,) = await evaluator.evaluate(db, T0)
    assert (ok.state_name, ok.transition) == ("resolved", "resolved")
    assert ok.value_text() == "1.0m waiting (app:export)"


def test_pending_oldest_takes_no_status_filter() -> None:
    with pytest.raises(ConfigError, match="status"):
        parse_alert_config(
            tomllib.loads(
                '[[alerts]]\nname = "n"\nwhen = "pending_oldest > 1m"\nover = "5m"\n'
                'filter = "status:failed"\n'
            ),
            "test",
        )


async def test_queues_lists_what_waits_longer_than_the_threshold_by_name(
    db: asyncpg.Connection[Any], dsn: str
) -> None:
    now = datetime.now(UTC)
    await insert(
        db,
        [
            {"task_id": "a1", "task_name": "app:export", "status": "pending", "worker": None,
             "queue": "default", "created_at": now - timedelta(minutes=30)},
            {"task_id": "a2", "task_name": "app:export", "status": "pending", "worker": None,
             "queue": "default", "created_at": now - timedelta(minutes=3)},
            {"task_id": "b1", "task_name": "app:sync", "status": "pending", "worker": None,
             "queue": "default", "created_at": now - timedelta(seconds=5)},
            {"task_id": "c1", "task_name": "app:done", "status": "success",
             "queue": "default", "created_at": now - timedelta(hours=1)},
        ],
    )  # fmt: skip
    env = helpers.unconfigured_env(TASKMON_DSN=dsn)

    def queues(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskmon", "queues", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    shown = await asyncio.to_thread(queues, "--pending", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert [(r["task_name"], r["waiting"]) for r in rows] == [("app:export", 2)]
    assert 29 * 60 < rows[0]["oldest_wait_s"] < 31 * 60
    table = await asyncio.to_thread(queues, "--waiting-over", "1s")
    assert table.returncode == 0, table.stderr
    assert "app:export" in table.stdout and "app:sync" in table.stdout
    assert "app:done" not in table.stdout
    bad = await asyncio.to_thread(queues, "--waiting-over", "soon")
    assert (bad.returncode, len(bad.stderr.strip().splitlines())) == (2, 1)


def test_a_clients_send_is_staged_as_its_record_would_be() -> None:
    # given a send as a client captures it (with labels, a timeout label, a secret
    # among its arguments and a NUL in its name), and the record of the same attempt
    from taskmon.domain.params import ParamsPolicy
    from taskmon.worker.encode import encode_parts, row, sent_rows

    policy = ParamsPolicy()
    raw = b'{"args":[],"kwargs":{"user":"ana","password":"hunter2"}}'
    sent_at = T0.timestamp()
    labels = {"tenant": "acme", "timeout": "30"}
    send = ("t-1", 2, "app:\x00work", "default", labels, "30", sent_at, raw)
    record = AttemptRecord(
        task_id="t-1",
        attempt=2,
        task_name="app:\x00work",
        status=Status.PENDING,
        worker=None,
        queue="default",
        labels=dict(labels),
        timeout_s=30.0,
        enqueued_at=T0,
        raw_params=raw,
        anchor=T0,
    )

    # when the writer stages each
    [staged] = sent_rows([send], policy)
    expected = row(record, *encode_parts(record, policy), policy.max_value_bytes)

    # then both are the same row: pending, redacted, keyed by the send's time
    assert staged == expected
    assert "hunter2" not in staged[6] and "[REDACTED]" in staged[6]
    assert "\x00" not in staged[1]


def test_an_attempt_sent_twice_in_one_batch_is_one_row_of_its_last_send() -> None:
    from taskmon.domain.params import ParamsPolicy
    from taskmon.worker.encode import Sent, sent_rows

    # given the same attempt sent twice, and another, in one batch
    first: Sent = ("t-1", 0, "app:work", None, {}, None, 100.0, b'{"args":[1],"kwargs":{}}')
    other: Sent = ("t-2", 0, "app:work", None, {}, None, 100.5, b'{"args":[2],"kwargs":{}}')
    again: Sent = ("t-1", 0, "app:work", None, {}, None, 101.0, b'{"args":[3],"kwargs":{}}')

    # then the staged rows hold each attempt once (one statement may not write a row twice)
    rows = sent_rows([first, other, again], ParamsPolicy())
    assert [(r[0], r[12], r[6]) for r in rows] == [
        ("t-1", 101.0, '{"args":[3],"kwargs":{}}'),
        ("t-2", 100.5, '{"args":[2],"kwargs":{}}'),
    ]


async def test_a_clients_sends_are_written_pending_and_announce_nothing(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    # given a client's writer (a publisher attached, which it must not use for sends)
    from taskmon.bus.postgres import PgNotifyPublisher, unpack_payload

    recorder = Recorder(dsn, publisher=PgNotifyPublisher(), flush_interval=0.01)
    await recorder.start(wait_connected=5)
    events: list[str] = []
    await db.add_listener("taskmon_events", lambda *args: events.append(args[-1]))
    try:
        # when it is handed sends, one attempt twice
        sent_at = T0.timestamp()
        for task_id, params in (("a", b'{"args":[],"kwargs":{"n":1}}'), ("b", b"{}"), ("a", b"{}")):
            recorder.submit_sent(
                (task_id, 0, "app:work", "q", {"from": "client"}, 5, sent_at, params)
            )
        await recorder.flush()

        # then each attempt is one pending row at its send time, and no event went out
        rows = await db.fetch(
            "SELECT task_id, status, queue, labels, timeout_s, created_at, enqueued_at "
            "FROM task_execution_logs ORDER BY task_id"
        )
        assert [tuple(r.values()) for r in rows] == [
            (task_id, "pending", "q", {"from": "client"}, 5.0, T0, T0) for task_id in ("a", "b")
        ]
        assert recorder.stats.written == 2
        # and the one event that arrives is that of a state the writer announces
        recorder.submit(_started("c", T0, Status.SUCCESS))
        await wait_for(lambda: events, what="the started attempt's event")
        announced = [item for e in events for item in unpack_payload(e)]
        assert [item["data"]["task_id"] for item in announced] == ["c"]
    finally:
        await recorder.stop()
