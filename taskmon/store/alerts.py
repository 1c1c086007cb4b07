"""The figures alert rules compare, and the rules' states.

Each alert metric (``taskmon.server.alerts.metrics``) reads its figure with
one of these, or with :func:`~taskmon.store.stats.fetch_stats` (failure rate
and lost counts). Figures come from the rollups where the filter allows it,
as the stats queries do: a percentile sums the packed histograms of the whole 5 minutes of the
window (``task_hist_5min``) with those of the raw rows at its edges; a new
error type is looked for in the raw rows of the window (an alert window is
minutes long) and looked up in the error rollups of the week before. Filters
the rollups cannot answer (worker, error text, words, durations, attempt,
task id, queue, params, labels) read the raw rows instead.

A rule's state is one row of ``taskmon_alerts`` (``sql/0004_alerts.sql``),
read and written under a row lock, so that two evaluators (a hub and a cron
job) never both make the same transition.

No textual, typer or rich here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from taskmon.domain.filters import TaskFilter
from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S
from taskmon.store.filter_sql import filter_sql, resolve_task_names, resolve_word_task_names
from taskmon.store.histogram import unpack
from taskmon.store.metrics import METRICS as HIST_METRICS
from taskmon.store.stats import (
    _quantiles,  # the histogram codec of the stats queries: one home for the lane layout
    ceil_bucket,
    floor_bucket,
    needs_raw,
)
from taskmon.store.workers import fetch_queues, fetch_workers

__all__ = [
    "Measurement",
    "StoredState",
    "deepest_queue",
    "load_states",
    "lock_state",
    "new_error_types",
    "oldest_pending",
    "percentile",
    "save_state",
    "workers_alive",
]

_TERMINAL = ("success", "failed", "retrying", "lost")
_ERROR_STATUSES = ("failed", "retrying", "lost")
_FIVE_MINUTES = timedelta(minutes=5)


@dataclass(frozen=True)
class Measurement:
    """One figure of one window.

    Attributes:
        value: the figure (a rate from 0 to 1, milliseconds, a count, or the
            number of new error types); None when the window has no data for it.
        count: the attempts it was computed over (what ``min_count`` compares):
            decided attempts for a failure rate or lost count, attempts with a
            duration (or queue wait) for a percentile, erring attempts of the
            new types for :func:`new_error_types`.
        detail: the new error types, oldest first (:func:`new_error_types` only).
    """

    value: float | None
    count: int
    detail: tuple[str, ...] = ()


def _arg(params: list[object], value: object, cast: str = "") -> str:
    params.append(value)
    return f"${len(params)}{cast}"


async def _raw_condition(
    conn: asyncpg.Connection[Any], flt: TaskFilter, params: list[object], lost_after_s: float
) -> str:
    """`flt` as SQL over alias ``r``, task patterns and words resolved to exact names."""
    words = await resolve_word_task_names(conn, flt.words)
    rest = dataclasses.replace(flt, tasks=())
    cond = filter_sql(rest, params, lost_after_s=lost_after_s, alias="r", word_task_names=words)
    if flt.tasks:
        names = await resolve_task_names(conn, flt.tasks)
        cond += f" AND r.task_name = ANY({_arg(params, names, '::text[]')})"
    return cond


async def _rollup_condition(
    conn: asyncpg.Connection[Any], flt: TaskFilter, params: list[object], statuses: Sequence[str]
) -> str:
    """The status and task part of `flt` over a rollup table (alias ``r``)."""
    cond = f"r.status = ANY({_arg(params, list(statuses), '::text[]')})"
    if flt.tasks:
        names = await resolve_task_names(conn, flt.tasks)
        cond += f" AND r.task_name = ANY({_arg(params, names, '::text[]')})"
    return cond


async def percentile(
    conn: asyncpg.Connection[Any],
    flt: TaskFilter,
    *,
    lane: str,
    q: float,
    start: datetime,
    end: datetime,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
) -> Measurement:
    """The `q` quantile (ms) of `lane` for the finished attempts matching `flt` in ``[start, end)``.

    Whole 5 minutes of the window come from ``task_hist_5min``, its edges (and
    any filter the rollups cannot answer) from the raw rows; within the
    histograms' 2 %.

    Args:
        conn: a connection from :func:`taskmon.store.db.connect`.
        flt: which attempts count (no since/until: the window is given).
        lane: ``duration`` or ``queue_wait`` (:data:`taskmon.store.metrics.METRICS`).
        q: the quantile, from 0 to 1.
        start: the window's start.
        end: the window's end.
        lost_after_s: how long a running attempt without timeout may run
            before it counts as lost.

    Returns:
        The quantile, over the attempts with a value in `lane` (None, 0 when none has).
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    index = HIST_METRICS.index(lane)
    column = f"{lane}_ms"
    statuses = [s for s in _TERMINAL if not flt.statuses or s in flt.statuses]
    params: list[object] = []
    # the stats queries' guard: NaN and infinities have no bin
    value = f"CASE WHEN r.{column} > '-Infinity' AND r.{column} < 'Infinity' THEN r.{column} END"
    lo, hi = ceil_bucket(start, _FIVE_MINUTES), floor_bucket(end, _FIVE_MINUTES)
    if needs_raw(flt) or lo >= hi:
        status = f"r.status = ANY({_arg(params, statuses, '::text[]')})"
        cond = await _raw_condition(conn, flt, params, lost_after_s)
        sql = (
            f"SELECT sum(taskmon_hist_unit({value}))::text FROM task_execution_logs r "
            f"WHERE r.created_at >= {_arg(params, start)} AND r.created_at < {_arg(params, end)} "
            f"AND {status} AND {cond}"
        )
    else:
        sel = await _rollup_condition(conn, flt, params, statuses)
        a, b = _arg(params, lo), _arg(params, hi)
        edges = (
            f"((r.created_at >= {_arg(params, start)} AND r.created_at < {a}) "
            f"OR (r.created_at >= {b} AND r.created_at < {_arg(params, end)}))"
        )
        sql = (
            "SELECT sum(h)::text FROM ("
            f"SELECT r.h FROM task_hist_5min r WHERE r.bucket >= {a} AND r.bucket < {b} "
            f"AND r.metric = {_arg(params, index, '::smallint')} AND {sel} "
            "UNION ALL "
            f"SELECT taskmon_hist_unit({value}) FROM task_execution_logs r "
            f"WHERE {edges} AND {sel}) AS h"
        )
    packed = await conn.fetchval(sql, *params)
    if packed is None:
        return Measurement(None, 0)
    lanes = unpack(packed)
    total = sum(lanes)
    (found,) = _quantiles(lanes, (q,))
    return Measurement(found, total)


