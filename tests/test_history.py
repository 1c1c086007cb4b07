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

from taskmon.domain.filters import STATUSES, TaskFilter, parse
from taskmon.store import history
from taskmon.store.filter_sql import filter_sql

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
        page = await history.fetch_history(conn, flt, limit=limit, after=cursor)
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
    first = (await history.fetch_history(db, TaskFilter(), limit=3)).rows
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


async def test_filtered_pages_are_exact_across_the_search_windows(
    db: asyncpg.Connection[Any],
) -> None:
    """A filtered page is looked for in the newest day, then week, then everywhere.

    Rows spread over 40 days put matches inside and outside each window: every
    page size must still give every matching row once, newest first, whatever
    window it was found in (and with `until`, windows count back from it).
    """
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {"task_id": f"w{h}", "task_name": "app.tasks:extract" if h % 2 else "app.tasks:load",
         "status": "failed" if h % 3 == 0 else "success", "created_at": now - timedelta(hours=h)}
        for h in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 960)
    ]  # fmt: skip
    await insert(db, rows)

    def expected(keep: Any) -> list[str]:
        return [r["task_id"] for r in sorted(rows, key=lambda r: r["created_at"], reverse=True)
                if keep(r)]  # fmt: skip

    cases = [
        (parse("status:failed"), lambda r: r["status"] == "failed"),
        (parse("task:app.tasks:extract"), lambda r: r["task_name"] == "app.tasks:extract"),
        (parse("task:app.tasks:load status:success"),
         lambda r: r["task_name"] == "app.tasks:load" and r["status"] == "success"),
        (TaskFilter(statuses=frozenset({"failed"}), until=now - timedelta(days=3)),
         lambda r: r["status"] == "failed" and r["created_at"] < now - timedelta(days=3)),
    ]  # fmt: skip
    for flt, keep in cases:
        for limit in (1, 2, 3, 50):
            got = [r["task_id"] for r in await all_pages(db, flt, limit=limit)]
            assert got == expected(keep), (flt, limit)


async def test_attempts_and_bad_cursor(db: asyncpg.Connection[Any]) -> None:
    await seed(db)
    attempts = await history.fetch_attempts(db, "id1")
    assert [a["attempt"] for a in attempts] == [0, 1]
    by_key = await history.fetch_attempts_by_key(db, [("id1", 1), ("stuck", 0), ("nope", 0)])
    assert {(a["task_id"], a["attempt"], a["status"]) for a in by_key} == {
        ("id1", 1, attempts[1]["status"]),
        ("stuck", 0, "lost"),  # the same lost rule as history pages
    }
    assert await history.fetch_attempts_by_key(db, []) == []
    for bad in ("garbage", "", "MTIz", history.encode_cursor(NOW, 1) + "!"):
        with pytest.raises(history.CursorError):
            await history.fetch_history(db, TaskFilter(), after=bad)
    assert history.decode_cursor(history.encode_cursor(NOW, 42)) == (NOW, 42)


def cli(dsn: str, *args: str, columns: int | None = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TASKMON_DSN=dsn, NO_COLOR="1", COLUMNS=str(columns))
    if columns is None:  # as in `taskmon history | grep …`: no terminal, no COLUMNS
        del env["COLUMNS"]
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
    assert "✓ success" in table.stdout or "✕ failed" in table.stdout
    # at 80 columns, task names stay whole; the error column gives way
    narrow = cli(dsn, "--limit", "20", "--task", "app.tasks:*", columns=80).stdout.splitlines()
    assert all(len(line) <= 80 for line in narrow)
    assert sum(" app.tasks:extract " in line for line in narrow) >= 5
    assert any("…" in line for line in narrow)
    csv_out = cli(dsn, "--format", "csv", "--limit", "2")
    assert csv_out.stdout.splitlines()[0].startswith("id,task_id,task_name,status")


