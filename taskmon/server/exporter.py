"""Prometheus metrics of ``taskmon serve``: what was recorded (from PostgreSQL) and the hub itself.

The hub answers ``GET /metrics`` with :meth:`MetricsExporter.render`. Two
custom collectors feed one registry:

* :class:`StoreCollector` reads :func:`taskmon.store.metrics.fetch_metrics` at
  scrape time: attempts per task and status (a counter), duration and
  queue-wait histograms per task (from the rollups, so both survive restarts
  of the hub and of the workers), attempts running now and lost. One read
  serves every scrape within ``cache_s`` seconds, so several Prometheus
  servers, or a fast scrape interval, cost one statement per ``cache_s``.
  While the database cannot be read, ``taskmon_database_up`` is 0 and these
  families are left out rather than shown stale.
* :class:`HubCollector` reads the hub's counters: clients connected, events
  received (and forwarded to every subscriber that wants them), gaps,
  refused connections, whether the bus is read, and the bus lag.

Workers alive are not exported: taskmon does not know them yet (no
heartbeats are recorded).

No textual, typer or rich here: it runs in the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S
from taskmon.store.metrics import (
    MetricsSnapshot,
    Settled,
    fetch_metrics,
    fetch_settled,
    settled_boundary,
)

if TYPE_CHECKING:
    import asyncpg

    from taskmon.server.hub import Hub

__all__ = ["BOUNDS_S", "HubCollector", "MetricsExporter", "StoreCollector", "for_hub"]

logger = logging.getLogger("taskmon.server.exporter")

BOUNDS_S: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip
"""The histogram bounds asked for, in seconds. Each bucket is the edge of the
rollup bin that holds its bound (up to 4.1 % above it), labelled with that edge."""

DEFAULT_CACHE_S = 5.0
SETTLED_TTL_S = 300.0
"""How long the sum of the rollups before yesterday serves before it is read again."""
QUERY_TIMEOUT_S = 10.0
SETTLED_TIMEOUT_S = 120.0


class StoreCollector:
    """Attempts, histograms, running and lost, from PostgreSQL, cached for ``cache_s``.

    Prometheus collectors are synchronous: :meth:`refresh` (awaited by the
    hub before each scrape) reads the database when the last read is older
    than ``cache_s``; :meth:`collect` turns the last read into metric families.

    A read sums the rollups from yesterday (UTC) on, and adds the sum of all
    older ones, which is read at the first scrape and then again every
    ``settled_ttl_s`` in the background (on a connection of its own): at 400
    days of 50 busy tasks that older part is some 2 million rows, seconds of
    work, where the recent part is milliseconds. The price: an attempt that
    began before yesterday and finishes (or is marked lost) now is counted
    within ``settled_ttl_s`` rather than at the next scrape.
    """

    def __init__(
        self,
        dsn: str,
        *,
        cache_s: float = DEFAULT_CACHE_S,
        lost_after_s: float = DEFAULT_LOST_AFTER_S,
        bounds_s: Sequence[float] = BOUNDS_S,
        settled_ttl_s: float = SETTLED_TTL_S,
    ) -> None:
        self.dsn = dsn
        self.cache_s = cache_s
        self.lost_after_s = lost_after_s
        self.bounds_s = tuple(bounds_s)
        self.settled_ttl_s = settled_ttl_s
        self.reads = 0
        """Database reads so far (scrapes served from the cache do not count)."""
        self.settled_reads = 0
        """Reads of the rollups before yesterday so far."""
        self._settled: Settled | None = None
        self._settled_at = 0.0
        self._settling: asyncio.Task[None] | None = None
        self._snapshot: MetricsSnapshot | None = None
        self._read_at: float | None = None
        self._read_s = 0.0
        self._up = False
        self._error: str | None = None
        self._conn: asyncpg.Connection[Any] | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read the database unless the last read (successful or not) is recent enough."""
        async with self._lock:  # concurrent scrapes share one read
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self.cache_s:
                return
            started = time.perf_counter()
            try:
                snapshot = await self._fetch()
            except Exception as exc:
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
                if self._up or self._error is None:
                    logger.warning("taskmon metrics: cannot read the database: %s", reason)
                self._up, self._error, self._snapshot = False, reason, None
                await self.close()
            else:
                if not self._up and self._error is not None:
                    logger.warning("taskmon metrics: the database is readable again")
                self._up, self._error, self._snapshot = True, None, snapshot
            self._read_s = time.perf_counter() - started
            self._read_at = time.monotonic()
            self.reads += 1

    async def _fetch(self) -> MetricsSnapshot:
        if self._conn is None or self._conn.is_closed():
            from taskmon.store.db import connect

            self._conn = await connect(self.dsn, timeout=QUERY_TIMEOUT_S)
        if self._settled is None:
            boundary = settled_boundary(datetime.now(UTC))
            settled = fetch_settled(self._conn, boundary)
            self._settled = await asyncio.wait_for(settled, SETTLED_TIMEOUT_S)
            self._settled_at = time.monotonic()
            self.settled_reads += 1
        elif time.monotonic() - self._settled_at >= self.settled_ttl_s and (
            self._settling is None or self._settling.done()
        ):
            self._settling = asyncio.create_task(self._settle(), name="taskmon-metrics-settle")
        bounds_ms = [b * 1000.0 for b in self.bounds_s]
        return await asyncio.wait_for(
            fetch_metrics(
                self._conn, bounds_ms, lost_after_s=self.lost_after_s, settled=self._settled
            ),
            QUERY_TIMEOUT_S,
        )

    async def _settle(self) -> None:
        """Read the rollups before yesterday again, while scrapes go on with the last sum."""
        from taskmon.store.db import connect

        try:
            conn = await connect(self.dsn, timeout=QUERY_TIMEOUT_S)
            try:
                boundary = settled_boundary(datetime.now(UTC))
                settled = await asyncio.wait_for(fetch_settled(conn, boundary), SETTLED_TIMEOUT_S)
            finally:
                conn.terminate()
        except Exception as exc:
            # the last sum stays; the next try comes after another settled_ttl_s
            logger.warning("taskmon metrics: cannot read the older rollups: %s", exc)
            self._settled_at = time.monotonic()
            return
        self._settled, self._settled_at = settled, time.monotonic()
        self.settled_reads += 1

    async def close(self) -> None:
        settling, self._settling = self._settling, None
        if settling is not None:
            settling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await settling
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    def describe(self) -> list[Metric]:
        # names only, for the registry's duplicate check (no database read)
        return list(self._families(MetricsSnapshot()))

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "taskmon_database_up", "Whether the last read of the database for /metrics succeeded."
        )
        up.add_metric([], 1.0 if self._up else 0.0)
        yield up
        took = GaugeMetricFamily(
            "taskmon_metrics_read_seconds",
            "How long the last read of the database for /metrics took.",
            unit="seconds",
        )
        took.add_metric([], self._read_s)
        yield took
        if self._snapshot is not None:
            yield from self._families(self._snapshot)

    def _families(self, snap: MetricsSnapshot) -> Iterator[Metric]:
        attempts = CounterMetricFamily(
            "taskmon_attempts",
            "Finished attempts per task and status (success, failed, retrying, lost), "
            "from the rollups: kept across restarts.",
            labels=["task", "status"],
        )
        for t in snap.totals:
            attempts.add_metric([t.task_name, t.status], float(t.attempts))
        yield attempts

        duration_sum: dict[str, float] = {}
        wait_sum: dict[str, float] = {}
        for t in snap.totals:
            duration_sum[t.task_name] = duration_sum.get(t.task_name, 0.0) + t.duration_sum_ms
            wait_sum[t.task_name] = wait_sum.get(t.task_name, 0.0) + t.queue_wait_sum_ms
        helps = {
            "duration": (
                "taskmon_attempt_duration_seconds",
                "Durations of finished attempts per task. Bucket bounds are edges of the "
                "rollups' log-scale bins, so counts are exact.",
                duration_sum,
            ),
            "queue_wait": (
                "taskmon_attempt_queue_wait_seconds",
                "Queue waits (enqueue to start) of finished attempts per task. Bucket bounds "
                "are edges of the rollups' log-scale bins, so counts are exact.",
                wait_sum,
            ),
        }
        for metric, (name, text, sums) in helps.items():
            family = HistogramMetricFamily(name, text, labels=["task"], unit="seconds")
            for h in snap.histograms:
                if h.metric != metric:
                    continue
                buckets: list[tuple[str, float]] = []
                for edge_ms, count in h.buckets:
                    label = repr(edge_ms / 1000.0)
                    if not buckets or buckets[-1][0] != label:
                        buckets.append((label, float(count)))
                buckets.append(("+Inf", float(h.count)))
                family.add_metric([h.task_name], buckets, sums.get(h.task_name, 0.0) / 1000.0)
            yield family

        running = GaugeMetricFamily(
            "taskmon_attempts_running", "Attempts running now (not lost) per task.", labels=["task"]
        )
        lost = GaugeMetricFamily(
            "taskmon_attempts_lost",
            "Attempts still marked running past the lost rule (2 x timeout, else --lost-after) "
            "per task: their worker probably died. Once `taskmon cleanup` marks them, they "
            'count in taskmon_attempts_total{status="lost"}.',
            labels=["task"],
        )
        for task_name in sorted(snap.running):
            running.add_metric([task_name], float(snap.running[task_name]))
            lost.add_metric([task_name], float(snap.lost.get(task_name, 0)))
        yield running
        yield lost
        pending = GaugeMetricFamily(
            "taskmon_attempts_pending",
            "Attempts sent and not started yet per task (recorded by clients with "
            "record_enqueued=True).",
            labels=["task"],
        )
        oldest = GaugeMetricFamily(
            "taskmon_pending_oldest_wait_seconds",
            "How long the oldest attempt sent and not started has waited, per task.",
            labels=["task"],
        )
        for task_name, (count, wait_s) in sorted(snap.pending.items()):
            pending.add_metric([task_name], float(count))
            oldest.add_metric([task_name], float(wait_s))
        yield pending
        yield oldest
        workers = GaugeMetricFamily(
            "taskmon_workers",
            "Worker processes by the state of their heartbeat: alive, stale (silent for 3 "
            "heartbeats: its running attempts are lost), stopped (shut down cleanly).",
            labels=["state"],
        )
        for state in ("alive", "stale", "stopped"):
            workers.add_metric([state], float(snap.workers.get(state, 0)))
        yield workers
        depth = GaugeMetricFamily(
            "taskmon_queue_depth",
            "Messages waiting in each queue the workers sample (latest sample, last 5 minutes).",
            labels=["broker", "queue"],
        )
        oldest = GaugeMetricFamily(
            "taskmon_queue_oldest_wait",
            "How long the oldest waiting message has waited (latest sample).",
            labels=["broker", "queue"],
            unit="seconds",
        )
        for q in snap.queues:
            depth.add_metric([q["broker"], q["queue"]], float(q["depth"]))
            if q["oldest_wait_s"] is not None:
                oldest.add_metric([q["broker"], q["queue"]], float(q["oldest_wait_s"]))
        yield depth
        yield oldest


