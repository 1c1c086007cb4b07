"""Bus subscribers against a real PostgreSQL and a real Redis, fed by the real Recorder."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio
from helpers import publish, record, wait_for

from taskmon.bus import pack
from taskmon.bus.postgres import MAX_PAYLOAD, PgNotifySubscriber
from taskmon.bus.redis import PACK_EVENTS, STREAM, RedisStreamPublisher, RedisStreamSubscriber
from taskmon.bus.subscriber import (
    BusEvents,
    BusGap,
    BusItem,
    BusState,
    Subscriber,
    check_cancelled,
)
from taskmon.worker.recorder import Recorder


class Collector:
    """Runs a subscriber in the background and keeps what it yields."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.items: list[BusItem] = []
        self.task = asyncio.create_task(self._run(subscriber))

    async def _run(self, subscriber: Subscriber) -> None:
        async for item in subscriber.listen():
            self.items.append(item)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for i in self.items if isinstance(i, BusEvents) for e in i.events]

    def states(self) -> list[BusState]:
        return [i for i in self.items if isinstance(i, BusState)]

    def gaps(self) -> list[BusGap]:
        return [i for i in self.items if isinstance(i, BusGap)]

    async def stop(self) -> None:
        # bounded: a subscriber that ignores cancellation fails the test, not the run
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await self.task


@pytest.fixture
async def redis_recorder(dsn: str, redis_url: str) -> AsyncIterator[Recorder]:
    rec = Recorder(dsn, publisher=RedisStreamPublisher(redis_url), flush_interval=0.01)
    await rec.start(wait_connected=5)
    yield rec
    await rec.stop()


async def test_notify_subscriber_receives_committed_batches_split_under_the_limit(
    dsn: str, pg_recorder: Recorder
) -> None:
    # given
    sub = Collector(PgNotifySubscriber(dsn))
    await wait_for(lambda: sub.states())
    assert sub.states()[0].connected

    # when: 60 events of ~1 KB and one far over the NOTIFY limit (its params are
    # within the stored bounds: five values of 3 KB)
    huge_record = record(60)
    huge_record.params = {"args": ["x" * 3000 for _ in range(5)], "kwargs": {}}
    await publish(pg_recorder, [record(i, pad=1000) for i in range(60)] + [huge_record])

    # then: all arrive, in seq order, over several notifications
    await wait_for(lambda: len(sub.events) == 61)
    assert [e["seq"] for e in sub.events] == list(range(1, 62))
    batches = [i for i in sub.items if isinstance(i, BusEvents)]
    assert len(batches) >= 1
    huge = next(e for e in sub.events if e["data"]["params"].get("_omitted"))
    assert len(str(huge)) < MAX_PAYLOAD
    assert not sub.gaps()
    await sub.stop()


async def test_notify_subscriber_reconnects_and_reports_a_gap(
    dsn: str, db: asyncpg.Connection[Any], pg_recorder: Recorder
) -> None:
    sub = Collector(PgNotifySubscriber(dsn))
    await wait_for(lambda: sub.states())
    await publish(pg_recorder, [record(1)])
    await wait_for(lambda: len(sub.events) == 1)

    # when: the listening backend is killed
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    assert killed == 1

    # then: it says so, comes back, reports the gap and receives again
    await wait_for(lambda: len(sub.states()) >= 3)
    assert [s.connected for s in sub.states()[:3]] == [True, False, True]
    assert sub.gaps()
    await publish(pg_recorder, [record(2)])
    await wait_for(lambda: len(sub.events) == 2)
    await sub.stop()


async def test_redis_subscriber_starts_at_the_end_or_with_history(
    redis_url: str, redis_recorder: Recorder
) -> None:
    await publish(redis_recorder, [record(i) for i in range(5)])
    live = Collector(RedisStreamSubscriber(redis_url))
    backfilled = Collector(RedisStreamSubscriber(redis_url, history=3))
    await wait_for(lambda: live.states() and backfilled.states())

    await publish(redis_recorder, [record(10)])

    await wait_for(lambda: len(live.events) == 1 and len(backfilled.events) == 4)
    assert live.events[0]["seq"] == 6
    assert [e["seq"] for e in backfilled.events] == [3, 4, 5, 6]
    await live.stop()
    await backfilled.stop()


