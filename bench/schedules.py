"""`taskmon schedules` at scale, and how soon a missed fire is reported.

``process`` (default): 100 schedules over a day on the 10 M-row ``taskmon_bench``
(seeded by ``queries.py 10000000 --bulk --seed-only``): 90 on task names of
their own (``*/15 * * * *``, one fire in 7 missed, one in 11 late) and 10 on a
busy task of the seed (hourly, matched by ``schedule_id`` among its ~40 000
attempts a day). Times the whole ``taskmon schedules --format json`` process
(target: 400 ms), then the same steps in one process: importing the
scheduler, reading its schedules, the report's query.

``detect``: a scratch database, a 2 s interval schedule whose sends stop, and
an ``AlertRunner`` checking every ``--interval`` seconds with a ``grace``;
prints how long after the first unanswered fire's time the rule fired, against
grace + one interval (the target).

    python bench/schedules.py [process] [--runs 15]
    python bench/schedules.py detect [--interval 2] [--grace 3] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import (
    REDIS_URL,
    SERVER_DSN,
    child_env,
    drop_database,
    interleaved,
    scratch_database,
    spread,
    with_database,
)

BENCH_DB = "taskmon_bench"
OWN = 90
BUSY = 10
BUSY_TASK = "app.tasks:extract"

APP = """
from taskiq import InMemoryBroker, TaskiqScheduler
from taskiq.schedule_sources import LabelScheduleSource

broker = InMemoryBroker()

def _noop() -> None:
    return None

for k in range({own}):
    broker.register_task(
        _noop, task_name=f"sched:job{{k:02d}}",
        schedule=[{{"cron": "*/15 * * * *", "schedule_id": f"job{{k:02d}}"}}],
    )
# one busy task of the seed with ten schedules: matched by schedule_id among its attempts
broker.register_task(
    _noop, task_name="{busy_task}",
    schedule=[{{"cron": f"{{k}} * * * *", "schedule_id": f"busy{{k}}"}} for k in range({busy})],
)

scheduler = TaskiqScheduler(broker, [LabelScheduleSource(broker)])

# the same 100 schedules, the 90 of their own task names kept in Redis instead
redis_broker = InMemoryBroker()
redis_broker.register_task(
    _noop, task_name="{busy_task}",
    schedule=[{{"cron": f"{{k}} * * * *", "schedule_id": f"busy{{k}}"}} for k in range({busy})],
)
from taskiq_redis import ListRedisScheduleSource
redis_scheduler = TaskiqScheduler(
    redis_broker,
    [LabelScheduleSource(redis_broker), ListRedisScheduleSource({redis_url!r}, prefix={prefix!r})],
)
"""

PREFIX = "taskmon-bench-schedules"


def _app(where: Path) -> None:
    (where / "bench_schedules_app.py").write_text(
        APP.format(own=OWN, busy=BUSY, busy_task=BUSY_TASK, redis_url=REDIS_URL, prefix=PREFIX)
    )


async def _seed_runs(dsn: str, now: datetime) -> int:
    """The schedules' runs over the day before `now` (their old runs replaced)."""
    from taskmon.store.db import connect

    conn = await connect(dsn)
    try:
        await conn.execute(
            "DELETE FROM task_execution_logs WHERE task_name LIKE 'sched:%' "
            "OR (task_name = $1 AND task_id LIKE 'bsched-%')",
            BUSY_TASK,
        )
        rows: list[tuple[Any, ...]] = []
        start = (now - timedelta(days=1, minutes=30)).replace(second=0, microsecond=0)
        for k in range(OWN):
            at, n = start - timedelta(minutes=start.minute % 15), 0
            while at <= now - timedelta(minutes=6):
                n += 1
                if n % 7:
                    late = timedelta(minutes=3) if n % 11 == 0 else timedelta(seconds=0.2)
                    rows.append((f"sched-{k}-{n}", f"sched:job{k:02d}", f"job{k:02d}", at + late))
                at += timedelta(minutes=15)
        for k in range(BUSY):
            at = start.replace(minute=k)
            n = 0
            while at <= now - timedelta(minutes=6):
                n += 1
                rows.append((f"bsched-{k}-{n}", BUSY_TASK, f"busy{k}", at))
                at += timedelta(hours=1)
        await conn.execute(
            """
            INSERT INTO task_execution_logs (task_id, attempt, task_name, status, worker, labels,
                enqueued_at, started_at, finished_at, duration_ms, created_at)
            SELECT t.id, 0, t.name, 'success', 'bench:1', jsonb_build_object('schedule_id', t.sid),
                   t.at, t.at + interval '50 ms', t.at + interval '250 ms', 200, t.at
              FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                   AS t(id, name, sid, at)
            """,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        )
        await conn.execute("ANALYZE task_execution_logs")
        return len(rows)
    finally:
        await conn.close()


