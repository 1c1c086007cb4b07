"""Redis stream transport: ``XADD`` with an approximate ``MAXLEN``; ``XREAD`` to follow it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from taskmon.bus import pack
from taskmon.bus.subscriber import (
    Backoff,
    BusEvents,
    BusGap,
    BusItem,
    BusState,
    check_cancelled,
    split_events,
)

__all__ = [
    "PACK_EVENTS",
    "STREAM",
    "RedisStreamPublisher",
    "RedisStreamSubscriber",
    "pack_entries",
    "stream_id",
]

logger = logging.getLogger("taskmon.bus")

STREAM = "taskmon:events"
DEFAULT_MAXLEN = 100_000
PACK_EVENTS = 32
"""The most events in one stream entry: one ``XADD`` per 32 events, not per event."""
PACK_BYTES = 64 * 1024
"""The most bytes in one stream entry (an event larger than this goes alone)."""


def pack_entries(events: list[bytes]) -> list[bytes]:
    """Events grouped into stream entries: a JSON array of several, or one object alone.

    Each ``XADD`` costs the publisher far more than the bytes it carries, so a
    batch of events goes out as a few entries of up to :data:`PACK_EVENTS`.
    """
    return list(pack(events, max_bytes=PACK_BYTES, max_events=PACK_EVENTS, bare=True))


class RedisStreamPublisher:
    """Appends a batch's events to a Redis stream after its rows committed.

    Events travel in entries of up to :data:`PACK_EVENTS` (see :func:`pack_entries`),
    and the stream is trimmed to about ``maxlen / PACK_EVENTS`` entries: about
    `maxlen` events when busy, fewer (but as many batches) when quiet.

    A Redis outage never holds up the recorder: the database is the truth,
    so events that cannot be sent are counted, logged once per outage and let go.
    """

    name = "redis"

    def __init__(self, url: str, stream: str = STREAM, maxlen: int = DEFAULT_MAXLEN) -> None:
        from redis.asyncio import Redis

        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self._max_entries = max(1, -(-maxlen // PACK_EVENTS))
        self._redis: Redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.failed = 0
        self._down = False

    async def in_transaction(self, conn: Any, events: list[bytes]) -> None:
        return None

    async def after_commit(self, events: list[bytes]) -> None:
        if not events:
            return
        from redis.exceptions import ConnectionError as RedisConnectionError

        try:
            try:
                await self._send(events)
            except (RedisConnectionError, OSError):
                # a pooled connection the server closed (restart, idle timeout) fails
                # once; a fresh one usually works. Readers drop a repeated seq.
                await self._send(events)
        except Exception as exc:
            self.failed += len(events)
            if not self._down:
                self._down = True
                logger.warning("taskmon: cannot publish events to Redis (%s); will retry", exc)
            return
        if self._down:
            self._down = False
            logger.warning(
                "taskmon: Redis reachable again; %d events were not published", self.failed
            )

    async def _send(self, events: list[bytes]) -> None:
        entries = pack_entries(events)
        if len(entries) == 1:
            await self._redis.xadd(
                self.stream, {"e": entries[0]}, maxlen=self._max_entries, approximate=True
            )
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.xadd(self.stream, {"e": entry}, maxlen=self._max_entries, approximate=True)
            await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()


def stream_id(value: str | bytes) -> tuple[int, int]:
    """A stream entry id (``"1700000000000-3"``) as a comparable pair."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _entry_events(entries: list[Any]) -> tuple[BusEvents, str | None]:
    """Events of ``(id, {b"e": json})`` entries, with their JSON, and the last entry's id.

    An entry holds one event (an object) or several (an array of objects).
    """
    events: list[dict[str, Any]] = []
    raws: list[bytes] = []
    last: str | None = None
    for entry_id, entry in entries:
        last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        raw = entry.get(b"e") if isinstance(entry, dict) else None
        if isinstance(raw, bytes) and raw.startswith(b"{"):
            try:
                event = json.loads(raw)
            except (ValueError, RecursionError):
                event = None
            if isinstance(event, dict):
                # the text as published: a hub forwards it as is
                events.append(event)
                raws.append(raw)
                continue
        elif isinstance(raw, bytes):
            try:
                more, more_raw = split_events(raw.decode())
            except (ValueError, RecursionError):
                more, more_raw = [], []
            if more:
                events += more
                raws += more_raw
                continue
        logger.warning("taskmon: ignoring malformed stream entry %s", last)
    return BusEvents(events, raws), last


