"""Alerts for the front ends: the rules' states, a check now, and the runner of ``serve``.

Every caller builds its evaluator here, from the same
:class:`~taskmon.service.settings.Settings`: ``taskmon serve``, ``taskmon
alerts check`` and the TUI agree on what is lost because they share its
``lost_after_s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskmon.server.alerts import (
    AlertConfig,
    AlertReader,
    AlertRunner,
    AlertStatus,
    Delivery,
    Evaluator,
    SchedulesSource,
    load_alert_config,
    read_statuses,
)
from taskmon.store.db import connect

if TYPE_CHECKING:
    from taskmon.domain.schedules import Schedule
    from taskmon.service.settings import Settings

__all__ = [
    "AlertConfig",
    "AlertReader",
    "AlertStatus",
    "CheckResult",
    "Delivery",
    "alert_runner",
    "check",
    "list_statuses",
    "load_alert_config",
    "schedules_source",
]


@dataclass(frozen=True)
class CheckResult:
    """What one check found: every rule's status, and the notifications that failed."""

    statuses: list[AlertStatus]
    failed: list[Delivery]


async def list_statuses(settings: Settings, config: AlertConfig) -> list[AlertStatus]:
    """The rules with their states as the last check left them (checks nothing)."""
    conn = await connect(settings.dsn)
    try:
        return await read_statuses(conn, config)
    finally:
        await conn.close()


def schedules_source(settings: Settings) -> SchedulesSource | None:
    """What reads the settings' scheduler's schedules at each check (None: no scheduler).

    The scheduler is imported here, once, so a bad ``--scheduler`` fails the
    command up front; its sources are read again at each check.

    Raises:
        SpecError: the spec names no scheduler (one line).
    """
    if not settings.scheduler:
        return None
    from taskmon.service import schedules

    scheduler = schedules.load(settings.scheduler)

    async def read() -> list[Schedule]:
        found, unreadable = await schedules.read(scheduler)
        failed = [u for u in unreadable if u.reason.startswith("cannot read")]
        if failed and not found:
            raise RuntimeError(f"{failed[0].source}: {failed[0].reason}")
        return found

    return read


async def check(settings: Settings, config: AlertConfig, *, dry_run: bool = False) -> CheckResult:
    """Check every rule now; unless `dry_run`, record the states and notify transitions."""
    evaluator = Evaluator(
        config, lost_after_s=settings.lost_after_s, schedules=schedules_source(settings)
    )
    conn = await connect(settings.dsn)
    try:
        statuses = await evaluator.evaluate(conn, save=not dry_run)
    finally:
        await conn.close()
    failed: list[Delivery] = []
    if not dry_run:
        failed = [d for d in await evaluator.notify(statuses) if not d.ok]
    return CheckResult(statuses, failed)


def alert_runner(
    settings: Settings, config: AlertConfig, *, dsn: str, interval: float | None = None
) -> AlertRunner:
    """The periodic evaluator of ``taskmon serve``, on `dsn` (the primary, where states live)."""
    return AlertRunner(
        dsn,
        config,
        interval=interval,
        lost_after_s=settings.lost_after_s,
        schedules=schedules_source(settings),
    )
