"""`taskmon retry` end to end: a real `taskiq worker`, a real Redis queue, real PostgreSQL.

What is sent is checked where it goes: the worker's calls (each task of
``retry_worker_app`` writes down the call it received), the recorded rows and
their labels, and the Redis list the broker pushes to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import helpers
import pytest
import redis
from helpers import app_client, publish, wait_for

from taskmon.domain.events import AttemptRecord, Status
from taskmon.domain.params import ParamsPolicy
from taskmon.worker.recorder import Recorder

BROKER = "retry_worker_app:broker"


@pytest.fixture
def env(dsn: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The app's environment, and the CLI's: no taskmon setting but the test database."""
    base = helpers.worker_env(dsn, redis_url, TEST_STATE_DIR=str(tmp_path))
    clean = {k: v for k, v in base.items() if not k.startswith("TASKMON_")}
    return {**clean, "TASKMON_DSN": dsn, "TASKMON_CONFIG": os.devnull}


@pytest.fixture
def queue(env: dict[str, str]) -> Iterator[redis.Redis]:
    """The Redis database of the app's queue (its name is ``env["TEST_QUEUE"]``)."""
    client = redis.Redis.from_url(env["TEST_REDIS_URL"])
    yield client
    client.close()


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskiq", "worker", BROKER, "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


@pytest.fixture
async def client(env: dict[str, str]) -> AsyncIterator[Any]:
    async with app_client("retry_worker_app", env) as app:
        yield app


async def taskmon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``taskmon ARGS`` in a process of its own, as a user runs it (no terminal)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskmon", *args],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


