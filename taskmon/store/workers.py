"""Worker heartbeats and queue backlog samples (``sql/0007_workers.sql``).

Each worker process's writer calls :func:`beat` every few seconds over its own
connection: one statement that refreshes its ``taskmon_workers`` row, adds its
queue's depth sample (when it has one) and trims that queue's old samples.
Readers (``taskmon workers``, ``taskmon queues``, the TUI) call
:func:`fetch_workers` and :func:`fetch_queues`; retention calls
:func:`delete_stale`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

import asyncpg

from taskmon.store.schema import WORKER_STATE_SQL

__all__ = [
    "QueueRow",
    "QueueSample",
    "WorkerBeat",
    "WorkerRow",
    "beat",
    "delete_stale",
    "fetch_queues",
    "fetch_workers",
]

SAMPLES_KEPT_S = 3600.0
"""Seconds of samples each writer keeps for its queue (the trend needs minutes)."""


@dataclass(slots=True)
class QueueSample:
    """One reading of a queue: how many messages wait, and the oldest one's age."""

    broker: str
    """The broker's kind, e.g. ``ListQueueBroker``."""
    queue: str
    depth: int
    oldest_wait_s: float | None


@dataclass(slots=True)
class WorkerBeat:
    """What a heartbeat writes about its worker process."""

    name: str
    """host:pid, the ``worker`` of its attempts."""
    host: str
    pid: int
    broker: str | None
    queue: str | None
    taskmon_version: str | None
    taskiq_version: str | None
    heartbeat_s: float
    running: int
    processed: int
    failed: int
    stopped: bool = False


class WorkerRow(TypedDict):
    """One worker as readers show it; ``state`` is alive, stale or stopped."""

    name: str
    host: str
    pid: int
    state: str
    broker: str | None
    queue: str | None
    taskmon_version: str | None
    taskiq_version: str | None
    heartbeat_s: float
    started_at: datetime
    last_seen: datetime
    last_seen_s: float
    stopped_at: datetime | None
    running: int
    processed: int
    failed: int
    per_minute: float | None


class QueueRow(TypedDict):
    """A queue's latest sample and its trend over the window."""

    broker: str
    queue: str
    sampled_at: datetime
    age_s: float
    depth: int
    oldest_wait_s: float | None
    trend: int | None
    """Depth now minus depth at the start of the window (None: no earlier sample)."""
    samples: list[int]
    """Depths over the window, oldest first (one per heartbeat-ish, at most 60)."""


_BEAT = """
WITH w AS (
    INSERT INTO taskmon_workers AS w (
        name, host, pid, broker, queue, taskmon_version, taskiq_version, heartbeat_s,
        started_at, last_seen, stopped_at, running, processed, failed)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), now(),
            CASE WHEN $12 THEN now() END, $9, $10, $11)
    ON CONFLICT (name) DO UPDATE SET
        host = EXCLUDED.host, pid = EXCLUDED.pid, broker = EXCLUDED.broker,
        queue = EXCLUDED.queue, taskmon_version = EXCLUDED.taskmon_version,
        taskiq_version = EXCLUDED.taskiq_version, heartbeat_s = EXCLUDED.heartbeat_s,
        -- the same host:pid after the row was stopped: a new process
        started_at = CASE WHEN w.stopped_at IS NULL THEN w.started_at ELSE now() END,
        last_seen = now(), stopped_at = EXCLUDED.stopped_at, running = EXCLUDED.running,
        processed = EXCLUDED.processed, failed = EXCLUDED.failed
    RETURNING 1
), s AS (
    INSERT INTO taskmon_queue_samples (broker, queue, sampled_at, sampled_by, depth, oldest_wait_s)
    SELECT $13, $14, now(), $1, $15, $16 WHERE $15::bigint IS NOT NULL
    RETURNING 1
), d AS (
    DELETE FROM taskmon_queue_samples
    WHERE $15::bigint IS NOT NULL AND broker = $13 AND queue = $14
      AND sampled_at < now() - make_interval(secs => $17)
    RETURNING 1
)
SELECT (SELECT count(*) FROM w) + (SELECT count(*) FROM s) + (SELECT count(*) FROM d)
"""


