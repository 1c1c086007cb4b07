"""The websocket hub on a real port, fed by a real Recorder through PostgreSQL NOTIFY or Redis."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from helpers import record, wait_for
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from taskmon.bus.postgres import PgNotifyPublisher, PgNotifySubscriber
from taskmon.bus.redis import RedisStreamPublisher
from taskmon.bus.subscriber import BusEvents, BusItem
from taskmon.domain.events import AttemptRecord, Status, dumps, event_from_record
from taskmon.domain.filters import TaskFilter
from taskmon.server.hub import Hub, HubError
from taskmon.store.db import connect as db_connect
from taskmon.tui.sources import InProcessHubSource, LiveConnected
from taskmon.worker.recorder import Recorder


class Listener:
    """A websocket client that collects every message the hub sends it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.closed: ConnectionClosed | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.raw.append(raw if isinstance(raw, str) else raw.decode())
                self.messages.append(json.loads(raw))
        except ConnectionClosed as exc:
            self.closed = exc

    @property
    def events(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if str(m.get("type", "")).startswith("task_")]

    @property
    def raw_events(self) -> list[str]:
        """The text of each event frame, as received."""
        return [r for r, m in zip(self.raw, self.messages, strict=True) if m in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    async def subscribe(self, since_seq: int | None = None, **filters: Any) -> dict[str, Any]:
        before = len(self.of("subscribed"))
        await self.ws.send(dumps({"op": "subscribe", "filters": filters, "since_seq": since_seq}))
        await wait_for(lambda: len(self.of("subscribed")) > before)
        return self.of("subscribed")[-1]

    async def close(self) -> None:
        await self.ws.close()
        await self.task


async def listen(url: str, **kwargs: Any) -> Listener:
    ws = await connect(url, **kwargs)
    listener = Listener(ws)
    await wait_for(lambda: listener.of("hello"))
    return listener


@pytest.fixture
async def hub(dsn: str) -> AsyncIterator[Hub]:
    hub = Hub(dsn=dsn)
    await hub.start()
    yield hub
    await hub.stop()


async def publish(rec: Recorder, records: list[AttemptRecord]) -> None:
    for r in records:
        rec.submit(r)
    await rec.flush()


async def fence(rec: Recorder, clients: dict[Listener, AttemptRecord]) -> dict[Listener, list[Any]]:
    """What each client received before its fence: a later event it wants.

    The hub sends each client its events in seq order, so once the fence has
    arrived nothing published before it can still trickle in; the test waits
    for that rather than for a while.
    """
    await publish(rec, list(clients.values()))

    def fenced(client: Listener, record: AttemptRecord) -> int | None:
        ids = [e["data"]["task_id"] for e in client.events]
        return ids.index(record.task_id) if record.task_id in ids else None

    await wait_for(
        lambda: all(fenced(c, r) is not None for c, r in clients.items()),
        what="each client's fence event",
    )
    return {c: c.events[: fenced(c, r)] for c, r in clients.items()}


async def test_hello_then_every_event_in_order(hub: Hub, pg_recorder: Recorder) -> None:
    # given
    assert hub.url is not None
    client = await listen(hub.url)
    await client.subscribe()

    # when
    await publish(pg_recorder, [record(i) for i in range(20)])

    # then
    await wait_for(lambda: len(client.events) == 20)
    hello = client.messages[0]
    assert hello["type"] == "hello" and hello["bus"] == "postgres" and hello["protocol"] == 1
    seqs = [e["seq"] for e in client.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 20
    assert client.events[0]["data"]["params"] == {"args": [0], "kwargs": {}}
    assert not client.of("gap")
    await client.close()


async def test_subscribers_get_only_what_their_filters_match(
    hub: Hub, pg_recorder: Recorder
) -> None:
    assert hub.url is not None
    everything = await listen(hub.url)
    failed = await listen(hub.url)
    other = await listen(hub.url)
    await everything.subscribe()
    await failed.subscribe(status="failed")
    await other.subscribe(task="app:other*", status=["success"])

    await publish(
        pg_recorder,
        [record(i) for i in range(10)]
        + [record(100 + i, Status.FAILED) for i in range(4)]
        + [record(200 + i, task="app:other-thing") for i in range(3)]
        + [record(300, Status.FAILED, task="app:other-thing")],
    )

    await wait_for(lambda: len(everything.events) == 18)
    await wait_for(lambda: len(failed.events) == 5 and len(other.events) == 3)
    # nothing else trickles in
    seen = await fence(
        pg_recorder,
        {failed: record(900, Status.FAILED), other: record(901, task="app:other-fence")},
    )
    assert {e["status"] for e in seen[failed]} == {"failed"}
    assert {e["task_name"] for e in seen[other]} == {"app:other-thing"}
    assert {e["status"] for e in seen[other]} == {"success"}
    assert len(seen[failed]) == 5 and len(seen[other]) == 3
    for client in (everything, failed, other):
        await client.close()


async def test_resume_replays_what_arrived_after_the_seq(hub: Hub, pg_recorder: Recorder) -> None:
    assert hub.url is not None
    await publish(pg_recorder, [record(i) for i in range(10)])
    first = await listen(hub.url)
    await wait_for(lambda: hub.stats.events == 10)

    ack = await first.subscribe(since_seq=4)

    assert ack["resumed"] is True and ack["last_seq"] == 10
    await wait_for(lambda: len(first.events) == 6)
    assert [e["seq"] for e in first.events] == [5, 6, 7, 8, 9, 10]
    assert not first.of("gap")

    # a filtered resume replays only what matches, still from the same point
    await publish(pg_recorder, [record(20, Status.FAILED), record(21)])
    second = await listen(hub.url)
    await second.subscribe(since_seq=9, status="failed")
    await wait_for(lambda: len(second.events) == 1)
    assert second.events[0]["status"] == "failed"
    for client in (first, second):
        await client.close()


async def test_resume_from_an_unknown_seq_says_gap_then_replays_later_ones(
    dsn: str, pg_recorder: Recorder
) -> None:
    hub = Hub(dsn=dsn, ring_size=5)
    url = await hub.start()
    try:
        await publish(pg_recorder, [record(i) for i in range(8)])
        await wait_for(lambda: hub.stats.events == 8)
        client = await listen(url)

        ack = await client.subscribe(since_seq=2)

        assert ack["resumed"] is False
        await wait_for(lambda: len(client.events) == 5)
        assert [e["seq"] for e in client.events] == [4, 5, 6, 7, 8]
        [gap] = client.of("gap")
        assert gap["after_seq"] == 2
        # the gap comes before the replay
        assert client.messages.index(gap) < client.messages.index(client.events[0])
        await client.close()
    finally:
        await hub.stop()


async def test_out_of_order_commits_are_replayed_by_arrival(
    dsn: str, hub: Hub, pg_recorder: Recorder
) -> None:
    """seq 1 commits after seq 2: a client that saw 2 and resumes from it still gets 1."""
    # given: a transaction that takes a seq and notifies, but commits late
    assert hub.url is not None
    conn = await db_connect(dsn)
    late = event_from_record(record(1))
    tx = conn.transaction()
    await tx.start()
    late["seq"] = await conn.fetchval("SELECT nextval('taskmon_event_seq')")
    await PgNotifyPublisher().in_transaction(conn, [dumps(late).encode()])
    await publish(pg_recorder, [record(2)])
    await wait_for(lambda: hub.stats.events == 1)
    first = hub._ring.entries[-1].seq
    assert first == late["seq"] + 1

    # when: the early seq arrives last
    await tx.commit()
    await conn.close()
    await wait_for(lambda: hub.stats.events == 2)
    client = await listen(hub.url)
    ack = await client.subscribe(since_seq=first)

    # then
    assert ack["resumed"] is True
    await wait_for(lambda: len(client.events) == 1)
    assert client.events[0]["seq"] == late["seq"]
    assert not client.of("gap")
    await client.close()


async def test_slow_client_gets_a_gap_and_never_delays_the_others(
    dsn: str, pg_recorder: Recorder
) -> None:
    # given: a hub that lets a client fall 50 events behind
    hub = Hub(dsn=dsn, client_queue=50)
    url = await hub.start()
    fast = [await listen(url) for _ in range(2)]
    for client in fast:
        await client.subscribe()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few frames
    sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))))
    slow = await connect(url, sock=sock, max_queue=1)
    try:
        await slow.recv()  # hello
        await slow.send(dumps({"op": "subscribe"}))
        assert json.loads(await slow.recv())["type"] == "subscribed"  # then it stops reading
        # when: a burst of large events
        n = 1500
        await publish(pg_recorder, [record(i, pad=3000) for i in range(n)])

        # then: fast clients get everything, without a gap
        for client in fast:
            await wait_for(lambda c=client: len(c.events) == n)
            assert not client.of("gap")
        assert hub.stats.events == n
        # the slow client is behind; when it reads again it learns it missed events
        received: list[dict[str, Any]] = []
        while not any(m["type"] == "gap" for m in received):
            received.append(json.loads(await asyncio.wait_for(slow.recv(), 30)))
        assert sum(1 for m in received if m["type"].startswith("task_")) < n
        assert hub.stats.slow_gaps >= 1
        gap = next(m for m in received if m["type"] == "gap")
        assert "too slow" in gap["reason"]
        # and then it follows the live stream again
        await publish(pg_recorder, [record(9999, task="app:after")])
        while True:
            message = json.loads(await asyncio.wait_for(slow.recv(), 30))
            if message.get("task_name") == "app:after":
                break
    finally:
        await slow.close()
        for client in fast:
            await client.close()
        await hub.stop()


