"""Window metrics: counts, failure rate, throughput, percentiles and error groups.

Metrics come from the rollups of ``sql/0002_rollups.sql`` and do not grow with
the number of rows: a window is split into whole days and hours (day and hour
rollups), whole 5 minutes at its edges (minute and 5-minute rollups) and the
partial 5 minutes at its edges (raw rows), so counts are exact; percentiles
come from log-scale histograms, within :data:`RELATIVE_ERROR` of the exact
value. Filters the rollups do not carry (worker, error text, words,
durations, attempt, task id) are answered from the raw rows instead. Either
way a call is one statement.

No textual, typer or rich here: the TUI and the CLI both call this module.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

import asyncpg

from taskmon.domain.filters import TaskFilter
from taskmon.store.filter_sql import filter_sql, resolve_task_names, resolved_filter_sql
from taskmon.store.histogram import (
    LANE_SQL,
    LANES,
    RELATIVE_ERROR,
    bin_of,
    bin_value,
    lane_bin,
    unpack,
)
from taskmon.store.schema import DEFAULT_LOST_AFTER_S, TERMINAL, lost_cutoff_sql, started_sql

__all__ = [
    "RELATIVE_ERROR",
    "ErrorGroup",
    "Stats",
    "TaskStats",
    "bin_of",
    "bin_value",
    "fetch_stats",
]

_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # the rollups' date_bin origin
_MINUTE = timedelta(minutes=1)
_FIVE_MINUTES = timedelta(minutes=5)
_HOUR = timedelta(hours=1)
_MAX_ERROR_GROUPS = 20


def _quantiles(lanes: Sequence[int], qs: Sequence[float]) -> list[float | None]:
    """Quantiles of a histogram given as counts per lane, interpolated like ``percentile_cont``.

    ``percentile_cont(q)`` interpolates between the values of ranks
    ``floor(q * (n - 1))`` and the next; each is estimated from its bin (within
    RELATIVE_ERROR), so their interpolation is within RELATIVE_ERROR as well.
    """
    cumulative = list(accumulate(lanes))
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return [None for _ in qs]

    def value_at(rank: int) -> float:
        # the first lane whose cumulative count passes `rank` holds the value of that rank
        return bin_value(lane_bin(bisect_right(cumulative, rank)))

    out: list[float | None] = []
    for q in qs:
        pos = q * (total - 1)
        low = math.floor(pos)
        frac = pos - low
        lo_value = value_at(low)
        out.append(lo_value if frac == 0 else lo_value + frac * (value_at(low + 1) - lo_value))
    return out


@dataclass(frozen=True)
class TaskStats:
    """One task name's figures over the window.

    Attributes:
        count: finished attempts (success, failed, retrying, lost).
        failures: failed + lost attempts.
        failure_rate: failures / (success + failed + lost); retrying attempts
            are left out, their task's fate is decided by a later attempt.
        p50_ms, p95_ms, p99_ms: duration percentiles of the finished attempts
            (within :data:`RELATIVE_ERROR`); None without durations.
        queue_wait_p95_ms: queue wait 95th percentile, likewise.
        retrying: attempts that failed and were retried.
        mean_ms: mean duration (exact).
    """

    task_name: str
    count: int
    failures: int
    failure_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    queue_wait_p95_ms: float | None
    retrying: int = 0
    mean_ms: float | None = None


@dataclass(frozen=True)
class ErrorGroup:
    """Attempts that did not succeed, grouped by exception type (None: no type recorded)."""

    error_type: str | None
    count: int
    last_seen: datetime | None
    example: str | None


@dataclass(frozen=True)
class Stats:
    """Figures for the window ``[since, until)``.

    Attributes:
        total: attempts in the window (all statuses).
        by_status: attempts per status; ``lost`` includes attempts still marked
            running for too long, ``running`` only the others.
        failure_rate: (failed + lost) / (success + failed + lost), 0 when
            nothing finished; retrying attempts are reported in ``by_status``
            only.
        running: attempts of the window still running (not lost).
        lost: attempts of the window that are lost (marked, or running too long).
        p95_ms: duration 95th percentile over all tasks.
        bucket_seconds: the width of each throughput bucket.
        throughput: (bucket start, finished attempts) for every bucket.
        tasks: per task name, busiest first.
        errors: by error type, most frequent first (at most 20).
        relative_error: the percentiles' bound (see :data:`RELATIVE_ERROR`).
    """

    since: datetime
    until: datetime
    total: int
    by_status: dict[str, int]
    failure_rate: float
    running: int
    lost: int
    p95_ms: float | None
    bucket_seconds: int
    throughput: list[tuple[datetime, int]]
    tasks: list[TaskStats]
    errors: list[ErrorGroup]
    relative_error: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (datetimes as ISO 8601 with offset)."""
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "total": self.total,
            "by_status": dict(self.by_status),
            "failure_rate": self.failure_rate,
            "running": self.running,
            "lost": self.lost,
            "p95_ms": self.p95_ms,
            "bucket_seconds": self.bucket_seconds,
            "throughput": [[t.isoformat(), n] for t, n in self.throughput],
            "tasks": [dataclasses.asdict(t) for t in self.tasks],
            "errors": [
                {
                    "error_type": e.error_type,
                    "count": e.count,
                    "last_seen": e.last_seen.isoformat() if e.last_seen else None,
                    "example": e.example,
                }
                for e in self.errors
            ],
            "relative_error": self.relative_error,
        }


