"""PostgreSQL ``NOTIFY`` transport: the publisher and the listening subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from taskmon.bus import pack
from taskmon.bus.subscriber import Backoff, BusEvents, BusGap, BusItem, BusState, split_events
from taskmon.domain.events import dumps

__all__ = [
    "CHANNEL",
    "MAX_PAYLOAD",
    "PgNotifyPublisher",
    "PgNotifySubscriber",
    "pack_payloads",
    "shrink",
    "unpack_payload",
]

logger = logging.getLogger("taskmon.bus")

CHANNEL = "taskmon_events"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; keep a margin.
MAX_PAYLOAD = 7900


def shrink(event: bytes, limit: int = MAX_PAYLOAD) -> bytes:
    """One encoded event under `limit` bytes, dropping its params (then error text) if needed."""
    if len(event) < limit:
        return event
    decoded = json.loads(event)
    data = decoded.get("data") if isinstance(decoded, dict) else None
    if not isinstance(data, dict):
        return event
    decoded = {**decoded, "data": {**data, "params": {"_omitted": "too large; see history"}}}
    text = dumps(decoded).encode()
    if len(text) < limit:
        return text
    message = str(data.get("error_message") or "")[:1000]
    decoded["data"] = {**decoded["data"], "error_message": message}
    return dumps(decoded).encode()


def pack_payloads(events: list[bytes]) -> Iterator[str]:
    """Group encoded events into JSON arrays, each payload under PostgreSQL's limit."""
    for payload in pack((shrink(event) for event in events), max_bytes=MAX_PAYLOAD):
        yield payload.decode()


def unpack_payload(payload: str) -> list[dict[str, Any]]:
    """The events of one notification (an array, or a single object).

    Raises:
        ValueError: if the payload is not JSON; items that are not objects are skipped.
    """
    data = json.loads(payload)
    items = data if isinstance(data, list) else [data]
    return [item for item in items if isinstance(item, dict)]


class PgNotifyPublisher:
    """Publishes with ``pg_notify`` in the recorder's transaction: committed rows only."""

    name = "postgres"

    def __init__(self, channel: str = CHANNEL) -> None:
        self.channel = channel

    async def in_transaction(self, conn: Any, events: list[bytes]) -> None:
        payloads = list(pack_payloads(events))
        if payloads:
            await conn.execute(
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", self.channel, payloads
            )

    async def after_commit(self, events: list[bytes]) -> None:
        return None

    async def close(self) -> None:
        return None


class PgNotifySubscriber:
    """Listens on the ``NOTIFY`` channel from one dedicated connection, reconnecting forever.

    ``NOTIFY`` keeps nothing for absent listeners: after a reconnection the
    iterator yields a :class:`BusGap` (readers heal from the table).

    Args:
        dsn: the database the recorders write to.
        channel: the channel name.
        max_backoff: the longest pause between reconnection attempts, in seconds.
        keepalive: seconds of silence after which the connection is checked
            (a dead TCP peer otherwise goes unnoticed by a connection that only listens).
        max_buffered: notifications held while the consumer is busy; beyond that
            they are dropped and a gap is reported.
    """

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        channel: str = CHANNEL,
        max_backoff: float = 5.0,
        keepalive: float = 10.0,
        max_buffered: int = 10_000,
    ) -> None:
        self.dsn = dsn
        self.channel = channel
        self.max_backoff = max_backoff
        self.keepalive = keepalive
        self.max_buffered = max_buffered

    async def listen(self) -> AsyncIterator[BusItem]:
        """Yield bus items forever (see :class:`taskmon.bus.subscriber.Subscriber`)."""
        from taskmon.store.db import connect

        backoff = Backoff(maximum=self.max_backoff)
        ever_connected = False
        reported_down = False
        while True:
            inbox = _Inbox(self.max_buffered)
            conn: Any = None
            try:
                conn = await connect(self.dsn, timeout=5.0)
                await conn.add_listener(self.channel, inbox.on_notify)
                conn.add_termination_listener(inbox.on_terminate)
            except Exception as exc:
                if conn is not None:
                    conn.terminate()
                if not reported_down:
                    reported_down = True
                    yield BusState(False, _describe(exc))
                await asyncio.sleep(backoff.next())
                continue
            try:
                backoff.reset()
                reported_down = False
                yield BusState(True)
                if ever_connected:
                    yield BusGap(
                        "the event bus reconnected; events sent meanwhile were not received"
                    )
                ever_connected = True
                while True:
                    try:
                        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a
                        # cancellation that arrives just as a notification does, and a
                        # hub stopping its reader would wait for it forever
                        async with asyncio.timeout(self.keepalive):
                            payload = await inbox.queue.get()
                    except TimeoutError:
                        await conn.fetchval("SELECT 1", timeout=5.0)
                        continue
                    payloads = [payload]
                    while not inbox.queue.empty():
                        payloads.append(inbox.queue.get_nowait())
                    events: list[dict[str, Any]] = []
                    raws: list[bytes] = []
                    for item in payloads:
                        if item is None:
                            raise ConnectionError("the listening connection was closed")
                        try:
                            # each event's own text, as published: a hub forwards it as is
                            more, more_raw = split_events(item)
                        except (ValueError, RecursionError):
                            logger.warning(
                                "taskmon: ignoring a malformed notification on %s", self.channel
                            )
                            continue
                        events += more
                        raws += more_raw
                    if inbox.overflowed:
                        inbox.overflowed = 0
                        yield BusGap("the reader fell behind the bus; notifications were dropped")
                    if events:
                        yield BusEvents(events, raws)
            except Exception as exc:
                conn.terminate()
                reported_down = True
                yield BusState(False, _describe(exc))
                await asyncio.sleep(backoff.next())
            finally:
                with contextlib.suppress(Exception):
                    conn.terminate()


class _Inbox:
    """Notifications of one listening connection; None marks the connection's end."""

    def __init__(self, limit: int) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.limit = limit
        self.overflowed = 0

    def on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if self.queue.qsize() >= self.limit:
            self.overflowed += 1
        else:
            self.queue.put_nowait(payload)

    def on_terminate(self, _conn: Any) -> None:
        self.queue.put_nowait(None)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