async def test_token_is_required_and_checked(dsn: str, pg_recorder: Recorder) -> None:
    hub = Hub(dsn=dsn, token="s3cret")
    url = await hub.start()
    try:
        for headers in (None, {"Authorization": "Bearer wrong"}):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, additional_headers=headers)
            assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            await connect(url + "?token=wrong")
        assert hub.stats.refused == 3

        by_header = await listen(url, additional_headers={"Authorization": "Bearer s3cret"})
        by_query = await listen(url + "?token=s3cret")
        await by_header.subscribe()
        await by_query.subscribe()
        await publish(pg_recorder, [record(1)])
        await wait_for(lambda: len(by_header.events) == 1 and len(by_query.events) == 1)
        await by_header.close()
        await by_query.close()
    finally:
        await hub.stop()


async def test_non_loopback_without_token_refuses_to_start(dsn: str) -> None:
    with pytest.raises(HubError, match="token is required"):
        await Hub(dsn=dsn).start("0.0.0.0", 0)


async def test_unreachable_bus_fails_start() -> None:
    hub = Hub(dsn="postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(HubError, match="cannot reach the event bus"):
        await hub.start(bus_timeout=10)


async def test_bad_messages_get_errors_and_everyone_keeps_going(
    dsn: str, pg_recorder: Recorder
) -> None:
    hub = Hub(dsn=dsn, max_frame=1024)
    url = await hub.start()
    try:
        bystander = await listen(url)
        client = await listen(url)
        await bystander.subscribe()
        await client.subscribe()
        await client.ws.send(b"\x00\x01")
        await client.ws.send("{not json")
        await client.ws.send("[1, 2]")
        await client.ws.send(dumps({"op": "dance"}))
        await client.ws.send(dumps({"op": "subscribe", "filters": {"status": "nope"}}))
        await client.ws.send(dumps({"op": "subscribe", "since_seq": "ten"}))
        await wait_for(lambda: len(client.of("error")) == 6)
        errors = [m["error"] for m in client.of("error")]
        assert "binary" in errors[0] and "malformed JSON" in errors[1]
        assert "unknown op 'dance'" in errors[3] and "nope" in errors[4]

        # still served, subscription unchanged
        await publish(pg_recorder, [record(1)])
        await wait_for(lambda: len(client.events) == 1 and len(bystander.events) == 1)

        # an oversized frame closes that connection only (1009: message too big)
        await client.ws.send("x" * 5000)
        await wait_for(lambda: client.closed is not None)
        assert client.closed is not None and client.closed.rcvd is not None
        assert client.closed.rcvd.code == 1009

        # a client that keeps sending garbage is closed with 1008
        noisy = await listen(url)
        for _ in range(25):
            await noisy.ws.send("?")
        await wait_for(lambda: noisy.closed is not None)
        assert noisy.closed is not None and noisy.closed.rcvd is not None
        assert noisy.closed.rcvd.code == 1008

        await publish(pg_recorder, [record(2)])
        await wait_for(lambda: len(bystander.events) == 2)
        await bystander.close()
    finally:
        await hub.stop()


async def test_healthz_answers_plain_http(hub: Hub) -> None:
    assert hub.url is not None
    port = int(hub.url.rsplit(":", 1)[1].strip("/"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    assert status.startswith(b"HTTP/1.1 200")


async def test_redis_hub_resumes_across_a_restart_without_gap(dsn: str, redis_url: str) -> None:
    # given
    rec = Recorder(dsn, publisher=RedisStreamPublisher(redis_url), flush_interval=0.01)
    await rec.start(wait_connected=5)
    hub = Hub(redis_url=redis_url)
    url = await hub.start()
    try:
        client = await listen(url)
        assert client.messages[0]["bus"] == "redis"
        await client.subscribe()
        await publish(rec, [record(i) for i in range(5)])
        await wait_for(lambda: len(client.events) == 5)
        last = client.events[-1]["seq"]
        await client.close()

        # when: the hub restarts while events keep coming
        await hub.stop()
        await publish(rec, [record(10 + i) for i in range(3)])
        hub = Hub(redis_url=redis_url)
        url = await hub.start()
        again = await listen(url)
        ack = await again.subscribe(since_seq=last)

        # then
        assert ack["resumed"] is True
        await wait_for(lambda: len(again.events) == 3)
        assert [e["seq"] for e in again.events] == [last + 1, last + 2, last + 3]
        assert not again.of("gap")
        await again.close()
    finally:
        await hub.stop()
        await rec.stop()


async def test_frames_before_the_subscription_obey_its_filters(
    hub: Hub, pg_recorder: Recorder
) -> None:
    # given a client that has its hello but has not subscribed yet
    assert hub.url is not None
    client = await listen(hub.url)

    # when events arrive before its subscription, then more after it
    await publish(pg_recorder, [record(i) for i in range(10)])
    await publish(pg_recorder, [record(100 + i, Status.FAILED) for i in range(4)])
    await wait_for(lambda: hub.stats.events == 14)
    await client.subscribe(status="failed")
    await publish(
        pg_recorder, [record(200), record(201, Status.FAILED), record(202, Status.FAILED)]
    )

    # then it receives only what matches, including what arrived between hello and subscribe
    await wait_for(lambda: hub.stats.events == 17)
    await wait_for(lambda: len(client.events) >= 6)
    seen = await fence(pg_recorder, {client: record(900, Status.FAILED)})  # nothing trickles in
    assert [e["status"] for e in seen[client]] == ["failed"] * 6
    first_event = client.messages.index(client.events[0])
    assert client.messages.index(client.of("subscribed")[0]) < first_event
    await client.close()


async def healthz(url: str) -> tuple[int, str]:
    """The status code and body of ``GET /healthz``."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    response = (await asyncio.wait_for(reader.read(), 30)).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return int(head.split()[1]), body


class FailingReader:
    """A real NOTIFY subscriber whose reader raises on an event of task ``app:boom``.

    The way a defect in a reader would: no connection error, an exception out of
    ``listen()``. Once it has failed, a new reader waits for `restart` before
    connecting, so the test can look at the hub while none runs.
    """

    def __init__(self, dsn: str) -> None:
        self.inner = PgNotifySubscriber(dsn)
        self.name = self.inner.name
        self.failed = False
        self.restart = asyncio.Event()

    async def listen(self) -> AsyncIterator[BusItem]:
        if self.failed:
            await self.restart.wait()
        async for item in self.inner.listen():
            boom = isinstance(item, BusEvents) and any(
                e.get("task_name") == "app:boom" for e in item.events
            )
            if boom and not self.failed:
                self.failed = True
                raise RuntimeError("the reader broke")
            yield item


async def test_a_failing_bus_reader_shows_in_healthz_clients_and_log(
    dsn: str, pg_recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    # given a hub whose reader will fail, and a client following it
    hub = Hub(dsn=dsn)
    reader = FailingReader(dsn)
    hub._subscriber = reader
    url = await hub.start()
    try:
        client = await listen(url)
        await client.subscribe()
        await publish(pg_recorder, [record(1)])
        await wait_for(lambda: len(client.events) == 1)
        assert await healthz(url) == (200, "ok\n")

        # when the reader raises
        await publish(pg_recorder, [record(2, task="app:boom")])

        # then the hub says so: to its clients, on /healthz, in the log
        await wait_for(lambda: client.closed is not None)
        assert client.closed is not None and client.closed.rcvd is not None
        assert client.closed.rcvd.code == 1013
        assert "the reader broke" in client.closed.rcvd.reason
        status, body = await healthz(url)
        assert status == 503 and "RuntimeError: the reader broke" in body
        with pytest.raises(InvalidStatus) as refused:
            await connect(url)
        assert refused.value.response.status_code == 503
        assert not hub.bus_connected and "the reader broke" in (hub.bus_error or "")
        logged = [r for r in caplog.records if r.name == "taskmon.server.hub"]
        assert any("the reader broke" in r.getMessage() for r in logged)

        # and when a new reader runs, clients come back and are told what they may have missed
        reader.restart.set()
        await wait_for(lambda: hub.bus_connected)
        assert await healthz(url) == (200, "ok\n")
        again = await listen(url)
        await again.subscribe(since_seq=1)
        await publish(pg_recorder, [record(3)])
        await wait_for(lambda: again.events and again.events[-1]["seq"] == 3)
        assert again.of("gap")
        await again.close()
    finally:
        await hub.stop()


async def test_a_bad_redis_url_fails_start_with_its_own_error() -> None:
    hub = Hub(redis_url="rediss-typo://127.0.0.1:6379/0")
    with pytest.raises(HubError) as failed:
        await hub.start(bus_timeout=3)
    assert "no answer" not in str(failed.value)
    assert "Redis URL must specify" in str(failed.value)


async def test_a_client_that_cannot_be_served_is_closed_and_logged(
    hub: Hub,
    pg_recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected error while sending to one client closes that client, not the others.

    Nothing real raises there today, so the error is injected into the filter.
    """
    # given a replay that holds an event the filter cannot take
    assert hub.url is not None
    original = TaskFilter.matches

    def matches(self: TaskFilter, event: Any, **kwargs: Any) -> bool:
        if event.get("task_name") == "app:boom":
            raise RuntimeError("filter broke")
        return original(self, event, **kwargs)

    await publish(pg_recorder, [record(1), record(2, task="app:boom"), record(3)])
    await wait_for(lambda: hub.stats.events == 3)
    bystander = await listen(hub.url)
    await bystander.subscribe()
    monkeypatch.setattr(TaskFilter, "matches", matches)
    client = await listen(hub.url)

    # when it is replayed to a filtered client
    await client.subscribe(since_seq=1, status="success")

    # then that client is closed with the reason, the error is logged, the others go on
    await wait_for(lambda: client.closed is not None)
    assert client.closed is not None and client.closed.rcvd is not None
    assert client.closed.rcvd.code == 1011 and "filter broke" in client.closed.rcvd.reason
    assert any(
        r.name == "taskmon.server.hub" and r.exc_info and "filter broke" in str(r.exc_info[1])
        for r in caplog.records
    )
    monkeypatch.setattr(TaskFilter, "matches", original)
    await publish(pg_recorder, [record(4)])
    await wait_for(lambda: [e["seq"] for e in bystander.events] == [4])
    await bystander.close()


async def test_the_in_process_hub_of_the_tui_wants_a_token(dsn: str) -> None:
    # given the TUI's live source, connected
    source = InProcessHubSource(dsn)
    stream = source.stream()
    try:
        first = await asyncio.wait_for(anext(stream), 30)
        assert isinstance(first, LiveConnected)
        url = source._hub.url

        # then another local user cannot read its feed without the token
        with pytest.raises(InvalidStatus) as refused:
            await connect(url)
        assert refused.value.response.status_code == 401
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
        await source.close()


async def test_two_hubs_on_one_redis_stream_serve_the_same_events(dsn: str, redis_url: str) -> None:
    # given two hubs reading one Redis stream (as behind a load balancer)
    rec = Recorder(dsn, publisher=RedisStreamPublisher(redis_url), flush_interval=0.01)
    await rec.start(wait_connected=5)
    hubs = [Hub(redis_url=redis_url), Hub(redis_url=redis_url)]
    try:
        clients = []
        for hub in hubs:
            client = await listen(await hub.start())
            await client.subscribe()
            clients.append(client)

        # when a worker records attempts, one of them over the hub's 16 KiB frame limit
        # (params and error text, each within the bounds the recorder keeps)
        huge = record(30, Status.FAILED, error=("ValueError", "e" * 4000))
        huge.params = {"args": ["x" * 3000 for _ in range(5)], "kwargs": {}}
        await publish(rec, [record(i) for i in range(30)] + [huge])

        # then both hubs send the same events, with the same seqs, byte for byte
        for client in clients:
            await wait_for(lambda c=client: len(c.events) == 31)
        first, second = ([e["seq"] for e in c.events] for c in clients)
        assert first == second == list(range(1, 32))
        assert clients[0].events == clients[1].events
        assert clients[0].raw_events == clients[1].raw_events
        assert clients[0].events[-1]["data"]["params"] == {"_omitted": "too large; see history"}
        for client in clients:
            await client.close()
    finally:
        for hub in hubs:
            await hub.stop()
        await rec.stop()


async def test_events_are_forwarded_as_published(dsn: str, pg_recorder: Recorder) -> None:
    """The hub sends each event's JSON exactly as the recorder put it on the bus."""
    # given a client, and a listener on the bus itself
    hub = Hub(dsn=dsn)
    url = await hub.start()
    conn = await db_connect(dsn)
    payloads: list[str] = []
    await conn.add_listener("taskmon_events", lambda *args: payloads.append(args[-1]))
    try:
        client = await listen(url)
        await client.subscribe()

        # when events are published, with text outside ASCII
        await publish(pg_recorder, [record(i, task="app:café") for i in range(5)])

        # then each frame is the event's text from the notification, unchanged
        # (the test's own listener is another connection: its notifications
        # may arrive after the hub's, so wait for both)
        await wait_for(lambda: len(client.events) == 5)
        await wait_for(lambda: sum(len(json.loads(p)) for p in payloads) == 5)
        assert "".join("[" + ",".join(client.raw_events) + "]") == "".join(payloads)
        assert "café" in client.raw_events[0]
        await client.close()
    finally:
        await conn.close()
        await hub.stop()


async def test_a_lost_bus_connection_closes_clients_with_the_reason(
    hub: Hub, db: asyncpg.Connection[Any], pg_recorder: Recorder
) -> None:
    # given a client following the hub
    assert hub.url is not None
    client = await listen(hub.url)
    await client.subscribe()
    await publish(pg_recorder, [record(1)])
    await wait_for(lambda: len(client.events) == 1)

    # when the hub's listening connection is killed
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    assert killed == 1

    # then the client is told, and once the hub listens again it resumes, told of the gap
    await wait_for(lambda: client.closed is not None)
    assert client.closed is not None and client.closed.rcvd is not None
    assert client.closed.rcvd.code == 1013
    assert "event bus (postgres) unreachable" in client.closed.rcvd.reason
    await wait_for(lambda: hub.bus_connected)
    again = await listen(hub.url)
    ack = await again.subscribe(since_seq=1)
    assert ack["resumed"] is True
    await wait_for(lambda: again.of("gap"))
    await again.close()
