"""``/metrics`` of the hub: a real hub on a real port, attempts recorded in a real PostgreSQL.

Every scrape is read back with prometheus_client's own parsers, and the
values are checked against what was recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import publish, record, unconfigured_env, wait_for
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from taskmon.domain.events import AttemptRecord, Status
from taskmon.server.exporter import BOUNDS_S, MetricsExporter, for_hub
from taskmon.server.hub import Hub
from taskmon.worker.recorder import Recorder

GAMMA = 1.02 / 0.98  # the rollups' bin ratio: a bucket edge is at most this far above its bound


@dataclasses.dataclass(frozen=True)
class Scrape:
    status: int
    content_type: str
    text: str

    def families(self) -> dict[str, Metric]:
        return {f.name: f for f in text_string_to_metric_families(self.text)}


async def scrape(
    hub: Hub | str, *, headers: dict[str, str] | None = None, query: str = ""
) -> Scrape:
    """GET /metrics of a hub (or of the ``ws://`` URL of one) with urllib, a plain HTTP client."""
    base = hub if isinstance(hub, str) else hub.url
    assert base is not None
    url = base.replace("ws://", "http://") + "metrics" + query

    def get() -> Scrape:
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read().decode()
                return Scrape(response.status, response.headers["Content-Type"], body)
        except urllib.error.HTTPError as exc:
            return Scrape(exc.code, exc.headers["Content-Type"], exc.read().decode())

    return await asyncio.to_thread(get)


def value(family: Metric, name: str | None = None, **labels: str) -> float:
    """The value of the one sample of `family` named `name` with exactly these labels."""
    found = [
        s.value for s in family.samples if (name is None or s.name == name) and s.labels == labels
    ]
    assert len(found) == 1, (name, labels, family.samples)
    return float(found[0])


def buckets(family: Metric, task: str) -> list[tuple[float, float]]:
    """``(le, count)`` of one task's histogram, in order, ``+Inf`` last."""
    return [
        (float(s.labels["le"]), float(s.value))
        for s in family.samples
        if s.name.endswith("_bucket") and s.labels["task"] == task
    ]


def attempt(
    n: int,
    status: Status,
    task: str,
    duration_ms: float | None,
    queue_wait_ms: float | None = None,
    *,
    started: datetime | None = None,
) -> AttemptRecord:
    base = record(n, status, task, duration_ms=duration_ms or 0.0)
    if started is not None:
        base = dataclasses.replace(base, started_at=started, finished_at=None)
    return dataclasses.replace(base, duration_ms=duration_ms, queue_wait_ms=queue_wait_ms)


def check_histogram(
    family: Metric, task: str, values_ms: Sequence[float], sum_s: float | None = None
) -> None:
    """Each bucket counts exactly the values at or below its edge; edges sit just above a bound."""
    got = buckets(family, task)
    assert got[-1] == (float("inf"), float(len(values_ms)))
    edges = [le for le, _ in got[:-1]]
    assert len(edges) == len(BOUNDS_S)
    for bound, edge in zip(BOUNDS_S, edges, strict=True):
        assert bound <= edge < bound * GAMMA * 1.000001, (bound, edge)
    for le, count in got[:-1]:
        assert count == sum(1 for v in values_ms if v / 1000 <= le), (task, le, count)
    assert value(family, f"{family.name}_count", task=task) == len(values_ms)
    if sum_s is not None:
        assert value(family, f"{family.name}_sum", task=task) == pytest.approx(sum_s)


DURATIONS: dict[str, list[tuple[Status, float, float | None]]] = {
    # task -> [(status, duration ms, queue wait ms)]
    "app:extract": [
        (Status.SUCCESS, 3.0, 1.0),
        (Status.SUCCESS, 40.0, 12.0),
        (Status.SUCCESS, 2_000.0, 700.0),
        (Status.SUCCESS, 45_000.0, None),
        (Status.FAILED, 7.5, 2_500.0),
        (Status.FAILED, 120.0, None),
        (Status.RETRYING, 0.0, 0.2),
    ],
    "app:load": [(Status.SUCCESS, 400.0, 90_000.0)],
}


def recorded() -> list[AttemptRecord]:
    """The attempts of DURATIONS, every other one begun 3 days ago.

    Rollups before yesterday are read apart from the recent ones (the
    "settled" sum): the totals must add both.
    """
    records: list[AttemptRecord] = []
    old = datetime.now(UTC) - timedelta(days=3)
    for task, rows in DURATIONS.items():
        for status, duration, wait in rows:
            rec = attempt(len(records), status, task, duration, wait)
            if len(records) % 2:
                rec = dataclasses.replace(rec, started_at=old, finished_at=old)
            records.append(rec)
    return records


async def test_metrics_count_recorded_attempts_and_survive_a_restart(
    dsn: str, pg_recorder: Recorder
) -> None:
    # given attempts recorded through the real writer, two running now (one for too long)
    hub = Hub(dsn=dsn, lost_after_s=3600, metrics=for_hub)
    await hub.start()
    records = recorded()
    now = datetime.now(UTC)
    running = [
        attempt(100, Status.RUNNING, "app:load", None, started=now),
        attempt(101, Status.RUNNING, "app:load", None, started=now - timedelta(hours=2)),
        attempt(102, Status.RUNNING, "app:extract", None, started=now),
    ]
    try:
        await publish(pg_recorder, records + running)
        await wait_for(lambda: hub.stats.events == len(records) + len(running))
        client = await connect(hub.url or "")

        # when
        got = await scrape(hub)

        # then
        assert got.status == 200
        assert got.content_type.startswith("text/plain; version=0.0.4")
        fams = got.families()
        attempts = fams["taskmon_attempts"]
        assert attempts.type == "counter"
        assert value(attempts, task="app:extract", status="success") == 4
        assert value(attempts, task="app:extract", status="failed") == 2
        assert value(attempts, task="app:extract", status="retrying") == 1
        assert value(attempts, task="app:load", status="success") == 1
        assert len(attempts.samples) == 4  # running attempts are not finished ones

        duration = fams["taskmon_attempt_duration_seconds"]
        wait = fams["taskmon_attempt_queue_wait_seconds"]
        assert duration.type == wait.type == "histogram"
        for task, rows in DURATIONS.items():
            durations = [d for _, d, _ in rows]
            waits = [w for _, _, w in rows if w is not None]
            check_histogram(duration, task, durations, sum(durations) / 1000)
            check_histogram(wait, task, waits, sum(waits) / 1000)

        assert value(fams["taskmon_attempts_running"], task="app:load") == 1
        assert value(fams["taskmon_attempts_running"], task="app:extract") == 1
        assert value(fams["taskmon_attempts_lost"], task="app:load") == 1
        assert value(fams["taskmon_attempts_lost"], task="app:extract") == 0
        assert value(fams["taskmon_database_up"]) == 1

        assert value(fams["taskmon_hub_clients"]) == 1
        assert value(fams["taskmon_hub_events"]) == len(records) + len(running)
        assert value(fams["taskmon_hub_bus_connected"], bus="postgres") == 1
        assert value(fams["taskmon_hub_gaps"], cause="bus") == 0
        # every event was stamped just now: the lag is the writer's batching and NOTIFY
        assert 0 <= value(fams["taskmon_hub_bus_lag_seconds"]) < 30
        last = value(fams["taskmon_hub_last_event_timestamp_seconds"])
        assert abs(last - datetime.now(UTC).timestamp()) < 30
        await client.close()
    finally:
        await hub.stop()

    # a new hub reads the same totals from the rollups; its own counters start again
    hub = Hub(dsn=dsn, metrics=for_hub)
    await hub.start()
    try:
        fams = (await scrape(hub)).families()
        assert value(fams["taskmon_attempts"], task="app:extract", status="success") == 4
        check_histogram(fams["taskmon_attempt_duration_seconds"], "app:load", [400.0])
        assert value(fams["taskmon_hub_events"]) == 0
        assert value(fams["taskmon_hub_clients"]) == 0
        assert "taskmon_hub_bus_lag_seconds" not in fams  # no event received yet
    finally:
        await hub.stop()


async def test_scrapes_within_the_cache_window_share_one_read(
    dsn: str, pg_recorder: Recorder
) -> None:
    hub = Hub(dsn=dsn, metrics=for_hub)
    await hub.start()
    try:
        await publish(pg_recorder, [record(1)])
        first = (await scrape(hub)).families()
        assert value(first["taskmon_attempts"], task="app:work", status="success") == 1
        assert isinstance(hub.metrics, MetricsExporter) and hub.metrics.store is not None
        store = hub.metrics.store
        assert store.reads == 1

        await publish(pg_recorder, [record(2)])
        results = await asyncio.gather(*(scrape(hub) for _ in range(5)))
        assert store.reads == 1  # served from the cache: still the first read's totals
        for again in results:
            assert (
                value(again.families()["taskmon_attempts"], task="app:work", status="success") == 1
            )

        store.cache_s = 0.0  # the cache has expired
        fresh = (await scrape(hub)).families()
        assert store.reads == 2
        assert value(fresh["taskmon_attempts"], task="app:work", status="success") == 2
    finally:
        await hub.stop()


async def test_the_token_protects_metrics(dsn: str) -> None:
    hub = Hub(dsn=dsn, token="s3cret", metrics=for_hub)
    await hub.start()
    try:
        refused = [
            await scrape(hub),
            await scrape(hub, headers={"Authorization": "Bearer wrong"}),
            await scrape(hub, query="?token=wrong"),
            await scrape(hub, headers={"Authorization": "Basic czNjcmV0"}),
        ]
        for answer in refused:
            assert answer.status == 401
            assert "token" in answer.text and "taskmon_" not in answer.text
        assert hub.metrics is None  # nothing was read for a refused scrape
        assert hub.stats.refused == 4

        by_header = await scrape(hub, headers={"Authorization": "Bearer s3cret"})
        by_query = await scrape(hub, query="?token=s3cret")
        for answer in (by_header, by_query):
            assert answer.status == 200
            fams = answer.families()
            assert value(fams["taskmon_database_up"]) == 1
            assert value(fams["taskmon_hub_refused_connections"]) == 4
    finally:
        await hub.stop()


async def test_an_unreadable_database_is_said_and_hub_metrics_stay(redis_url: str) -> None:
    # a Redis-bus hub whose database is unreachable still serves its own metrics
    hub = Hub(
        redis_url=redis_url, read_dsn="postgresql://postgres@127.0.0.1:1/none", metrics=for_hub
    )
    await hub.start()
    try:
        answer = await scrape(hub)
        assert answer.status == 200
        fams = answer.families()
        assert value(fams["taskmon_database_up"]) == 0
        assert "taskmon_attempts" not in fams  # absent rather than stale
        assert value(fams["taskmon_hub_bus_connected"], bus="redis") == 1
    finally:
        await hub.stop()


async def test_a_hub_without_database_exports_its_own_metrics(redis_url: str) -> None:
    hub = Hub(redis_url=redis_url, metrics=for_hub)
    await hub.start()
    try:
        fams = (await scrape(hub)).families()
        assert "taskmon_database_up" not in fams
        assert value(fams["taskmon_hub_clients"]) == 0
    finally:
        await hub.stop()


async def test_openmetrics_when_asked(dsn: str, pg_recorder: Recorder) -> None:
    hub = Hub(dsn=dsn, metrics=for_hub)
    await hub.start()
    try:
        await publish(pg_recorder, [record(1, duration_ms=30.0)])
        accept = "application/openmetrics-text; version=1.0.0; charset=utf-8"
        answer = await scrape(hub, headers={"Accept": accept})
        assert answer.content_type.startswith("application/openmetrics-text")
        assert answer.text.endswith("# EOF\n")
        parsed: Iterable[Metric] = openmetrics_families(answer.text)  # type: ignore[no-untyped-call]
        fams = {f.name: f for f in parsed}
        assert value(fams["taskmon_attempts"], task="app:work", status="success") == 1
        check_histogram(fams["taskmon_attempt_duration_seconds"], "app:work", [30.0])
    finally:
        await hub.stop()


async def test_taskmon_serve_exports_metrics_with_its_token_and_database(
    dsn: str, pg_recorder: Recorder, redis_url: str
) -> None:
    # given: attempts in the database; a hub on the Redis bus, its database from the environment
    await publish(pg_recorder, [record(1), record(2, Status.FAILED)])
    env = unconfigured_env(TASKMON_DSN=dsn, TASKMON_HUB_TOKEN="s3cret")
    command = [sys.executable, "-m", "taskmon", "serve", "--port", "0", "--redis-url", redis_url]
    proc = await asyncio.create_subprocess_exec(*command, env=env, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()  # once it listens
        assert line.startswith("taskmon: hub listening on ws://"), line
        url = line.split(" on ", 1)[1].split(" ", 1)[0]

        # when
        refused = await scrape(url)
        answer = await scrape(url, headers={"Authorization": "Bearer s3cret"})

        # then
        assert refused.status == 401
        assert answer.status == 200
        fams = answer.families()
        assert value(fams["taskmon_attempts"], task="app:work", status="success") == 1
        assert value(fams["taskmon_attempts"], task="app:work", status="failed") == 1
        assert value(fams["taskmon_hub_bus_connected"], bus="redis") == 1
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0


async def test_older_rollups_are_summed_rarely_and_recent_ones_at_every_read(
    dsn: str, pg_recorder: Recorder
) -> None:
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    hub = Hub(dsn=dsn, metrics=for_hub)
    await hub.start()
    try:
        # given: one attempt before yesterday, one now, and a first scrape
        old = dataclasses.replace(record(1), started_at=three_days_ago, finished_at=three_days_ago)
        await publish(pg_recorder, [old, record(2)])
        first = (await scrape(hub)).families()
        assert value(first["taskmon_attempts"], task="app:work", status="success") == 2
        assert isinstance(hub.metrics, MetricsExporter) and hub.metrics.store is not None
        store = hub.metrics.store
        assert store.settled_reads == 1

        # when: more of both, and the cache of the recent part expires
        late = dataclasses.replace(
            record(3, Status.FAILED), started_at=three_days_ago, finished_at=three_days_ago
        )
        await publish(pg_recorder, [late, record(4, Status.FAILED)])
        store.cache_s = 0.0
        second = (await scrape(hub)).families()

        # then: the recent attempt counts at once, the older one waits for the settled sum
        assert value(second["taskmon_attempts"], task="app:work", status="failed") == 1
        assert value(second["taskmon_attempts"], task="app:work", status="success") == 2
        assert store.settled_reads == 1

        # when the settled sum is due, it is read again in the background
        store.settled_ttl_s = 0.0
        await scrape(hub)
        await wait_for(lambda: store.settled_reads == 2)
        third = (await scrape(hub)).families()
        assert value(third["taskmon_attempts"], task="app:work", status="failed") == 2
        assert value(third["taskmon_attempts"], task="app:work", status="success") == 2
    finally:
        await hub.stop()


async def test_workers_and_queues_from_their_heartbeats(dsn: str) -> None:
    import asyncpg

    from taskmon.store.workers import QueueSample, WorkerBeat, beat

    # given one worker alive with a sampled queue, and one that stopped cleanly
    conn = await asyncpg.connect(dsn)
    try:
        for name, stopped in (("h:1", False), ("h:2", True)):
            worker = WorkerBeat(
                name=name, host="h", pid=int(name[-1]), broker="ListQueueBroker", queue="q",
                taskmon_version=None, taskiq_version=None, heartbeat_s=5.0,
                running=0, processed=0, failed=0, stopped=stopped,
            )  # fmt: skip
            await beat(conn, worker, QueueSample("ListQueueBroker", "q", 42, 3.5))
    finally:
        await conn.close()
    hub = Hub(dsn=dsn, metrics=for_hub)
    await hub.start()
    try:
        # when Prometheus scrapes
        families = (await scrape(hub)).families()
        # then the workers count by state, and the queue shows its latest sample
        assert value(families["taskmon_workers"], state="alive") == 1
        assert value(families["taskmon_workers"], state="stopped") == 1
        assert value(families["taskmon_workers"], state="stale") == 0
        labels = {"broker": "ListQueueBroker", "queue": "q"}
        assert value(families["taskmon_queue_depth"], **labels) == 42
        assert value(families["taskmon_queue_oldest_wait_seconds"], **labels) == 3.5
    finally:
        await hub.stop()


async def test_attempts_sent_and_not_started_by_task_with_the_oldest_wait(
    dsn: str, db: Any
) -> None:
    from test_rollups import insert

    # given two attempts of one task sent and not started (one 20 minutes ago),
    # one of another task, and one that started
    now = datetime.now(UTC)
    await insert(
            db,
            [
                {"task_id": "a", "task_name": "app:export", "status": "pending", "worker": None,
                 "created_at": now - timedelta(minutes=20)},
                {"task_id": "b", "task_name": "app:export", "status": "pending", "worker": None,
                 "created_at": now - timedelta(seconds=5)},
                {"task_id": "c", "task_name": "app:sync", "status": "pending", "worker": None,
                 "created_at": now - timedelta(minutes=2)},
                {"task_id": "d", "task_name": "app:sync", "status": "running",
                 "created_at": now - timedelta(hours=1)},
            ],
        )  # fmt: skip
    hub = Hub(dsn=dsn, metrics=for_hub)
    await hub.start()
    try:
        # when Prometheus scrapes
        families = (await scrape(hub)).families()
        # then each task's unstarted attempts count, with how long the oldest has waited
        assert value(families["taskmon_attempts_pending"], task="app:export") == 2
        assert value(families["taskmon_attempts_pending"], task="app:sync") == 1
        oldest = families["taskmon_pending_oldest_wait_seconds"]
        assert 20 * 60 <= value(oldest, task="app:export") < 20 * 60 + 60
        assert 2 * 60 <= value(oldest, task="app:sync") < 2 * 60 + 60
    finally:
        await hub.stop()
