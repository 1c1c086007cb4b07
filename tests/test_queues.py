"""Queue backlog: depth and oldest wait of a real Redis queue, sampled, shown, drained."""

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
from helpers import app_client, wait_for

from taskmon.store.workers import QueueRow, fetch_queues
from taskmon.worker.queues import QueueProbe, inspect_broker
from taskmon.worker.recorder import Recorder, WorkerIdentity

TASKMON = [sys.executable, "-m", "taskmon"]


@pytest.fixture
def worker_env(dsn: str, redis_url: str) -> dict[str, str]:
    return helpers.worker_env(dsn, redis_url, TEST_HEARTBEAT="0.2")


@pytest.fixture
async def client(worker_env: dict[str, str]) -> AsyncIterator[Any]:
    async with app_client("heartbeat_app", worker_env) as app:
        yield app


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], tmp_path: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "taskiq", "worker", "heartbeat_app:broker", "--workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TASKMON, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.slow
async def test_backlog_without_a_worker_then_drained(
    client: Any,
    dsn: str,
    db: asyncpg.Connection[Any],
    worker_env: dict[str, str],
    start_worker: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    queue = client.broker.queue_name
    # given three tasks kicked while no worker runs
    kicked_at = time.time()
    for i in range(3):
        await client.double.kiq(i)
    await asyncio.sleep(1.0)  # let the oldest message age: the wait is what is measured

    # when the broker is inspected directly
    sample = await inspect_broker(client.broker)
    elapsed = time.time() - kicked_at

    # then depth and the oldest message's wait are right
    assert (sample.broker, sample.queue, sample.depth) == ("ListQueueBroker", queue, 3)
    assert sample.oldest_wait_s is not None
    assert 1.0 <= sample.oldest_wait_s <= elapsed + 0.01

    # and the CLI says the same, as JSON
    out = _cli(worker_env, "queues", "--broker", "heartbeat_app:broker", "--format", "json")
    assert out.returncode == 0, out.stderr
    direct = json.loads(out.stdout)
    assert (direct["queue"], direct["depth"], direct["inspectable"]) == (queue, 3, True)
    assert direct["oldest_wait_s"] >= 1.0

    # given a writer sampling that queue with its heartbeat (as a worker does)
    probe = QueueProbe(client.broker)
    sampler = Recorder(dsn, worker=WorkerIdentity("sampler:1", probe=probe), heartbeat_interval=0.1)
    await sampler.start(wait_connected=5)
    try:

        async def sampled(depth: int) -> list[QueueRow]:
            rows = await fetch_queues(db)
            return [r for r in rows if r["queue"] == queue and r["depth"] == depth]

        [backlog] = await wait_for(lambda: sampled(3))
        assert backlog["oldest_wait_s"] is not None and backlog["oldest_wait_s"] >= 1.0

        # when a worker starts and drains the queue
        start_worker.append(_spawn(worker_env, tmp_path / "worker.log"))
        [drained] = await wait_for(lambda: sampled(0), timeout=60, interval=0.1)
    finally:
        await sampler.stop()
        await probe.close()

    # then the backlog is zero, with nothing waiting, and the trend says it went down
    assert drained["oldest_wait_s"] is None
    assert drained["trend"] is not None and drained["trend"] <= -3
    assert max(drained["samples"]) == 3

    out = _cli(worker_env, "queues", "--format", "json")
    assert out.returncode == 0, out.stderr
    [shown] = [q for q in json.loads(out.stdout) if q["queue"] == queue]
    assert (shown["broker"], shown["depth"], shown["oldest_wait_s"]) == ("ListQueueBroker", 0, None)
    assert shown["trend"] <= -3

    out = _cli({**worker_env, "COLUMNS": "120"}, "queues")
    assert out.returncode == 0, out.stderr
    [line] = [line for line in out.stdout.splitlines() if queue in line]
    assert line.split()[:6] == [queue, "redis", "list", "0", "-", "↓"]


async def test_stream_broker_backlog_is_the_consumer_groups_lag(redis_url: str) -> None:
    import uuid

    from redis.asyncio import Redis
    from taskiq_redis import RedisStreamBroker

    stream = f"taskmon-stream-{uuid.uuid4().hex[:8]}"
    broker = RedisStreamBroker(redis_url, queue_name=stream, consumer_group_name="g")

    @broker.task(task_name="tests:noop")
    async def noop() -> None:
        return None

    # given an empty stream, then a consumer group and three messages
    assert (await inspect_broker(broker)).depth == 0
    redis = Redis.from_url(redis_url)
    try:
        await redis.xgroup_create(stream, "g", id="$", mkstream=True)
        sent_at = time.time()
        for _ in range(3):
            await noop.kiq()

        # when inspected, then all three wait
        sample = await inspect_broker(broker)
        assert (sample.broker, sample.depth) == ("RedisStreamBroker", 3)
        assert sample.oldest_wait_s is not None
        assert 0 <= sample.oldest_wait_s <= time.time() - sent_at + 0.01

        # and once a consumer took one, two wait
        await redis.xreadgroup("g", "c", {stream: ">"}, count=1)
        assert (await inspect_broker(broker)).depth == 2
    finally:
        await redis.delete(stream)
        await redis.aclose()
        await broker.shutdown()


def test_queues_cli_says_not_inspectable_and_rejects_bad_specs(
    worker_env: dict[str, str],
) -> None:
    out = _cli(worker_env, "queues", "--broker", "heartbeat_app:memory", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "broker": "InMemoryBroker",
        "queue": None,
        "inspectable": False,
        "reason": "InMemoryBroker is not inspectable",
    }
    out = _cli(worker_env, "queues", "--broker", "heartbeat_app:memory")
    assert out.stdout.strip() == (
        "heartbeat_app:memory: not inspectable (InMemoryBroker is not inspectable)"
    )

    for spec, message in (
        ("no_colon", "expected module:variable"),
        ("no_such_module_xyz:broker", "cannot import no_such_module_xyz"),
        ("heartbeat_app:nothing", "heartbeat_app has no variable nothing"),
    ):
        out = _cli(worker_env, "queues", "--broker", spec)
        assert out.returncode == 2
        assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    out = _cli(worker_env, "queues", "--format", "xml")
    assert out.returncode == 2 and "is not a format" in out.stderr


def test_queues_window_must_be_a_duration(worker_env: dict[str, str]) -> None:
    for bad in ("5", "soon", "-1m", "40d"):
        out = _cli(worker_env, "queues", "--window", bad)
        assert out.returncode == 2 and out.stderr.startswith("taskmon: error: --window:")
        assert out.stderr.count("\n") == 1
