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

"Running" and "lost" are read from the attempts themselves (the partial index
on running rows), with the lost rule every reader uses.

One statement, one snapshot. No textual, typer or rich here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import asyncpg

__all__ = ["METRICS", "Histogram", "MetricsSnapshot", "TaskTotals", "fetch_metrics"]

METRICS: tuple[str, ...] = ("duration", "queue_wait")
"""The histogram metrics of the rollups, by their number there (0, 1)."""

# The packing of task_hist_* (see taskmon_hist_unit in sql/0002_rollups.sql):
# lane k holds its count at 10^(12 * k); lane 0 is values <= 0, lanes 1..700
# bins -179..520, values beyond them counted in the end lanes.
_LANE_DIGITS = 12
_LANES = 701

# Rows are tagged by `kind`:
#   c  per (task, status): attempts, duration and queue-wait sums and counts
#   h  per (task, metric): the packed histogram summed over days, as text
#   r  per task: attempts running now (n) and running too long, i.e. lost (stale)
#   b  per bound asked for: its position (n), the edge of its bin (edge), that bin's lane
# $1: lost_after_s, $2: bucket bounds in ms. Only the first branch casts its NULLs.
_METRICS_SQL = """
SELECT 'c'::text AS kind, task_name, status, NULL::smallint AS metric,
       sum(n)::bigint AS n, sum(duration_sum_ms)::float8 AS ds, sum(duration_n)::bigint AS dn,
       sum(queue_wait_sum_ms)::float8 AS qs, sum(queue_wait_n)::bigint AS qn,
       NULL::text AS h, NULL::bigint AS stale, NULL::float8 AS edge, NULL::int AS lane
FROM task_rollup_hour WHERE taskmon_serial()
GROUP BY task_name, status
UNION ALL
SELECT 'h', task_name, NULL, metric, NULL, NULL, NULL, NULL, NULL, sum(h)::text, NULL, NULL, NULL
FROM task_hist_day WHERE taskmon_serial()
GROUP BY task_name, metric
UNION ALL
SELECT 'r', r.task_name, 'running', NULL, count(*), NULL, NULL, NULL, NULL, NULL,
       count(*) FILTER (WHERE r.created_at
           < now() - make_interval(secs => coalesce(r.timeout_s * 2, $1::float8))),
       NULL, NULL
FROM task_execution_logs r WHERE r.status = 'running'
GROUP BY r.task_name
UNION ALL
SELECT 'b', NULL, NULL, NULL, i, NULL, NULL, NULL, NULL, NULL, NULL,
       power(1.02::float8 / 0.98::float8, bin), least(greatest(bin, -179), 520) + 180
FROM (
    SELECT taskmon_bin(bound) AS bin, i FROM unnest($2::float8[]) WITH ORDINALITY AS u(bound, i)
) AS b
"""


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


def _unpack(packed: str) -> list[int]:
    """The counts per lane (lane 0 first) of a packed histogram (numeric as text)."""
    digits = packed.partition(".")[0].lstrip("+")
    if not digits or digits.startswith("-"):  # only if the rollups were edited by hand
        return []
    digits = "0" * (-len(digits) % _LANE_DIGITS) + digits
    lanes = [int(digits[i : i + _LANE_DIGITS]) for i in range(0, len(digits), _LANE_DIGITS)]
    lanes.reverse()
    if len(lanes) > _LANES:
        lanes[_LANES - 1] += sum(lanes[_LANES:])
        del lanes[_LANES:]
    return lanes


async def fetch_metrics(
    conn: asyncpg.Connection[Any],
    bounds_ms: Sequence[float],
    *,
    lost_after_s: float = 3600.0,
) -> MetricsSnapshot:
    """Totals per task and status, histograms per task, and running and lost attempts now.

    Args:
        conn: a connection from :func:`taskmon.store.db.connect` (a replica will do).
        bounds_ms: the histogram bounds wanted, in milliseconds, ascending.
        lost_after_s: how long a ``running`` attempt without a timeout may run
            before it counts as lost.
    """
    rows = await conn.fetch(_METRICS_SQL, float(lost_after_s), [float(b) for b in bounds_ms])
    snapshot = MetricsSnapshot()
    edges: list[tuple[int, float, int]] = []
    packed: list[tuple[str, int, str]] = []
    for row in rows:
        kind = row["kind"]
        if kind == "c":
            snapshot.totals.append(
                TaskTotals(
                    task_name=row["task_name"],
                    status=row["status"],
                    attempts=row["n"],
                    duration_sum_ms=row["ds"],
                    duration_n=row["dn"],
                    queue_wait_sum_ms=row["qs"],
                    queue_wait_n=row["qn"],
                )
            )
        elif kind == "h":
            packed.append((row["task_name"], row["metric"], row["h"]))
        elif kind == "r":
            stale = row["stale"]
            snapshot.running[row["task_name"]] = row["n"] - stale
            snapshot.lost[row["task_name"]] = stale
        else:
            edges.append((row["n"], row["edge"], row["lane"]))
    edges.sort()
    for task_name, metric, text in sorted(packed):
        cumulative = list(accumulate(_unpack(text)))
        if not cumulative or not 0 <= metric < len(METRICS):
            continue
        last = len(cumulative) - 1
        snapshot.histograms.append(
            Histogram(
                task_name=task_name,
                metric=METRICS[metric],
                buckets=[(edge, cumulative[min(lane, last)]) for _, edge, lane in edges],
                count=cumulative[-1],
            )
        )
    snapshot.totals.sort(key=lambda t: (t.task_name, t.status))
    return snapshot
