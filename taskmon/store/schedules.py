"""What ran for each schedule: the attempts a scheduler's sends left behind.

TaskIQ's scheduler stamps ``schedule_id`` on each message; taskmon stores the
labels, so a schedule's runs are its task's attempts carrying that label.
:func:`fetch_runs` reads them for a window in one statement (by task name and
time, on ``idx_task_logs_composite``), one :class:`Run` per task id: when it was
sent and started (its first attempt), how it ended (its last).
:func:`fetch_last_runs` finds the newest run of schedules that have none in the
window. :func:`reports` matches them with the schedules and judges each
(:func:`taskmon.domain.schedules.judge`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from taskmon.domain.schedules import (
    CRON_TOLERANCE_S,
    SCHEDULE_LABEL,
    Run,
    Schedule,
    ScheduleReport,
    judge,
)
from taskmon.store.schema import DEFAULT_LOST_AFTER_S, STATUSES, shown_status_sql

__all__ = ["fetch_last_runs", "fetch_runs", "reports"]

# $1 lost_after_s, $2 task names, $3 statuses, $4 since. One row per task id:
# the first attempt's times, the last attempt's status (by the lost rule) and duration.
_RUNS_SQL = f"""
SELECT DISTINCT ON (r.task_id)
       r.task_id, r.task_name, r.labels->>'{SCHEDULE_LABEL}' AS schedule_id,
       r.attempt, {shown_status_sql("$1::double precision")} AS status, r.duration_ms,
       first_value(r.created_at) OVER w AS created_at,
       first_value(r.enqueued_at) OVER w AS enqueued_at,
       first_value(r.started_at) OVER w AS started_at
  FROM task_execution_logs r
 WHERE r.task_name = any($2::text[]) AND r.status = any($3::text[]) AND r.created_at >= $4
   AND r.labels ? '{SCHEDULE_LABEL}'
WINDOW w AS (PARTITION BY r.task_id ORDER BY r.attempt, r.id
             ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
 ORDER BY r.task_id, r.attempt DESC, r.id DESC
"""

# $1 lost_after_s, $2 task names, $3 schedule ids ('' : any id), $4 statuses, $5 before.
# Per schedule and status, the newest attempt before the window (one backward index
# scan each, stopping at the first match), then the newest of those.
_LAST_SQL = f"""
SELECT DISTINCT ON (s.i) s.i, x.*
  FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS s(task_name, schedule_id, i)
 CROSS JOIN unnest($4::text[]) AS st(status)
 CROSS JOIN LATERAL (
       SELECT r.task_id, r.labels->>'{SCHEDULE_LABEL}' AS schedule_id, r.attempt,
              {shown_status_sql("$1::double precision")} AS status, r.duration_ms,
              r.created_at, r.enqueued_at, r.started_at
         FROM task_execution_logs r
        WHERE r.task_name = s.task_name AND r.status = st.status AND r.created_at < $5
          AND CASE WHEN s.schedule_id = '' THEN r.labels ? '{SCHEDULE_LABEL}'
                   ELSE r.labels->>'{SCHEDULE_LABEL}' = s.schedule_id END
        ORDER BY r.created_at DESC, r.id DESC
        LIMIT 1) x
 ORDER BY s.i, x.created_at DESC
"""


def _run(record: asyncpg.Record) -> Run:
    return Run(
        task_id=record["task_id"],
        attempt=record["attempt"],
        status=record["status"],
        schedule_id=record["schedule_id"],
        created_at=record["created_at"],
        enqueued_at=record["enqueued_at"],
        started_at=record["started_at"],
        duration_ms=record["duration_ms"],
    )


async def fetch_runs(
    conn: asyncpg.Connection[Any],
    task_names: Sequence[str],
    *,
    since: datetime,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
) -> dict[str, list[Run]]:
    """Runs of `task_names` recorded since `since` that a scheduler sent, by task name."""
    if not task_names:
        return {}
    records = await conn.fetch(
        _RUNS_SQL, float(lost_after_s), sorted(set(task_names)), list(STATUSES), since
    )
    runs: dict[str, list[Run]] = defaultdict(list)
    for record in records:
        runs[record["task_name"]].append(_run(record))
    return dict(runs)


async def fetch_last_runs(
    conn: asyncpg.Connection[Any],
    schedules: Sequence[Schedule],
    *,
    before: datetime,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
) -> dict[int, Run]:
    """The newest run before `before` of each of `schedules`, by its index in the sequence."""
    if not schedules:
        return {}
    records = await conn.fetch(
        _LAST_SQL,
        float(lost_after_s),
        [s.task_name for s in schedules],
        [s.schedule_id if s.stable_id else "" for s in schedules],
        list(STATUSES),
        before,
    )
    return {int(r["i"]) - 1: _run(r) for r in records}


def _belongs(schedule: Schedule, run: Run, claimed: set[str]) -> bool:
    if schedule.stable_id:
        return run.schedule_id == schedule.schedule_id
    # a source that makes a new id at each start: the task's scheduled runs that
    # no schedule with a lasting id claims
    return run.schedule_id not in claimed


async def reports(
    conn: asyncpg.Connection[Any],
    schedules: Sequence[Schedule],
    *,
    now: datetime,
    window_s: float,
    grace_s: float,
    late_after_s: float,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
) -> list[ScheduleReport]:
    """Each schedule judged over the `window_s` seconds before `now`, in the given order."""
    since = now - timedelta(seconds=window_s)
    # an interval chain needs the send before the window; a cron run may be sent
    # a little before its minute, and is recorded when it starts
    lead = max((s.interval_s or 0.0 for s in schedules), default=0.0) + CRON_TOLERANCE_S
    runs = await fetch_runs(
        conn,
        [s.task_name for s in schedules],
        since=since - timedelta(seconds=lead),
        lost_after_s=lost_after_s,
    )
    claimed = {s.schedule_id for s in schedules if s.stable_id}
    mine = [[r for r in runs.get(s.task_name, ()) if _belongs(s, r, claimed)] for s in schedules]
    judged = [
        judge(s, m, since=since, now=now, grace_s=grace_s, late_after_s=late_after_s)
        for s, m in zip(schedules, mine, strict=True)
    ]
    quiet = [i for i, r in enumerate(judged) if r.last_run is None]
    if quiet:
        older = await fetch_last_runs(
            conn, [schedules[i] for i in quiet], before=since, lost_after_s=lost_after_s
        )
        for k, i in enumerate(quiet):
            if k in older:
                judged[i] = judge(
                    schedules[i],
                    [older[k]],
                    since=since,
                    now=now,
                    grace_s=grace_s,
                    late_after_s=late_after_s,
                )
    return judged
