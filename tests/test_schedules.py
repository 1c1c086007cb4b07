"""`taskmon schedules` against a real `taskiq scheduler`, `taskiq worker`, PostgreSQL and Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import app_client, wait_for_sync

pytestmark = pytest.mark.slow

SCHEDULER = ("--scheduler", "schedule_app:scheduler")


class Procs:
    """The TaskIQ processes of one test, stopped at its end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskiq", *argv],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@pytest.fixture
def env(dsn: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    return helpers.worker_env(
        dsn,
        redis_url,
        TEST_SCHEDULE_PREFIX=f"taskmon-test-{uuid.uuid4().hex[:8]}",
        TASKMON_CACHE_DIR=str(tmp_path / "cache"),
    )


@pytest.fixture
def procs(env: dict[str, str], tmp_path: Path) -> Iterator[Procs]:
    p = Procs(env, tmp_path)
    yield p
    p.stop_all()


def schedules(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskmon", "schedules", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def report(env: dict[str, str], *args: str, scheduler: str = "schedule_app:scheduler") -> Any:
    done = schedules(env, "--scheduler", scheduler, "--format", "json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def by_task(data: Any) -> dict[str, Any]:
    return {s["task_name"]: s for s in data["schedules"]}


def test_a_running_schedule_shows_its_last_run_then_its_missed_fires(
    procs: Procs, env: dict[str, str]
) -> None:
    # given a scheduler sending tests:tick every 2 s and a worker running it
    procs.start("worker", "worker", "schedule_app:broker")
    procs.start("scheduler", "scheduler", "schedule_app:scheduler")

    # then its runs show, the last one a success, none missed
    def ticking() -> Any:
        tick = by_task(report(env, "--grace", "3s"))["tests:tick"]
        return tick if tick["runs"] >= 3 and tick["last_run"] else None

    tick = wait_for_sync(ticking, timeout=60, interval=0.5, what="three recorded ticks")
    assert tick["schedule_id"] == "tick" and tick["stable_id"] is True
    assert tick["when"] == "every 2s"
    assert tick["last_run"]["status"] == "success"
    assert tick["last_run"]["schedule_id"] == "tick"
    assert tick["missed"] == 0
    assert tick["next_fire"] is not None
    assert {f["state"] for f in tick["fires"]} <= {"ok", "late", "waiting"}

    # when the worker stops (the scheduler still sends)
    procs.stop("worker")

    # then the next fires are missed once the grace period has passed
    def missing() -> Any:
        tick = by_task(report(env, "--grace", "3s"))["tests:tick"]
        return tick if tick["missed"] >= 1 else None

    tick = wait_for_sync(missing, timeout=30, interval=0.5, what="a missed tick")
    assert tick["state"] == "missed"
    missed = [f for f in tick["fires"] if f["state"] == "missed"]
    assert missed and all(f["task_id"] is None for f in missed)

    # and the table says so in words
    table = schedules(env, "--scheduler", "schedule_app:scheduler", "--grace", "3s")
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in table.stdout.splitlines() if "tests:tick" in ln)
    assert "✕ missed" in line and "every 2s" in line

    # and the schedule_missed alert fires (exit status 1) ...
    def check() -> tuple[int, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "taskmon", "alerts", "check", "-f", "json", *SCHEDULER],
            env={**env, "TASKMON_CONFIG": str(rules)},
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode in (0, 1), done.stderr
        (status,) = json.loads(done.stdout)
        return done.returncode, status

    rules = procs.logs / "alerts.toml"
    rules.write_text(
        '[[alerts]]\nname = "ticks"\nwhen = "schedule_missed"\nover = "1m"\ngrace = "3s"\n'
    )
    code, status = check()
    assert (code, status["state"]) == (1, "firing"), status
    assert "tests:tick" in status["detail"]

    # ... and clears once a worker runs the sends that waited
    procs.start("worker2", "worker", "schedule_app:broker")

    def cleared() -> Any:
        code, status = check()
        return status if code == 0 and status["state"] == "resolved" else None

    wait_for_sync(cleared, timeout=60, interval=0.5, what="the alert to resolve")


def test_every_source_is_listed_and_an_unknown_one_is_not_readable(
    procs: Procs, env: dict[str, str]
) -> None:
    # given a schedule added to a Redis schedule source, as `taskiq-redis` users do
    import asyncio

    from taskiq import ScheduledTask

    async def add() -> None:
        async with app_client("schedule_app", env) as app:
            await app.redis_source.startup()
            try:
                await app.redis_source.add_schedule(
                    ScheduledTask(
                        task_name="tests:report",
                        labels={},
                        args=["monday"],
                        kwargs={},
                        schedule_id="weekly-report",
                        cron="0 9 * * mon",
                        cron_offset=timedelta(hours=2),
                    )
                )
            finally:
                await app.redis_source.shutdown()

    asyncio.run(add())

    data = report(env, scheduler="schedule_app:every_source")
    found = by_task(data)
    weekly = found["tests:report"]
    assert (weekly["source"], weekly["schedule_id"], weekly["cron"]) == (
        "ListRedisScheduleSource",
        "weekly-report",
        "0 9 * * mon",
    )
    assert weekly["cron_offset"] == "+02:00" and weekly["stable_id"] is True
    assert weekly["next_fire"] is not None
    nightly = found["tests:nightly"]
    # a label schedule without its own schedule_id gets a new one at each start
    assert nightly["source"] == "LabelScheduleSource" and nightly["stable_id"] is False
    assert data["unreadable"] == [
        {"source": "FileSource", "reason": data["unreadable"][0]["reason"]}
    ]
    assert "not readable" in data["unreadable"][0]["reason"]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("schedule_app", "is not module:variable"),
        ("no_such_module:scheduler", "cannot import no_such_module"),
        ("schedule_app:nothing", "has no variable nothing"),
        ("schedule_app:broker", "is a ListQueueBroker, not a TaskiqScheduler"),
    ],
)
def test_a_bad_scheduler_path_is_one_line_and_exit_2(
    env: dict[str, str], spec: str, says: str
) -> None:
    done = schedules(env, "--scheduler", spec)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and says in lines[0] and lines[0].startswith("taskmon: error:")


