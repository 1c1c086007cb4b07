"""With nothing configured, rows land in the user's embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import unconfigured_env

from taskmon.store.db import connect
from taskmon.store.embedded import EmbeddedError, embedded_dsn, stop_embedded

SCRIPT = textwrap.dedent(
    """
    import asyncio
    from taskiq import InMemoryBroker
    from taskmon import MonitoringMiddleware

    async def main() -> None:
        broker = InMemoryBroker(await_inplace=True).with_middlewares(MonitoringMiddleware())
        await broker.startup()

        @broker.task(task_name="embedded:hello")
        async def hello(name: str) -> str:
            return "hi " + name

        for name in ("a", "b", "c"):
            await (await hello.kiq(name)).wait_result()
        await broker.shutdown()

    asyncio.run(main())
    """
)


def test_no_dsn_configured_uses_the_embedded_server(tmp_path: Path) -> None:
    # given an environment with no DSN, no config file and a fresh data directory
    env = unconfigured_env(TASKMON_DATA_DIR=str(tmp_path / "data"))
    data_dir = tmp_path / "data" / "pg"
    try:
        # when a process records tasks through the middleware with no arguments
        subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True, timeout=120)

        # then the rows are in the embedded server under the data directory,
        # which another process (this one) finds and reads
        assert (data_dir / "PG_VERSION").exists()

        async def read() -> list[str]:
            conn = await connect(embedded_dsn(data_dir))
            try:
                rows = await conn.fetch(
                    "SELECT params->'kwargs'->>'name' AS name, status"
                    " FROM task_execution_logs ORDER BY 1"
                )
            finally:
                await conn.close()
            assert {r["status"] for r in rows} == {"success"}
            return [r["name"] for r in rows]

        assert asyncio.run(read()) == ["a", "b", "c"]

        # and `taskmon db status` with no --dsn reads the same server
        status = subprocess.run(
            [sys.executable, "-m", "taskmon", "db", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert str(data_dir) in status.stdout
        assert "pending" not in status.stdout.split("\n", 1)[1]
    finally:
        stop_embedded(data_dir)


def test_stop_says_why_pg_ctl_failed_rather_than_not_running(tmp_path: Path) -> None:
    # given a data directory with a server's PID file that pg_ctl cannot use:
    # it is no cluster (no PG_VERSION), or, when pg_ctl runs as the server's own
    # system user (under root), that user may not even enter it
    data_dir = tmp_path / "data" / "pg"
    data_dir.mkdir(parents=True)
    (data_dir / "postmaster.pid").write_text("999999\n")

    # when it is asked to stop it
    with pytest.raises(EmbeddedError) as failed:
        stop_embedded(data_dir)

    # then the error is pg_ctl's own, on one line
    assert "pg_ctl: " in str(failed.value)
    assert "\n" not in str(failed.value)

    # and `taskmon db stop` says it on one line and fails, instead of "not running"
    env = unconfigured_env(TASKMON_DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run(
        [sys.executable, "-m", "taskmon", "db", "stop"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "not running" not in result.stdout
    [line] = result.stderr.splitlines()
    assert line.startswith("taskmon: error: cannot stop the embedded PostgreSQL")
    assert "pg_ctl: " in line


def test_stop_without_a_server_says_not_running(tmp_path: Path) -> None:
    assert stop_embedded(tmp_path / "pg") is False
