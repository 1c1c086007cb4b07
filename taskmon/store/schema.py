"""Facts about ``task_execution_logs`` that every statement shares.

* :data:`STATUSES` and :data:`TERMINAL`, from :class:`taskmon.domain.events.Status`;
* :class:`AttemptRow`, the row as readers return it, whose keys in order are
  :data:`COLUMNS` (the documented JSON shape of ``taskmon history``, the
  archive's line, the select list of every read), both declared with the
  rest of the columns' facts in :mod:`taskmon.store.columns`;
* the lost rule. An attempt still ``running`` long after it should have ended
  is *lost*: its worker died without recording an outcome. "Long" is twice
  its ``timeout`` label when it has one, else ``lost_after`` seconds
  (``--lost-after``, default :data:`DEFAULT_LOST_AFTER_S`). Readers show such
  rows as ``lost``, retention stores it; all of them build the condition here
  (:func:`stale_sql`), so they cannot drift apart. The rule's numbers and its
  Python form for live events live in :mod:`taskmon.domain.statuses`.

  An attempt also counts as lost at once when its worker is dead: the
  worker's heartbeat row (``taskmon_workers``, ``sql/0007_workers.sql``) was
  not stopped cleanly and was last seen more than :data:`STALE_BEATS`
  heartbeats ago (:func:`dead_worker_sql`). The time rule stays for workers
  that are alive but stuck, and for workers without a heartbeat row.


The ``'running'`` literal is a constant of the schema, not a user value:
written inline, it lets the planner use the partial index on running rows.
"""

from __future__ import annotations

from taskmon.domain.statuses import (
    DEFAULT_LOST_AFTER_S,
    STALE_BEATS,
    STATUSES,
    TERMINAL,
    is_stale,
)
from taskmon.store.columns import READ, AttemptRow

__all__ = [
    "COLUMNS",
    "DEFAULT_LOST_AFTER_S",
    "STALE_BEATS",
    "STATUSES",
    "TERMINAL",
    "WORKER_STATE_SQL",
    "AttemptRow",
    "dead_worker_sql",
    "is_stale",
    "lost_cutoff_sql",
    "select_list_sql",
    "shown_status_sql",
    "stale_sql",
    "started_sql",
]


COLUMNS: tuple[str, ...] = READ
"""The keys of an :class:`AttemptRow`, in order: also the JSON shape of ``taskmon history``."""

WORKER_STATE_SQL = (
    "CASE WHEN {p}stopped_at IS NOT NULL THEN 'stopped'"
    " WHEN {p}last_seen < now() - make_interval(secs => {p}heartbeat_s * "
    + str(STALE_BEATS)
    + ") THEN 'stale' ELSE 'alive' END"
)
"""A ``taskmon_workers`` row's state (``{p}`` the alias and a dot): alive, stale or stopped."""


def _prefix(alias: str) -> str:
    if alias and not alias.isidentifier():
        raise ValueError(f"alias {alias!r} is not an identifier")
    return f"{alias}." if alias else ""


def dead_worker_sql(alias: str = "r") -> str:
    """The condition that the row's worker is dead: its heartbeat is stale, not stopped cleanly."""
    p = _prefix(alias)
    # `hb.name`, not `worker`: an unqualified `worker` (alias "") means the row's
    return (
        f"EXISTS (SELECT 1 FROM taskmon_workers AS hb WHERE hb.name = {p}worker"
        f" AND {WORKER_STATE_SQL.format(p='hb.')} = 'stale')"
    )


def lost_cutoff_sql(lost_after: str, *, alias: str = "r") -> str:
    """The moment before which a ``running`` row counts as lost.

    ``infinity`` when the row's worker is dead (:func:`dead_worker_sql`): every
    running attempt of a dead worker is lost, whatever its age.

    Args:
        lost_after: the SQL of the threshold without a timeout, a parameter
            with its cast, e.g. ``$1::double precision``.
        alias: the table alias of ``task_execution_logs`` ("" for none).
    """
    p = _prefix(alias)
    return (
        f"CASE WHEN {dead_worker_sql(alias)} THEN 'infinity'::timestamptz"
        f" ELSE now() - make_interval(secs => coalesce({p}timeout_s * 2, {lost_after})) END"
    )


def started_sql(alias: str = "r") -> str:
    """When a row's attempt started, the clock of the lost rule.

    Its ``started_at``, else its ``created_at``: the two are one for an attempt
    the worker recorded first, but an attempt recorded ``pending`` by its client
    keeps the enqueue time as ``created_at``, and its wait in the queue is no
    part of its run.
    """
    p = _prefix(alias)
    return f"coalesce({p}started_at, {p}created_at)"


def stale_sql(lost_after: str, *, alias: str = "r") -> str:
    """The condition of a lost row still marked ``running`` (see :func:`lost_cutoff_sql`)."""
    p = _prefix(alias)
    return (
        f"{p}status = 'running' AND {started_sql(alias)} < "
        f"{lost_cutoff_sql(lost_after, alias=alias)}"
    )


def shown_status_sql(lost_after: str, *, alias: str = "r") -> str:
    """The status as readers show it: ``lost`` for a stale running row, else the stored one."""
    p = _prefix(alias)
    return f"CASE WHEN {stale_sql(lost_after, alias=alias)} THEN 'lost' ELSE {p}status END"


def select_list_sql(lost_after: str, *, alias: str = "r") -> str:
    """The columns of an :class:`AttemptRow`, in order, status by the lost rule."""
    p = _prefix(alias)
    return ", ".join(
        f"{shown_status_sql(lost_after, alias=alias)} AS status" if c == "status" else p + c
        for c in COLUMNS
    )
