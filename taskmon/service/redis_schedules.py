"""The taskiq-redis schedule sources, read again without importing the user's app.

Importing a scheduler imports taskiq and the user's app: most of what
``taskmon schedules`` costs. A Redis source's schedules change at run time, so
they are read at every run; but where the source lives does not change while
the app's files do not. When the scheduler is imported, each
``RedisScheduleSource`` and ``ListRedisScheduleSource`` on a plain Redis
connection is described (:func:`describe`: its kind, key prefix, serializer and
connection); the schedules cache keeps the description, and later runs read the
source's keys themselves (:func:`read_described`), as its ``get_schedules``
does, decoding them as its serializer would. Both sources store each schedule
as ``ScheduledTask.model_dump(mode="json")``, a mapping of plain values, so
neither taskiq nor the app is needed to read it back.

A source this cannot describe (a cluster, a sentinel, a custom serializer or
connection class, a migration from another source) keeps the cache off: that
scheduler is imported at every run, as before.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

__all__ = ["Description", "describe", "read_described"]

Description = dict[str, Any]
"""What :func:`describe` returns and :func:`read_described` takes (JSON-safe)."""

_SERIALIZERS = {
    "PickleSerializer": "pickle",
    "JSONSerializer": "json",
    "ORJSONSerializer": "orjson",
}
"""taskiq's serializers whose encoding of a mapping of plain values is read here."""

_CONNECTION_KEYS = ("host", "port", "db", "username", "password")
"""The connection settings a Redis URL gives (the rest are redis-py's own defaults)."""


def describe(source: Any) -> Description | None:
    """How to read `source` without it, or None when it is not one this module reads."""
    kind = type(source).__name__
    if not type(source).__module__.startswith("taskiq_redis"):
        return None
    if kind == "RedisScheduleSource":
        pool = getattr(source, "connection_pool", None)
        prefix = getattr(source, "prefix", None)
        buffer_size = getattr(source, "buffer_size", 50)
        serializer = getattr(source, "serializer", None)
        skip_past = False
    elif kind == "ListRedisScheduleSource":
        if getattr(source, "_previous_schedule_source", None) is not None:
            return None  # its start-up migrates another source's schedules
        pool = getattr(source, "_connection_pool", None)
        prefix = getattr(source, "_prefix", None)
        buffer_size = getattr(source, "_buffer_size", 50)
        serializer = getattr(source, "_serializer", None)
        skip_past = bool(getattr(source, "_skip_past_schedules", False))
    else:
        return None
    serializer_class = type(serializer)
    encoding = _SERIALIZERS.get(serializer_class.__name__)
    if encoding is None or not serializer_class.__module__.startswith("taskiq.serializers"):
        return None
    connection_class = getattr(pool, "connection_class", None)
    if connection_class is None or connection_class.__name__ != "Connection":
        return None  # TLS, a Unix socket, a cluster or sentinel: read through the source
    kwargs = getattr(pool, "connection_kwargs", {})
    connection = {key: kwargs[key] for key in _CONNECTION_KEYS if kwargs.get(key) is not None}
    if not all(isinstance(v, str | int) for v in connection.values()):
        return None
    if not isinstance(prefix, str) or not isinstance(buffer_size, int) or buffer_size < 1:
        return None
    return {
        "kind": kind,
        "prefix": prefix,
        "buffer_size": buffer_size,
        "serializer": encoding,
        "skip_past": skip_past,
        "connection": connection,
    }


def _decode(encoding: str, data: bytes) -> Any:
    if encoding == "pickle":
        import pickle

        # what the user's own source writes and its get_schedules unpickles
        return pickle.loads(data)
    if encoding == "orjson":
        import orjson

        return orjson.loads(data)
    import json

    return json.loads(data)


async def read_described(description: Description) -> list[dict[str, Any]]:
    """The schedules (``ScheduledTask`` as JSON) of the source `description` describes.

    The same keys its ``get_schedules`` reads, the same way.

    Raises:
        Exception: what Redis raises (the caller lists the source as unreadable).
    """
    from redis.asyncio import ConnectionPool, Redis

    prefix: str = description["prefix"]
    size: int = description["buffer_size"]
    pool = ConnectionPool(**description["connection"], socket_connect_timeout=5, socket_timeout=5)
    raw: list[Any] = []
    try:
        async with Redis(connection_pool=pool) as redis:
            if description["kind"] == "RedisScheduleSource":
                keys: list[bytes] = [key async for key in redis.scan_iter(f"{prefix}:*")]
            else:
                ids = await _list_ids(redis, prefix, skip_past=description["skip_past"])
                keys = [f"{prefix}:data:{i.decode()}".encode() for i in ids]
            for start in range(0, len(keys), size):
                raw.extend(await redis.mget(keys[start : start + size]))
    finally:
        await pool.disconnect()
    encoding: str = description["serializer"]
    decoded = [_decode(encoding, data) for data in raw if data]
    return [d for d in decoded if isinstance(d, dict)]


async def _list_ids(redis: Any, prefix: str, *, skip_past: bool) -> list[bytes]:
    """The schedule ids ``ListRedisScheduleSource.get_schedules`` reads, in its order."""
    now = dt.datetime.now(dt.UTC)
    timed: list[bytes] = []
    if not skip_past:
        # its first run's "previous time schedules": minutes up to one before now
        minute_before = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=1)
        time_keys: list[str] = []
        async for key in redis.scan_iter(f"{prefix}:time:*"):
            try:
                at = dt.datetime.strptime(key.decode().split(":", 2)[2], "%Y-%m-%dT%H:%M")
            except (ValueError, IndexError):
                continue
            if at.replace(tzinfo=dt.UTC) <= minute_before:
                time_keys.append(key.decode())
        for key in time_keys:
            timed.extend(await redis.lrange(key, 0, -1))
    ids: list[bytes] = []
    ids.extend(await redis.lrange(f"{prefix}:cron", 0, -1))
    ids.extend(await redis.lrange(f"{prefix}:interval", 0, -1))
    timed.extend(await redis.lrange(f"{prefix}:time:{now.strftime('%Y-%m-%dT%H:%M')}", 0, -1))
    ids.extend(timed)
    return ids
