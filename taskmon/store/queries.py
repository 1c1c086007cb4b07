"""Every read statement: history pages, attempts of a task, and window metrics.

History is a keyset scan on ``(created_at, id)`` newest first, so any page
costs the same as the first; with status or task filters a page is merged
from one ordered index scan per status (and task name), so a rare status
costs no more than a common one. Metrics come from the rollups of
``sql/0002_rollups.sql`` and do not grow with the number of rows: a window is
split into whole hours (hour rollups), whole minutes at its edges (minute
rollups) and the partial minutes at its edges (raw rows), so counts are exact;
percentiles come from log-scale histograms, within :data:`RELATIVE_ERROR` of
the exact value. Filters the rollups do not carry (worker, error text, words,
durations, attempt, task id) are answered from the raw rows instead.

No textual, typer or rich here: the TUI and the CLI both call this module.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from taskmon.filters import STATUSES, TaskFilter

__all__ = [
    "RELATIVE_ERROR",
    "CursorError",
    "ErrorGroup",
    "HistoryPage",
    "Stats",
    "TaskStats",
    "bin_of",
    "bin_value",
    "decode_cursor",
    "encode_cursor",
    "fetch_attempts",
    "fetch_history",
    "fetch_stats",
    "rebuild_rollups",
    "resolve_task_names",
]

RELATIVE_ERROR = 0.02
"""The histograms' bound: a reported percentile is within 2 % of the value of that rank."""
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_ZERO_BIN = -32768
TERMINAL = ("success", "failed", "retrying", "lost")
_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)  # the rollups' date_bin origin
_MINUTE = timedelta(minutes=1)
_FIVE_MINUTES = timedelta(minutes=5)
_HOUR = timedelta(hours=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ERROR_GROUPS = 20

_COLUMNS = """
    r.id, r.task_id, r.task_name,
    CASE WHEN r.status = 'running' AND r.created_at
              < now() - make_interval(secs => coalesce(r.timeout_s * 2, $1::double precision))
         THEN 'lost' ELSE r.status END AS status,
    r.attempt, r.worker, r.queue, r.labels, r.params, r.error_type, r.error_message, r.traceback,
    r.timeout_s, r.enqueued_at, r.started_at, r.finished_at, r.duration_ms, r.queue_wait_ms,
    r.created_at, r.updated_at
"""


class CursorError(ValueError):
    """An ``--after`` value that is not a cursor printed by ``taskmon history``."""


# ---------------------------------------------------------------------------
# histogram bins (the same arithmetic as taskmon_bin()/taskmon_bin_value() in SQL)
# ---------------------------------------------------------------------------


def bin_of(value: float) -> int | None:
    """The histogram bin of `value` (None for NaN and infinities)."""
    if not math.isfinite(value):
        return None
    if value <= 0:
        return _ZERO_BIN
    return math.ceil(math.log(value) / math.log(_GAMMA))


def bin_value(index: int) -> float:
    """The value reported for bin `index`: within RELATIVE_ERROR of anything in it."""
    if index == _ZERO_BIN:
        return 0.0
    return 2 * _GAMMA**index / (_GAMMA + 1)


def _quantiles(bins: Iterable[tuple[int, int]], qs: Sequence[float]) -> list[float | None]:
    """Quantiles of a histogram, interpolated like ``percentile_cont``.

    ``percentile_cont(q)`` interpolates between the values of ranks
    ``floor(q * (n - 1))`` and the next; each is estimated from its bin (within
    RELATIVE_ERROR), so their interpolation is within RELATIVE_ERROR as well.
    """
    ordered = sorted((b, n) for b, n in bins if n > 0)
    total = sum(n for _, n in ordered)
    if total == 0:
        return [None for _ in qs]

    def value_at(rank: int) -> float:
        cum = 0
        for b, n in ordered:
            cum += n
            if cum > rank:
                return bin_value(b)
        return bin_value(ordered[-1][0])

    out: list[float | None] = []
    for q in qs:
        pos = q * (total - 1)
        low = math.floor(pos)
        frac = pos - low
        lo_value = value_at(low)
        out.append(lo_value if frac == 0 else lo_value + frac * (value_at(low + 1) - lo_value))
    return out


# ---------------------------------------------------------------------------
# history
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryPage:
    """One page of attempts, newest first.

    Attributes:
        rows: dicts with the keys ``id, task_id, task_name, status, attempt,
            worker, queue, labels, params, error_type, error_message,
            traceback, timeout_s, enqueued_at, started_at, finished_at,
            duration_ms, queue_wait_ms, created_at, updated_at`` (datetimes
            are aware; ``status`` is ``lost`` for attempts running too long).
        next_cursor: pass as ``after`` for the next page; None on the last page.
    """

    rows: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: int) -> str:
    """An opaque, URL-safe cursor for the position just after this row."""
    delta = created_at - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raw = f"{micros}.{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The ``(created_at, id)`` a cursor stands for.

    Raises:
        CursorError: when `cursor` is not one :func:`encode_cursor` made.
    """
    bad = CursorError(
        f"--after: {cursor[:40]!r} is not a cursor "
        "(use the value printed after 'next page: --after' by a previous page)"
    )
    if not cursor or len(cursor) > 64 or cursor.strip(_CURSOR_ALPHABET):
        raise bad
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        micros_text, id_text = text.split(".")
        if not (micros_text.lstrip("-").isdigit() and id_text.isdigit()):
            raise bad
        micros, row_id = int(micros_text), int(id_text)
        created_at = _EPOCH + timedelta(microseconds=micros)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise bad from None
    if row_id > 2**63 - 1:
        raise bad
    return created_at, row_id


async def resolve_task_names(conn: asyncpg.Connection[Any], patterns: Sequence[str]) -> list[str]:
    """The recorded task names that any of `patterns` (filter-language task values) matches.

    Exact names let the planner use the ``(task_name, status, created_at)``
    index and the rollups' keys, where a substring ``LIKE`` can use neither.
    """
    params: list[object] = []
    cond = TaskFilter(tasks=tuple(patterns)).to_sql(params, alias="r")
    rows = await conn.fetch(
        f"SELECT r.task_name FROM task_names r WHERE {cond} ORDER BY 1",
        *params,
    )
    return [r["task_name"] for r in rows]


async def _filter_sql(
    conn: asyncpg.Connection[Any], flt: TaskFilter, params: list[object], lost_after_s: float
) -> str:
    """`flt` as SQL over alias ``r``, with task patterns resolved to exact names."""
    if not flt.tasks:
        return flt.to_sql(params, lost_after_s=lost_after_s, alias="r")
    names = await resolve_task_names(conn, flt.tasks)
    rest = dataclasses.replace(flt, tasks=())
    cond = rest.to_sql(params, lost_after_s=lost_after_s, alias="r")
    params.append(names)
    return f"{cond} AND r.task_name = ANY(${len(params)}::text[])"


# A page with status or task filters is a UNION ALL of one branch per status
# (x per task name when there are few), each an ordered index scan that stops
# after one page. Each branch costs some 0.1-0.3 ms to plan and start, so
# beyond this many the task names are one `= ANY` condition in each status branch.
_MAX_BRANCHES = 12
# When a 'running' row started before this, it counts as lost ($1 is lost_after_s in
# every history statement); the same rule as TaskFilter.to_sql and _COLUMNS.
_CUTOFF = "now() - make_interval(secs => coalesce(r.timeout_s * 2, $1::double precision))"


def _status_branches(statuses: frozenset[str], arg: Callable[[object], str]) -> list[str]:
    """One condition per branch, together selecting exactly the rows `statuses` selects.

    A condition is an equality on ``status`` (so the branch can read the
    ``(status, created_at, id)`` or ``(task_name, status, created_at, id)``
    index in order), narrowed for ``running`` rows by the lost rule: ``lost``
    is ``status = 'lost'`` plus the stale running rows, ``running`` only the
    others. The 'running' literal is a schema constant, inline so the planner
    may use the partial index on running rows.
    """
    wanted = statuses or frozenset(STATUSES)
    branches: list[str] = []
    for status in STATUSES:
        if status not in wanted:
            continue
        if status == "running":
            if "lost" in wanted:
                branches.append("r.status = 'running'")
            else:
                branches.append(f"r.status = 'running' AND r.created_at >= {_CUTOFF}")
            continue
        branches.append(f"r.status = {arg(status)}")
        if status == "lost" and "running" not in wanted:
            branches.append(f"r.status = 'running' AND r.created_at < {_CUTOFF}")
    return branches


def _history_sql(
    flt: TaskFilter,
    names: list[str] | None,
    params: list[object],
    keyset: tuple[str, ...],
    limit: int,
    lost_after_s: float,
) -> str:
    """The page statement for `flt`, its task patterns already resolved to `names`.

    Without status or task filters one scan of the ``(created_at, id)`` index
    serves any page. With them, a single scan of that index would read past
    every non-matching row (most of the table for a rare status), so the page
    is merged from branches that each read one index range in order and stop
    after ``LIMIT`` rows: PostgreSQL merges them (Merge Append), reading about
    one page plus one row per branch whatever the depth or the selectivity.
    `keyset` holds the cursor condition, if any; `limit` is the row count to fetch.
    """

    def arg(value: object) -> str:
        params.append(value)
        return f"${len(params)}"

    if not flt.statuses and names is None:  # the created_at index alone
        where = " AND ".join((flt.to_sql(params, lost_after_s=lost_after_s, alias="r"), *keyset))
        return (
            f"SELECT {_COLUMNS} FROM task_execution_logs r WHERE {where} "
            f"ORDER BY r.created_at DESC, r.id DESC LIMIT {arg(limit)}"
        )
    rest = dataclasses.replace(flt, statuses=frozenset(), tasks=()).to_sql(
        params, lost_after_s=lost_after_s, alias="r"
    )
    status_conds = _status_branches(flt.statuses, arg)
    if names is not None and len(names) * len(status_conds) <= _MAX_BRANCHES:
        name_conds = [f"r.task_name = {arg(name)}" for name in names]
    elif names is not None:
        name_conds = [f"r.task_name = ANY({arg(names)}::text[])"]
    else:
        name_conds = ["TRUE"]
    n = arg(limit)
    branches = [
        f"(SELECT {_COLUMNS} FROM task_execution_logs r "
        f"WHERE {' AND '.join((name, status, rest, *keyset))} "
        f"ORDER BY r.created_at DESC, r.id DESC LIMIT {n})"
        for name in name_conds
        for status in status_conds
    ]
    return (
        f"SELECT * FROM ({' UNION ALL '.join(branches)}) AS page "
        f"ORDER BY created_at DESC, id DESC LIMIT {n}"
    )


async def fetch_history(
    conn: asyncpg.Connection[Any],
    flt: TaskFilter,
    *,
    limit: int = 50,
    after: str | None = None,
    lost_after_s: float = 3600.0,
) -> HistoryPage:
    """One page of attempts matching `flt`, newest first by ``(created_at, id)``.

    Every page, filtered or deep, reads about one page of index entries (see
    :func:`_history_sql`); only filters that no index serves (worker, error
    text, words, durations) read past the rows they reject.

    Args:
        conn: a connection from :func:`taskmon.store.db.connect`.
        flt: the filter.
        limit: rows per page (at least 1).
        after: the previous page's ``next_cursor``.
        lost_after_s: how long a ``running`` attempt without a timeout may run
            before it shows as ``lost``.

    Raises:
        CursorError: `after` is not a cursor.
        ValueError: `limit` is below 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    params: list[object] = [float(lost_after_s)]
    keyset: tuple[str, ...] = ()
    if after is not None:
        created_at, row_id = decode_cursor(after)
        params += [created_at, row_id]
        keyset = ("(r.created_at, r.id) < ($2, $3)",)
    names = await resolve_task_names(conn, flt.tasks) if flt.tasks else None
    if names == []:  # no recorded task name matches
        return HistoryPage(rows=[], next_cursor=None)
    # one row more than the page tells whether there is a next page
    sql = _history_sql(flt, names, params, keyset, limit + 1, lost_after_s)
    records = await conn.fetch(sql, *params)
    rows = [dict(r) for r in records[:limit]]
    next_cursor = None
    if len(records) > limit:
        last = rows[-1]
        next_cursor = encode_cursor(last["created_at"], last["id"])
    return HistoryPage(rows=rows, next_cursor=next_cursor)


