"""What the cheaper recorder must still guarantee: nothing lost silently, nothing blocked."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from typing import Any

import asyncpg
import pytest
from helpers import record, unconfigured_env, wait_for
from taskiq import InMemoryBroker, TaskiqMiddleware

from taskmon.worker.middleware import ENQUEUED_LABEL, MonitoringMiddleware
from taskmon.worker.recorder import Recorder

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"


async def test_startup_and_shutdown_do_not_wait_for_an_unreachable_database(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a worker whose database refuses connections
    monitor = MonitoringMiddleware(dsn=UNREACHABLE)
    broker = InMemoryBroker(await_inplace=True).with_middlewares(monitor)

    @broker.task(task_name="app:noop")
    async def noop() -> None:
        return None

    # when it starts, runs a task and stops
    t0 = time.monotonic()
    await broker.startup()
    started = time.monotonic() - t0
    await noop.kiq()
    recorder = monitor.recorder
    assert recorder is not None
    with caplog.at_level(logging.ERROR, logger="taskmon.worker.recorder"):
        t0 = time.monotonic()
        await broker.shutdown()
        stopped = time.monotonic() - t0

    # then neither waited, and the attempt that could not be written is counted and said
    assert started < 0.5
    assert stopped < 2.5
    assert recorder.stats.unwritten == 1
    assert "1 task records were not written" in caplog.text


async def test_a_stop_that_times_out_mid_write_counts_the_batch(
    dsn: str, db: asyncpg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # given a writer whose batch is stuck behind a lock on the table
    recorder = Recorder(dsn, publisher=None, flush_interval=0.01)
    await recorder.start(wait_connected=5)
    locker = await asyncpg.connect(dsn)
    tx = locker.transaction()
    await tx.start()
    await locker.execute("LOCK TABLE task_execution_logs IN ACCESS EXCLUSIVE MODE")
    try:
        for n in range(5):
            recorder.submit(record(n))
        # the batch is being written (and waits on the lock)
        await wait_for(lambda: recorder._busy, interval=0.01, what="the batch's write")

        # when the stop's time runs out during that write
        with caplog.at_level(logging.ERROR, logger="taskmon.worker.recorder"):
            await recorder.stop(timeout=0.3)
    finally:
        await tx.rollback()
        await locker.close()

    # then the batch is neither written nor lost in silence
    assert recorder.stats.unwritten == 5
    assert recorder.stats.written == 0
    assert "5 task records were not written" in caplog.text
    assert await db.fetchval("SELECT count(*) FROM task_execution_logs") == 0


SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from taskiq import InMemoryBroker, TaskiqMiddleware
    from taskmon import MonitoringMiddleware

    broker = InMemoryBroker(await_inplace=True).with_middlewares(
        MonitoringMiddleware(dsn=sys.argv[1], flush_interval=5.0)
    )

    @broker.task(task_name="script:hello")
    async def hello(name: str) -> str:
        return "hi " + name

    async def main() -> None:
        await broker.startup()
        for name in ("a", "b", "c"):
            await hello.kiq(name)
        # no broker.shutdown(): a script that simply ends

    if sys.argv[2] == "run":
        asyncio.run(main())
    else:  # a loop closed without cancelling what is left
        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        loop.close()
    """
)


@pytest.mark.parametrize("ending", ["run", "close"])
async def test_a_loop_that_ends_without_shutdown_warns_of_nothing_and_loses_nothing_silently(
    dsn: str, db: asyncpg.Connection[Any], ending: str
) -> None:
    # when a script records three tasks and its loop ends without broker.shutdown()
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", SCRIPT, dsn, ending],
        env=unconfigured_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    # then no "Task was destroyed" noise, and every attempt is written or reported
    assert out.returncode == 0, out.stderr
    assert "was destroyed" not in out.stderr
    written = await db.fetchval("SELECT count(*) FROM task_execution_logs")
    if ending == "run":
        # asyncio.run cancels the writer: it makes one last write
        assert written == 3, out.stderr
    else:
        assert written + _reported(out.stderr) == 3, out.stderr
        assert written == 3 or "the process ended without broker.shutdown()" in out.stderr


def _reported(stderr: str) -> int:
    for line in stderr.splitlines():
        if "task records were not written" in line:
            return int(line.split("taskmon: ")[1].split()[0])
    return 0