class HubCollector:
    """The hub's own counters, read from the running :class:`taskmon.server.hub.Hub`."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        hub, stats = self.hub, self.hub.stats
        clients = GaugeMetricFamily("taskmon_hub_clients", "Websocket clients connected now.")
        clients.add_metric([], float(hub.clients))
        yield clients
        connected = GaugeMetricFamily(
            "taskmon_hub_bus_connected",
            "Whether the hub reads its event bus now (1) or not (0).",
            labels=["bus"],
        )
        connected.add_metric([hub.bus], 1.0 if hub.bus_connected else 0.0)
        yield connected
        events = CounterMetricFamily(
            "taskmon_hub_events",
            "Events received from the bus and forwarded to every subscriber whose filter "
            "wants them (duplicates excluded); rate() is events per second.",
        )
        events.add_metric([], float(stats.events))
        yield events
        duplicates = CounterMetricFamily(
            "taskmon_hub_duplicate_events", "Events received twice from the bus and dropped."
        )
        duplicates.add_metric([], float(stats.duplicates))
        yield duplicates
        gaps = CounterMetricFamily(
            "taskmon_hub_gaps",
            "Gaps: events the hub may have missed (cause=bus) or a client skipped for being "
            "too slow (cause=slow_client). Clients heal from the database.",
            labels=["cause"],
        )
        gaps.add_metric(["bus"], float(stats.bus_gaps))
        gaps.add_metric(["slow_client"], float(stats.slow_gaps))
        yield gaps
        refused = CounterMetricFamily(
            "taskmon_hub_refused_connections", "Connections refused for a missing or wrong token."
        )
        refused.add_metric([], float(stats.refused))
        yield refused
        if stats.last_event_at is not None:
            last = GaugeMetricFamily(
                "taskmon_hub_last_event_timestamp_seconds",
                "When the hub last received an event (Unix time).",
                unit="seconds",
            )
            last.add_metric([], stats.last_event_at)
            yield last
        if stats.event_lag_s is not None:
            lag = GaugeMetricFamily(
                "taskmon_hub_bus_lag_seconds",
                "Bus lag: how old the newest event was when the hub received it (the hub's "
                "clock minus the event's timestamp; includes the writer's batching, and any "
                "clock skew between worker and hub hosts).",
                unit="seconds",
            )
            lag.add_metric([], stats.event_lag_s)
            yield lag


class MetricsExporter:
    """The ``/metrics`` document of one hub.

    Args:
        hub: the hub whose counters to export.
        dsn: the database to read attempts from (a replica will do); None: the
            hub's counters only.
        cache_s: how long one database read serves scrapes.
        lost_after_s: the lost rule for attempts without a timeout.
    """

    def __init__(
        self,
        hub: Hub,
        dsn: str | None,
        *,
        cache_s: float = DEFAULT_CACHE_S,
        lost_after_s: float = DEFAULT_LOST_AFTER_S,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HubCollector(hub))
        self.store: StoreCollector | None = None
        if dsn:
            self.store = StoreCollector(dsn, cache_s=cache_s, lost_after_s=lost_after_s)
            self.registry.register(self.store)

    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics if `accept` asks), its content type."""
        if self.store is not None:
            await self.store.refresh()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


def for_hub(hub: Hub) -> MetricsExporter:
    """The ``/metrics`` document of `hub`: its counters, and attempts from its ``read_dsn``.

    ``taskmon serve`` hands this to the hub (``Hub(metrics=for_hub)``), which
    calls it at the first scrape.
    """
    return MetricsExporter(hub, hub.read_dsn, lost_after_s=hub.lost_after_s)