async def beat(
    conn: asyncpg.Connection[Any], worker: WorkerBeat, sample: QueueSample | None = None
) -> None:
    """Refresh `worker`'s row (stopped now when ``worker.stopped``) and record `sample`."""
    await conn.fetchval(
        _BEAT,
        worker.name,
        worker.host,
        worker.pid,
        worker.broker,
        worker.queue,
        worker.taskmon_version,
        worker.taskiq_version,
        float(worker.heartbeat_s),
        worker.running,
        worker.processed,
        worker.failed,
        worker.stopped,
        None if sample is None else sample.broker,
        None if sample is None else sample.queue,
        None if sample is None else sample.depth,
        None if sample is None else sample.oldest_wait_s,
        SAMPLES_KEPT_S,
    )


_WORKERS = f"""
SELECT name, host, pid, {WORKER_STATE_SQL.format(p="")} AS state, broker, queue,
       taskmon_version, taskiq_version, heartbeat_s, started_at, last_seen,
       extract(epoch FROM now() - last_seen)::float8 AS last_seen_s, stopped_at,
       running, processed, failed,
       CASE WHEN coalesce(stopped_at, last_seen) > started_at THEN
           processed * 60.0 / extract(epoch FROM coalesce(stopped_at, last_seen) - started_at)
       END::float8 AS per_minute
FROM taskmon_workers
ORDER BY CASE {WORKER_STATE_SQL.format(p="")} WHEN 'alive' THEN 0 WHEN 'stale' THEN 1 ELSE 2 END,
         last_seen DESC, name
LIMIT $1
"""


async def fetch_workers(conn: asyncpg.Connection[Any], limit: int = 1000) -> list[WorkerRow]:
    """Workers alive first, then stale, then stopped; most recently seen first within each."""
    rows = await conn.fetch(_WORKERS, limit)
    return [WorkerRow(**dict(r)) for r in rows]  # type: ignore[typeddict-item]


_QUEUES = """
WITH recent AS (
    SELECT broker, queue, sampled_at, depth, oldest_wait_s,
           row_number() OVER (PARTITION BY broker, queue ORDER BY sampled_at DESC) AS n
    FROM taskmon_queue_samples
    WHERE sampled_at >= now() - make_interval(secs => $1)
)
SELECT l.broker, l.queue, l.sampled_at, extract(epoch FROM now() - l.sampled_at)::float8 AS age_s,
       l.depth, l.oldest_wait_s,
       (SELECT array_agg(x.depth ORDER BY x.sampled_at) FROM (
            SELECT r.depth, r.sampled_at FROM recent AS r
            WHERE r.broker = l.broker AND r.queue = l.queue AND r.n <= 60) AS x) AS samples
FROM recent AS l
WHERE l.n = 1
ORDER BY l.broker, l.queue
"""


async def fetch_queues(conn: asyncpg.Connection[Any], window_s: float = 300.0) -> list[QueueRow]:
    """Each queue sampled within the last `window_s` seconds: its latest sample and trend."""
    rows = await conn.fetch(_QUEUES, float(window_s))
    out: list[QueueRow] = []
    for r in rows:
        samples = [int(d) for d in r["samples"] or []]
        out.append(
            QueueRow(
                broker=r["broker"],
                queue=r["queue"],
                sampled_at=r["sampled_at"],
                age_s=r["age_s"],
                depth=r["depth"],
                oldest_wait_s=r["oldest_wait_s"],
                trend=samples[-1] - samples[0] if len(samples) > 1 else None,
                samples=samples,
            )
        )
    return out


_DELETE_STALE_WORKERS = f"""
DELETE FROM taskmon_workers
WHERE last_seen < $1 AND {WORKER_STATE_SQL.format(p="")} <> 'alive'
"""
_DELETE_SAMPLES = "DELETE FROM taskmon_queue_samples WHERE sampled_at < $1"


async def delete_stale(
    conn: asyncpg.Connection[Any], workers_before: datetime, samples_before: datetime
) -> tuple[int, int]:
    """Delete workers last seen before `workers_before` and samples before `samples_before`.

    Returns how many workers and samples were deleted.
    """
    w = await conn.execute(_DELETE_STALE_WORKERS, workers_before)
    s = await conn.execute(_DELETE_SAMPLES, samples_before)
    return int(w.rsplit(" ", 1)[1]), int(s.rsplit(" ", 1)[1])