async def kill_readers(admin: redis.asyncio.Redis) -> None:
    """Close the connections blocked in XREAD (the subscriber's), not the publisher's.

    Only those on `admin`'s database: other runs sharing the server use others.
    """
    clients = await wait_for(lambda: _readers(admin), what="the subscriber's XREAD connection")
    for client in clients:
        await admin.client_kill_filter(_id=client["id"])


async def _readers(admin: redis.asyncio.Redis) -> list[dict[str, Any]]:
    db = str(admin.connection_pool.connection_kwargs.get("db") or 0)
    return [c for c in await admin.client_list() if c.get("cmd") == "xread" and c.get("db") == db]


async def test_redis_subscriber_resumes_by_stream_id_after_losing_its_connection(
    redis_url: str, redis_recorder: Recorder
) -> None:
    # given
    subscriber = RedisStreamSubscriber(redis_url, block_ms=200)
    sub = Collector(subscriber)
    await wait_for(lambda: sub.states())
    await publish(redis_recorder, [record(i) for i in range(3)])
    await wait_for(lambda: len(sub.events) == 3)

    # when: its connection is killed, and events are added meanwhile
    admin = redis.asyncio.Redis.from_url(redis_url)
    await kill_readers(admin)
    await publish(redis_recorder, [record(10 + i) for i in range(4)])

    # then: nothing lost, nothing twice, no gap
    await wait_for(lambda: len(sub.events) == 7)
    assert [e["seq"] for e in sub.events] == list(range(1, 8))
    assert not sub.gaps()
    assert subscriber.last_id is not None

    # and when the stream was trimmed past its position while it was away: a gap
    await sub.stop()
    for i in range(5):  # five batches: five stream entries
        await publish(redis_recorder, [record(20 + i)])
    await admin.xtrim(STREAM, maxlen=2, approximate=False)
    resumed = Collector(subscriber)  # same subscriber: resumes after its last id
    await wait_for(lambda: resumed.gaps())
    await wait_for(lambda: [e["seq"] for e in resumed.events] == [11, 12])
    await admin.aclose()
    await resumed.stop()


async def test_redis_subscriber_reports_a_malformed_url_as_its_first_state() -> None:
    sub = Collector(RedisStreamSubscriber("rediss-typo://127.0.0.1:6379/0", max_backoff=0.2))
    await wait_for(lambda: sub.states())
    first = sub.states()[0]
    assert not first.connected and "Redis URL must specify" in (first.error or "")
    assert not sub.task.done()  # and it keeps trying, as after any failure
    await sub.stop()


async def test_subscribers_hand_along_each_event_as_published(
    dsn: str, redis_url: str, pg_recorder: Recorder, redis_recorder: Recorder
) -> None:
    # given a subscriber on each bus
    notify = Collector(PgNotifySubscriber(dsn))
    stream = Collector(RedisStreamSubscriber(redis_url))
    await wait_for(lambda: notify.states() and stream.states())

    # when events are published on both, with text outside ASCII
    records = [record(i, task="app:naïve") for i in range(40)]
    await publish(pg_recorder, records)
    await publish(redis_recorder, records)

    # then each batch carries each event's JSON text, which decodes to the event
    for sub in (notify, stream):
        await wait_for(lambda s=sub: len(s.events) == 40)
        batches = [i for i in sub.items if isinstance(i, BusEvents)]
        for batch in batches:
            assert batch.raw is not None and len(batch.raw) == len(batch.events)
            assert [json.loads(r) for r in batch.raw] == batch.events
        assert "naïve".encode() in batches[0].raw[0]  # type: ignore[index]
        await sub.stop()


async def test_a_malformed_notification_is_skipped(
    dsn: str, db: asyncpg.Connection[Any], pg_recorder: Recorder
) -> None:
    sub = Collector(PgNotifySubscriber(dsn))
    await wait_for(lambda: sub.states())

    for bad in ('[{"seq": 1}', '[{"seq": 1},]', "[" * 7_000, "not json"):
        await db.execute("SELECT pg_notify('taskmon_events', $1)", bad)
    await publish(pg_recorder, [record(1)])

    await wait_for(lambda: len(sub.events) == 1)
    assert sub.events[0]["task_name"] == "app:work"
    assert [s.connected for s in sub.states()] == [True]
    await sub.stop()


