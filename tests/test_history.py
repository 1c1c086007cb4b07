"""History pages (keyset), attempts of a task, and the `taskmon history` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from test_rollups import insert

from taskmon.filters import TaskFilter, parse
from taskmon.store import queries

NOW = datetime.now(UTC).replace(microsecond=0)
NASTY = "x'; DROP TABLE task_execution_logs; --%_\\"


async def seed(conn: asyncpg.Connection[Any]) -> None:
    rows = [
        {"task_id": f"id{i}", "task_name": f"app.tasks:{'extract' if i % 2 else 'load'}",
         "status": ("success", "failed", "retrying")[i % 3], "worker": f"host-{i % 4}:1",
         "duration_ms": 10.0 * i, "error_type": "ValueError" if i % 3 else None,
         "error_message": f"boom {i}" if i % 3 else None,
         # every 5 rows share a created_at, so the id breaks ties
         "created_at": NOW - timedelta(minutes=i // 5 + 1)}
        for i in range(95)
    ]  # fmt: skip
    rows.append({"task_id": NASTY, "task_name": NASTY, "status": "failed",
                 "created_at": NOW - timedelta(minutes=30), "worker": NASTY})  # fmt: skip
    rows.append({"task_id": "stuck", "task_name": "app.tasks:load", "status": "running",
                 "created_at": NOW - timedelta(hours=5)})  # fmt: skip
    rows.append({"task_id": "fresh", "task_name": "app.tasks:load", "status": "running",
                 "created_at": NOW - timedelta(seconds=5)})  # fmt: skip
    await insert(conn, rows)
    retry = {"task_id": "id1", "attempt": 1, "task_name": "app.tasks:extract",
             "status": "success", "created_at": NOW - timedelta(seconds=1)}  # fmt: skip
    await insert(conn, [retry])


async def all_pages(conn: asyncpg.Connection[Any], flt: TaskFilter, limit: int) -> list[Any]:
    out: list[Any] = []
    cursor = None
    while True:
        page = await queries.fetch_history(conn, flt, limit=limit, after=cursor)
        assert len(page.rows) <= limit
        out += page.rows
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


async def test_keyset_pages_cover_every_row_once_newest_first(db: asyncpg.Connection[Any]) -> None:
    await seed(db)
    rows = await all_pages(db, TaskFilter(), limit=7)
    assert len(rows) == 99 == len({r["id"] for r in rows})
    keys = [(r["created_at"], r["id"]) for r in rows]
    assert keys == sorted(keys, reverse=True)
    first = (await queries.fetch_history(db, TaskFilter(), limit=3)).rows
    assert [r["task_id"] for r in first] == ["id1", "fresh", "id4"]
    assert set(first[0]) >= {"id", "task_id", "task_name", "status", "attempt", "worker",
                             "params", "error_type", "error_message", "traceback",
                             "enqueued_at", "started_at", "finished_at", "duration_ms",
                             "queue_wait_ms", "created_at"}  # fmt: skip


async def test_filters_lost_rule_and_metacharacters(db: asyncpg.Connection[Any]) -> None:
    await seed(db)
    failed = await all_pages(db, parse("status:failed task:extract*"), limit=4)
    assert failed and all(
        r["status"] == "failed" and r["task_name"] == "app.tasks:extract" for r in failed
    )
    assert len(failed) == len([i for i in range(95) if i % 3 == 1 and i % 2])
    lost = await all_pages(db, parse("status:lost"), limit=10)
    assert [(r["task_id"], r["status"]) for r in lost] == [("stuck", "lost")]
    running = await all_pages(db, parse("status:running"), limit=10)
    assert [r["task_id"] for r in running] == ["fresh"]
    nasty = await all_pages(db, TaskFilter(tasks=(NASTY,), workers=(NASTY,)), limit=10)
    assert [r["task_id"] for r in nasty] == [NASTY]
    assert await all_pages(db, TaskFilter(tasks=("a%t",)), limit=10) == []  # % is no wildcard
    assert await db.fetchval("SELECT count(*) FROM task_execution_logs") == 99


async def test_attempts_and_bad_cursor(db: asyncpg.Connection[Any]) -> None:
    await seed(db)
    attempts = await queries.fetch_attempts(db, "id1")
    assert [a["attempt"] for a in attempts] == [0, 1]
    for bad in ("garbage", "", "MTIz", queries.encode_cursor(NOW, 1) + "!"):
        with pytest.raises(queries.CursorError):
            await queries.fetch_history(db, TaskFilter(), after=bad)
    assert queries.decode_cursor(queries.encode_cursor(NOW, 42)) == (NOW, 42)


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TASKMON_DSN=dsn, NO_COLOR="1", COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-m", "taskmon", "history", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_cli_json_pages_and_formats(dsn: str, db: asyncpg.Connection[Any]) -> None:
    await seed(db)
    first = cli(dsn, "--format", "json", "--limit", "10", "--status", "failed,retrying")
    assert first.returncode == 0, first.stderr
    rows = json.loads(first.stdout)
    assert len(rows) == 10 and {r["status"] for r in rows} <= {"failed", "retrying"}
    assert datetime.fromisoformat(rows[0]["created_at"]).utcoffset() is not None
    cursor = first.stderr.strip().removeprefix("next page: --after ")
    second = cli(dsn, "--format", "jsonl", "--limit", "10", "-s", "failed", "-s", "retrying",
                 "--after", cursor)  # fmt: skip
    assert second.returncode == 0, second.stderr
    more = [json.loads(line) for line in second.stdout.splitlines()]
    assert len(more) == 10 and more[0]["id"] not in {r["id"] for r in rows}
    nasty = cli(dsn, "--format", "json", "--task", NASTY, "--worker", NASTY,
                "--query", "task:\"x'; DROP\"")  # fmt: skip
    assert nasty.returncode == 0, nasty.stderr
    assert [r["task_id"] for r in json.loads(nasty.stdout)] == [NASTY]
    table = cli(dsn, "--limit", "3")
    assert table.returncode == 0, table.stderr
    assert "next page: --after" in table.stdout and "3 rows" in table.stdout
    assert "✓ success" in table.stdout or "✗ failed" in table.stdout
    csv_out = cli(dsn, "--format", "csv", "--limit", "2")
    assert csv_out.stdout.splitlines()[0].startswith("id,task_id,task_name,status")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--since", "7x"], "--since"),
        (["--status", "bogus"], "accepted: pending, running"),
        (["--limit", "-1"], "--limit"),
        (["--after", "garbage"], "--after"),
        (["--query", "colour:red"], "known: status"),
        (["--format", "xml"], "table, json, jsonl, csv"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args: list[str], expected: str) -> None:
    # an unreachable DSN proves that input is checked before connecting
    result = cli("postgresql://nobody@127.0.0.1:1/none", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskmon: error:"), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_history_json_imports_neither_textual_nor_rich(dsn: str) -> None:
    code = (
        "import sys, runpy\n"
        "sys.argv = ['taskmon', 'history', '--format', 'json', '--limit', '1']\n"
        "try:\n    runpy.run_module('taskmon', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich')))\n"
    )
    env = dict(os.environ, TASKMON_DSN=dsn)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
