"""`taskmon schedules` against a real `taskiq scheduler`, `taskiq worker`, PostgreSQL and Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
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


def test_a_scheduler_with_a_source_of_another_kind_is_read_every_time(
    env: dict[str, str], tmp_path: Path
) -> None:
    report(env, scheduler="schedule_app:every_source")
    report(env, scheduler="schedule_app:scheduler")
    # the label-only scheduler was cached, the one with a source taskmon cannot read was not
    assert len(list((tmp_path / "cache").glob("schedules-*.json"))) == 1


REDIS_APP = """
import os
from pathlib import Path
from taskiq import InMemoryBroker, TaskiqScheduler
from taskiq.schedule_sources import LabelScheduleSource
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource, RedisScheduleSource

with Path(os.environ["TEST_IMPORTS"]).open("a") as fh:
    fh.write("x")

broker = InMemoryBroker()

@broker.task(task_name="app:pull", schedule=[{"interval": 30, "schedule_id": "pull"}])
async def pull() -> None:
    return None

URL = os.environ["TEST_REDIS_URL"]
listed = ListRedisScheduleSource(URL, prefix="app-listed")
keyed = RedisScheduleSource(URL, prefix="app-keyed", serializer=JSONSerializer())
scheduler = TaskiqScheduler(broker, [LabelScheduleSource(broker), listed, keyed])
"""


def redis_app_env(dsn: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of `taskmon schedules` on REDIS_APP, written under `tmp_path`."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "redis_app.py").write_text(REDIS_APP)
    return helpers.unconfigured_env(
        TASKMON_DSN=dsn,
        TASKMON_CACHE_DIR=str(tmp_path / "cache"),
        TEST_IMPORTS=str(tmp_path / "imports"),
        TEST_REDIS_URL=redis_url,
        PYTHONPATH=str(app),
    )


@pytest.mark.filterwarnings("ignore:RedisScheduleSource is deprecated")
def test_redis_sources_are_read_again_without_importing_the_app(
    dsn: str, redis_url: str, tmp_path: Path
) -> None:
    # given an app with label schedules and two Redis sources, which counts its imports
    import asyncio
    import stat

    from taskiq import ScheduledTask
    from taskiq.serializers import JSONSerializer
    from taskiq_redis import ListRedisScheduleSource, RedisScheduleSource

    env = redis_app_env(dsn, redis_url, tmp_path)
    imports = tmp_path / "imports"

    async def add(task: ScheduledTask) -> None:
        sources = (
            ListRedisScheduleSource(redis_url, prefix="app-listed"),
            RedisScheduleSource(redis_url, prefix="app-keyed", serializer=JSONSerializer()),
        )
        source = sources[0] if task.cron is not None else sources[1]
        await source.startup()
        try:
            await source.add_schedule(task)
        finally:
            await source.shutdown()

    def listed() -> list[tuple[str, str, str, str]]:
        data = report(env, scheduler="redis_app:scheduler")
        assert data["unreadable"] == []
        return [
            (s["source"], s["task_name"], s["schedule_id"], s["when"]) for s in data["schedules"]
        ]

    nightly = ScheduledTask(
        task_name="app:export",
        labels={},
        args=[],
        kwargs={},
        schedule_id="nightly",
        cron="0 3 * * *",
        cron_offset=timedelta(hours=-5),
    )
    asyncio.run(add(nightly))

    # when it is listed (imported once), then a schedule is added to each Redis source
    first = listed()
    assert imports.read_text() == "x"
    asyncio.run(
        add(
            ScheduledTask(
                task_name="app:sync",
                labels={},
                args=[],
                kwargs={},
                schedule_id="sync",
                interval=90,
            )
        )
    )
    asyncio.run(
        add(
            ScheduledTask(
                task_name="app:audit",
                labels={},
                args=[],
                kwargs={},
                schedule_id="audit",
                cron="*/5 * * * *",
            )
        )
    )
    second = listed()

    # then the second listing shows them, read from Redis without importing the app
    assert imports.read_text() == "x"
    assert [s[:3] for s in first] == [
        ("ListRedisScheduleSource", "app:export", "nightly"),
        ("LabelScheduleSource", "app:pull", "pull"),
    ]
    assert [s[:3] for s in second] == [
        ("ListRedisScheduleSource", "app:audit", "audit"),
        ("ListRedisScheduleSource", "app:export", "nightly"),
        ("LabelScheduleSource", "app:pull", "pull"),
        ("RedisScheduleSource", "app:sync", "sync"),
    ]
    # and as an import of the app reads them (--refresh)
    assert (
        report(env, "--refresh", scheduler="redis_app:scheduler")["schedules"]
        == report(env, scheduler="redis_app:scheduler")["schedules"]
    )
    assert imports.read_text() == "xx"
    # and the cache, which holds where Redis is, is its owner's alone
    (cache,) = (tmp_path / "cache").glob("schedules-*.json")
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600


@pytest.mark.filterwarnings("ignore:RedisScheduleSource is deprecated")
def test_a_cached_redis_source_that_is_down_is_unreadable_and_the_rest_listed(
    dsn: str, redis_url: str, tmp_path: Path
) -> None:
    # given the app above listed once (its sources described in the cache)
    env = redis_app_env(dsn, redis_url, tmp_path)
    report(env, scheduler="redis_app:scheduler")
    (cache,) = (tmp_path / "cache").glob("schedules-*.json")
    # when its Redis is no longer where the cache says (a port nothing listens on)
    data = json.loads(cache.read_text())
    for source in data["redis_sources"]:
        source["connection"]["port"] = helpers.free_port()
    cache.write_text(json.dumps(data))

    # then both Redis sources are listed as unreadable, and the label schedules still show
    out = report(env, scheduler="redis_app:scheduler")
    assert [s["schedule_id"] for s in out["schedules"]] == ["pull"]
    assert sorted(u["source"] for u in out["unreadable"]) == [
        "ListRedisScheduleSource",
        "RedisScheduleSource",
    ]
    assert all(u["reason"].startswith("cannot read:") for u in out["unreadable"])


@pytest.mark.parametrize(
    "when",
    [
        {"cron": "0 3 * * *"},
        {"cron": "0 3 * * *", "cron_offset": timedelta(hours=2)},
        {"cron": "30 8 * * mon-fri", "cron_offset": timedelta(hours=-5, minutes=-30)},
        {"cron": "0 3 * * *", "cron_offset": "Europe/Paris"},
        {"cron": "0 3 * * *", "cron_offset": timedelta(0)},
        {"interval": 45},
        {"interval": timedelta(days=1, seconds=5)},
        {"time": datetime(2026, 12, 24, 18, 0)},
        {"time": datetime(2026, 12, 24, 18, 0, tzinfo=timezone(timedelta(hours=1)))},
    ],
)
def test_a_schedule_stored_in_redis_reads_back_as_its_task_does(when: dict[str, Any]) -> None:
    # given a schedule as a taskiq-redis source stores it (its JSON form)
    from taskiq import ScheduledTask

    from taskmon.service.schedules import from_schedule_json, from_scheduled_task

    task = ScheduledTask(
        task_name="app:job", labels={"tenant": "acme"}, args=[1], kwargs={}, **when
    )

    # then it is the schedule the task itself gives
    stored = task.model_dump(mode="json")
    expected = from_scheduled_task(task, "ListRedisScheduleSource")
    assert from_schedule_json(stored, "ListRedisScheduleSource") == expected
