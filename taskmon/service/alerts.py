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
    load_alert_config,
    read_statuses,
)
from taskmon.store.db import connect

if TYPE_CHECKING:
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


async def check(settings: Settings, config: AlertConfig, *, dry_run: bool = False) -> CheckResult:
    """Check every rule now; unless `dry_run`, record the states and notify transitions."""
    evaluator = Evaluator(config, lost_after_s=settings.lost_after_s)
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
    return AlertRunner(dsn, config, interval=interval, lost_after_s=settings.lost_after_s)
