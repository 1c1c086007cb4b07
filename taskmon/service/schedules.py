"""The user's schedules, read from their TaskIQ scheduler (``--scheduler module:variable``).

:func:`load` imports the scheduler as ``taskiq scheduler`` does; :func:`read`
lists each source's schedules as :class:`~taskmon.domain.schedules.Schedule`:
``LabelScheduleSource`` from the broker's task labels (no I/O), the taskiq-redis
sources from Redis. Any other source is :class:`~taskmon.domain.schedules.Unreadable`,
said as "not readable" rather than guessed at.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskmon.domain.schedules import Schedule, ScheduleReport, Unreadable
from taskmon.worker.imports import SpecError, import_object

if TYPE_CHECKING:
    from taskmon.service.reader import Reader
    from taskmon.service.redis_schedules import Description

__all__ = [
    "CACHE_MAX_AGE_S",
    "READABLE",
    "ScheduleWatch",
    "SpecError",
    "from_schedule_json",
    "from_scheduled_task",
    "load",
    "read",
    "read_cached",
    "read_spec",
    "schedule_json",
]

CACHE_MAX_AGE_S = 3600.0
"""How long the schedules read from a label-only scheduler are reused at most."""

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


_DURATION = re.compile(r"(-)?P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


def _duration(value: str) -> timedelta | None:
    """An ISO 8601 duration as pydantic writes a ``timedelta`` in JSON (``-PT5H30M``)."""
    m = _DURATION.fullmatch(value)
    if m is None or value.rstrip("-PT") == "":
        return None
    sign, days, hours, minutes, seconds = m.groups()
    delta = timedelta(
        days=int(days or 0),
        hours=int(hours or 0),
        minutes=int(minutes or 0),
        seconds=float(seconds or 0),
    )
    return -delta if sign else delta


def from_schedule_json(data: Mapping[str, Any], source: str) -> Schedule:
    """A ``ScheduledTask`` as a Redis source stores it (``model_dump(mode="json")``).

    The :class:`Schedule` :func:`from_scheduled_task` makes of the same task (a
    test holds the two together), without taskiq.
    """
    from datetime import UTC, datetime

    offset = data.get("cron_offset")
    if isinstance(offset, str):
        duration = _duration(offset)  # a duration, else a time zone's name
        offset = offset if duration is None else duration
    interval = data.get("interval")
    if isinstance(interval, str):
        interval = _duration(interval)
    when = data.get("time")
    at = None if when is None else datetime.fromisoformat(when)
    labels = {k: v for k, v in dict(data.get("labels") or {}).items() if k != "schedule"}
    return Schedule(
        schedule_id=str(data["schedule_id"]),
        task_name=str(data["task_name"]),
        source=source,
        cron=data.get("cron"),
        cron_offset=_offset(offset),
        time=None if at is None else at if at.tzinfo else at.replace(tzinfo=UTC),
        interval_s=_interval(interval),
        labels=labels,
        stable_id=True,
    )


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


def _cannot_read(kind: str, exc: Exception) -> Unreadable:
    """A readable source that failed (Redis down): listed with the error."""
    return Unreadable(kind, f"cannot read: {type(exc).__name__}: {exc}")


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
            unreadable.append(_cannot_read(kind, exc))
    schedules.sort(key=lambda s: (s.task_name, s.schedule_id))
    return schedules, unreadable


async def read_spec(spec: str) -> tuple[list[Schedule], list[Unreadable]]:
    """:func:`read` of the scheduler `spec` names.

    Raises:
        SpecError: the spec names no scheduler (one line).
    """
    return await read(load(spec))


# -- the cache of label schedules and Redis sources ---------------------------------
#
# Importing the user's scheduler imports taskiq and their app: most of the time
# `taskmon schedules` takes. A LabelScheduleSource's schedules are fixed by the
# code, and where a taskiq-redis source keeps its schedules too; so what was read
# (the label schedules, and a description of each Redis source: see
# taskmon.service.redis_schedules) is kept in the cache directory, one file per
# scheduler spec, working directory and environment, readable by its owner only
# (a Redis password may be part of a source's description), with the size and
# modification time of every module file loaded then. It is reused while none of
# them changed, for an hour at most: the label schedules as they were, the Redis
# sources read again, as their schedules change at run time. A scheduler with a
# source of another kind is imported every time.

_VOLATILE_ENV = frozenset(("_", "OLDPWD", "SHLVL", "COLUMNS", "LINES", "TERM_SESSION_ID"))


def _cache_file(spec: str) -> Path:
    import hashlib
    import json
    import os
    import sys

    from taskmon.config import cache_dir

    env = sorted((k, v) for k, v in os.environ.items() if k not in _VOLATILE_ENV)
    key = json.dumps([spec, os.getcwd(), sys.executable, list(sys.path), env])
    return cache_dir() / f"schedules-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _loaded_files() -> list[list[Any]]:
    import os
    import sys

    files: list[list[Any]] = []
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            with contextlib.suppress(OSError):
                st = os.stat(path)
                files.append([path, st.st_mtime_ns, st.st_size])
    return files


def _unchanged(files: list[list[Any]]) -> bool:
    import os

    for path, mtime_ns, size in files:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_mtime_ns != mtime_ns or st.st_size != size:
            return False
    return True


def schedule_json(s: Schedule) -> dict[str, Any]:
    """A schedule's JSON shape: ``taskmon schedules --format json`` and the cache's.

    ``when`` is derived (read back, it is left out); the rest is the schedule.
    """
    from taskmon.domain.events import iso

    return {
        "schedule_id": s.schedule_id,
        "task_name": s.task_name,
        "source": s.source,
        "when": s.when,
        "cron": s.cron,
        "cron_offset": s.cron_offset,
        "interval_s": s.interval_s,
        "time": iso(s.time),
        "stable_id": s.stable_id,
    }


def _from_json(d: Mapping[str, Any]) -> Schedule:
    """The schedule :func:`schedule_json` wrote."""
    from datetime import datetime

    return Schedule(
        schedule_id=d["schedule_id"],
        task_name=d["task_name"],
        source=d["source"],
        cron=d["cron"],
        cron_offset=d["cron_offset"],
        time=None if d["time"] is None else datetime.fromisoformat(d["time"]),
        interval_s=d["interval_s"],
        stable_id=d["stable_id"],
    )


def _cached(path: Path) -> tuple[list[Schedule], list[Description]] | None:
    import json
    import time

    try:
        data = json.loads(path.read_text())
        if data.get("version") != 2 or time.time() - data["written"] > CACHE_MAX_AGE_S:
            return None
        if not _unchanged(data["files"]):
            return None
        return [_from_json(d) for d in data["schedules"]], list(data["redis_sources"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(path: Path, schedules: list[Schedule], redis_sources: list[Description]) -> None:
    import json
    import os
    import time

    data = {
        "version": 2,
        "written": time.time(),
        "files": _loaded_files(),
        "schedules": [schedule_json(s) for s in schedules],
        "redis_sources": redis_sources,
    }
    # the cache only saves time: a directory that cannot be written is no error
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(data))
        os.replace(tmp, path)


def _cacheable(scheduler: Any) -> list[Description] | None:
    """The descriptions of `scheduler`'s Redis sources, or None: it cannot be cached."""
    from taskmon.service.redis_schedules import describe

    described: list[Description] = []
    for source in scheduler.sources:
        if type(source).__name__ == "LabelScheduleSource":
            continue
        description = describe(source)
        if description is None:
            return None
        described.append(description)
    return described


