"""taskmon.server.client.subscribe against real hubs that restart, fed by a real worker process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import publish, record, wait_for

from taskmon.domain.events import Status
from taskmon.domain.filters import parse
from taskmon.server.client import (
    ClientMessage,
    Connected,
    Disconnected,
    EventReceived,
    Gap,
    subscribe,
)
from taskmon.server.hub import Hub
from taskmon.worker.recorder import Recorder

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
import asyncio, sys
from datetime import UTC, datetime
from taskmon.bus.postgres import PgNotifyPublisher
from taskmon.bus.redis import RedisStreamPublisher
from taskmon.domain.events import AttemptRecord, Status
from taskmon.worker.recorder import Recorder

async def main(dsn: str, redis_url: str) -> None:
    publisher = RedisStreamPublisher(redis_url) if redis_url else PgNotifyPublisher()
    rec = Recorder(dsn, publisher=publisher, flush_interval=0.01)
    await rec.start(wait_connected=5)
    n = 0
    while True:
        now = datetime.now(UTC)
        rec.submit(AttemptRecord(task_id=f"w{n}", attempt=0, task_name="app:worker",
                                 status=Status.SUCCESS, worker="proc:1",
                                 started_at=now, finished_at=now, duration_ms=1.0))
        n += 1
        await asyncio.sleep(0.01)  # ~100 events/s: a steady worker

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


class Follower:
    """Runs `subscribe` in the background and keeps every message."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.messages: list[ClientMessage] = []
        self.task = asyncio.create_task(self._run(url, kwargs))

    async def _run(self, url: str, kwargs: dict[str, Any]) -> None:
        async for message in subscribe(url, max_backoff=0.3, **kwargs):
            self.messages.append(message)

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    @property
    def seqs(self) -> list[int]:
        return [m.event["seq"] for m in self.of(EventReceived)]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def fenced(follower: Follower, task_id: str) -> list[EventReceived] | None:
    """The events received before the one of `task_id`, once that one has come."""
    events: list[EventReceived] = follower.of(EventReceived)
    ids = [e.event["data"]["task_id"] for e in events]
    return events[: ids.index(task_id)] if task_id in ids else None


async def test_subscribe_yields_connected_then_filtered_events(
    dsn: str, pg_recorder: Recorder
) -> None:
    hub = Hub(dsn=dsn)
    url = await hub.start()
    try:
        follower = Follower(url, filters=parse("status:failed"))
        await wait_for(lambda: follower.of(Connected))

        await publish(pg_recorder, [record(1), record(2, Status.FAILED), record(3)])

        await wait_for(lambda: follower.of(EventReceived))
        # nothing else comes: a later failure (the hub keeps the order) arrives next
        fence = record(4, Status.FAILED)
        await publish(pg_recorder, [fence])
        await wait_for(lambda: fenced(follower, fence.task_id) is not None, what="the fence")
        [connected] = follower.of(Connected)
        assert connected.reconnected is False and connected.hello["bus"] == "postgres"
        [event] = fenced(follower, fence.task_id) or []
        assert event.event["status"] == "failed"
        assert isinstance(follower.messages[0], Connected)
        await follower.stop()
    finally:
        await hub.stop()


async def test_since_seq_replays_first(dsn: str, pg_recorder: Recorder) -> None:
    hub = Hub(dsn=dsn)
    url = await hub.start()
    try:
        await publish(pg_recorder, [record(i) for i in range(6)])
        await wait_for(lambda: hub.stats.events == 6)

        follower = Follower(url, since_seq=3)

        await wait_for(lambda: len(follower.seqs) == 3)
        assert follower.seqs == [4, 5, 6]
        assert follower.of(Connected)[0].resumed is True
        await follower.stop()
    finally:
        await hub.stop()


async def test_a_wrong_token_is_reported_as_refused(dsn: str) -> None:
    hub = Hub(dsn=dsn, token="right")
    url = await hub.start()
    try:
        messages = subscribe(url, token="wrong", max_backoff=0.1)
        first = await anext(messages)
        assert isinstance(first, Disconnected)
        assert first.refused and first.attempt == 1 and "401" in first.error
        # retrying cannot fix a token: the iterator ends instead of asking forever
        assert first.final
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(messages), 30)
    finally:
        await hub.stop()


async def test_a_hub_that_was_never_reached_ends_the_iterator() -> None:
    # given a port nothing listens on (bound, then released)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # when a client subscribes there
    messages = subscribe(f"ws://127.0.0.1:{port}/", max_backoff=0.1)
    first = await asyncio.wait_for(anext(messages), 30)
    # then it says so once, as final, and ends: reconnecting is for what once worked
    assert isinstance(first, Disconnected)
    assert first.final and not first.refused and first.attempt == 1
    assert "ConnectionRefusedError" in first.error
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(messages), 30)


@pytest.fixture
def worker_process() -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(dsn: str, redis_url: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", WORKER, dsn, redis_url], cwd=ROOT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("bus", ["postgres", "redis"])
async def test_follows_a_worker_process_across_a_hub_restart(
    bus: str, dsn: str, db: asyncpg.Connection[Any], redis_url: str, worker_process: Any
) -> None:
    # given: a worker process publishing ~100 events/s and a client following a hub
    redis = redis_url if bus == "redis" else None
    hub = Hub(dsn=dsn, redis_url=redis)
    url = await hub.start()
    port = int(url.rsplit(":", 1)[1].strip("/"))
    follower = Follower(url)
    await wait_for(lambda: follower.of(Connected))
    worker_process(dsn, redis or "")
    try:
        await wait_for(lambda: len(follower.seqs) >= 20)

        # when: the hub goes away for a moment while the worker keeps publishing
        await hub.stop()
        await wait_for(lambda: follower.of(Disconnected))
        seen_before = len(follower.seqs)
        last_before = follower.seqs[-1]
        written = await db.fetchval("SELECT count(*) FROM task_execution_logs")
        await wait_for(
            lambda: db.fetchval("SELECT count(*) >= $1 FROM task_execution_logs", written + 20),
            what="the worker publishing 20 events while the hub is away",
        )
        hub = Hub(dsn=dsn, redis_url=redis)
        await hub.start(port=port)

        # then: it reconnects by itself and keeps receiving
        await wait_for(lambda: len(follower.of(Connected)) == 2)
        await wait_for(lambda: len(follower.seqs) >= seen_before + 20)
        again = follower.of(Connected)[1]
        assert again.reconnected
        # a hub that once answered is waited for, however long it is away
        assert not any(d.final for d in follower.of(Disconnected))
        seqs = follower.seqs
        assert len(set(seqs)) == len(seqs), "an event was delivered twice"
        if bus == "redis":
            # the stream kept what was published meanwhile: a complete replay
            assert again.resumed is True
            assert not follower.of(Gap)
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        else:
            # NOTIFY keeps nothing for absent listeners: the client is told
            assert again.resumed is False
            [gap] = follower.of(Gap)
            assert gap.after_seq == last_before
            index = follower.messages.index(gap)
            assert follower.messages[index - 1] is again
            assert seqs == sorted(seqs)
    finally:
        await follower.stop()
        await hub.stop()
