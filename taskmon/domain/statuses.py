"""Statuses and the lost rule: the one home of both, for every layer.

An attempt is ``pending``, ``running``, ``success``, ``failed``, ``retrying``
(failed, and another attempt was scheduled) or ``lost``. One still ``running``
long after it should have ended is *lost*: its worker died without recording
an outcome. "Long" is twice its ``timeout`` label when it has one, else
``lost_after`` seconds (``--lost-after``, default :data:`DEFAULT_LOST_AFTER_S`);
an attempt of a worker whose heartbeat is :data:`STALE_BEATS` beats old is lost
at once. The SQL form of the rule is :func:`taskmon.store.schema.stale_sql`;
:func:`is_stale` is the same rule in Python, for live events.

Standard library only: the filter language, which runs inside workers, uses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from taskmon.domain.events import TERMINAL_STATUSES, Status

__all__ = [
    "DEFAULT_LOST_AFTER_S",
    "STALE_BEATS",
    "STATUSES",
    "TERMINAL",
    "is_stale",
    "split_by_lost_rule",
]

STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
"""Every status, in the order lists and filters show them."""
TERMINAL: tuple[str, ...] = tuple(s.value for s in Status if s in TERMINAL_STATUSES)
"""The statuses of a finished attempt (success, failed, retrying, lost)."""


DEFAULT_LOST_AFTER_S = 3600.0
"""Seconds a ``running`` attempt without a timeout label may run before it counts as lost."""


STALE_BEATS = 3
"""Heartbeats a worker may miss before it counts as stale (and its running attempts lost)."""


def is_stale(
    status: object,
    created_at: datetime | None,
    timeout_s: float | None,
    *,
    now: datetime,
    lost_after_s: float,
    worker_dead: bool = False,
) -> bool:
    """:func:`stale_sql` in Python: whether an attempt marked `status` counts as lost at `now`.

    `worker_dead`: the attempt's worker is dead (:func:`dead_worker_sql`), when known.
    A NaN or absurd timeout never makes an attempt lost (it cannot be compared).
    """
    if status != "running":
        return False
    if worker_dead:
        return True
    if created_at is None:
        return False
    try:
        limit = timedelta(seconds=lost_after_s if timeout_s is None else timeout_s * 2)
        cutoff = now - limit
    except (ValueError, OverflowError):
        return False
    return created_at < cutoff


def split_by_lost_rule(wanted: Iterable[str]) -> tuple[tuple[str, ...], str | None]:
    """Which rows a status filter selects, as the readers' SQL must select them.

    ``lost`` is shown for rows stored as lost and for running rows the lost
    rule calls stale; ``running`` only for the others. So a filter on
    `wanted` selects the rows whose stored status is one of the first item
    (in :data:`STATUSES` order; ``running`` there means every running row),
    plus, when the second item says so, the running rows that are ``"stale"``
    (lost by the rule) or ``"fresh"`` (still running).

    Args:
        wanted: the statuses asked for.
    """
    asked = set(wanted)
    running_only = "running" in asked and "lost" not in asked
    stale_only = "lost" in asked and "running" not in asked
    stored = tuple(s for s in STATUSES if s in asked and not (s == "running" and running_only))
    return stored, "fresh" if running_only else "stale" if stale_only else None