def test_no_scheduler_and_bad_durations_are_one_line_and_exit_2(env: dict[str, str]) -> None:
    bare = {k: v for k, v in env.items() if k != "TASKMON_SCHEDULER"}
    bare["TASKMON_CONFIG"] = "/dev/null"
    for args, says in (
        ((), "no scheduler"),
        (("--scheduler", "schedule_app:scheduler", "--grace", "soon"), "--grace"),
        (("--scheduler", "schedule_app:scheduler", "--window", "0"), "--window"),
        (("--scheduler", "schedule_app:scheduler", "-f", "xml"), "--format"),
    ):
        done = schedules(bare, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and says in done.stderr, done.stderr


CACHED_APP = """
import os
from pathlib import Path
from taskiq import InMemoryBroker, TaskiqScheduler
from taskiq.schedule_sources import LabelScheduleSource

with Path(os.environ["TEST_IMPORTS"]).open("a") as fh:
    fh.write("x")

broker = InMemoryBroker()

@broker.task(task_name="app:pull", schedule=[{"interval": INTERVAL, "schedule_id": "pull"}])
async def pull() -> None:
    return None

scheduler = TaskiqScheduler(broker, [LabelScheduleSource(broker)])
"""


def test_label_schedules_are_reused_until_the_app_changes(dsn: str, tmp_path: Path) -> None:
    # given an app that counts its imports, and a cache directory of the test's own
    app = tmp_path / "app"
    app.mkdir()
    (app / "cached_app.py").write_text(CACHED_APP.replace("INTERVAL", "30"))
    imports = tmp_path / "imports"
    env = helpers.unconfigured_env(
        TASKMON_DSN=dsn,
        TASKMON_CACHE_DIR=str(tmp_path / "cache"),
        TEST_IMPORTS=str(imports),
        PYTHONPATH=str(app),
    )

    def when() -> str:
        data = report(env, scheduler="cached_app:scheduler")
        (pull,) = data["schedules"]
        return str(pull["when"])

    # when it is listed twice, the app is imported once
    assert when() == "every 30s"
    assert when() == "every 30s"
    assert imports.read_text() == "x"
    # when its file changes, it is imported again and the change shows
    (app / "cached_app.py").write_text(CACHED_APP.replace("INTERVAL", "45"))
    assert when() == "every 45s"
    assert imports.read_text() == "xx"
    # and --refresh imports it whatever the cache holds
    assert report(env, "--refresh", scheduler="cached_app:scheduler")["schedules"]
    assert imports.read_text() == "xxx"


def test_a_scheduler_with_a_redis_source_is_read_every_time(
    env: dict[str, str], tmp_path: Path
) -> None:
    report(env, scheduler="schedule_app:every_source")
    report(env, scheduler="schedule_app:scheduler")
    # the label-only scheduler was cached, the one with a Redis source was not
    assert len(list((tmp_path / "cache").glob("schedules-*.json"))) == 1