async def retry_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``taskmon retry ARGS``."""
    return await taskmon(env, "retry", *args)


async def final_row(db: asyncpg.Connection[Any], task_id: str) -> asyncpg.Record:
    row: asyncpg.Record = await wait_for(
        lambda: db.fetchrow(
            "SELECT * FROM task_execution_logs WHERE task_id = $1 AND status <> 'running'",
            task_id,
        ),
        timeout=30,
        interval=0.1,
    )
    return row


def calls(tmp_path: Path, marker: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / marker).read_text().splitlines()]


def recorded(
    task_name: str, params: dict[str, Any], *, status: Status = Status.FAILED
) -> AttemptRecord:
    """A finished attempt of `task_name`, called with `params`, as a worker records it."""
    now = datetime.now(UTC)
    return AttemptRecord(
        task_id=uuid.uuid4().hex,
        attempt=0,
        task_name=task_name,
        status=status,
        worker="host-1:42",
        params=params,
        error_type="ValueError" if status is Status.FAILED else None,
        error_message="bad" if status is Status.FAILED else None,
        started_at=now,
        finished_at=now,
        duration_ms=1.0,
    )


@pytest.mark.slow
async def test_retry_of_a_failed_task_runs_it_again_with_the_same_args_and_links_it(
    worker: subprocess.Popen[bytes],
    client: Any,
    db: asyncpg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    # given two failed tasks, one called by keyword, one with *args
    plain = await client.fail_once.kiq("plain", 3, note="hello")
    spread = await client.spread.kiq("spread", 1, 2, 3)
    assert (await final_row(db, plain.task_id))["status"] == "failed"
    assert (await final_row(db, spread.task_id))["status"] == "failed"

    # when each is retried
    sent = {}
    out = await retry_cli(env, plain.task_id, "--yes", "--broker", BROKER)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith('sent     retry:fail_once(marker="plain", size=3, note="hello")'), line
    sent[plain.task_id] = line.rsplit("→ ", 1)[1]
    out = await retry_cli(env, spread.task_id, "--yes", "--broker", BROKER, "--format", "json")
    assert out.returncode == 0, out.stderr
    (report,) = json.loads(out.stdout)
    assert report["args"] == ["spread", 1, 2, 3] and report["kwargs"] == {}
    assert report["refused"] is None and report["retried_as"] == []
    sent[spread.task_id] = report["sent_as"]

    # then the worker ran each again with the very same call, as a new, linked task
    for original, marker in ((plain.task_id, "plain"), (spread.task_id, "spread")):
        row = await final_row(db, sent[original])
        assert row["status"] == "success", row["error_message"]
        assert row["task_id"] != original
        assert row["labels"]["taskmon_retry_of"] == original
        first, again = calls(tmp_path, marker)
        assert again == first
    assert calls(tmp_path, "spread")[0] == {"first": 1, "rest": [2, 3]}

    # and history shows the link both ways
    out = await taskmon(env, "history", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = {(r["task_id"], r["attempt"]): r for r in json.loads(out.stdout)}
    assert rows[(plain.task_id, 0)]["retried_as"] == [sent[plain.task_id]]
    assert rows[(sent[plain.task_id], 0)]["retry_of"] == plain.task_id
    assert rows[(plain.task_id, 0)]["retry_of"] is None
    out = await taskmon(env, "history")
    assert f"retried as {sent[plain.task_id]} · ValueError" in out.stdout, out.stdout
    assert f"retry of {plain.task_id}" in out.stdout

    # and retrying it by id again says it was retried already
    out = await retry_cli(env, plain.task_id, "--dry-run", "--broker", BROKER)
    assert out.returncode == 0, out.stderr
    assert f"already retried as {sent[plain.task_id]}" in out.stdout


async def test_bulk_dry_run_sends_nothing_and_the_real_run_sends_each_task_once(
    pg_recorder: Recorder, env: dict[str, str], queue: redis.Redis
) -> None:
    # given three failed tasks, one of them failed twice, and a success; no worker runs
    failed = [recorded("retry:fail_once", {"args": [], "kwargs": {"marker": f"m{i}", "size": i}})
              for i in range(3)]  # fmt: skip
    second = dataclasses.replace(failed[0], attempt=1)
    ok = recorded("retry:fail_once", {"args": [], "kwargs": {"marker": "ok", "size": 9}},
                  status=Status.SUCCESS)  # fmt: skip
    await publish(pg_recorder, [*failed, second, ok])

    # when the failures are retried with --dry-run
    out = await retry_cli(env, "--query", "status:failed", "--dry-run", "--broker", BROKER)

    # then it lists each failed task once and sends nothing
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("would send") for line in lines) == 3
    assert lines[-1] == "dry run: would send 3 tasks; nothing sent"
    assert ok.task_id not in out.stdout
    assert queue.llen(env["TEST_QUEUE"]) == 0

    # and without it (--yes), the same three are sent, each once, with the link label
    out = await retry_cli(env, "--query", "status:failed", "--yes", "--broker", BROKER)
    assert out.returncode == 0, out.stderr
    assert sum(line.startswith("sent") for line in out.stdout.splitlines()) == 3
    messages = [json.loads(m) for m in queue.lrange(env["TEST_QUEUE"], 0, -1)]
    assert sorted(m["labels"]["taskmon_retry_of"] for m in messages) == sorted(
        r.task_id for r in failed
    )
    assert {m["task_name"] for m in messages} == {"retry:fail_once"}
    by_original = {m["labels"]["taskmon_retry_of"]: m for m in messages}
    assert by_original[failed[2].task_id]["kwargs"] == {"marker": "m2", "size": 2}

    # and a param term narrows a bulk retry to the tasks called with that value
    out = await retry_cli(
        env, "--query", "status:failed param:marker=m1", "--dry-run", "--broker", BROKER
    )
    assert out.returncode == 0, out.stderr
    chosen = [line for line in out.stdout.splitlines() if line.startswith("would send")]
    assert len(chosen) == 1 and failed[1].task_id in chosen[0], out.stdout


async def test_redacted_or_truncated_params_are_refused_and_nothing_is_sent(
    dsn: str, env: dict[str, str], queue: redis.Redis
) -> None:
    # given a call recorded with its password redacted, and one with a value truncated
    rec = Recorder(dsn, policy=ParamsPolicy(max_value_bytes=64), flush_interval=0.01)
    await rec.start(wait_connected=5)
    login = recorded("retry:login", {"args": [], "kwargs": {"user": "carol", "password": "x"}})
    big = recorded("retry:fail_once", {"args": [], "kwargs": {"marker": "m" * 200, "size": 1}})
    try:
        await publish(rec, [login, big])
    finally:
        await rec.stop()

    for task_id, word in ((login.task_id, "redacted"), (big.task_id, "truncated")):
        # when it is retried
        out = await retry_cli(env, task_id, "--yes", "--broker", BROKER)
        # then it is refused with the reason, in one line, and nothing is sent
        assert out.returncode == 2
        assert out.stdout == ""
        assert len(out.stderr.splitlines()) == 1, out.stderr
        assert f"cannot retry {task_id}" in out.stderr and word in out.stderr, out.stderr
        assert "[REDACTED]" not in out.stderr or word == "redacted"
        assert queue.llen(env["TEST_QUEUE"]) == 0

    # and a bulk retry sends nothing of them either, and says why
    out = await retry_cli(env, "--query", "status:failed", "--yes", "--broker", BROKER)
    assert out.returncode == 2
    assert out.stdout.count("refused") == 2, out.stdout
    assert queue.llen(env["TEST_QUEUE"]) == 0


async def test_bad_ids_unknown_tasks_and_brokers_are_one_line_each(
    pg_recorder: Recorder, env: dict[str, str], queue: redis.Redis
) -> None:
    # given a failed task of a name the broker does not have, and one it has
    gone = recorded("retry:gone", {"args": [], "kwargs": {}})
    good = recorded("retry:fail_once", {"args": [], "kwargs": {"marker": "g", "size": 1}})
    await publish(pg_recorder, [gone, good])
    unreachable = {**env, "TEST_REDIS_URL": "redis://127.0.0.1:9/0"}
    no_broker = {k: v for k, v in env.items() if k != "TASKMON_BROKER"}

    cases: list[tuple[dict[str, str], list[str], str]] = [
        (env, ["   ", "--yes", "--broker", BROKER], "is not a task id"),
        (env, ["no-such-task", "--yes", "--broker", BROKER], "no task no-such-task is recorded"),
        (env, [good.task_id, "--attempt", "3", "--yes", "--broker", BROKER], "has no attempt 3"),
        (env, [gone.task_id, "--yes", "--broker", BROKER], "has no task named 'retry:gone'"),
        (env, [good.task_id, "--yes", "--broker", "retry_worker_app"], "is not module:variable"),
        (env, [good.task_id, "--yes", "--broker", "no_such_app:broker"], "cannot import"),
        (env, [good.task_id, "--yes", "--broker", "retry_worker_app:nope"], "has no variable"),
        (no_broker, [good.task_id, "--yes"], "no broker to send with: pass --broker"),
        (unreachable, [good.task_id, "--yes", "--broker", BROKER], "cannot reach the broker"),
        (env, [good.task_id, "--broker", BROKER], "no terminal to ask on: pass --yes"),
        (env, ["--broker", BROKER], "give a TASK_ID or --query"),
    ]
    for case_env, args, expected in cases:
        # when retried so
        out = await retry_cli(case_env, *args)
        # then one line says what is wrong, exit status 2, and nothing was sent
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert len(out.stderr.splitlines()) == 1, (args, out.stderr)
        assert out.stderr.startswith("taskmon: error: ") and expected in out.stderr, (
            args,
            out.stderr,
        )
        assert "Traceback" not in out.stderr
        assert queue.llen(env["TEST_QUEUE"]) == 0

    # and the broker may come from TASKMON_BROKER
    out = await retry_cli({**env, "TASKMON_BROKER": BROKER}, good.task_id, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('would send  retry:fail_once(marker="g", size=1)')


def _answer_on_a_terminal(env: dict[str, str], answer: str, *args: str) -> tuple[int, str]:
    """``taskmon retry ARGS`` with a terminal as stdin, on which `answer` is typed."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskmon", "retry", *args],
            env=env, stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        os.write(leader, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    return proc.returncode, out + err


async def test_on_a_terminal_it_asks_and_sends_only_on_yes(
    pg_recorder: Recorder, env: dict[str, str], queue: redis.Redis
) -> None:
    # given a failed task
    attempt = recorded("retry:fail_once", {"args": [], "kwargs": {"marker": "t", "size": 1}})
    await publish(pg_recorder, [attempt])
    args = (attempt.task_id, "--broker", BROKER)

    # when the question is answered no, then nothing is sent
    code, text = await asyncio.to_thread(_answer_on_a_terminal, env, "n", *args)
    assert code == 1, text
    assert 'send retry:fail_once(marker="t", size=1)' in text and "nothing sent" in text
    assert queue.llen(env["TEST_QUEUE"]) == 0

    # when it is answered yes, then it is sent
    code, text = await asyncio.to_thread(_answer_on_a_terminal, env, "y", *args)
    assert code == 0, text
    assert queue.llen(env["TEST_QUEUE"]) == 1
    assert "sent     retry:fail_once" in text and attempt.task_id in text
