"""Test services: a real PostgreSQL and a real Redis, never mocks.

PostgreSQL: ``TASKMON_TEST_DSN`` when set (CI points it at the machine's
server), otherwise an embedded PostgreSQL started for this test session, so
the suite runs on a machine with no PostgreSQL installed. Each test that asks
for ``dsn`` gets its own freshly migrated database, cloned from a template.

Redis: ``TASKMON_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import with_database

from taskmon.store import migrations
from taskmon.store.db import connect
from taskmon.worker.recorder import Recorder

TEMPLATE = f"taskmon_tmpl_{os.getpid()}"


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN of a PostgreSQL server the tests may create databases on."""
    explicit = os.environ.get("TASKMON_TEST_DSN")
    if explicit:
        yield explicit
        return
    from taskmon.store.embedded import embedded_dsn

    root = Path(tempfile.mkdtemp(prefix="taskmon-test-pg-"))
    yield embedded_dsn(root / "pg", keep=False)


async def _admin(server_dsn: str) -> asyncpg.Connection[Any]:
    return await asyncpg.connect(with_database(server_dsn, "postgres"))


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """A database with every migration applied, copied for each test."""

    async def create() -> None:
        admin = await _admin(server_dsn)
        try:
            await _drop_orphans(admin)
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
        finally:
            await admin.close()
        conn = await connect(with_database(server_dsn, TEMPLATE))
        try:
            await migrations.upgrade(conn)
        finally:
            await conn.close()

    async def drop() -> None:
        admin = await _admin(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    yield TEMPLATE
    asyncio.run(drop())


async def _drop_orphans(admin: asyncpg.Connection[Any]) -> None:
    """Drop the templates of test sessions that were killed before their teardown."""
    names = await admin.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'taskmon_tmpl_%'")
    for (name,) in names:
        pid = name.removeprefix("taskmon_tmpl_")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _fresh_database(server_dsn: str, template: str | None) -> str:
    name = f"taskmon_t_{uuid.uuid4().hex[:12]}"
    admin = await _admin(server_dsn)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()
    return name


async def _drop_database(server_dsn: str, name: str) -> None:
    admin = await _admin(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def dsn(server_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh database with the schema applied, dropped after the test."""
    name = await _fresh_database(server_dsn, template_db)
    yield with_database(server_dsn, name)
    await _drop_database(server_dsn, name)


@pytest.fixture
async def empty_dsn(server_dsn: str) -> AsyncIterator[str]:
    """A fresh database without any schema (migration tests)."""
    name = await _fresh_database(server_dsn, None)
    yield with_database(server_dsn, name)
    await _drop_database(server_dsn, name)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to the test's fresh database."""
    conn = await connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of its own for the test, emptied before and after."""
    import redis

    url = os.environ.get("TASKMON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
async def pg_recorder(dsn: str) -> AsyncIterator[Recorder]:
    """A real writer on the test database, publishing events with NOTIFY."""
    from taskmon.bus.postgres import PgNotifyPublisher

    rec = Recorder(dsn, publisher=PgNotifyPublisher(), flush_interval=0.01)
    await rec.start(wait_connected=5)
    yield rec
    await rec.stop()