async def _in_process(dsn: str, where: Path) -> dict[str, float]:
    sys.path.insert(0, str(where))
    t0 = time.perf_counter()
    from taskmon.service import schedules as service

    scheduler = service.load("bench_schedules_app:scheduler")
    t1 = time.perf_counter()
    found, _ = await service.read(scheduler)
    t2 = time.perf_counter()
    from taskmon.service.reader import Reader

    async with Reader(dsn, pool_size=1) as reader:
        await reader.schedules(found, now=datetime.now(UTC))  # a connection, a warm plan
        t3 = time.perf_counter()
        reports = await reader.schedules(found, now=datetime.now(UTC))
        t4 = time.perf_counter()
    assert len(reports) == OWN + BUSY, len(reports)
    return {
        "import": (t1 - t0) * 1000,
        "read": (t2 - t1) * 1000,
        "query": (t4 - t3) * 1000,
        "missed": float(sum(r.missed_count for r in reports)),
        "late": float(sum(r.late_count for r in reports)),
        "runs": float(sum(r.runs for r in reports)),
    }


async def _redis_schedules() -> None:
    """The 90 schedules of their own task names, in the bench scheduler's Redis source."""
    from redis.asyncio import Redis
    from taskiq import ScheduledTask
    from taskiq_redis import ListRedisScheduleSource

    redis = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in redis.scan_iter(f"{PREFIX}:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
    source = ListRedisScheduleSource(REDIS_URL, prefix=PREFIX)
    await source.startup()
    try:
        for k in range(OWN):
            await source.add_schedule(
                ScheduledTask(
                    task_name=f"sched:job{k:02d}",
                    labels={},
                    args=[],
                    kwargs={},
                    schedule_id=f"job{k:02d}",
                    cron="*/15 * * * *",
                )
            )
    finally:
        await source.shutdown()


def process(args: argparse.Namespace) -> None:
    dsn = with_database(SERVER_DSN, BENCH_DB)
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        _app(where)
        seeded = asyncio.run(_seed_runs(dsn, datetime.now(UTC)))
        print(f"{OWN + BUSY} schedules, {seeded:,} scheduled runs added to {BENCH_DB}")
        asyncio.run(_redis_schedules())
        cmd = [sys.executable, "-m", "taskmon", "schedules", "--format", "json"]
        cmd += ["--scheduler", "bench_schedules_app:scheduler", "--dsn", dsn]
        # the label schedules are cached between runs (an unchanged app is not imported
        # again); --refresh imports it every time, as the first run after a change does
        env = child_env(TASKMON_CACHE_DIR=str(where / "cache"))
        redis_cmd = [*cmd]
        redis_cmd[redis_cmd.index("bench_schedules_app:scheduler")] = (
            "bench_schedules_app:redis_scheduler"
        )
        kinds = {"cached": cmd, "refresh": [*cmd, "--refresh"], "redis": redis_cmd}
        times: dict[str, list[float]] = {k: [] for k in kinds}
        outs: dict[str, str] = {}
        for i in range(args.runs + 1):
            for kind in interleaved(list(kinds)):
                t0 = time.perf_counter()
                done = subprocess.run(
                    kinds[kind], env=env, cwd=where, capture_output=True, text=True
                )
                took = (time.perf_counter() - t0) * 1000
                if done.returncode != 0:
                    raise SystemExit(done.stderr)
                outs[kind] = done.stdout
                if i:  # the first round warms the page cache (and writes the cache)
                    times[kind].append(took)
        data = json.loads(outs["cached"])

        def ids(out: dict[str, Any]) -> list[tuple[str, str, str]]:
            return [(x["schedule_id"], x["task_name"], x["when"]) for x in out["schedules"]]

        if ids(json.loads(outs["refresh"])) != ids(data):
            raise SystemExit("the cached schedules differ from the imported ones")
        if ids(json.loads(outs["redis"])) != ids(data):
            raise SystemExit("the schedules read from Redis differ from the label ones")
        missed = sum(s["missed"] for s in data["schedules"])
        late = sum(s["late"] for s in data["schedules"])
        print(f"reported: {len(data['schedules'])} schedules, {missed} missed, {late} late fires")
        for kind, words in (
            ("cached", "app unchanged"),
            ("redis", "app unchanged, 90 of the schedules in a ListRedisScheduleSource"),
            ("refresh", "--refresh (app imported)"),
        ):
            print(
                f"whole process, {words}, ms (target 400): "
                f"{spread(times[kind], '.0f')} over {len(times[kind])} runs"
            )
        baseline = [sys.executable, "-c", "import taskmon.cli"]
        idle: list[float] = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run(baseline, env=env, cwd=where, check=True)
            idle.append((time.perf_counter() - t0) * 1000)
        print(f"  of which python + `import taskmon.cli`, ms: {spread(idle, '.0f')}")
        parts = [
            subprocess.run(
                [sys.executable, __file__, "_inprocess", dsn, str(where)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            for _ in range(5)
        ]
        steps = [json.loads(p) for p in parts]
        for key, words in (
            ("import", "importing the scheduler (taskiq, the app)"),
            ("read", "reading its schedules"),
            ("query", "the report's query and judging"),
        ):
            print(f"  {words}, ms: {spread([s[key] for s in steps], '.1f')}")


async def _detect_once(dsn: str, interval: float, grace: float) -> float:
    """Seconds from the first unanswered fire's time to the rule firing."""
    from taskmon.domain.schedules import Schedule
    from taskmon.server.alerts import AlertRunner, parse_alert_config
    from taskmon.store.db import connect

    conn = await connect(dsn)
    schedule = Schedule("tick", "bench:tick", "LabelScheduleSource", interval_s=2.0)
    await conn.execute("DELETE FROM task_execution_logs WHERE task_name = 'bench:tick'")
    last_send = datetime.now(UTC)
    await conn.execute(
        "INSERT INTO task_execution_logs (task_id, attempt, task_name, status, worker, labels, "
        "enqueued_at, started_at, created_at) "
        "VALUES ($1, 0, 'bench:tick', 'success', 'bench:1', '{\"schedule_id\": \"tick\"}', "
        "$2, $2, $2)",
        f"tick-{last_send.timestamp()}",
        last_send,
    )
    await conn.execute("DELETE FROM taskmon_alerts")
    config = parse_alert_config(
        {
            "alerts": [
                {"name": "tick", "when": "schedule_missed", "over": "1h", "grace": f"{grace:g}s"}
            ],
            "alert_interval": interval,
        }
    )

    async def schedules() -> list[Schedule]:
        return [schedule]

    runner = AlertRunner(dsn, config, schedules=schedules)
    await runner.start()
    try:
        while True:
            await asyncio.sleep(0.05)
            state = await conn.fetchval("SELECT state FROM taskmon_alerts WHERE rule = 'tick'")
            if state == "firing":
                fired = datetime.now(UTC)
                break
    finally:
        await runner.stop()
        await conn.close()
    expected = last_send + timedelta(seconds=2.0)
    return (fired - expected).total_seconds()


def detect(args: argparse.Namespace) -> None:
    async def go() -> list[float]:
        dsn = await scratch_database("taskmon_bench_schedules")
        try:
            return [await _detect_once(dsn, args.interval, args.grace) for _ in range(args.runs)]
        finally:
            await drop_database("taskmon_bench_schedules")

    delays = asyncio.run(go())
    bound = args.grace + args.interval
    print(
        f"missed fire reported after its time, s: {spread(delays, '.2f')} over {len(delays)} "
        f"runs; target grace + interval = {bound:g}s: "
        + ("met" if max(delays) <= bound else "MISSED")
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_inprocess":
        print(json.dumps(asyncio.run(_in_process(sys.argv[2], Path(sys.argv[3])))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what")
    p = sub.add_parser("process", help="taskmon schedules at 10 M rows (default)")
    p.add_argument("--runs", type=int, default=15)
    d = sub.add_parser("detect", help="how soon schedule_missed fires")
    d.add_argument("--interval", type=float, default=2.0)
    d.add_argument("--grace", type=float, default=3.0)
    d.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(sys.argv[1:] or ["process"])
    if args.what == "detect":
        detect(args)
    else:
        process(args)


if __name__ == "__main__":
    main()