async def test_redis_subscriber_reads_entries_of_one_event_or_several(redis_url: str) -> None:
    # given a subscriber at the end of the stream
    sub = Collector(RedisStreamSubscriber(redis_url, block_ms=200))
    await wait_for(lambda: sub.states())
    admin = redis.asyncio.Redis.from_url(redis_url)

    # when entries hold one event, an array of events, and something else
    await admin.xadd(STREAM, {"e": b'{"seq":1,"task_name":"a"}'})
    await admin.xadd(STREAM, {"e": b'[{"seq":2,"task_name":"b"}, {"seq":3,"task_name":"c"}]'})
    await admin.xadd(STREAM, {"e": b'"not an event"'})
    await admin.xadd(STREAM, {"e": b'{"seq":4,"task_name":"d"}'})

    # then every event arrives with its own text, and the odd entry is skipped
    await wait_for(lambda: len(sub.events) == 4)
    assert [e["seq"] for e in sub.events] == [1, 2, 3, 4]
    raws = [r for i in sub.items if isinstance(i, BusEvents) for r in i.raw or []]
    assert raws[1:3] == [b'{"seq":2,"task_name":"b"}', b'{"seq":3,"task_name":"c"}']
    await admin.aclose()
    await sub.stop()


async def test_redis_publisher_packs_a_batch_into_few_entries(
    redis_url: str, redis_recorder: Recorder
) -> None:
    # given a subscriber following the stream
    sub = Collector(RedisStreamSubscriber(redis_url))
    await wait_for(lambda: sub.states())
    admin = redis.asyncio.Redis.from_url(redis_url)
    before = await admin.xlen(STREAM)

    # when one batch of 100 events is published
    await publish(redis_recorder, [record(i) for i in range(100)])

    # then it takes a few entries of up to PACK_EVENTS, and every event arrives once, in order
    await wait_for(lambda: len(sub.events) == 100)
    added = await admin.xlen(STREAM) - before
    assert added == -(-100 // PACK_EVENTS)
    seqs = [e["seq"] for e in sub.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 100
    await admin.aclose()
    await sub.stop()


def test_pack_groups_events_under_both_limits_and_loses_none() -> None:
    events = [json.dumps({"seq": i, "pad": "x" * (i % 7) * 10}).encode() for i in range(200)]
    for max_bytes, max_events, bare in ((300, None, False), (1000, 5, True), (10**6, 32, True)):
        groups = list(pack(events, max_bytes=max_bytes, max_events=max_events, bare=bare))
        decoded = [json.loads(g) for g in groups]
        flat = [e for d in decoded for e in (d if isinstance(d, list) else [d])]
        # every event once, in order
        assert [e["seq"] for e in flat] == list(range(200))
        for group, d in zip(groups, decoded, strict=True):
            assert len(group) <= max_bytes
            if isinstance(d, list):
                assert max_events is None or len(d) <= max_events
                assert not (bare and len(d) == 1)  # a single event goes bare
            else:
                assert bare
    # an event over the limit still goes, alone
    big = b'{"seq":0,"pad":"' + b"y" * 500 + b'"}'
    assert list(pack([big, b'{"seq":1}'], max_bytes=100)) == [b"[" + big + b"]", b'[{"seq":1}]']


async def test_a_cancellation_a_library_swallowed_still_stops_a_subscriber_loop() -> None:
    # given: a loop shaped like the subscribers' whose awaits swallow a cancellation,
    # as redis-py's blocking read sometimes does
    reading = asyncio.Event()

    async def loop() -> None:
        for _ in range(3):  # bounded, so that a loop that never stops fails, not hangs
            check_cancelled()
            with contextlib.suppress(asyncio.CancelledError):
                reading.set()
                await asyncio.sleep(1)  # stands for the blocking read

    task = asyncio.create_task(loop())
    await asyncio.wait_for(reading.wait(), 30)  # the loop is inside its read
    # when
    task.cancel()
    # then: it stops at its next check, not after another read
    with pytest.raises(asyncio.CancelledError):
        await task
