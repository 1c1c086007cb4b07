"""What ``/metrics`` reads from PostgreSQL: totals since the rollups began, and what runs now.

Prometheus wants counters and histograms that only grow, across hub restarts
as across worker restarts. The rollups of ``sql/0002_rollups.sql`` are that:
the hour rollups count every finished attempt per task and status (exact
counts, duration and queue-wait sums), the day histograms bin every duration
and queue wait per task. Summed over all their rows they are totals since the
first attempt recorded (or since the hour and day rollups' retention, 400
days by default, last dropped a day: Prometheus reads that as a counter
reset, which ``rate()`` handles).

Histogram buckets are edges of the rollups' own log-scale bins, so a bucket
count is exact, not an estimate: bin ``i`` holds the values ``v`` with
``gamma^(i-1) < v <= gamma^i``, so "values <= gamma^i" is the sum of the bins
up to ``i``. For each bound asked for, the bucket used is the upper edge of
the bin that holds the bound: at most ``gamma - 1`` (4.1 %) above it. The
caller labels buckets with those edges, which are what they count.

Summing every rollup row costs seconds at 400 days of busy tasks (2 million
hour rows), so a reader sums the rows before yesterday rarely
(:func:`fetch_settled`) and adds the recent rows at every read
(:func:`fetch_metrics`); counts and histogram lanes are added, so the sum
is exact.

"Running" and "lost" are read from the attempts themselves (the partial index
on running rows), with the lost rule every reader uses.

One statement per read. No textual, typer or rich here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

import asyncpg

from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S
from taskmon.store.histogram import unpack
from taskmon.store.schema import lost_cutoff_sql, started_sql
from taskmon.store.workers import QueueRow, fetch_queues, fetch_workers

__all__ = [
    "METRICS",
    "Histogram",
    "MetricsSnapshot",
    "Settled",
    "TaskTotals",
    "fetch_metrics",
    "fetch_settled",
    "settled_boundary",
]

METRICS: tuple[str, ...] = ("duration", "queue_wait")
"""The histogram metrics of the rollups, by their number there (0, 1)."""

# Rows are tagged by `kind`:
#   c  per (task, status): attempts, duration and queue-wait sums and counts
#   h  per (task, metric): the packed histogram summed over days, as text
#   r  per task: attempts running now (n) and running too long, i.e. lost (stale)
#   p  per task: attempts sent and not started (n), the oldest's wait in seconds (edge)
#   b  per bound asked for: its position (n), the edge of its bin (edge), that bin's lane
# Rollup rows are read for buckets in [$1, $2). Only the first branch casts its NULLs.
_ROLLUPS_SQL = """
SELECT 'c'::text AS kind, task_name, status, NULL::smallint AS metric,
       sum(n)::bigint AS n, sum(duration_sum_ms)::float8 AS ds, sum(duration_n)::bigint AS dn,
       sum(queue_wait_sum_ms)::float8 AS qs, sum(queue_wait_n)::bigint AS qn,
       NULL::text AS h, NULL::bigint AS stale, NULL::float8 AS edge, NULL::int AS lane
FROM task_rollup_hour WHERE bucket >= $1 AND bucket < $2{serial}
GROUP BY task_name, status
UNION ALL
SELECT 'h', task_name, NULL, metric, NULL, NULL, NULL, NULL, NULL, sum(h)::text, NULL, NULL, NULL
FROM task_hist_day WHERE bucket >= $1 AND bucket < $2{serial}
GROUP BY task_name, metric
"""
# Whole history up to a day boundary: large, read rarely; parallel plans welcome
_SETTLED_SQL = _ROLLUPS_SQL.format(serial="")
# The recent rollups (a day or two: a few thousand rows at most, where parallel
# workers cost more than they save), what runs now, and the buckets' edges.
# $3: lost_after_s, $4: bucket bounds in ms.
_RECENT_SQL = (
    _ROLLUPS_SQL.format(serial=" AND taskmon_serial()")
    + """UNION ALL
SELECT 'r', r.task_name, 'running', NULL, count(*), NULL, NULL, NULL, NULL, NULL,
       count(*) FILTER (WHERE """
    + started_sql()
    + """ < """
    + lost_cutoff_sql("$3::float8")
    + """),
       NULL, NULL
FROM task_execution_logs r WHERE r.status = 'running'
GROUP BY r.task_name
UNION ALL
SELECT 'p', p.task_name, 'pending', NULL, count(*), NULL, NULL, NULL, NULL, NULL, NULL,
       greatest(extract(epoch FROM now() - min(p.created_at))::float8, 0), NULL
FROM task_execution_logs p WHERE p.status = 'pending'
GROUP BY p.task_name
UNION ALL
SELECT 'b', NULL, NULL, NULL, i, NULL, NULL, NULL, NULL, NULL, NULL,
       power(1.02::float8 / 0.98::float8, bin), least(greatest(bin, -179), 520) + 180
FROM (
    SELECT taskmon_bin(bound) AS bin, i FROM unnest($4::float8[]) WITH ORDINALITY AS u(bound, i)
) AS b
"""
)

_NEVER = datetime(1, 1, 1, tzinfo=UTC)  # PostgreSQL's -infinity would do; asyncpg wants a datetime
_FOREVER = datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Settled:
    """The rollups before `before`, summed once: they change rarely, and cost most to read.

    Buckets before a day boundary change only when an attempt that began
    before it is finished or marked lost afterwards. A reader keeps this for
    minutes and adds the recent rollups (from `before` on) at every read.
    """

    before: datetime
    counts: dict[tuple[str, str], tuple[int, float, int, float, int]]
    """Per (task, status): attempts, duration sum and count, queue-wait sum and count."""
    histograms: dict[tuple[str, int], list[int]]
    """Per (task, metric number): the counts per lane (lane 0 first)."""


def settled_boundary(now: datetime) -> datetime:
    """The start of the day (UTC) before `now`'s: older buckets are read as settled."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=1)


