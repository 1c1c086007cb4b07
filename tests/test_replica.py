"""Reads on a real streaming replica, writes and LISTEN on its primary.

The module starts a primary and a hot standby of it (``replica_cluster``).
To tell which server a read went to, replay on the standby is paused: an
attempt recorded afterwards is on the primary only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import publish, record, unconfigured_env, wait_for
from replica_cluster import Replication, replication
from test_metrics import scrape, value
from tui_conftest_helpers import screen_text
from websockets.asyncio.client import connect as ws_connect

from taskmon.bus.postgres import PgNotifyPublisher
from taskmon.domain.events import dumps
from taskmon.server.exporter import MetricsExporter, for_hub
from taskmon.server.hub import Hub
from taskmon.store import migrations
from taskmon.store.db import connect
from taskmon.store.replica import fetch_replica_status
from taskmon.tui.app import make_app
from taskmon.tui.sources import PgDataSource
from taskmon.tui.widgets.status_bar import StatusBar
from taskmon.worker.recorder import Recorder


@pytest.fixture(scope="module")
def cluster() -> Iterator[Replication]:
    with replication() as started:
        yield started


async def caught_up(cluster: Replication) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    primary = await connect(cluster.primary)
    standby = await connect(cluster.standby)
    try:
        lsn = await primary.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        sql = "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn"
        await wait_for(lambda: standby.fetchval(sql, lsn), timeout=30)
    finally:
        await primary.close()
        await standby.close()


@contextlib.asynccontextmanager
async def replay_paused(cluster: Replication) -> AsyncIterator[None]:
    """The standby stops applying what the primary writes until the block ends."""
    standby = await connect(cluster.standby)
    try:
        await standby.execute("SELECT pg_wal_replay_pause()")
        state = "SELECT pg_get_wal_replay_pause_state() = 'paused'"
        await wait_for(lambda: standby.fetchval(state), timeout=30)
        yield
    finally:
        await standby.execute("SELECT pg_wal_replay_resume()")
        await standby.close()


@pytest.fixture
async def primary_db(cluster: Replication) -> AsyncIterator[Replication]:
    """The cluster with the schema migrated on the primary, the attempts table empty."""
    conn = await connect(cluster.primary)
    try:
        await migrations.upgrade(conn)
        await conn.execute(
            "TRUNCATE task_execution_logs, task_rollup_minute, task_rollup_hour, "
            "task_hist_5min, task_hist_hour, task_hist_day, task_error_minute, "
            "task_error_hour, task_error_day, task_names"
        )
    finally:
        await conn.close()
    await caught_up(cluster)
    yield cluster


@pytest.fixture
async def writer(primary_db: Replication) -> AsyncIterator[Recorder]:
    """The real writer on the primary, publishing with NOTIFY."""
    rec = Recorder(primary_db.primary, publisher=PgNotifyPublisher(), flush_interval=0.01)
    await rec.start(wait_connected=5)
    yield rec
    await rec.stop()


async def taskmon(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskmon",
        *args,
        env=env if env is not None else unconfigured_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def history_ids(*args: str, env: dict[str, str] | None = None) -> set[str]:
    code, out, err = await taskmon("history", "--format", "jsonl", *args, env=env)
    assert code == 0, err
    return {json.loads(line)["task_id"] for line in out.splitlines()}


async def test_reads_go_where_read_dsn_says(
    primary_db: Replication, writer: Recorder, tmp_path: Path
) -> None:
    # given: two attempts on both servers, a third on the primary only
    both = [record(1), record(2)]
    await publish(writer, both)
    await caught_up(primary_db)
    primary, standby = primary_db.primary, primary_db.standby
    async with replay_paused(primary_db):
        late = record(3)
        await publish(writer, [late])
        old = {r.task_id for r in both}

        # when / then: each way of naming the replica reads from it
        assert await history_ids("--dsn", primary) == old | {late.task_id}
        assert await history_ids("--dsn", primary, "--read-dsn", standby) == old
        env = unconfigured_env(TASKMON_DSN=primary, TASKMON_READ_DSN=standby)
        assert await history_ids(env=env) == old
        config = tmp_path / "config.toml"
        config.write_text(f'dsn = "{primary}"\nread_dsn = "{standby}"\n')
        assert await history_ids(env=unconfigured_env(TASKMON_CONFIG=str(config))) == old
        # only the replica named: reads need no primary
        assert await history_ids("--read-dsn", standby) == old

        code, out, err = await taskmon(
            "stats", "--format", "json", "--dsn", primary, "--read-dsn", standby
        )
        assert code == 0, err
        assert json.loads(out)["total"] == 2
    await caught_up(primary_db)
    assert await history_ids("--read-dsn", standby) == old | {late.task_id}


async def test_replica_lag_grows_while_replay_waits_and_is_zero_when_caught_up(
    primary_db: Replication, writer: Recorder
) -> None:
    standby = await connect(primary_db.standby)
    primary = await connect(primary_db.primary)
    try:
        assert (await fetch_replica_status(primary)).describe() == "not a standby"
        await publish(writer, [record(1)])
        await caught_up(primary_db)
        caught = await fetch_replica_status(standby)
        assert caught.standby and caught.streaming and caught.lag_s == 0.0
        assert caught.describe() == "0.0s"

        async with replay_paused(primary_db):
            await publish(writer, [record(2)])

            # the lag is the age of the last transaction replayed: it grows while paused
            async def lagging() -> float | None:
                lag = (await fetch_replica_status(standby)).lag_s
                return lag if lag is not None and lag >= 0.3 else None

            assert await wait_for(lagging, timeout=30) >= 0.3

        async def zero() -> bool:
            return (await fetch_replica_status(standby)).lag_s == 0.0

        await wait_for(zero, timeout=30)
    finally:
        await standby.close()
        await primary.close()


async def test_the_hub_listens_on_the_primary_and_metrics_read_the_replica(
    primary_db: Replication, writer: Recorder
) -> None:
    hub = Hub(dsn=primary_db.primary, read_dsn=primary_db.standby, metrics=for_hub)
    await hub.start()
    try:
        await publish(writer, [record(1)])
        await caught_up(primary_db)
        ws = await ws_connect(hub.url or "")
        await ws.recv()  # hello
        await ws.send(dumps({"op": "subscribe", "filters": {}}))
        await ws.recv()  # subscribed
        async with replay_paused(primary_db):
            await publish(writer, [record(2)])
            # the live event comes from the primary's NOTIFY...
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert event["type"] == "task_completed"
            # ...the numbers from the replica, which has not replayed it
            fams = (await scrape(hub)).families()
            assert value(fams["taskmon_attempts"], task="app:work", status="success") == 1
        await ws.close()
        assert isinstance(hub.metrics, MetricsExporter) and hub.metrics.store is not None
        hub.metrics.store.cache_s = 0.0

        async def replayed() -> bool:
            fams = (await scrape(hub)).families()
            return value(fams["taskmon_attempts"], task="app:work", status="success") == 2

        await wait_for(replayed, timeout=30)
    finally:
        await hub.stop()


async def test_a_standby_cannot_carry_the_notify_bus_and_taskmon_says_so(
    primary_db: Replication,
) -> None:
    standby = primary_db.standby
    # named as the primary: the hub cannot LISTEN there
    for command in (["serve", "--port", "0"], ["tail"]):
        code, _, err = await taskmon(*command, "--dsn", standby)
        assert code == 1, err
        assert err.count("\n") == 1 and "is a standby (a read replica): it cannot LISTEN" in err
        assert "--dsn" in err and "--redis-url" in err
    # only the replica named, for commands that need the primary's NOTIFY
    for command in (["serve", "--port", "0"], ["tui"]):
        code, _, err = await taskmon(*command, "--read-dsn", standby)
        assert code == 2, err
        assert err.count("\n") == 1 and "only a read replica is given" in err


async def test_the_status_bar_shows_the_replica_lag(primary_db: Replication) -> None:
    app = make_app(PgDataSource(primary_db.standby, replica=True), None)
    async with app.run_test(size=(80, 24)) as pilot:
        bar = app.main.query_one(StatusBar)
        await wait_for(lambda: bar.replica_lag == "0.0s", timeout=30)
        await pilot.pause()
        assert "replica lag 0.0s" in screen_text(app)


@pytest.mark.parametrize("command", ["history", "stats", "serve", "tui"])
async def test_a_bad_read_dsn_is_one_line_and_exit_2(command: str) -> None:
    env = unconfigured_env(TASKMON_DSN="postgresql://postgres@127.0.0.1:1/none")
    code, _, err = await taskmon(command, "--read-dsn", "mysql://db/x", env=env)
    assert code == 2, err
    assert err.count("\n") == 1 and "must start with postgresql://" in err
