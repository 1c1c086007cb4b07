"""PostgreSQL going away mid-run: tasks never fail, every row arrives after recovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import pytest
from helpers import Calls, wait_for
from taskiq import InMemoryBroker

from taskmon.domain.events import AttemptRecord, Status
from taskmon.worker.middleware import MonitoringMiddleware
from taskmon.worker.recorder import Recorder


class Proxy:
    """A TCP proxy in front of PostgreSQL that the test can cut and restore."""

    def __init__(self, target_dsn: str) -> None:
        parts = urlsplit(target_dsn)
        query = parse_qs(parts.query)
        self._dsn = target_dsn
        self._socket = None
        host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
        port = int(query.get("port", [parts.port or 5432])[0])
        if host.startswith("/"):
            self._socket = f"{host}/.s.PGSQL.{port}"
        self._target = (host, port)
        self._server: asyncio.base_events.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def dsn(self) -> str:
        parts = urlsplit(self._dsn)
        user = parts.username or "postgres"
        return urlunsplit(("postgresql", f"{user}@127.0.0.1:{self.port}", parts.path, "", ""))

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._socket:
            return await asyncio.open_unix_connection(self._socket)
        return await asyncio.open_connection(*self._target)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._open_target()
        except OSError:
            writer.close()
            return
        self._pipes |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._pipes -= {writer, up_writer}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones (the database 'goes away')."""
        assert self._server is not None
        self._server.close()
        for w in list(self._pipes):
            w.transport.abort()
        self._pipes.clear()
        await self._server.wait_closed()
        self._server = None


@pytest.fixture
async def proxy(dsn: str) -> AsyncIterator[Proxy]:
    p = Proxy(dsn)
    await p.start()
    yield p
    if p._server is not None:
        await p.cut()


async def _count(db: asyncpg.Connection[Any], status: str = "success") -> int:
    n: int = await db.fetchval("SELECT count(*) FROM task_execution_logs WHERE status = $1", status)
    return n


async def test_database_outage_mid_run_loses_nothing_and_fails_no_task(
    proxy: Proxy, db: asyncpg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # given a broker recording through a connection we can cut
    monitor = MonitoringMiddleware(dsn=proxy.dsn, flush_interval=0.02)
    broker = InMemoryBroker(await_inplace=True).with_middlewares(monitor)
    await broker.startup()

    @broker.task(task_name="app:work")
    async def work(i: int) -> int:
        return i

    for i in range(10):
        assert (await (await work.kiq(i)).wait_result()).return_value == i
    await wait_for(lambda: _count(db))
    assert await _count(db) == 10

    # when the database goes away, tasks keep running at full speed
    assert monitor.recorder is not None
    writes = Calls(monitor.recorder, "_write")
    await proxy.cut()
    caplog.set_level(logging.WARNING, logger="taskmon.worker.recorder")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(10, 210):
        result = await (await work.kiq(i)).wait_result()
        assert not result.is_err and result.return_value == i
    assert loop.time() - started < 5.0
    # several failed flushes and retries happen here
    await wait_for(lambda: writes.failures >= 3, what="three failed writes")
    assert await _count(db) == 10
    outage_logs = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage_logs) == 1  # logged once, not per row or per retry

    # then when it comes back every row arrives, written once
    await proxy.start()
    await wait_for(lambda: _all_arrived(db, 210), timeout=30)
    assert await _count(db) == 210
    assert await _count(db, "running") == 0
    assert monitor.recorder is not None and monitor.recorder.stats.dropped == 0
    await broker.shutdown()


async def _all_arrived(db: asyncpg.Connection[Any], n: int) -> bool:
    return await _count(db) == n