async def _read_described(
    described: list[Description],
) -> tuple[list[Schedule], list[Unreadable]]:
    """The schedules of the Redis sources a cache describes, read as :func:`read` does."""
    from taskmon.service.redis_schedules import read_described

    schedules: list[Schedule] = []
    unreadable: list[Unreadable] = []
    for description in described:
        kind = description["kind"]
        try:
            found = await read_described(description)
            schedules.extend(from_schedule_json(d, kind) for d in found)
        except Exception as exc:
            unreadable.append(_cannot_read(kind, exc))
    return schedules, unreadable


async def read_cached(
    spec: str, *, refresh: bool = False
) -> tuple[list[Schedule], list[Unreadable]]:
    """:func:`read_spec`, reusing what a label-only scheduler gave last time (see above).

    Args:
        spec: the scheduler, ``module:variable``.
        refresh: import and read the scheduler even when the cache is fresh.

    Raises:
        SpecError: the spec names no scheduler (one line).
    """
    path = _cache_file(spec)
    if not refresh:
        cached = _cached(path)
        if cached is not None:
            labelled, described = cached
            schedules, unreadable = await _read_described(described)
            schedules.extend(labelled)
            schedules.sort(key=lambda s: (s.task_name, s.schedule_id))
            return schedules, unreadable
    import asyncio

    # in a thread: importing the user's app may take a while, and a TUI's loop runs on
    scheduler = await asyncio.to_thread(load, spec)
    schedules, unreadable = await read(scheduler)
    sources = _cacheable(scheduler)
    if not unreadable and sources is not None:
        _store(path, [s for s in schedules if s.source == "LabelScheduleSource"], sources)
    return schedules, unreadable


class ScheduleWatch:
    """The schedule reports of one scheduler, re-read on demand (the TUI's ``S`` screen).

    Args:
        spec: the scheduler, ``module:variable``.
        reader: where the runs are read.
    """

    def __init__(self, spec: str, reader: Reader) -> None:
        self.spec = spec
        self.reader = reader

    async def reports(self) -> tuple[list[ScheduleReport], list[Unreadable]]:
        """Each schedule over the last day, and the sources that cannot be read.

        Raises:
            SpecError: the spec names no scheduler (one line).
        """
        from datetime import UTC, datetime

        found, unreadable = await read_cached(self.spec)
        reports = await self.reader.schedules(found, now=datetime.now(UTC))
        return reports, unreadable