def _add_rollup_row(
    row: asyncpg.Record,
    counts: dict[tuple[str, str], tuple[int, float, int, float, int]],
    histograms: dict[tuple[str, int], list[int]],
) -> None:
    if row["kind"] == "c":
        key = (row["task_name"], row["status"])
        n, ds, dn, qs, qn = counts.get(key, (0, 0.0, 0, 0.0, 0))
        counts[key] = (
            n + row["n"],
            ds + row["ds"],
            dn + row["dn"],
            qs + row["qs"],
            qn + row["qn"],
        )
    else:
        key_h = (row["task_name"], row["metric"])
        lanes = unpack(row["h"])
        before = histograms.get(key_h)
        if before is None:
            histograms[key_h] = lanes
        else:
            # lanes of a day-old sum and of today's: as long as each other (all LANES)
            histograms[key_h] = [a + b for a, b in zip(before, lanes, strict=True)]


async def fetch_settled(conn: asyncpg.Connection[Any], before: datetime) -> Settled:
    """The rollups of the buckets before `before` (see :func:`settled_boundary`), summed."""
    counts: dict[tuple[str, str], tuple[int, float, int, float, int]] = {}
    histograms: dict[tuple[str, int], list[int]] = {}
    for row in await conn.fetch(_SETTLED_SQL, _NEVER, before):
        _add_rollup_row(row, counts, histograms)
    return Settled(before=before, counts=counts, histograms=histograms)


@dataclass(frozen=True, slots=True)
class TaskTotals:
    """Finished attempts of one task with one status, since the rollups began."""

    task_name: str
    status: str
    attempts: int
    duration_sum_ms: float
    duration_n: int
    """Attempts with a duration (all but most lost ones)."""
    queue_wait_sum_ms: float
    queue_wait_n: int
    """Attempts with a queue wait (their message carried the enqueue stamp)."""


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative counts of one metric of one task (every finished status together)."""

    task_name: str
    metric: str
    """``duration`` or ``queue_wait`` (milliseconds)."""
    buckets: list[tuple[float, int]]
    """``(edge_ms, values <= edge_ms)`` per bound asked for, in the order asked for."""
    count: int
    """Every value binned (the ``+Inf`` bucket)."""


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """One consistent read of everything ``/metrics`` takes from the database."""

    totals: list[TaskTotals] = field(default_factory=list)
    histograms: list[Histogram] = field(default_factory=list)
    running: dict[str, int] = field(default_factory=dict)
    """Per task: attempts running now and not (yet) lost."""
    lost: dict[str, int] = field(default_factory=dict)
    """Per task: attempts still marked running past the lost rule (the worker probably died)."""
    pending: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Per task: attempts sent and not started (``record_enqueued``), and the oldest's wait (s)."""
    workers: dict[str, int] = field(default_factory=dict)
    """Worker processes per state (alive, stale, stopped), from their heartbeats."""
    queues: list[QueueRow] = field(default_factory=list)
    """Each queue sampled in the last 5 minutes: its latest depth and oldest wait."""


async def fetch_metrics(
    conn: asyncpg.Connection[Any],
    bounds_ms: Sequence[float],
    *,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
    settled: Settled | None = None,
) -> MetricsSnapshot:
    """Totals per task and status, histograms per task, and running and lost attempts now.

    Args:
        conn: a connection from :func:`taskmon.store.db.connect` (a replica will do).
        bounds_ms: the histogram bounds wanted, in milliseconds, ascending.
        lost_after_s: how long a ``running`` attempt without a timeout may run
            before it counts as lost.
        settled: the rollups before some boundary, read earlier by
            :func:`fetch_settled`: then only the rollups from that boundary on
            are read now. Without it, every rollup is read.
    """
    since = settled.before if settled is not None else _NEVER
    rows = await conn.fetch(
        _RECENT_SQL, since, _FOREVER, float(lost_after_s), [float(b) for b in bounds_ms]
    )
    counts = dict(settled.counts) if settled is not None else {}
    packed = dict(settled.histograms) if settled is not None else {}
    snapshot = MetricsSnapshot()
    edges: list[tuple[int, float, int]] = []
    for row in rows:
        kind = row["kind"]
        if kind in ("c", "h"):
            _add_rollup_row(row, counts, packed)
        elif kind == "r":
            stale = row["stale"]
            snapshot.running[row["task_name"]] = row["n"] - stale
            snapshot.lost[row["task_name"]] = stale
        elif kind == "p":
            snapshot.pending[row["task_name"]] = (row["n"], row["edge"])
        else:
            edges.append((row["n"], row["edge"], row["lane"]))
    edges.sort()
    for worker in await fetch_workers(conn):
        snapshot.workers[worker["state"]] = snapshot.workers.get(worker["state"], 0) + 1
    snapshot.queues.extend(await fetch_queues(conn))
    for (task_name, status), (n, ds, dn, qs, qn) in sorted(counts.items()):
        snapshot.totals.append(TaskTotals(task_name, status, n, ds, dn, qs, qn))
    for (task_name, metric), lanes in sorted(packed.items()):
        if not 0 <= metric < len(METRICS):
            continue
        cumulative = list(accumulate(lanes))
        snapshot.histograms.append(
            Histogram(
                task_name=task_name,
                metric=METRICS[metric],
                buckets=[(edge, cumulative[lane]) for _, edge, lane in edges],
                count=cumulative[-1],
            )
        )
    return snapshot