async def new_error_types(
    conn: asyncpg.Connection[Any],
    flt: TaskFilter,
    *,
    start: datetime,
    end: datetime,
    baseline: timedelta,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
) -> Measurement:
    """The error types of the erring attempts matching `flt` in ``[start, end)`` unseen before.

    An error type is new when no matching attempt had it in the `baseline`
    before `start`: the raw rows of the window, the error rollups (then raw
    rows) of the baseline.

    Returns:
        How many types are new, the erring attempts of those types, and the
        types themselves (``detail``), oldest first.
    """
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    statuses = [s for s in _ERROR_STATUSES if not flt.statuses or s in flt.statuses]
    params: list[object] = []
    cond = await _raw_condition(conn, flt, params, lost_after_s)
    status = f"r.status = ANY({_arg(params, statuses, '::text[]')})"
    before = start - baseline
    if needs_raw(flt):
        lookback = (
            "SELECT 1 FROM task_execution_logs r WHERE r.error_type = c.error_type "
            f"AND r.created_at >= {_arg(params, before)} AND r.created_at < {_arg(params, start)} "
            f"AND {status} AND {cond}"
        )
    else:
        # whole hours from the hour rollups (the first may reach up to an hour further
        # back), then whole minutes, then the raw rows of the minute the window starts in
        sel = await _rollup_condition(conn, flt, params, statuses)
        h0 = _arg(params, floor_bucket(before, timedelta(hours=1)))
        h1 = _arg(params, floor_bucket(start, timedelta(hours=1)))
        m1 = _arg(params, floor_bucket(start, timedelta(minutes=1)))
        lookback = (
            "SELECT 1 FROM task_error_hour r WHERE r.error_type = c.error_type "
            f"AND r.bucket >= {h0} AND r.bucket < {h1} AND r.n > 0 AND {sel} "
            "UNION ALL "
            "SELECT 1 FROM task_error_minute r WHERE r.error_type = c.error_type "
            f"AND r.bucket >= {h1} AND r.bucket < {m1} AND r.n > 0 AND {sel} "
            "UNION ALL "
            "SELECT 1 FROM task_execution_logs r WHERE r.error_type = c.error_type "
            f"AND r.created_at >= {m1} AND r.created_at < {_arg(params, start)} "
            f"AND {status} AND {cond}"
        )
    sql = (
        "WITH cur AS ("
        "SELECT r.error_type, count(*) AS n, min(r.created_at) AS first_seen "
        "FROM task_execution_logs r "
        f"WHERE r.created_at >= {_arg(params, start)} AND r.created_at < {_arg(params, end)} "
        f"AND r.error_type IS NOT NULL AND r.error_type <> '' AND {status} AND {cond} "
        "GROUP BY r.error_type) "
        f"SELECT c.error_type, c.n FROM cur c WHERE NOT EXISTS ({lookback}) "
        "ORDER BY c.first_seen, c.error_type"
    )
    rows = await conn.fetch(sql, *params)
    types = tuple(str(r["error_type"]) for r in rows)
    return Measurement(float(len(types)), sum(int(r["n"]) for r in rows), types)