class RedisStreamSubscriber:
    """Follows the stream with ``XREAD BLOCK``, resuming from the last id it read.

    A Redis outage loses nothing the stream still holds: after reconnecting,
    reading continues after :attr:`last_id`. A gap is reported only when the
    stream no longer holds what follows it (trimmed by ``MAXLEN``, or Redis
    lost the stream).

    Args:
        url: the Redis URL the recorders publish to.
        stream: the stream key.
        start_id: where to begin: ``"$"`` (what is added from now on) or an entry id
            (read what follows it).
        history: with ``start_id="$"``, first yield up to this many of the newest
            events already in the stream (a restarted hub refills its replay buffer).
        count: the most entries read per call.
        block_ms: how long one ``XREAD`` waits for new entries.
        max_backoff: the longest pause between reconnection attempts, in seconds.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        stream: str = STREAM,
        start_id: str = "$",
        history: int = 0,
        count: int = 1_000,
        block_ms: int = 1_000,
        max_backoff: float = 5.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self.start_id = start_id
        self.history = max(0, history)
        self.count = count
        self.block_ms = block_ms
        self.max_backoff = max_backoff
        self.last_id: str | None = None
        """The id of the last entry read (resume point); None before the first connection."""

    async def listen(self) -> AsyncIterator[BusItem]:
        """Yield bus items forever (see :class:`taskmon.bus.subscriber.Subscriber`)."""
        from redis.asyncio import Redis

        backoff = Backoff(maximum=self.max_backoff)
        reported_down = False
        while True:
            client: Any = None
            try:
                try:
                    # a malformed URL is an error to report like any other, not a crash
                    client = Redis.from_url(
                        self.url,
                        socket_connect_timeout=5.0,
                        socket_timeout=self.block_ms / 1000 + 5.0,
                    )
                    if self.last_id is None:
                        first = await self._begin(client)
                        gap = None
                    else:
                        first = BusEvents([])
                        gap = await self._check_resume(client)
                except Exception as exc:
                    check_cancelled()
                    if not reported_down:
                        reported_down = True
                        yield BusState(False, _describe(exc))
                    await asyncio.sleep(backoff.next())
                    continue
                backoff.reset()
                reported_down = False
                yield BusState(True)
                if gap:
                    yield BusGap(gap)
                if first.events:
                    yield first
                try:
                    while True:
                        check_cancelled()  # redis-py may have swallowed it in the last read
                        reply = await client.xread(
                            {self.stream: self.last_id}, count=self.count, block=self.block_ms
                        )
                        for _stream, entries in reply or ():
                            batch, last = _entry_events(entries)
                            if last is not None:
                                self.last_id = last
                            if batch.events:
                                yield batch
                except Exception as exc:
                    check_cancelled()
                    reported_down = True
                    yield BusState(False, _describe(exc))
                    await asyncio.sleep(backoff.next())
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.aclose()

    async def _begin(self, client: Any) -> BusEvents:
        """Resolve where reading starts; the newest `history` events when asked."""
        if self.start_id != "$":
            self.last_id = self.start_id
            return BusEvents([])
        newest = await client.xrevrange(self.stream, count=max(1, self.history))
        if not newest:
            # an id, never "$": "$" re-read on each call would skip what arrives in between
            self.last_id = "0-0"
            return BusEvents([])
        self.last_id = newest[0][0].decode()
        if not self.history:
            return BusEvents([])
        batch, _ = _entry_events(list(reversed(newest)))
        if len(batch.events) > self.history:  # entries may hold several events each
            cut = len(batch.events) - self.history
            raw = None if batch.raw is None else batch.raw[cut:]
            return BusEvents(batch.events[cut:], raw)
        return batch

    async def _check_resume(self, client: Any) -> str | None:
        """Why entries after :attr:`last_id` may be missing now, or None."""
        from redis.exceptions import ResponseError

        assert self.last_id is not None
        last = stream_id(self.last_id)
        try:
            info = await client.xinfo_stream(self.stream)
        except ResponseError:  # no such key: Redis lost the stream (restart without persistence)
            if last == (0, 0):
                return None
            self.last_id = "0-0"
            return "the Redis stream was lost; events published meanwhile may be missing"
        generated = info.get("last-generated-id")
        if generated is not None and stream_id(generated) < last:
            self.last_id = "0-0"
            return "the Redis stream was recreated; events published meanwhile may be missing"
        if generated is None or stream_id(generated) == last or last == (0, 0):
            return None
        # MAXLEN trims from the head: while our last entry is still there, all after it is too
        if await client.xrange(self.stream, min=self.last_id, max=self.last_id, count=1):
            return None
        first = info.get("first-entry")
        if not first or stream_id(first[0]) > last:
            return "the Redis stream was trimmed past the last event read"
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