async def test_a_secret_passed_by_position_is_redacted_by_its_name(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    # given
    monitor = MonitoringMiddleware(dsn=dsn, flush_interval=0.01)
    broker = InMemoryBroker(await_inplace=True).with_middlewares(monitor)

    @broker.task(task_name="app:login")
    async def login(user: str, password: str, *rest: str) -> None:
        return None

    await broker.startup()
    try:
        # when the password is passed by position
        await login.kiq("carol", "hunter2", "extra")
        assert monitor.recorder is not None
        await monitor.recorder.flush()
    finally:
        await broker.shutdown()

    # then it is stored under its name, redacted; what has no name stays in args
    params = await db.fetchval("SELECT params FROM task_execution_logs")
    assert params == {"args": ["extra"], "kwargs": {"user": "carol", "password": "[REDACTED]"}}


async def test_the_enqueue_label_can_be_turned_off(dsn: str, db: asyncpg.Connection[Any]) -> None:
    # given a middleware that must not stamp the messages it sends
    monitor = MonitoringMiddleware(dsn=dsn, flush_interval=0.01, stamp_enqueue=False)
    broker = InMemoryBroker(await_inplace=True).with_middlewares(monitor)
    seen: list[dict[str, Any]] = []

    @broker.task(task_name="app:labels")
    async def labels() -> None:
        return None

    class Spy(TaskiqMiddleware):
        def pre_execute(self, message: Any) -> Any:
            seen.append(dict(message.labels))
            return message

    broker.add_middlewares(Spy())
    await broker.startup()
    try:
        await labels.kiq()
        assert monitor.recorder is not None
        await monitor.recorder.flush()
    finally:
        await broker.shutdown()

    # then the task sees no taskmon label, and its queue wait is unknown
    assert seen and ENQUEUED_LABEL not in seen[0]
    row = await db.fetchrow("SELECT status, queue_wait_ms FROM task_execution_logs")
    assert row is not None
    assert row["status"] == "success" and row["queue_wait_ms"] is None


async def test_an_impossible_enqueue_time_still_records_the_attempt(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    # given a message whose enqueue label no clock could give (a sender's bug, say)
    monitor = MonitoringMiddleware(dsn=dsn, flush_interval=0.01)
    broker = InMemoryBroker(await_inplace=True).with_middlewares(monitor)

    @broker.task(task_name="app:odd_stamp")
    async def odd_stamp() -> None:
        return None

    class Garble(TaskiqMiddleware):
        def pre_send(self, message: Any) -> Any:
            message.labels[ENQUEUED_LABEL] = 1e300
            return message

    broker.add_middlewares(Garble())
    await broker.startup()
    try:
        await odd_stamp.kiq()
        assert monitor.recorder is not None
        await monitor.recorder.flush()
    finally:
        await broker.shutdown()

    # then the attempt has its row all the same, with no enqueue time or queue wait
    row = await db.fetchrow("SELECT status, enqueued_at, queue_wait_ms FROM task_execution_logs")
    assert row is not None
    assert row["status"] == "success"
    assert row["enqueued_at"] is None and row["queue_wait_ms"] is None


async def test_times_are_stored_to_the_microsecond(dsn: str, db: asyncpg.Connection[Any]) -> None:
    # given attempts whose times carry every microsecond digit, one of them naive (UTC)
    from datetime import UTC, datetime, timedelta

    base = datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC)
    records = []
    for n, micros in enumerate((0, 1, 499_999, 500_001, 999_999)):
        r = record(n)
        r.enqueued_at = base + timedelta(microseconds=micros)
        r.started_at = r.enqueued_at + timedelta(microseconds=7)
        r.finished_at = (r.started_at + timedelta(seconds=3, microseconds=1)).replace(
            tzinfo=None if n == 4 else UTC
        )
        records.append(r)
    recorder = Recorder(dsn, publisher=None)
    await recorder.start(wait_connected=5)
    for r in records:
        recorder.submit(r)
    await recorder.flush()
    await recorder.stop()

    # then each stored time is the submitted one, exactly
    for r in records:
        row = await db.fetchrow(
            "SELECT enqueued_at, started_at, finished_at, created_at FROM task_execution_logs "
            "WHERE task_id = $1",
            r.task_id,
        )
        assert row is not None
        assert r.finished_at is not None
        assert row["enqueued_at"] == r.enqueued_at
        assert row["started_at"] == r.started_at
        assert row["created_at"] == r.started_at
        assert row["finished_at"] == r.finished_at.replace(tzinfo=UTC)


async def test_with_notify_every_row_rollup_and_event_arrives_in_order(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    # given: a writer publishing with NOTIFY (rows and seqs taken by one statement),
    # in batches of 7; 20 attempts written running before they finish, 20 that
    # start and finish before the writer's next batch
    from datetime import UTC, datetime, timedelta

    from taskmon.bus.postgres import PgNotifyPublisher, unpack_payload
    from taskmon.domain.events import AttemptRecord, Status

    received: list[dict[str, Any]] = []
    listener = await asyncpg.connect(dsn)
    await listener.add_listener("taskmon_events", lambda *a: received.extend(unpack_payload(a[3])))
    rec = Recorder(dsn, publisher=PgNotifyPublisher(), batch_size=7, flush_interval=0.01)
    await rec.start(wait_connected=5)
    t0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    records = []
    for i in range(40):
        r = AttemptRecord(
            task_id=f"n{i}", attempt=0, task_name=f"app:job{i % 3}", status=Status.RUNNING,
            worker="w:1", started_at=t0 + timedelta(seconds=31 * i),
            params={"i": i, "nested": [{"api_key": "k"}]},
        )  # fmt: skip
        records.append(r)

    def finish(i: int, r: AttemptRecord) -> None:
        r.status = Status.SUCCESS if i % 2 else Status.FAILED
        r.finished_at = t0 + timedelta(seconds=31 * i + 1)
        r.duration_ms = 1000.0
        rec.submit(r)

    # when: the first 20 are written running, then the last 20 start and finish
    # with no await between (the writer cannot run), then the first 20 finish
    for r in records[:20]:
        rec.submit(r)
    await rec.flush()
    for r in records[20:]:
        rec.submit(r)
    for i, r in enumerate(records[20:], 20):
        finish(i, r)
    for i, r in enumerate(records[:20]):
        finish(i, r)
    await rec.flush()
    await rec.stop()
    await wait_for(lambda: len(received) >= 60, what="60 events announced")
    await listener.close()

    # then: one row per attempt, rollups that agree with the rows
    rows = await db.fetch("SELECT task_id, status, params FROM task_execution_logs")
    assert len(rows) == 40
    assert all(r["params"]["nested"] == [{"api_key": "[REDACTED]"}] for r in rows)
    assert {r["task_id"]: r["status"] for r in rows} == {r.task_id: r.status for r in records}
    counted = await db.fetchval("SELECT sum(n) FROM task_rollup_hour")
    assert counted == 40
    # each written state announced once, in order, with consecutive seqs: an
    # attempt written running is announced twice, one that finished before it
    # was written once, by its outcome
    assert len(received) == 60
    seqs = [e["seq"] for e in received]
    assert seqs == list(range(seqs[0], seqs[0] + 60))
    for i, r in enumerate(records):
        mine = [e for e in received if e["data"]["task_id"] == r.task_id]
        expected = ["running", r.status.value] if i < 20 else [r.status.value]
        assert [e["status"] for e in mine] == expected
        assert mine[-1]["data"]["duration_ms"] == 1000.0
        assert mine[-1]["timestamp"] == (t0 + timedelta(seconds=31 * i + 1)).isoformat()
        if i < 20:
            assert mine[0]["data"]["duration_ms"] is None
    # the finishes of the last 20 were submitted first: announced first
    finished = [e["data"]["task_id"] for e in received if e["status"] != "running"]
    assert finished == [r.task_id for r in records[20:] + records[:20]]
    assert all(e["data"]["params"]["nested"][0]["api_key"] == "[REDACTED]" for e in received)


async def test_a_record_postgres_refuses_costs_only_itself_with_notify_on(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    # given: a batch holding one attempt whose params PostgreSQL refuses as JSON
    from taskmon.bus.postgres import PgNotifyPublisher, unpack_payload
    from taskmon.domain.events import Status

    received: list[dict[str, Any]] = []
    listener = await asyncpg.connect(dsn)
    await listener.add_listener("taskmon_events", lambda *a: received.extend(unpack_payload(a[3])))
    rec = Recorder(dsn, publisher=PgNotifyPublisher(), batch_size=100, flush_interval=0.01)
    await rec.start(wait_connected=5)
    records = [record(i) for i in range(5)]
    records[2].raw_params = b"{not json"
    for r in records:
        rec.submit(r)
    await rec.flush()
    # when: the next batch is written over the same connection
    later = [record(10 + i) for i in range(3)]
    for r in later:
        rec.submit(r)
    await rec.flush()
    await rec.stop()
    await wait_for(lambda: len(received) >= 7, what="7 events announced")
    await listener.close()

    # then: the refused attempt alone is counted, the others written once, announced once
    assert rec.stats.rejected == 1
    ids = sorted(r["task_id"] for r in await db.fetch("SELECT task_id FROM task_execution_logs"))
    assert ids == sorted(r.task_id for r in records + later if r is not records[2])
    announced = [e["data"]["task_id"] for e in received]
    assert sorted(announced) == ids
    assert all(e["status"] == Status.SUCCESS for e in received)