async def test_cli_piped_table_is_not_cut_and_counts_in_words(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    # given one failure whose task name and error are far wider than 80 columns
    task = "app.reports.quarterly:" + "regenerate_every_dashboard_for_the_board" * 2
    message = "upstream answered 503 after 3 attempts: " + "service unavailable; " * 5
    await insert(db, [{"task_id": "wide", "task_name": task, "status": "failed",
                       "error_type": "HTTPError", "error_message": message.strip(),
                       "duration_ms": 30.226469039916992, "queue_wait_ms": 12.000000001,
                       "created_at": NOW - timedelta(minutes=1)}])  # fmt: skip
    # when the table is piped (stdout is no terminal, COLUMNS unset)
    out = cli(dsn, columns=None)
    assert out.returncode == 0, out.stderr
    # then nothing is cut to 80 columns, and the count reads as English
    lines = out.stdout.splitlines()
    assert any(task in line and message.strip() in line for line in lines), out.stdout
    assert "…" not in out.stdout
    assert lines[-1] == "1 row"
    assert all(line == line.rstrip() for line in lines)
    # and the machine formats round durations to a microsecond
    [row] = json.loads(cli(dsn, "--format", "json").stdout)
    assert (row["duration_ms"], row["queue_wait_ms"]) == (30.226, 12.0)
    [line] = cli(dsn, "--format", "jsonl").stdout.splitlines()
    assert '"duration_ms": 30.226,' in line
    assert ",30.226," in cli(dsn, "--format", "csv").stdout


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


# -- branch-per-status pages agree with the plain filter ---------------------------------


async def seed_statuses(conn: asyncpg.Connection[Any]) -> None:
    """Every status over 14 task names, with created_at ties across statuses.

    Running rows lie on both sides of the lost rule, with and without a timeout.
    """
    statuses = ("success", "failed", "retrying", "lost", "pending", "running")
    spread = [
        {"task_id": f"s{i}", "task_name": f"app.t{i % 14:02d}:job", "status": statuses[i % 6],
         "worker": f"host-{i % 3}:1", "error_type": "KeyError" if i % 4 == 0 else None,
         # a running row is fresh here: only the rows below are stale
         "created_at": NOW - timedelta(seconds=10 * (i // 7))}
        for i in range(180)
    ]  # fmt: skip
    stale = NOW - timedelta(hours=2)
    rows: list[dict[str, Any]] = [
        {"task_id": "stale-no-timeout", "task_name": "app.t01:job", "status": "running",
         "created_at": stale},
        {"task_id": "stale-by-timeout", "task_name": "app.t02:job", "status": "running",
         "timeout_s": 1.0, "created_at": NOW - timedelta(seconds=30)},
        {"task_id": "fresh-long-timeout", "task_name": "app.t03:job", "status": "running",
         "timeout_s": 7200.0, "created_at": stale},
        {"task_id": "lost-tie", "task_name": "app.t01:job", "status": "lost",
         "created_at": stale},
    ]  # fmt: skip
    await insert(conn, spread + rows)


async def expected(conn: asyncpg.Connection[Any], flt: TaskFilter) -> list[tuple[int, str]]:
    """(id, shown status) of every matching row, newest first, by one plain statement."""
    params: list[object] = []
    cond = filter_sql(flt, params, alias="r")
    rows = await conn.fetch(
        "SELECT r.id, CASE WHEN r.status = 'running' AND r.created_at < now() - "
        "make_interval(secs => coalesce(r.timeout_s * 2, 3600)) THEN 'lost' ELSE r.status END "
        f"FROM task_execution_logs r WHERE {cond} ORDER BY r.created_at DESC, r.id DESC",
        *params,
    )
    return [(r[0], r[1]) for r in rows]


async def assert_same_pages(
    conn: asyncpg.Connection[Any], flt: TaskFilter, limit: int
) -> tuple[tuple[int, str], ...]:
    got = [(r["id"], r["status"]) for r in await all_pages(conn, flt, limit)]
    assert got == await expected(conn, flt), flt.to_query()
    return tuple(got)


async def test_every_status_combination_pages_like_the_plain_filter(
    db: asyncpg.Connection[Any],
) -> None:
    await seed_statuses(db)
    results = set()
    for mask in range(64):  # every subset of the six statuses, the empty one included
        statuses = frozenset(s for bit, s in enumerate(STATUSES) if mask >> bit & 1)
        results.add(await assert_same_pages(db, TaskFilter(statuses=statuses), limit=16))
    assert len(results) == 63  # each subset selects other rows (none = all six)
    lost = [r["task_id"] for r in await all_pages(db, parse("status:lost"), limit=2)]
    assert {"stale-no-timeout", "stale-by-timeout", "lost-tie"} <= set(lost)
    assert "fresh-long-timeout" not in lost
    running = [r["task_id"] for r in await all_pages(db, parse("status:running"), limit=5)]
    assert "fresh-long-timeout" in running and "stale-by-timeout" not in running


@pytest.mark.parametrize(
    "text",
    [
        "task:app.t03:job",  # one name: a branch per (name, status)
        "task:app.t0* status:failed",  # 10 names x 1 status: a branch per name
        "task:app.t0* status:failed,lost",  # too many (name, status) pairs: name = ANY
        "task:app.* status:running,lost,pending",
        "task:app.t1* status:lost worker:host-0",
        "task:app.t1*",
        "task:app.*",
        f"status:failed,lost,success since:{(NOW - timedelta(minutes=2)).isoformat()}",
        'status:success,retrying error:"keyerror"',
        "task:nothing-is-called-this status:failed",
    ],
)
async def test_task_and_status_pages_like_the_plain_filter(
    db: asyncpg.Connection[Any], text: str
) -> None:
    await seed_statuses(db)
    flt = parse(text)
    n = len(await assert_same_pages(db, flt, limit=6))
    assert (n == 0) == ("nothing" in text)
    # a page boundary between rows that share created_at
    if n > 6:
        page = await history.fetch_history(db, flt, limit=6)
        assert page.next_cursor is not None and len(page.rows) == 6