async def fetch_attempts(conn: asyncpg.Connection[Any], task_id: str) -> list[dict[str, Any]]:
    """Every attempt of one task, in attempt order, as :class:`HistoryPage` row dicts."""
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM task_execution_logs r WHERE r.task_id = $2 "
        "ORDER BY r.attempt, r.id",
        3600.0,
        task_id,
    )
    return [dict(r) for r in records]


# ---------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------


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


def _floor(t: datetime, step: timedelta) -> datetime:
    return _ORIGIN + ((t - _ORIGIN) // step) * step


def _ceil(t: datetime, step: timedelta) -> datetime:
    floor = _floor(t, step)
    return floor if floor == t else floor + step


@dataclass(frozen=True)
class _Plan:
    """Which source answers which part of a window (half-open ranges, maybe empty)."""

    hours: tuple[datetime, datetime]
    minutes: tuple[tuple[datetime, datetime], tuple[datetime, datetime]]
    raw: tuple[tuple[datetime, datetime], tuple[datetime, datetime]]


def _plan(since: datetime, until: datetime, *, small: timedelta, big: timedelta | None) -> _Plan:
    """Split a window: `big` buckets inside, `small` buckets at the edges, raw rows between.

    ``_Plan.minutes`` holds the `small` ranges (minutes, or 5 minutes for histograms).
    """
    m0, m1 = _ceil(since, small), _floor(until, small)
    if m0 >= m1:
        none = (since, since)
        return _Plan(none, (none, none), ((since, until), (until, until)))
    raw = ((since, m0), (m1, until))
    if big is not None:
        h0, h1 = _ceil(since, big), _floor(until, big)
        if h0 < h1:
            return _Plan((h0, h1), ((m0, h0), (h1, m1)), raw)
    return _Plan((m0, m0), ((m0, m1), (m1, m1)), raw)


_LANE_DIGITS = 12
_LANE_MIN_BIN, _LANE_MAX_BIN, _LANE_OFFSET = -179, 520, 180


def _clamp_bin(index: int) -> int:
    """The bin a packed histogram keeps `index` in (values beyond its lanes go to the ends)."""
    if index == _ZERO_BIN:
        return index
    return min(max(index, _LANE_MIN_BIN), _LANE_MAX_BIN)


def _unpack(packed: str) -> list[tuple[int, int]]:
    """The (bin, count) pairs of a packed histogram (see taskmon_hist_unit in SQL)."""
    digits = packed.partition(".")[0].lstrip("+")
    if digits.startswith("-"):  # cannot happen unless the rollups were edited by hand
        return []
    digits = "0" * (-len(digits) % _LANE_DIGITS) + digits
    top = len(digits) // _LANE_DIGITS - 1  # the lane of the leftmost chunk
    zero = "0" * _LANE_DIGITS
    out = []
    for i in range(top + 1):
        chunk = digits[i * _LANE_DIGITS : (i + 1) * _LANE_DIGITS]
        if chunk != zero:
            lane = top - i
            out.append((_ZERO_BIN if lane == 0 else lane - _LANE_OFFSET, int(chunk)))
    return out


# (kind, level) -> columns selected from a rollup table or the raw table (alias r)
_ROLLUP_COLUMNS = {
    "counts": "r.bucket AS ts, r.task_name, r.status, r.n, r.duration_sum_ms AS ds, "
    "r.duration_n AS dn, r.queue_wait_sum_ms AS qs, r.queue_wait_n AS qn",
    "hist": "r.task_name, r.metric, r.h",
    "errors": "r.error_type, r.n, r.last_seen, r.example",
}
_TABLES = {
    "counts": ("task_rollup_hour", "task_rollup_minute"),
    "hist": ("task_hist_hour", "task_hist_5min"),
    "errors": ("task_error_hour", "task_error_minute"),
}
_FINITE = "CASE WHEN r.{0} > '-Infinity' AND r.{0} < 'Infinity' THEN r.{0} END"
_DUR, _QW = _FINITE.format("duration_ms"), _FINITE.format("queue_wait_ms")
_RAW_SELECTS = {
    "counts": [
        f"r.created_at AS ts, r.task_name, r.status, 1 AS n, coalesce({_DUR}, 0) AS ds, "
        f"({_DUR} IS NOT NULL)::int AS dn, coalesce({_QW}, 0) AS qs, ({_QW} IS NOT NULL)::int AS qn"
    ],
    "hist": [
        f"r.task_name, 0::smallint AS metric, taskmon_bin({_DUR}) AS bin, 1 AS n",
        f"r.task_name, 1::smallint AS metric, taskmon_bin({_QW}) AS bin, 1 AS n",
    ],
    "errors": [
        "coalesce(r.error_type, '') AS error_type, 1 AS n, r.created_at AS last_seen, "
        "left(r.error_message, 500) AS example"
    ],
}
_OUTER = {
    "counts": "SELECT date_bin({step}, ts, '2000-01-01 00:00:00+00') AS tb, task_name, status, "
    "sum(n)::bigint AS n, sum(ds) AS ds, sum(dn)::bigint AS dn, sum(qs) AS qs, "
    "sum(qn)::bigint AS qn FROM src GROUP BY 1, 2, 3",
    "hist": "SELECT task_name, metric, bin, sum(n)::bigint AS n FROM src "
    "WHERE bin IS NOT NULL GROUP BY 1, 2, 3",
    "hist_packed": "SELECT task_name, metric, sum(h)::text AS h FROM src GROUP BY 1, 2",
    "errors": "SELECT nullif(error_type, '') AS error_type, sum(n)::bigint AS n, "
    "max(last_seen) AS last_seen, "
    "(array_agg(example ORDER BY last_seen DESC NULLS LAST))[1] AS example "
    f"FROM src GROUP BY error_type HAVING sum(n) > 0 ORDER BY 2 DESC, 1 LIMIT {_ERROR_GROUPS}",
}


@dataclass
class _Query:
    """Builds one metrics statement; every value is a ``$N`` parameter."""

    params: list[object] = dataclasses.field(default_factory=list)

    def arg(self, value: object, cast: str = "") -> str:
        self.params.append(value)
        return f"${len(self.params)}{cast}"

    def ranges(self, column: str, spans: Iterable[tuple[datetime, datetime]]) -> str:
        parts = [
            f"(r.{column} >= {self.arg(a)} AND r.{column} < {self.arg(b)})"
            for a, b in spans
            if a < b
        ]
        return "(" + " OR ".join(parts) + ")" if parts else "FALSE"


def _rollup_sql(
    kind: str,
    plan: _Plan,
    q: _Query,
    statuses: list[str],
    names: list[str] | None,
    step: timedelta,
) -> str:
    """The statement for `kind` over a rollup plan (status/task filters only)."""
    status = f"r.status = ANY({q.arg(statuses, '::text[]')})"
    task = f" AND r.task_name = ANY({q.arg(names, '::text[]')})" if names is not None else ""
    hour_table, minute_table = _TABLES[kind]
    parts: list[str] = []
    cols = _ROLLUP_COLUMNS[kind]
    if plan.hours[0] < plan.hours[1]:
        where = q.ranges("bucket", [plan.hours])
        parts.append(f"SELECT {cols} FROM {hour_table} r WHERE {where} AND {status}{task}")
    if any(a < b for a, b in plan.minutes):
        where = q.ranges("bucket", plan.minutes)
        parts.append(f"SELECT {cols} FROM {minute_table} r WHERE {where} AND {status}{task}")
    if kind == "hist":
        # packed rollups and raw edge rows are merged in Python
        if not parts:
            parts.append(f"SELECT {cols} FROM {hour_table} r WHERE FALSE")
        return _with_outer("hist_packed", parts, q, step)
    parts += _raw_edges(kind, plan, q, status, task)
    return _with_outer(kind, parts, q, step)


def _raw_edges(kind: str, plan: _Plan, q: _Query, status: str, task: str) -> list[str]:
    raw_where = q.ranges("created_at", plan.raw)
    extra = " AND r.status <> 'success'" if kind == "errors" else ""
    return [
        f"SELECT {select} FROM task_execution_logs r WHERE {raw_where} AND {status}{task}{extra}"
        for select in _RAW_SELECTS[kind]
    ]


def _raw_edge_hist_sql(plan: _Plan, q: _Query, statuses: list[str], names: list[str] | None) -> str:
    """Histogram cells of the raw rows at the edges of a histogram plan."""
    status = f"r.status = ANY({q.arg(statuses, '::text[]')})"
    task = f" AND r.task_name = ANY({q.arg(names, '::text[]')})" if names is not None else ""
    return _with_outer("hist", _raw_edges("hist", plan, q, status, task), q, _MINUTE)


def _raw_sql(
    kind: str,
    since: datetime,
    until: datetime,
    q: _Query,
    statuses: list[str],
    cond: str,
    step: timedelta,
) -> str:
    """The statement for `kind` straight from the raw rows (any filter)."""
    where = (
        f"r.created_at >= {q.arg(since)} AND r.created_at < {q.arg(until)} "
        f"AND r.status = ANY({q.arg(statuses, '::text[]')}) AND {cond}"
    )
    if kind == "errors":
        where += " AND r.status <> 'success'"
    parts = [f"SELECT {s} FROM task_execution_logs r WHERE {where}" for s in _RAW_SELECTS[kind]]
    return _with_outer(kind, parts, q, step)


def _with_outer(kind: str, parts: list[str], q: _Query, step: timedelta) -> str:
    outer = _OUTER[kind]
    if kind == "counts":
        outer = outer.format(step=q.arg(step, "::interval"))
    return f"WITH src AS ({' UNION ALL '.join(parts)}) {outer}"


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


def _needs_raw(flt: TaskFilter) -> bool:
    """Whether `flt` uses a field the rollups do not keep."""
    return bool(
        flt.workers
        or flt.errors
        or flt.words
        or flt.task_id is not None
        or flt.min_duration_ms is not None
        or flt.max_duration_ms is not None
        or flt.attempt is not None
    )


async def fetch_stats(
    conn: asyncpg.Connection[Any],
    flt: TaskFilter,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    lost_after_s: float = 3600.0,
    now: datetime | None = None,
) -> Stats:
    """Metrics for the attempts matching `flt` whose ``created_at`` is in the window.

    The window is ``flt.since``/``flt.until`` when set, else the `since`/`until`
    arguments, else the 24 hours before `now`. Counts are exact; percentiles
    are within :data:`RELATIVE_ERROR` (relative). Status and task filters are
    answered from the rollups; any other filter reads the raw rows of the
    window (correct, but its cost grows with the window).

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
    raw = _needs_raw(flt)

    counts_q, hist_q, errors_q, edges_q = _Query(), _Query(), _Query(), _Query()
    edges_sql = None
    if raw:
        sqls = []
        for kind, q in (("counts", counts_q), ("hist", hist_q), ("errors", errors_q)):
            cond = flt.to_sql(q.params, lost_after_s=lost_after_s, alias="r")
            sqls.append(_raw_sql(kind, start, end, q, statuses, cond, step))
        counts_sql, hist_sql, errors_sql = sqls
    else:
        names = await resolve_task_names(conn, flt.tasks) if flt.tasks else None
        big = _HOUR if step >= _HOUR else None
        count_plan = _plan(start, end, small=_MINUTE, big=big)
        hist_plan = _plan(start, end, small=_FIVE_MINUTES, big=_HOUR)
        error_plan = _plan(start, end, small=_MINUTE, big=_HOUR)
        counts_sql = _rollup_sql("counts", count_plan, counts_q, statuses, names, step)
        hist_sql = _rollup_sql("hist", hist_plan, hist_q, statuses, names, step)
        edges_sql = _raw_edge_hist_sql(hist_plan, edges_q, statuses, names)
        errors_sql = _rollup_sql("errors", error_plan, errors_q, statuses, names, step)

    # one snapshot for every statement, so the parts add up; the rollup statements
    # read a few thousand rows, where starting parallel workers costs more than it saves
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        if not raw:
            await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        count_rows = await conn.fetch(counts_sql, *counts_q.params)
        hist_rows = await conn.fetch(hist_sql, *hist_q.params)
        cells: dict[tuple[str, int], dict[int, int]] = {}
        if edges_sql is None:
            _add_cells(cells, ((r["task_name"], r["metric"], r["bin"], r["n"]) for r in hist_rows))
        else:
            packed = (
                (r["task_name"], r["metric"], b, n) for r in hist_rows for b, n in _unpack(r["h"])
            )
            _add_cells(cells, packed)
            edge_rows = await conn.fetch(edges_sql, *edges_q.params)
            _add_cells(cells, ((r["task_name"], r["metric"], r["bin"], r["n"]) for r in edge_rows))
        error_rows = await conn.fetch(errors_sql, *errors_q.params)
        live_rows = await _live_rows(conn, flt, start, end, lost_after_s)
    return _assemble(start, end, step, count_rows, cells, error_rows, live_rows)


def _add_cells(
    cells: dict[tuple[str, int], dict[int, int]], rows: Iterable[tuple[str, int, int, int]]
) -> None:
    for task_name, metric, index, n in rows:
        hist = cells.setdefault((task_name, metric), {})
        key = _clamp_bin(index)
        hist[key] = hist.get(key, 0) + int(n)


async def _live_rows(
    conn: asyncpg.Connection[Any],
    flt: TaskFilter,
    start: datetime,
    end: datetime,
    lost_after_s: float,
) -> list[asyncpg.Record]:
    """Attempts of the window not yet finished, per task: pending, running, stale (lost).

    ``status = 'running'`` as its own branch lets the planner use the partial
    index on running rows.
    """
    params: list[object] = [start, end, float(lost_after_s)]
    cond = await _filter_sql(conn, flt, params, lost_after_s)
    window = "r.created_at >= $1 AND r.created_at < $2"
    sql = f"""
        SELECT r.task_name, 'running' AS status,
               r.created_at < now() - make_interval(secs => coalesce(r.timeout_s * 2, $3))
                   AS stale,
               count(*) AS n
        FROM task_execution_logs r
        WHERE r.status = 'running' AND {window} AND {cond}
        GROUP BY 1, 2, 3
        UNION ALL
        SELECT r.task_name, 'pending', FALSE, count(*)
        FROM task_execution_logs r
        WHERE r.status = 'pending' AND {window} AND {cond}
        GROUP BY 1, 2, 3
    """
    return await conn.fetch(sql, *params)


def _task_totals() -> dict[str, float]:
    return {"success": 0.0, "failed": 0.0, "retrying": 0.0, "lost": 0.0, "ds": 0.0, "dn": 0.0}


def _assemble(
    start: datetime,
    end: datetime,
    step: timedelta,
    count_rows: Sequence[asyncpg.Record],
    cells: dict[tuple[str, int], dict[int, int]],
    error_rows: Sequence[asyncpg.Record],
    live_rows: Sequence[asyncpg.Record],
) -> Stats:
    by_status = dict.fromkeys(("success", "failed", "retrying", "lost", "running", "pending"), 0)
    per_task: dict[str, dict[str, float]] = {}
    series: dict[datetime, int] = {}
    for row in count_rows:
        n = int(row["n"])
        by_status[row["status"]] += n
        t = per_task.setdefault(row["task_name"], _task_totals())
        t[row["status"]] += n
        t["ds"] += row["ds"] or 0.0
        t["dn"] += row["dn"] or 0
        series[row["tb"]] = series.get(row["tb"], 0) + n
    running = 0
    for row in live_rows:
        n = int(row["n"])
        status = "lost" if row["stale"] else row["status"]
        by_status[status] += n
        if status == "running":
            running += n
        if status == "lost":
            t = per_task.setdefault(row["task_name"], _task_totals())
            t["lost"] += n

    hists = {key: list(hist.items()) for key, hist in cells.items()}
    all_durations = [cell for (_, metric), h in hists.items() if metric == 0 for cell in h]

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
    first = _floor(start, step)
    throughput = []
    tick = first
    while tick < end:
        throughput.append((tick, series.get(tick, 0)))
        tick += step
    errors = [
        ErrorGroup(r["error_type"], int(r["n"]), r["last_seen"], r["example"]) for r in error_rows
    ]
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


async def rebuild_rollups(conn: asyncpg.Connection[Any]) -> None:
    """Recompute every rollup from the raw rows (after a bulk load without triggers).

    Time no longer covered by raw rows (deleted by retention) loses its rollups.
    """
    async with conn.transaction():
        await conn.execute("SELECT taskmon_rebuild_rollups()")
