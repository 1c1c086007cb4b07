"""The user's schedules, read from their TaskIQ scheduler (``--scheduler module:variable``).

:func:`load` imports the scheduler as ``taskiq scheduler`` does; :func:`read`
lists each source's schedules as :class:`~taskmon.domain.schedules.Schedule`:
``LabelScheduleSource`` from the broker's task labels (no I/O), the taskiq-redis
sources from Redis. Any other source is :class:`~taskmon.domain.schedules.Unreadable`,
said as "not readable" rather than guessed at.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from taskmon.domain.schedules import Schedule, Unreadable
from taskmon.worker.imports import SpecError, import_object

__all__ = ["READABLE", "SpecError", "from_scheduled_task", "load", "read", "read_spec"]

READABLE = (
    "LabelScheduleSource",
    "RedisScheduleSource",
    "RedisClusterScheduleSource",
    "RedisSentinelScheduleSource",
    "ListRedisScheduleSource",
)
"""The schedule sources taskmon can list."""


_NOT_READABLE = (
    "not readable (taskmon reads LabelScheduleSource and the taskiq-redis schedule sources)"
)


def load(spec: str) -> Any:
    """The ``TaskiqScheduler`` `spec` names.

    Raises:
        SpecError: malformed, not importable, or not a scheduler (one line).
    """
    from taskiq import TaskiqScheduler

    return import_object(spec, what="scheduler", kind=TaskiqScheduler, kind_name="TaskiqScheduler")


def _offset(value: str | timedelta | None) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    minutes = round(value.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _interval(value: int | timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _explicit_ids(broker: Any) -> set[str]:
    """The ``schedule_id`` values the task labels name: the ids that last across starts."""
    ids: set[str] = set()
    with contextlib.suppress(Exception):
        for task in broker.get_all_tasks().values():
            for entry in task.labels.get("schedule", []):
                if isinstance(entry, Mapping) and entry.get("schedule_id"):
                    ids.add(str(entry["schedule_id"]))
    return ids


def from_scheduled_task(task: Any, source: str, *, stable_id: bool = True) -> Schedule:
    """A taskiq ``ScheduledTask`` as a :class:`Schedule` of the source named `source`."""
    from taskiq.cli.scheduler.run import to_tz_aware

    labels = {k: v for k, v in dict(task.labels).items() if k != "schedule"}
    return Schedule(
        schedule_id=str(task.schedule_id),
        task_name=str(task.task_name),
        source=source,
        cron=task.cron,
        cron_offset=_offset(task.cron_offset),
        time=None if task.time is None else to_tz_aware(task.time),
        interval_s=_interval(task.interval),
        labels=labels,
        stable_id=stable_id,
    )


async def _read_source(source: Any, scheduler: Any) -> list[Schedule]:
    kind = type(source).__name__
    await source.startup()
    try:
        tasks = await source.get_schedules()
    finally:
        if kind != "LabelScheduleSource":
            with contextlib.suppress(Exception):
                await source.shutdown()
    explicit = _explicit_ids(scheduler.broker) if kind == "LabelScheduleSource" else set()
    return [
        from_scheduled_task(
            t,
            kind,
            stable_id=kind != "LabelScheduleSource" or str(t.schedule_id) in explicit,
        )
        for t in tasks
    ]


async def read(scheduler: Any) -> tuple[list[Schedule], list[Unreadable]]:
    """Every schedule of `scheduler`'s readable sources, and the sources it cannot read.

    A readable source that fails (Redis down) is listed as unreadable with the
    error, so the others are still reported.
    """
    schedules: list[Schedule] = []
    unreadable: list[Unreadable] = []
    for source in scheduler.sources:
        kind = type(source).__name__
        if kind not in READABLE:
            unreadable.append(Unreadable(kind, _NOT_READABLE))
            continue
        try:
            schedules.extend(await _read_source(source, scheduler))
        except Exception as exc:
            unreadable.append(Unreadable(kind, f"cannot read: {type(exc).__name__}: {exc}"))
    schedules.sort(key=lambda s: (s.task_name, s.schedule_id))
    return schedules, unreadable


async def read_spec(spec: str) -> tuple[list[Schedule], list[Unreadable]]:
    """:func:`read` of the scheduler `spec` names.

    Raises:
        SpecError: the spec names no scheduler (one line).
    """
    return await read(load(spec))
