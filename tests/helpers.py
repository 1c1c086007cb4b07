"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from taskmon.events import AttemptRecord
    from taskmon.recorder import Recorder


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async or sync predicate until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)


async def publish(rec: Recorder, records: list[AttemptRecord]) -> None:
    """Record `records` through the real writer and wait until they are committed."""
    for r in records:
        rec.submit(r)
    await rec.flush()


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