async def test_terminated_backend_is_reconnected_without_loss(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    # given a recorder that has written once
    recorder = Recorder(dsn, flush_interval=0.02)
    await recorder.start(wait_connected=5)
    recorder.submit(_record("before"))
    await recorder.flush()

    # when an administrator terminates its backend connection
    writers = (
        "FROM pg_stat_activity WHERE application_name = 'taskmon' "
        "AND datname = current_database() AND pid <> pg_backend_pid()"
    )
    killed = {r["pid"] for r in await db.fetch(f"SELECT pid, pg_terminate_backend(pid) {writers}")}
    assert killed
    for i in range(50):
        recorder.submit(_record(f"after-{i}"))
    await recorder.flush(timeout=30)

    # then the writer reconnected (a new backend) and nothing was lost
    assert await db.fetchval("SELECT count(*) FROM task_execution_logs") == 51
    now_writing = {r["pid"] for r in await db.fetch(f"SELECT pid {writers}")}
    assert now_writing and not now_writing & killed
    await recorder.stop()


async def test_buffer_bound_drops_oldest_and_counts(
    proxy: Proxy, db: asyncpg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # given a small buffer and a database that is down
    recorder = Recorder(proxy.dsn, max_pending=100, flush_interval=0.02)
    await recorder.start(wait_connected=5)
    await proxy.cut()
    caplog.set_level(logging.ERROR, logger="taskmon.worker.recorder")

    # when more attempts come than it may keep
    for i in range(250):
        recorder.submit(_record(f"t{i:03d}"))

    # then the oldest are dropped and counted, and that is logged once
    assert recorder.stats.dropped == 150
    assert recorder.pending <= 100
    assert len([r for r in caplog.records if "buffer full" in r.getMessage()]) == 1
    await proxy.start()
    await recorder.flush(timeout=30)
    ids = [
        r["task_id"] for r in await db.fetch("SELECT task_id FROM task_execution_logs ORDER BY 1")
    ]
    assert ids == [f"t{i:03d}" for i in range(150, 250)]
    await recorder.stop()


def _record(task_id: str) -> AttemptRecord:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    return AttemptRecord(
        task_id=task_id,
        attempt=0,
        task_name="app:x",
        status=Status.SUCCESS,
        worker="test:1",
        started_at=now,
        finished_at=now,
        duration_ms=1.0,
    )


async def test_reconnects_are_paced_by_backoff_not_by_incoming_tasks() -> None:
    # given a "database" that accepts connections and drops them at once
    accepted = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    recorder = Recorder(
        f"postgresql://postgres@127.0.0.1:{port}/x", batch_size=10, flush_interval=0.01
    )
    await recorder.start()

    # when a steady stream of attempts arrives during the outage (far beyond a batch)
    for i in range(300):
        recorder.submit(_record(f"t{i}"))
        await asyncio.sleep(0.005)  # the pace of the stream is the condition under test

    # then the writer retried on its backoff schedule (0.1, 0.2, 0.4, 0.8 s ...),
    # not once per submit, and kept every attempt
    assert accepted <= 10, accepted
    assert recorder.pending == 300
    await recorder.stop(timeout=1.0)
    server.close()
    await server.wait_closed()


async def test_a_database_that_cannot_be_found_yet_is_an_outage(
    dsn: str, db: asyncpg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # given a DSN lookup (the embedded server starting, say) that fails twice
    calls = 0

    def find() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError("the embedded server did not start")
        return dsn

    caplog.set_level(logging.WARNING, logger="taskmon.worker.recorder")
    recorder = Recorder(find, flush_interval=0.02, max_backoff=0.2)
    await recorder.start()
    # when attempts arrive meanwhile
    for i in range(3):
        recorder.submit(_record(f"found-{i}"))
    # then they are kept and written once the lookup succeeds; the outage is said once
    await recorder.flush(timeout=30)
    await recorder.stop()
    assert calls == 3
    ids = await db.fetch("SELECT task_id FROM task_execution_logs ORDER BY task_id")
    assert [r["task_id"] for r in ids] == ["found-0", "found-1", "found-2"]
    said = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(said) == 1 and "cannot find the database" in said[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _sent(task_id: str) -> tuple[Any, ...]:
    """A send as a client's ``record_enqueued`` submits it (``taskmon.worker.encode.Sent``)."""
    import time

    return (task_id, 0, "app:x", None, {}, None, time.time(), b'{"args":[],"kwargs":{}}')


async def test_a_clients_sends_wait_out_an_outage_bounded_and_counted(
    proxy: Proxy, db: asyncpg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # given a client's writer with a small buffer, whose database goes away
    recorder = Recorder(proxy.dsn, max_pending=100, flush_interval=0.02)
    await recorder.start(wait_connected=5)
    recorder.submit_sent(_sent("before"))
    await recorder.flush()
    writes = Calls(recorder, "_write")
    await proxy.cut()
    caplog.set_level(logging.ERROR, logger="taskmon.worker.recorder")

    # when it sends more than it may keep, and the writes fail meanwhile
    for i in range(60):
        recorder.submit_sent(_sent(f"s{i:03d}"))
    await wait_for(lambda: writes.failures >= 2, what="two failed writes")
    for i in range(60, 250):
        recorder.submit_sent(_sent(f"s{i:03d}"))

    # then the oldest are dropped and counted (logged once), and the newest are kept
    # (a write attempt may hold some of them meanwhile: they go back in front when it fails)
    await wait_for(
        lambda: recorder.stats.dropped == 150 and recorder.pending == 100,
        what="the buffer bounded to 100",
    )
    assert len([r for r in caplog.records if "buffer full" in r.getMessage()]) == 1
    # and once the database is back, they are written, pending, each once
    await proxy.start()
    await recorder.flush(timeout=30)
    rows = await db.fetch("SELECT task_id, status FROM task_execution_logs ORDER BY 1")
    assert [r["task_id"] for r in rows] == ["before"] + [f"s{i:03d}" for i in range(150, 250)]
    assert {r["status"] for r in rows} == {"pending"}
    await recorder.stop()


async def test_a_clients_sends_left_at_stop_are_counted_unwritten(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    # given a client's writer whose database is gone
    recorder = Recorder(proxy.dsn, flush_interval=0.02)
    await recorder.start(wait_connected=5)
    await proxy.cut()
    caplog.set_level(logging.ERROR, logger="taskmon.worker.recorder")
    for i in range(7):
        recorder.submit_sent(_sent(f"u{i}"))

    # when it stops before the database returns
    await recorder.stop(timeout=0.5)

    # then what it held is counted and said, not lost in silence
    assert recorder.stats.unwritten == 7
    assert any("7 task records were not written" in r.getMessage() for r in caplog.records)
