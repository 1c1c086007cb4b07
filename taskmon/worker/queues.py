"""Queue backlog: how many messages wait in a broker's queue, and for how long.

Brokers it can inspect (from taskiq-redis): ``ListQueueBroker`` (``LLEN`` of
its list; the oldest message is at the right end, which ``BRPOP`` takes next,
and its age comes from the enqueue label ``taskmon_enqueued_at``) and
``RedisStreamBroker`` (the consumer group's ``lag``; the oldest waiting
entry's age from its stream id). Any other broker is "not inspectable".

A worker's writer samples its own queue with its heartbeat (:class:`QueueProbe`,
never in a hook); ``taskmon queues --broker module:variable`` inspects one at
once (:func:`inspect_broker`).
"""

from __future__ import annotations

import time
from typing import Any

from taskmon.store.workers import QueueSample
from taskmon.worker.imports import import_object

__all__ = ["NotInspectable", "QueueProbe", "broker_kind", "inspect_broker", "load_broker"]

ENQUEUED_LABEL = "taskmon_enqueued_at"  # taskmon.worker.middleware.ENQUEUED_LABEL, without taskiq
_KINDS = ("ListQueueBroker", "RedisStreamBroker")


class NotInspectable(Exception):
    """The broker's queue cannot be inspected (its kind, or a missing setting); the reason."""


def broker_kind(broker: object) -> str | None:
    """``ListQueueBroker`` or ``RedisStreamBroker`` for the taskiq-redis brokers taskmon reads."""
    for cls in type(broker).__mro__:
        if cls.__name__ in _KINDS and cls.__module__.startswith("taskiq_redis"):
            return cls.__name__
    return None


def load_broker(spec: str) -> Any:
    """The broker ``module:variable`` names (:func:`taskmon.worker.imports.import_object`).

    Raises:
        ValueError: a malformed spec, a module that fails to import, no such variable.
    """
    return import_object(spec, what="broker")


def _oldest_wait(raw: bytes | None, broker: Any, now: float) -> float | None:
    if raw is None:
        return None
    try:
        labels = broker.serializer.loadb(raw).get("labels") or {}
        enqueued = float(labels[ENQUEUED_LABEL])
    except Exception:
        return None  # sent without the label (stamp_enqueue off), or another format
    return max(0.0, now - enqueued)


class QueueProbe:
    """Samples one broker's queue over a Redis connection of its own (not the broker's pool)."""

    def __init__(self, broker: Any) -> None:
        kind = broker_kind(broker)
        if kind is None:
            raise NotInspectable(f"{type(broker).__name__} is not inspectable")
        self.broker = broker
        self.kind = kind
        self.queue: str = broker.queue_name
        self._redis: Any = None

    def _client(self) -> Any:
        if self._redis is None:
            from redis.asyncio import ConnectionPool, Redis

            pool = self.broker.connection_pool
            self._redis = Redis(
                connection_pool=ConnectionPool(
                    connection_class=pool.connection_class,
                    max_connections=1,
                    **pool.connection_kwargs,
                )
            )
        return self._redis

    async def __call__(self) -> QueueSample:
        redis = self._client()
        if self.kind == "ListQueueBroker":
            async with redis.pipeline(transaction=False) as pipe:
                pipe.llen(self.queue)
                pipe.lindex(self.queue, -1)  # LPUSH on send, BRPOP on receive: the next one out
                depth, tail = await pipe.execute()
            return QueueSample(
                self.kind, self.queue, int(depth), _oldest_wait(tail, self.broker, time.time())
            )
        group_name = self.broker.consumer_group_name
        try:
            groups = await redis.xinfo_groups(self.queue)
        except Exception as exc:
            if "no such key" in str(exc).lower():
                return QueueSample(self.kind, self.queue, 0, None)
            raise
        group = next((g for g in groups if _text(g.get("name")) == group_name), None)
        if group is None:
            # no worker declared the group yet: everything in the stream waits
            depth = int(await redis.xlen(self.queue))
            first = await redis.xrange(self.queue, count=1) if depth else []
        else:
            lag = group.get("lag")
            if lag is None:
                raise NotInspectable("the consumer group's lag is unknown (Redis < 7?)")
            depth = int(lag)
            last = _text(group.get("last-delivered-id")) or "0-0"
            first = await redis.xrange(self.queue, min=f"({last}", count=1) if depth else []
        oldest: float | None = None
        if first:
            entry_id = _text(first[0][0])
            oldest = max(0.0, time.time() - int(entry_id.split("-")[0]) / 1000)
        return QueueSample(self.kind, self.queue, depth, oldest)

    async def close(self) -> None:
        redis, self._redis = self._redis, None
        if redis is not None:
            await redis.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def inspect_broker(broker: Any) -> QueueSample:
    """One sample of `broker`'s queue now.

    Raises:
        NotInspectable: the broker is of another kind.
        Exception: Redis errors (unreachable, ...), as redis-py raises them.
    """
    probe = QueueProbe(broker)
    try:
        return await probe()
    finally:
        await probe.close()