def floor_bucket(t: datetime, step: timedelta) -> datetime:
    """The start of the rollup bucket of size `step` holding `t`."""
    return _ORIGIN + ((t - _ORIGIN) // step) * step


def ceil_bucket(t: datetime, step: timedelta) -> datetime:
    """`t` if it starts a rollup bucket of size `step`, else the start of the next one."""
    floor = floor_bucket(t, step)
    return floor if floor == t else floor + step


_Span = tuple[datetime, datetime]


def _split(
    since: datetime, until: datetime, steps: Sequence[timedelta]
) -> tuple[list[tuple[_Span, _Span]], tuple[_Span, _Span]]:
    """Split a window over rollup levels of growing `steps`, each a multiple of the one before.

    The coarsest level with a whole bucket inside the window answers its middle,
    each finer level the two stretches between the next coarser level's bounds
    and its own, and raw rows the partial buckets of the finest step at the edges.

    Returns:
        Per level (finest first) its two half-open ranges, maybe empty, and the two raw ranges.
    """
    none = (since, since)
    bounds = [(ceil_bucket(since, step), floor_bucket(until, step)) for step in steps]
    usable = [i for i, (lo, hi) in enumerate(bounds) if lo < hi]
    if not usable:
        return [(none, none) for _ in steps], ((since, until), (until, until))
    top = usable[-1]  # every finer level is usable too: the steps are aligned multiples
    levels: list[tuple[_Span, _Span]] = []
    for i, (lo, hi) in enumerate(bounds):
        if i < top:
            levels.append(((lo, bounds[i + 1][0]), (bounds[i + 1][1], hi)))
        elif i == top:
            levels.append(((lo, hi), none))
        else:
            levels.append((none, none))
    return levels, ((since, bounds[0][0]), (bounds[0][1], until))


# One statement answers a whole fetch_stats call: one round trip, one snapshot (so
# the parts add up without a transaction), one plan. Its rows are tagged by `kind`:
#   c  per (task, status): n, duration sum ds and count dn
#   t  per throughput bucket ts: n
#   h  per (task, metric): packed histogram h (rollups), as text
#   b  per (task, metric): histogram lanes and their counts (raw rows)
#   e  per error type (name): n, last_seen (ts), example, rank (pos)
#   l  per (task, running|pending, stale): n (attempts not finished)
# Every branch of its UNION ALL is one row of the columns below, written by name
# (:func:`_select`), the others padded with NULL. Only the first branch casts its
# NULLs: UNION resolves the other branches' NULLs to them.
_RESULT_COLUMNS: dict[str, str] = {
    "kind": "text",
    "ts": "timestamptz",
    "name": "text",
    "status": "text",
    "metric": "smallint",
    "n": "bigint",
    "ds": "float8",
    "dn": "bigint",
    "h": "text",
    "lanes": "int[]",
    "counts": "bigint[]",
    "example": "text",
    "stale": "bool",
    "pos": "bigint",
}


def _select(*, first: bool = False, **values: str) -> str:
    """The select list of one branch: `values` by result column, NULL for the others."""
    unknown = set(values) - set(_RESULT_COLUMNS)
    if unknown:
        raise ValueError(f"not result columns: {sorted(unknown)}")
    if first:  # names the columns
        named = ((values.get(c, f"NULL::{t}"), c) for c, t in _RESULT_COLUMNS.items())
        return ", ".join(expr if expr == c else f"{expr} AS {c}" for expr, c in named)
    return ", ".join(values.get(c, "NULL") for c in _RESULT_COLUMNS)


def _position(column: str) -> int:
    """The 1-based position of a result column (for GROUP BY)."""
    return list(_RESULT_COLUMNS).index(column) + 1


_FINITE = "CASE WHEN r.{0} > '-Infinity' AND r.{0} < 'Infinity' THEN r.{0} END"
_STATS_SQL = """
WITH raw AS {raw_mode} (
    SELECT created_at, task_name, status, dur, taskmon_bin(dur) AS dur_bin,
           taskmon_bin(qw) AS qw_bin, error_type, error_message
    FROM (
        SELECT r.created_at, r.task_name, r.status, {dur} AS dur, {qw} AS qw, r.error_type,
               r.error_message
        FROM task_execution_logs r WHERE {raw_where}
    ) AS r
),
counts AS (
    {count_rollups}SELECT created_at AS ts, task_name, status, 1 AS n, coalesce(dur, 0) AS ds,
           (dur IS NOT NULL)::int AS dn
    FROM raw
),
errors AS (
    {error_rollups}SELECT coalesce(error_type, '') AS error_type, 1 AS n, created_at AS last_seen
    FROM raw WHERE status <> 'success'
),
top_errors AS (
    SELECT error_type, sum(n) AS n, max(last_seen) AS last_seen,
           row_number() OVER (ORDER BY sum(n) DESC, nullif(error_type, '')) AS pos
    FROM errors GROUP BY error_type HAVING sum(n) > 0
    ORDER BY pos LIMIT {max_errors}
)
SELECT {counts_select}
FROM (SELECT date_bin({step}, ts, '2000-01-01 00:00:00+00') AS tb, * FROM counts) AS c
GROUP BY GROUPING SETS ((task_name, status), (tb))
{hist_rollups}UNION ALL
SELECT {lanes_select}
FROM (
    SELECT task_name, 0::smallint AS metric, {lane_of_dur} AS lane, count(*) AS n
    FROM raw WHERE dur_bin IS NOT NULL GROUP BY 1, 3
    UNION ALL
    SELECT task_name, 1::smallint, {lane_of_qw}, count(*)
    FROM raw WHERE qw_bin IS NOT NULL GROUP BY 1, 3
) AS b
GROUP BY task_name, metric
UNION ALL
{error_groups}
UNION ALL
SELECT {running_select}
FROM task_execution_logs r
WHERE r.status = 'running' AND {live_where}
GROUP BY {running_group}
UNION ALL
SELECT {pending_select}
FROM task_execution_logs r
WHERE r.status = 'pending' AND {live_where}
GROUP BY {pending_group}
"""
_COUNTS_SELECT = _select(
    first=True,
    kind="CASE WHEN grouping(task_name) = 0 THEN 'c' ELSE 't' END",
    ts="tb",
    name="task_name",
    status="status",
    n="sum(n)::bigint",
    ds="sum(ds)::float8",
    dn="sum(dn)::bigint",
)
_LANES_SELECT = _select(
    kind="'b'", name="task_name", metric="metric", lanes="array_agg(lane)", counts="array_agg(n)"
)
# The example of an error group is that of its newest row, looked up for the (at most
# 20) groups alone rather than carried through the aggregation: a raw row of the edges
# created at the group's last_seen, else the rollup row whose last_seen it is, in the
# bucket holding that moment (minute, else hour, else day: retention may have deleted
# the finer ones). On the raw path (millions of rows, not kept) it is the raw row
# created then, found through the created_at index.
_ROLLUP_EXAMPLE = """(SELECT min(r.example) FROM {table} r
            WHERE r.bucket = date_bin('{step}', t.last_seen, '2000-01-01 00:00:00+00')
              AND r.error_type = t.error_type AND r.last_seen = t.last_seen AND {sel})"""
_EXAMPLE_SOURCES = (
    ("task_error_minute", "1 minute"),
    ("task_error_hour", "1 hour"),
    ("task_error_day", "1 day"),
)
_EDGE_EXAMPLE = """(SELECT min(left(r.error_message, 500)) FROM raw r
            WHERE r.created_at = t.last_seen AND coalesce(r.error_type, '') = t.error_type
              AND r.status <> 'success')"""
_RAW_EXAMPLE = """(SELECT min(left(r.error_message, 500)) FROM task_execution_logs r
        WHERE r.created_at = t.last_seen AND coalesce(r.error_type, '') = t.error_type
          AND r.status <> 'success' AND {raw_where})"""


def _error_groups(example: str) -> str:
    """The branch of the error groups, each with `example` (an expression over ``t``)."""
    select = _select(
        kind="'e'",
        ts="t.last_seen",
        name="nullif(t.error_type, '')",
        n="t.n::bigint",
        example=example,
        pos="t.pos",
    )
    return f"\nSELECT {select}\nFROM top_errors t"


_HIST_ROLLUPS = f"""UNION ALL
SELECT {_select(kind="'h'", name="task_name", metric="metric", h="sum(h)::text")}
FROM ({{parts}}) AS h
GROUP BY task_name, metric
"""
# (columns, tables finest first) of the rollup parts of each kind; alias r
_COUNT_SOURCES = (
    "r.bucket AS ts, r.task_name, r.status, r.n, r.duration_sum_ms AS ds, r.duration_n AS dn",
    ("task_rollup_minute", "task_rollup_hour"),
)
_HIST_SOURCES = (
    "r.task_name, r.metric, r.h",
    ("task_hist_5min", "task_hist_hour", "task_hist_day"),
)
_ERROR_SOURCES = (
    "r.error_type, r.n, r.last_seen",
    ("task_error_minute", "task_error_hour", "task_error_day"),
)
# every part splits a window at the same 5-minute edges, so that the raw rows of the
# partial 5 minutes are read once; minute rollups answer any whole 5 minutes
_LEVELS = (_FIVE_MINUTES, _HOUR, timedelta(days=1))


@dataclass
class _Query:
    """Builds the metrics statement; every value is a ``$N`` parameter."""

    params: list[object] = dataclasses.field(default_factory=list)

    def arg(self, value: object, cast: str = "") -> str:
        self.params.append(value)
        return f"${len(self.params)}{cast}"

    def ranges(self, column: str, spans: Iterable[tuple[datetime, datetime]]) -> str:
        """`column` in any of the non-empty `spans`.

        Empty spans are left out: an empty range OR'ed to a real one makes the
        planner misjudge the rows and prefer a sequential scan.
        """
        parts = [
            f"(r.{column} >= {self.arg(a)} AND r.{column} < {self.arg(b)})"
            for a, b in spans
            if a < b
        ]
        return "(" + " OR ".join(parts) + ")" if parts else "FALSE"


def _rollup_parts(
    q: _Query, source: tuple[str, tuple[str, ...]], levels: list[tuple[_Span, _Span]], sel: str
) -> str:
    """One SELECT per rollup level of `source` with a range to read, each ending in UNION ALL."""
    cols, tables = source
    return "".join(
        f"SELECT {cols} FROM {table} r WHERE {q.ranges('bucket', spans)} AND {sel} UNION ALL "
        for table, spans in zip(tables, levels, strict=False)
        if any(a < b for a, b in spans)
    )


def _stats_sql(
    q: _Query,
    *,
    raw_where: str,
    rollups: tuple[list[tuple[_Span, _Span]], list[tuple[_Span, _Span]], str] | None,
    live_where: str,
    lost_after: str,
    step: timedelta,
) -> str:
    """The one statement of :func:`fetch_stats` (see _STATS_SQL).

    `rollups` is ``(count levels, histogram and error levels, status/task condition)``
    (levels from :func:`_split`), the rollup tables answering all but `raw_where`;
    None reads the raw rows alone.
    """
    count_rollups = error_rollups = hist_rollups = ""
    if rollups is None:
        error_groups = _error_groups(_RAW_EXAMPLE.format(raw_where=raw_where))
    else:
        count_levels, levels, sel = rollups
        count_rollups = _rollup_parts(q, _COUNT_SOURCES, count_levels, sel)
        error_rollups = _rollup_parts(q, _ERROR_SOURCES, levels, sel)
        hist_parts = _rollup_parts(q, _HIST_SOURCES, levels, sel)
        if hist_parts:
            hist_rollups = _HIST_ROLLUPS.format(parts=hist_parts.removesuffix(" UNION ALL "))
        examples = (
            _ROLLUP_EXAMPLE.format(table=table, step=step, sel=sel)
            for table, step in _EXAMPLE_SOURCES
        )
        error_groups = _error_groups(
            f"coalesce(\n           {_EDGE_EXAMPLE},\n           "
            + ",\n           ".join(examples)
            + ")"
        )
    return _STATS_SQL.format(
        # the rollup path reads a few minutes of raw rows once and keeps them; the raw
        # path may read millions, which each part aggregates as it goes rather than
        # keep them all
        raw_mode="MATERIALIZED" if rollups is not None else "NOT MATERIALIZED",
        dur=_FINITE.format("duration_ms"),
        qw=_FINITE.format("queue_wait_ms"),
        raw_where=raw_where,
        count_rollups=count_rollups,
        error_rollups=error_rollups,
        hist_rollups=hist_rollups,
        max_errors=_MAX_ERROR_GROUPS,
        error_groups=error_groups,
        lane_of_dur=LANE_SQL.format("dur_bin"),
        lane_of_qw=LANE_SQL.format("qw_bin"),
        step=q.arg(step, "::interval"),
        live_where=live_where,
        counts_select=_COUNTS_SELECT,
        lanes_select=_LANES_SELECT,
        running_select=_select(
            kind="'l'",
            name="r.task_name",
            status="'running'",
            n="count(*)",
            stale=f"{started_sql()} < {lost_cutoff_sql(lost_after)}",
        ),
        running_group=f"{_position('name')}, {_position('stale')}",
        pending_select=_select(
            kind="'l'", name="r.task_name", status="'pending'", n="count(*)", stale="FALSE"
        ),
        pending_group=f"{_position('name')}",
    )


def _bucket_step(window: timedelta) -> timedelta:
    """Throughput bucket width: minute multiples up to 6 h windows, then hour multiples."""
    minute_steps = (1, 5, 15, 30)
    hour_steps = (1, 2, 3, 6, 12, 24, 168)
    if window <= timedelta(hours=6):
        for m in minute_steps:
            if window / timedelta(minutes=m) <= 72:
                return timedelta(minutes=m)
    for h in hour_steps:
        if window / timedelta(hours=h) <= 96:
            return timedelta(hours=h)
    return timedelta(hours=hour_steps[-1] * ((window // timedelta(weeks=96)) + 1))


def needs_raw(flt: TaskFilter) -> bool:
    """Whether `flt` uses a field the rollups do not keep (then raw rows are read).

    The rollups keep status, task and time; any other field set (worker,
    error, words, task id, durations, attempt, queue, params, labels, and any
    added later) is answered from the raw rows.
    """
    kept = dataclasses.replace(flt, statuses=frozenset(), tasks=(), since=None, until=None)
    return not kept.is_empty()


async def fetch_stats(
    conn: asyncpg.Connection[Any],
    flt: TaskFilter,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
    now: datetime | None = None,
) -> Stats:
    """Metrics for the attempts matching `flt` whose ``created_at`` is in the window.

    The window is ``flt.since``/``flt.until`` when set, else the `since`/`until`
    arguments, else the 24 hours before `now`. Counts are exact; percentiles
    are within :data:`RELATIVE_ERROR` (relative). Status and task filters are
    answered from the rollups; any other filter reads the raw rows of the
    window (correct, but its cost grows with the window). Either way it is one
    statement (one round trip, one snapshot), plus one to resolve task patterns.

    Failure rate: (failed + lost) / (success + failed + lost). A ``retrying``
    attempt failed but was retried, so the task's fate is decided by a later
    attempt: it is counted in ``by_status`` and in a task's ``count`` and
    ``retrying``, not in the rate.

    Args:
        conn: a connection from :func:`taskmon.store.db.connect`.
        flt: the filter.
        since: window start when `flt` has none.
        until: window end when `flt` has none.
        lost_after_s: how long a ``running`` attempt without a timeout may run
            before it counts as ``lost``.
        now: the reference time for the default window (tests).
    """
    end = flt.until or until or now or datetime.now(UTC)
    start = flt.since or since or end - timedelta(hours=24)
    end, start = end.astimezone(UTC), start.astimezone(UTC)
    if start > end:
        raise ValueError(f"since {start.isoformat()} is later than until {end.isoformat()}")
    step = _bucket_step(max(end - start, _MINUTE))
    statuses = [s for s in TERMINAL if not flt.statuses or s in flt.statuses]

    q = _Query()
    window = f"r.created_at >= {q.arg(start)} AND r.created_at < {q.arg(end)}"
    lost_after = q.arg(float(lost_after_s), "::float8")
    status = f"r.status = ANY({q.arg(statuses, '::text[]')})"
    raw = needs_raw(flt)
    if raw:
        cond = await resolved_filter_sql(conn, flt, q.params, lost_after_s)
        sql = _stats_sql(
            q,
            raw_where=f"{window} AND {status} AND {cond}",
            rollups=None,
            live_where=f"{window} AND {cond}",
            lost_after=lost_after,
            step=step,
        )
    else:
        # the rollups carry only status and task name; task patterns become exact names
        cond = filter_sql(
            dataclasses.replace(flt, tasks=()), q.params, lost_after_s=lost_after_s, alias="r"
        )
        sel = status
        if flt.tasks:
            names = await resolve_task_names(conn, flt.tasks)
            tasks = f"r.task_name = ANY({q.arg(names, '::text[]')})"
            sel, cond = f"{sel} AND {tasks}", f"{cond} AND {tasks}"
        # counts have throughput buckets to fill: hour rollups only for hour buckets
        count_levels, _ = _split(start, end, _LEVELS[: 2 if step >= _HOUR else 1])
        levels, raw_spans = _split(start, end, _LEVELS)
        sql = _stats_sql(
            q,
            # taskmon_serial(): no parallel workers for a few thousand rollup rows
            raw_where=f"{q.ranges('created_at', raw_spans)} AND {sel} AND taskmon_serial()",
            rollups=(count_levels, levels, sel),
            live_where=f"{window} AND {cond}",
            lost_after=lost_after,
            step=step,
        )
    if not raw:
        return _assemble(start, end, step, await conn.fetch(sql, *q.params))
    async with conn.transaction(readonly=True):
        # over the raw rows the statement's estimated cost is high enough for JIT
        # to inline and optimise its ~130 expressions: seconds, more than it saves
        await conn.execute("SET LOCAL jit = off")
        return _assemble(start, end, step, await conn.fetch(sql, *q.params))


def _task_totals() -> dict[str, float]:
    return dict.fromkeys((*TERMINAL, "ds", "dn"), 0.0)


def _assemble(
    start: datetime, end: datetime, step: timedelta, rows: Sequence[asyncpg.Record]
) -> Stats:
    """Stats from the rows of the statement of :func:`_stats_sql`."""
    by_status = dict.fromkeys((*TERMINAL, "running", "pending"), 0)
    per_task: dict[str, dict[str, float]] = {}
    series: dict[datetime, int] = {}
    hists: dict[tuple[str, int], list[int]] = {}  # (task, metric) -> counts per lane
    error_rows: list[asyncpg.Record] = []
    running = 0
    for row in rows:
        kind = row["kind"]
        if kind == "c":
            n = int(row["n"])
            by_status[row["status"]] += n
            t = per_task.setdefault(row["name"], _task_totals())
            t[row["status"]] += n
            t["ds"] += row["ds"] or 0.0
            t["dn"] += row["dn"] or 0
        elif kind == "t":
            series[row["ts"]] = int(row["n"])
        elif kind == "h":
            key = (row["name"], row["metric"])
            lanes = unpack(row["h"])
            hists[key] = list(map(operator.add, hists[key], lanes)) if key in hists else lanes
        elif kind == "b":
            key = (row["name"], row["metric"])
            if key not in hists:
                hists[key] = [0] * LANES
            hist = hists[key]
            for lane, count in zip(row["lanes"], row["counts"], strict=True):
                hist[lane] += count
        elif kind == "e":
            error_rows.append(row)
        else:  # "l": attempts not finished
            n = int(row["n"])
            status = "lost" if row["stale"] else row["status"]
            by_status[status] += n
            if status == "running":
                running += n
            if status == "lost":
                t = per_task.setdefault(row["name"], _task_totals())
                t["lost"] += n

    all_durations = [0] * LANES
    for (_, metric), lanes in hists.items():
        if metric == 0:
            all_durations = list(map(operator.add, all_durations, lanes))

    tasks = []
    for name, t in per_task.items():
        p50, p95, p99 = _quantiles(hists.get((name, 0), []), (0.5, 0.95, 0.99))
        (qw95,) = _quantiles(hists.get((name, 1), []), (0.95,))
        decided = t["success"] + t["failed"] + t["lost"]
        failures = int(t["failed"] + t["lost"])
        tasks.append(
            TaskStats(
                task_name=name,
                count=int(sum(t[s] for s in TERMINAL)),
                failures=failures,
                failure_rate=failures / decided if decided else 0.0,
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
                queue_wait_p95_ms=qw95,
                retrying=int(t["retrying"]),
                mean_ms=t["ds"] / t["dn"] if t["dn"] else None,
            )
        )
    tasks.sort(key=lambda ts: (-ts.count, ts.task_name))

    decided = by_status["success"] + by_status["failed"] + by_status["lost"]
    first = floor_bucket(start, step)
    throughput = []
    tick = first
    while tick < end:
        throughput.append((tick, series.get(tick, 0)))
        tick += step
    error_rows.sort(key=lambda r: int(r["pos"]))
    errors = [ErrorGroup(r["name"], int(r["n"]), r["ts"], r["example"]) for r in error_rows]
    (p95_all,) = _quantiles(all_durations, (0.95,))
    return Stats(
        since=start,
        until=end,
        total=sum(by_status.values()),
        by_status=by_status,
        failure_rate=(by_status["failed"] + by_status["lost"]) / decided if decided else 0.0,
        running=running,
        lost=by_status["lost"],
        p95_ms=p95_all,
        bucket_seconds=int(step.total_seconds()),
        throughput=throughput,
        tasks=tasks,
        errors=errors,
        relative_error=RELATIVE_ERROR,
    )
