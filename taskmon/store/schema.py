"""Facts about ``task_execution_logs`` that every statement shares: the lost rule.

An attempt still ``running`` long after it should have ended is *lost*: its
worker died without recording an outcome. "Long" is twice its ``timeout``
label when it has one, else ``lost_after`` seconds (``--lost-after``, default
:data:`DEFAULT_LOST_AFTER_S`). Readers show such rows as ``lost``, retention
stores it; all of them build the condition here, so they cannot drift apart.

:func:`is_stale` is the same rule in Python, for live events (``TaskFilter.matches``).
This module imports nothing but the standard library: the filter language,
which runs inside workers, uses it too.

The ``'running'`` literal is a constant of the schema, not a user value:
written inline, it lets the planner use the partial index on running rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

__all__ = [
    "DEFAULT_LOST_AFTER_S",
    "is_stale",
    "lost_cutoff_sql",
    "shown_status_sql",
    "stale_sql",
]

DEFAULT_LOST_AFTER_S = 3600.0
"""Seconds a ``running`` attempt without a timeout label may run before it counts as lost."""


def _prefix(alias: str) -> str:
    if alias and not alias.isidentifier():
        raise ValueError(f"alias {alias!r} is not an identifier")
    return f"{alias}." if alias else ""


def lost_cutoff_sql(lost_after: str, *, alias: str = "r") -> str:
    """The moment before which a ``running`` row counts as lost.

    Args:
        lost_after: the SQL of the threshold without a timeout, a parameter
            with its cast, e.g. ``$1::double precision``.
        alias: the table alias of ``task_execution_logs`` ("" for none).
    """
    p = _prefix(alias)
    return f"now() - make_interval(secs => coalesce({p}timeout_s * 2, {lost_after}))"


def stale_sql(lost_after: str, *, alias: str = "r") -> str:
    """The condition of a lost row still marked ``running`` (see :func:`lost_cutoff_sql`)."""
    p = _prefix(alias)
    return f"{p}status = 'running' AND {p}created_at < {lost_cutoff_sql(lost_after, alias=alias)}"


def shown_status_sql(lost_after: str, *, alias: str = "r") -> str:
    """The status as readers show it: ``lost`` for a stale running row, else the stored one."""
    p = _prefix(alias)
    return f"CASE WHEN {stale_sql(lost_after, alias=alias)} THEN 'lost' ELSE {p}status END"


def is_stale(
    status: object,
    created_at: datetime | None,
    timeout_s: float | None,
    *,
    now: datetime,
    lost_after_s: float,
) -> bool:
    """:func:`stale_sql` in Python: whether an attempt marked `status` counts as lost at `now`.

    A NaN or absurd timeout never makes an attempt lost (it cannot be compared).
    """
    if status != "running" or created_at is None:
        return False
    try:
        limit = timedelta(seconds=lost_after_s if timeout_s is None else timeout_s * 2)
        cutoff = now - limit
    except (ValueError, OverflowError):
        return False
    return created_at < cutoff
