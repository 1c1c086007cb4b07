"""MonitoringMiddleware on a real InMemoryBroker, rows checked in PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from helpers import wait_for
from taskiq import InMemoryBroker, SimpleRetryMiddleware

from taskmon.worker.middleware import MonitoringMiddleware


@pytest.fixture
async def broker(dsn: str) -> AsyncIterator[InMemoryBroker]:
    broker = InMemoryBroker(await_inplace=True).with_middlewares(
        SimpleRetryMiddleware(default_retry_count=3),
        MonitoringMiddleware(dsn=dsn, flush_interval=0.02),
    )
    await broker.startup()
    yield broker
    await broker.shutdown()


def _monitor(broker: InMemoryBroker) -> MonitoringMiddleware:
    return next(m for m in broker.middlewares if isinstance(m, MonitoringMiddleware))


async def _rows(broker: InMemoryBroker, db: asyncpg.Connection[Any]) -> list[asyncpg.Record]:
    recorder = _monitor(broker).recorder
    assert recorder is not None
    await recorder.flush()
    return await db.fetch("SELECT * FROM task_execution_logs ORDER BY task_id, attempt")


async def _ended(broker: InMemoryBroker, db: asyncpg.Connection[Any], n: int) -> bool:
    """Whether `n` attempts are written with their outcomes (retries run in the background)."""
    rows = await _rows(broker, db)
    return len(rows) >= n and all(r["status"] != "running" for r in rows)


async def test_success_is_one_row_with_duration_and_params(
    broker: InMemoryBroker, db: asyncpg.Connection[Any]
) -> None:
    # given
    @broker.task(task_name="app:add")
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0.05)  # the task's own work: its duration is checked below
        return a + b

    # when
    task = await add.kiq(1, b=2)
    result = await task.wait_result(timeout=5)

    # then
    assert result.return_value == 3
    [row] = await _rows(broker, db)
    assert row["task_id"] == task.task_id
    assert row["status"] == "success"
    assert row["attempt"] == 0
    assert row["task_name"] == "app:add"
    # the positional `a` is stored under its name, as if passed by keyword
    assert row["params"] == {"args": [], "kwargs": {"a": 1, "b": 2}}
    assert 45 <= row["duration_ms"] < 2000
    assert row["queue_wait_ms"] is not None and row["queue_wait_ms"] >= 0
    assert row["worker"].endswith(f":{__import__('os').getpid()}")
    assert row["finished_at"] >= row["started_at"]
    assert row["error_type"] is None
    assert "taskmon_enqueued_at" not in row["labels"]


async def test_failure_keeps_exception_type_message_and_traceback(
    broker: InMemoryBroker, db: asyncpg.Connection[Any]
) -> None:
    @broker.task(task_name="app:boom")
    async def boom() -> None:
        raise KeyError("missing-thing")

    task = await boom.kiq()
    result = await task.wait_result(timeout=5)

    assert result.is_err
    [row] = await _rows(broker, db)
    assert row["status"] == "failed"
    assert row["error_type"] == "KeyError"
    assert "missing-thing" in row["error_message"]
    assert "raise KeyError" in row["traceback"]


async def test_timeout_label_fails_with_timeout_error(
    broker: InMemoryBroker, db: asyncpg.Connection[Any]
) -> None:
    @broker.task(task_name="app:slow", timeout=0.1)
    async def slow() -> None:
        await asyncio.sleep(2)  # outlasts its timeout: the timeout is what is checked

    task = await slow.kiq()
    await task.wait_result(timeout=5)

    [row] = await _rows(broker, db)
    assert row["status"] == "failed"
    assert row["error_type"] == "TimeoutError"
    assert row["timeout_s"] == pytest.approx(0.1)
    assert row["duration_ms"] < 1500


async def test_sync_task_is_recorded(broker: InMemoryBroker, db: asyncpg.Connection[Any]) -> None:
    @broker.task(task_name="app:sync")
    def sync_task(n: int) -> int:
        time.sleep(0.02)  # the task's own (blocking) work
        return n * 2

    task = await sync_task.kiq(21)
    assert (await task.wait_result(timeout=5)).return_value == 42
    [row] = await _rows(broker, db)
    assert row["status"] == "success"
    assert row["params"] == {"args": [], "kwargs": {"n": 21}}


async def test_retries_are_one_row_per_attempt(
    broker: InMemoryBroker, db: asyncpg.Connection[Any]
) -> None:
    calls: list[int] = []

    @broker.task(task_name="app:flaky", retry_on_error=True, max_retries=3)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return "ok"

    task = await flaky.kiq()
    await wait_for(lambda: _ended(broker, db, 3), what="the outcomes of three attempts")

    rows = await _rows(broker, db)
    assert [(r["attempt"], r["status"]) for r in rows] == [
        (0, "retrying"),
        (1, "retrying"),
        (2, "success"),
    ]
    assert {r["task_id"] for r in rows} == {task.task_id}
    assert rows[0]["error_type"] == "ConnectionError"
    assert rows[0]["error_message"] == "attempt 1 failed"
    assert rows[1]["error_message"] == "attempt 2 failed"
    assert rows[2]["error_type"] is None


async def test_retries_exhausted_ends_failed(
    broker: InMemoryBroker, db: asyncpg.Connection[Any]
) -> None:
    @broker.task(task_name="app:doomed", retry_on_error=True, max_retries=2)
    async def doomed() -> None:
        raise RuntimeError("always")

    await doomed.kiq()
    await wait_for(lambda: _ended(broker, db, 2), what="the outcomes of two attempts")

    rows = await _rows(broker, db)
    assert [(r["attempt"], r["status"]) for r in rows] == [(0, "retrying"), (1, "failed")]
    assert all(r["error_type"] == "RuntimeError" for r in rows)


async def test_secrets_are_redacted_at_any_depth(
    broker: InMemoryBroker, db: asyncpg.Connection[Any]
) -> None:
    @broker.task(task_name="app:login")
    async def login(user: str, password: str, options: dict[str, Any]) -> None:
        return None

    await login.kiq(
        "alice",
        password="hunter2",
        options={"headers": {"Authorization": "Bearer abc"}, "API_KEY": "k", "retries": 3},
    )

    [row] = await _rows(broker, db)
    kwargs = row["params"]["kwargs"]
    assert kwargs["password"] == "[REDACTED]"
    assert kwargs["options"]["headers"]["Authorization"] == "[REDACTED]"
    assert kwargs["options"]["API_KEY"] == "[REDACTED]"
    assert kwargs["options"]["retries"] == 3
    assert "hunter2" not in str(row["params"]) and "Bearer abc" not in str(row["params"])


async def test_huge_and_odd_params_are_truncated_not_lost(
    broker: InMemoryBroker, db: asyncpg.Connection[Any]
) -> None:
    @broker.task(task_name="app:big")
    async def big(blob: str, note: str) -> None:
        return None

    await big.kiq("x" * 100_000, note="nul\x00byte")

    [row] = await _rows(broker, db)
    assert row["status"] == "success"
    stored = row["params"]["kwargs"]["blob"]
    assert stored.startswith("xxxx") and "truncated" in stored
    assert len(stored.encode()) <= 4 * 1024
    assert row["params"]["kwargs"]["note"].startswith("nul")


async def test_a_failing_recorder_never_fails_the_task(dsn: str) -> None:
    # given a monitor whose hooks hit an internal error on every call
    monitor = MonitoringMiddleware(dsn=dsn)
    broker = InMemoryBroker(await_inplace=True).with_middlewares(monitor)
    await broker.startup()
    assert monitor.recorder is not None

    def broken(record: object) -> None:
        raise RuntimeError("monitor bug")

    monitor.recorder._pending = None  # type: ignore[assignment]  # every submit now errors

    @broker.task(task_name="app:ok")
    async def ok() -> int:
        return 7

    # when
    task = await ok.kiq()

    # then
    assert (await task.wait_result(timeout=5)).return_value == 7
    monitor.recorder = None
    await broker.shutdown()


async def test_finding_the_database_never_holds_up_a_task(
    dsn: str, db: asyncpg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given no DSN configured (finding one means starting the embedded server, which
    # takes seconds: a slow lookup stands in for it) and a broker whose startup
    # never ran, so the first hook has to start recording itself
    monkeypatch.delenv("TASKMON_DSN", raising=False)
    monkeypatch.setenv("TASKMON_CONFIG", os.devnull)
    looked_up = []

    def slow_lookup() -> str:
        time.sleep(1.0)  # the slow lookup itself: the task must not wait for it
        looked_up.append(dsn)
        return dsn

    monkeypatch.setattr("taskmon.config.embedded_default_dsn", slow_lookup)
    monitor = MonitoringMiddleware(flush_interval=0.02)
    broker = InMemoryBroker(await_inplace=True).with_middlewares(monitor)

    @broker.task(task_name="app:quick")
    async def quick() -> int:
        return 1

    # when
    t0 = time.perf_counter()
    task = await quick.kiq()
    result = await task.wait_result(timeout=5)
    elapsed = time.perf_counter() - t0

    # then the task did not wait for the lookup, and its row still arrives
    assert result.return_value == 1
    assert elapsed < 0.5
    assert monitor.recorder is not None
    await monitor.recorder.flush()
    assert looked_up == [dsn]  # looked up once
    status = await db.fetchval(
        "SELECT status FROM task_execution_logs WHERE task_id = $1", task.task_id
    )
    assert status == "success"
    await monitor.shutdown()