async def deepest_queue(
    conn: asyncpg.Connection[Any], *, start: datetime, end: datetime
) -> Measurement:
    """The deepest queue's latest depth among the queues sampled in ``[start, end)``.

    Returns:
        The depth, over how many queues were sampled (None, 0 when none was).
    """
    queues = await fetch_queues(conn, window_s=max(1.0, (end - start).total_seconds()))
    if not queues:
        return Measurement(None, 0)
    return Measurement(float(max(q["depth"] for q in queues)), len(queues))


async def oldest_pending(
    conn: asyncpg.Connection[Any], flt: TaskFilter, *, end: datetime, lost_after_s: float
) -> Measurement:
    """Seconds the oldest attempt matching `flt` sent before `end` has waited unstarted.

    Every ``pending`` row counts, however old (what was never picked up is the
    point), not only those of the rule's window.

    Returns:
        The wait (None when nothing waits), over how many attempts wait, and the
        task names of the oldest ones (``detail``, at most 5).
    """
    params: list[object] = []
    cond = await _raw_condition(conn, flt, params, lost_after_s)
    at = _arg(params, end.astimezone(UTC))
    sql = (
        f"SELECT r.task_name, r.created_at, count(*) OVER () AS n,"
        f" extract(epoch FROM {at} - r.created_at)::float8 AS wait_s"
        f" FROM task_execution_logs r WHERE r.status = 'pending' AND r.created_at < {at}"
        f" AND {cond} ORDER BY r.created_at, r.id LIMIT 5"
    )
    rows = await conn.fetch(sql, *params)
    if not rows:
        return Measurement(None, 0)
    names = tuple(dict.fromkeys(str(r["task_name"]) for r in rows))
    return Measurement(max(0.0, float(rows[0]["wait_s"])), int(rows[0]["n"]), names)


async def workers_alive(conn: asyncpg.Connection[Any]) -> Measurement:
    """The workers whose heartbeat is fresh now (count: always 1, there is no sample size)."""
    workers = await fetch_workers(conn)
    return Measurement(float(sum(1 for w in workers if w["state"] == "alive")), 1)


# ---------------------------------------------------------------------------
# states
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredState:
    """One rule's row of ``taskmon_alerts``.

    Attributes:
        rule: the rule's name.
        state: ``ok``, ``pending``, ``firing`` or ``resolved``.
        since: when it entered `state`.
        clearing_since: while firing, since when the value has been back
            below the hysteresis band (None while it is not).
        fired_at: when it last started firing.
        resolved_at: when it last resolved.
        value: the figure at the last check (None: no data).
        count: what the figure was computed over at the last check.
        detail: words about the last check (the new error types, say).
        checked_at: the last check.
        error: why the last check could not compute the figure, if it could not.
    """

    rule: str
    state: str
    since: datetime
    clearing_since: datetime | None = None
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    value: float | None = None
    count: int | None = None
    detail: str | None = None
    checked_at: datetime | None = None
    error: str | None = None


_STATE_COLUMNS = (
    "rule, state, since, clearing_since, fired_at, resolved_at, value, count, detail, "
    "checked_at, error"
)


def _state(row: asyncpg.Record) -> StoredState:
    return StoredState(**dict(row))


async def load_states(conn: asyncpg.Connection[Any]) -> dict[str, StoredState]:
    """Every stored state, by rule name."""
    rows = await conn.fetch(f"SELECT {_STATE_COLUMNS} FROM taskmon_alerts")
    return {r["rule"]: _state(r) for r in rows}


async def lock_state(conn: asyncpg.Connection[Any], rule: str, now: datetime) -> StoredState:
    """The state of `rule`, locked until the transaction `conn` is in ends.

    A rule never stored yet gets an ``ok`` row first, so the lock always has a
    row to hold. Must be called inside a transaction.
    """
    await conn.execute(
        "INSERT INTO taskmon_alerts (rule, state, since, checked_at) VALUES ($1, 'ok', $2, $2) "
        "ON CONFLICT (rule) DO NOTHING",
        rule,
        now,
    )
    row = await conn.fetchrow(
        f"SELECT {_STATE_COLUMNS} FROM taskmon_alerts WHERE rule = $1 FOR UPDATE", rule
    )
    assert row is not None
    return _state(row)


async def save_state(conn: asyncpg.Connection[Any], state: StoredState) -> None:
    """Write `state` over its rule's row (taken by :func:`lock_state`)."""
    await conn.execute(
        "UPDATE taskmon_alerts SET state = $2, since = $3, clearing_since = $4, fired_at = $5, "
        "resolved_at = $6, value = $7, count = $8, detail = $9, checked_at = $10, error = $11 "
        "WHERE rule = $1",
        state.rule,
        state.state,
        state.since,
        state.clearing_since,
        state.fired_at,
        state.resolved_at,
        state.value,
        state.count,
        state.detail,
        state.checked_at,
        state.error,
    )
