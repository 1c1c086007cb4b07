"""Redis stream transport: ``XADD`` with an approximate ``MAXLEN``."""

from __future__ import annotations

import logging
from typing import Any

from taskmon.events import dumps

__all__ = ["STREAM", "RedisStreamPublisher"]

logger = logging.getLogger("taskmon.bus")

STREAM = "taskmon:events"
DEFAULT_MAXLEN = 100_000


class RedisStreamPublisher:
    """Appends each event to a Redis stream after its rows committed.

    A Redis outage never holds up the recorder: the database is the truth,
    so events that cannot be sent are counted, logged once per outage and let go.
    """

    name = "redis"

    def __init__(self, url: str, stream: str = STREAM, maxlen: int = DEFAULT_MAXLEN) -> None:
        from redis.asyncio import Redis

        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self._redis: Redis = Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.failed = 0
        self._down = False

    async def in_transaction(self, conn: Any, events: list[dict[str, Any]]) -> None:
        return None

    async def after_commit(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.xadd(
                        self.stream, {"e": dumps(event)}, maxlen=self.maxlen, approximate=True
                    )
                await pipe.execute()
        except Exception as exc:
            self.failed += len(events)
            if not self._down:
                self._down = True
                logger.warning("taskmon: cannot publish events to Redis (%s); will retry", exc)
            return
        if self._down:
            self._down = False
            logger.warning("taskmon: Redis reachable again; %d events were not published", self.failed)

    async def close(self) -> None:
        await self._redis.aclose()
