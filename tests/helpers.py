"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit, urlunsplit

from taskmon.domain.events import AttemptRecord, Status
from taskmon.store.columns import READ, AttemptRow

if TYPE_CHECKING:
    from taskmon.worker.recorder import Recorder


DEADLINE_S = 30.0
"""How long a test waits for a condition by default: generous, so that a loaded
machine (a CI runner, parallel runs) makes a test slower, never red."""


async def wait_for(
    predicate: Callable[..., Any],
    timeout: float = DEADLINE_S,
    interval: float = 0.05,
    *,
    what: str = "",
) -> Any:
    """Poll an async or sync predicate until it returns something truthy, and return that.

    Tests sync on conditions, never on a fixed sleep; `what` names the
    condition in the failure (``waited 30s for <what>``).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(_not_met(timeout, what, value))
        await asyncio.sleep(interval)


def wait_for_sync(
    predicate: Callable[..., Any],
    timeout: float = DEADLINE_S,
    interval: float = 0.05,
    *,
    what: str = "",
) -> Any:
    """:func:`wait_for` for code without an event loop (subprocesses, threads)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_not_met(timeout, what, value))
        time.sleep(interval)


def _not_met(timeout: float, what: str, value: object) -> str:
    return f"waited {timeout:g}s for {what or 'the condition'}; last value: {value!r}"


class Calls:
    """Counts the calls of one async method of one object, and how many of them raised.

    Lets a test wait for "the writer failed three times" instead of sleeping
    for as long as that usually takes.
    """

    def __init__(self, target: object, name: str) -> None:
        self.calls = 0
        self.failures = 0
        original = getattr(target, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            try:
                return await original(*args, **kwargs)
            except BaseException:
                self.failures += 1
                raise

        setattr(target, name, counted)


def record(
    n: int,
    status: Status = Status.SUCCESS,
    task: str = "app:work",
    *,
    pad: int = 0,
    duration_ms: float = 1.0,
    error: tuple[str, str] = ("ValueError", "bad value"),
) -> AttemptRecord:
    """A finished attempt numbered `n` (unique task id), begun and ended now.

    Its params are ``[n]``, or one string of `pad` characters; a failed or
    retrying one carries `error` (type, message).
    """
    now = datetime.now(UTC)
    failed = status in (Status.FAILED, Status.RETRYING)
    return AttemptRecord(
        task_id=f"t{n:05d}-{uuid.uuid4().hex[:6]}",
        attempt=0,
        task_name=task,
        status=status,
        worker="host-1:42",
        params={"args": ["x" * pad] if pad else [n], "kwargs": {}},
        error_type=error[0] if failed else None,
        error_message=error[1] if failed else None,
        started_at=now,
        finished_at=now,
        duration_ms=duration_ms,
    )


def attempt_row(**values: Any) -> AttemptRow:
    """A stored attempt as readers return it: every read column, `values` given, the rest None.

    Built from :data:`taskmon.store.columns.READ`, so a new stored column needs no
    change to the tests' rows.
    """
    unknown = set(values) - set(READ)
    if unknown:
        raise TypeError(f"no such column: {', '.join(sorted(unknown))}")
    return cast(AttemptRow, {name: values.get(name) for name in READ})


async def publish(rec: Recorder, records: list[AttemptRecord]) -> None:
    """Record `records` through the real writer and wait until they are committed."""
    for r in records:
        rec.submit(r)
    await rec.flush()


def unconfigured_env(**extra: str) -> dict[str, str]:
    """This process's environment without any taskmon setting, as on a fresh machine.

    No ``TASKMON_*`` variable, and an empty config file (so the user's own
    cannot leak in); `extra` adds to it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMON_")}
    env["TASKMON_CONFIG"] = os.devnull  # empty TOML: no settings
    env.update(extra)
    return env


def worker_env(dsn: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a test TaskIQ app (``worker_app``, ``lost_worker_app``).

    Its database, its Redis and a queue of its own, with the tests' folder on
    the import path so that `taskiq worker` finds the app; `extra` adds to it.
    """
    env = dict(os.environ)
    env.update(
        TASKMON_DSN=dsn,
        TEST_REDIS_URL=redis_url,
        TEST_QUEUE=f"taskmon-test-{uuid.uuid4().hex[:8]}",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]),
        **extra,
    )
    return env


def with_database(dsn: str, database: str) -> str:
    """`dsn` pointing at another database on the same server."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@contextlib.asynccontextmanager
async def app_client(module: str, env: dict[str, str]) -> AsyncIterator[Any]:
    """Import the test TaskIQ app `module` under `env` and start its broker as a client.

    The app reads its queue and database from the environment at import, so it
    is reloaded for each test; the environment is restored afterwards.
    """
    here = str(Path(__file__).parent)
    old = dict(os.environ)
    os.environ.update(env)
    sys.path.insert(0, here)
    try:
        app = importlib.reload(importlib.import_module(module))
        await app.broker.startup()
        try:
            yield app
        finally:
            await app.broker.shutdown()
    finally:
        sys.path.remove(here)
        os.environ.clear()
        os.environ.update(old)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
