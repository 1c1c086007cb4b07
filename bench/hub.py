"""Hub benchmark: events/s x subscribers, each subscriber outside the hub and this process.

For each bus (PostgreSQL NOTIFY, Redis stream) and each ``RATExSUBSCRIBERS``
it starts a real hub (``python -m taskmon serve``, a process of its own), a
real worker process whose ``Recorder`` records finished attempts at a fixed
rate, and the subscribers, spread over ``--procs`` processes. Each subscriber
is a small websocket client that subscribes, reads every frame and notes, per
event, its ``seq`` and the latency from the event's ``timestamp`` (the
attempt's end, stamped in the worker) to its receipt. Printed per run:

* events/s asked and achieved, subscribers;
* latency p50 / p99 / max over every delivery to every subscriber;
* completeness: subscribers that received every event once; events missing
  or received twice (summed over subscribers); ``gap`` messages received;
* hub CPU (its process's user+system time over the run) and CPU per delivery.

``--compare REV`` runs the hub of another revision of this repository (its
tree exported with ``git archive``) in turns with this one, same worker and
same subscribers, so that before and after are measured side by side on the
same machine in the same minutes; ``--repeat`` repeats each pair, and the
summary gives medians with their range.

Usage::

    python bench/hub.py                                   # both buses, 1000x50 and 5000x10
    python bench/hub.py --bus redis --runs 5000x10 --duration 10 --repeat 3 --compare main

Environment: ``TASKMON_BENCH_DSN`` (a server where a scratch database may be
created; default ``postgresql://postgres@127.0.0.1:5432/postgres``) and
``TASKMON_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/14``, flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common import REDIS_URL, ROOT, child_env, scratch_database, spread

DEFAULT_RUNS = "1000x50,5000x10"
# latencies are counted in 1 ms buckets up to this many ms (the last bucket holds the rest)
MAX_MS = 120_000

WORKER = """
import asyncio, sys, time
from datetime import UTC, datetime
from taskmon.bus.postgres import PgNotifyPublisher
from taskmon.bus.redis import RedisStreamPublisher
from taskmon.domain.events import AttemptRecord, Status
from taskmon.worker.recorder import Recorder

async def main(dsn, redis_url, rate, duration):
    pub = RedisStreamPublisher(redis_url) if redis_url else PgNotifyPublisher()
    rec = Recorder(dsn, publisher=pub)  # default flush_interval (0.1 s), batch_size 500
    await rec.start(wait_connected=10)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    total = int(rate * duration)
    start = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            now = datetime.now(UTC)
            rec.submit(AttemptRecord(task_id=f"{name}-{sent}", attempt=0, task_name="bench:task",
                status=Status.SUCCESS, worker=name, params={"args": [sent], "kwargs": {}},
                started_at=now, finished_at=now, duration_ms=1.0))
            sent += 1
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - start
    await rec.flush(timeout=60)
    print(f"done {sent} {elapsed:.3f} {rec.stats.events_published}", flush=True)
    await rec.stop()

name = sys.argv[5]
asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
"""


# -- the subscriber processes ---------------------------------------------------------


class Subscriber(asyncio.Protocol):
    """A websocket client that subscribes, then notes each event's seq and latency."""

    def __init__(self, histogram: list[int]) -> None:
        self.buffer = bytearray()
        self.handshaken = False
        self.histogram = histogram
        self.seqs: set[int] = set()
        self.events = 0
        self.gaps = 0
        self.transport: asyncio.Transport | None = None
        self.subscribed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                "GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def _send(self, opcode: int, payload: bytes) -> None:
        # client frames must be masked; a zero mask leaves the payload as is
        assert self.transport is not None and len(payload) < 126
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload), 0, 0, 0, 0]) + payload)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.handshaken:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"the hub refused: {bytes(self.buffer[:end])!r}")
            del self.buffer[: end + 4]
            self.handshaken = True
            self._send(0x1, b'{"op":"subscribe"}')
        buf = self.buffer
        i, n = 0, len(buf)
        now = time.time()
        while n - i >= 2:
            opcode, length = buf[i] & 0x0F, buf[i + 1] & 0x7F
            head = 2
            if length == 126:
                if n - i < 4:
                    break
                length, head = int.from_bytes(buf[i + 2 : i + 4], "big"), 4
            elif length == 127:
                if n - i < 10:
                    break
                length, head = int.from_bytes(buf[i + 2 : i + 10], "big"), 10
            if n - i < head + length:
                break
            payload = bytes(buf[i + head : i + head + length])
            i += head + length
            if opcode == 0x1:
                self._message(payload, now)
            elif opcode == 0x9:  # ping
                self._send(0xA, payload)
        del buf[:i]

    def _message(self, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"v":'):
            self.events += 1
            at = payload.find(b'"seq":') + 6
            end = at
            while 48 <= payload[end] <= 57:
                end += 1
            self.seqs.add(int(payload[at:end]))
            at = payload.find(b'"timestamp":"') + 13
            stamp = payload[at : payload.find(b'"', at)].decode()
            ms = int((now - datetime.fromisoformat(stamp).timestamp()) * 1000)
            self.histogram[min(max(ms, 0), MAX_MS)] += 1
        elif b'"type":"gap"' in payload:
            self.gaps += 1
        elif b'"type":"subscribed"' in payload and not self.subscribed.done():
            self.subscribed.set_result(None)


async def subscriber_process(url: str, count: int) -> None:
    """Run `count` subscribers; answer ``count`` and ``report`` on stdin (one line each)."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    histogram = [0] * (MAX_MS + 1)
    subs: list[Subscriber] = []
    for _ in range(count):
        _, sub = await loop.create_connection(
            lambda: Subscriber(histogram), parts.hostname, parts.port
        )
        subs.append(sub)
    await asyncio.wait_for(asyncio.gather(*(s.subscribed for s in subs)), 60)
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().strip():
        if line == "count":
            print(min(len(s.seqs) for s in subs), flush=True)
        elif line == "report":
            report = {
                "subscribers": [
                    {"events": s.events, "unique": len(s.seqs), "gaps": s.gaps} for s in subs
                ],
                "histogram": {str(ms): n for ms, n in enumerate(histogram) if n},
            }
            print(json.dumps(report), flush=True)
            break
    for sub in subs:
        if sub.transport is not None:
            sub.transport.close()


# -- the bus probe: latency before the hub ------------------------------------------------

_STAMP = re.compile(rb'"timestamp":"([^"]+)"')


class BusProbe:
    """Reads the bus itself, as the hub does, and notes when each event arrives there.

    Its latency is what the worker, the database and the bus add before the hub:
    the hub's share is the subscribers' latency minus this.
    """

    def __init__(self, dsn: str, redis_url: str | None) -> None:
        self.dsn = dsn
        self.redis_url = redis_url
        self.histogram: dict[int, int] = {}
        self.task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def _note(self, data: bytes) -> None:
        now = time.time()
        for stamp in _STAMP.findall(data):
            ms = int((now - datetime.fromisoformat(stamp.decode()).timestamp()) * 1000)
            self.histogram[ms] = self.histogram.get(ms, 0) + 1

    async def _postgres(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.add_listener(
                "taskmon_events", lambda *args: self._note(str(args[-1]).encode())
            )
            self.ready.set()
            await asyncio.Event().wait()
        finally:
            await conn.close()

    async def _redis(self) -> None:
        from redis.asyncio import Redis

        assert self.redis_url is not None
        client = Redis.from_url(self.redis_url)
        try:
            newest = await client.xrevrange("taskmon:events", count=1)
            last = newest[0][0] if newest else b"0-0"
            self.ready.set()
            while True:
                reply = await client.xread({"taskmon:events": last}, count=1000, block=1000)
                for _stream, entries in reply or ():
                    for entry_id, fields in entries:
                        last = entry_id
                        self._note(fields.get(b"e", b""))
        finally:
            await client.aclose()

    async def start(self) -> None:
        self.task = asyncio.create_task(self._redis() if self.redis_url else self._postgres())
        await asyncio.wait_for(self.ready.wait(), 10)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


# -- the controller ---------------------------------------------------------------------


def percentiles(histogram: dict[int, int]) -> dict[str, float]:
    """p50, p99 and max of a histogram of whole milliseconds."""
    total = sum(histogram.values())
    marks = {"p50": 0.5, "p99": 0.99, "max": 1.0}
    found: dict[str, float] = {}
    seen = 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        for name, q in marks.items():
            if name not in found and seen >= q * total:
                found[name] = float(ms)
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    bus: str
    hub: str
    rate: int
    subscribers: int
    sent: int
    publish_s: float
    histogram: dict[int, int]
    unique: list[int]
    events: list[int]
    gaps: int
    hub_cpu: float
    wall: float
    bus_histogram: dict[int, int]
    percentiles: dict[str, float] = field(default_factory=dict)
    on_bus: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.percentiles = percentiles(self.histogram)
        self.on_bus = percentiles(self.bus_histogram)

    @property
    def deliveries(self) -> int:
        return sum(self.events)

    @property
    def per_delivery_us(self) -> float:
        return self.hub_cpu / self.deliveries * 1e6 if self.deliveries else 0.0

    @property
    def missing(self) -> int:
        return sum(max(0, self.sent - u) for u in self.unique)

    @property
    def twice(self) -> int:
        return sum(e - u for e, u in zip(self.events, self.unique, strict=True))

    @property
    def complete(self) -> int:
        return sum(1 for u in self.unique if u == self.sent)

    def line(self) -> str:
        p = self.percentiles
        return (
            f"{self.bus:8} {self.hub:10} {self.rate:>5}/s x{self.subscribers:<3} "
            f"sent {self.sent:>6} ({self.sent / self.publish_s:>5.0f}/s)  "
            f"p50 {p.get('p50', 0):5.0f} ms  p99 {p.get('p99', 0):6.0f} ms  "
            f"max {p.get('max', 0):6.0f} ms  complete {self.complete}/{self.subscribers}  "
            f"missing {self.missing}  twice {self.twice}  gaps {self.gaps}  "
            f"hub CPU {self.hub_cpu / self.wall * 100:5.1f}% "
            f"({self.per_delivery_us:4.1f} us/delivery)  "
            f"[on the bus already: p50 {self.on_bus.get('p50', 0):.0f} ms, "
            f"p99 {self.on_bus.get('p99', 0):.0f} ms]"
        )


_background: set[asyncio.Task[Any]] = set()


async def start_hub(tree: Path, dsn: str, redis_url: str | None) -> tuple[Any, str]:
    """``taskmon serve`` from `tree` (this checkout or an exported revision)."""
    args = ["-m", "taskmon", "serve", "--port", "0", "--dsn", dsn]
    if redis_url:
        args += ["--redis-url", redis_url]
    env = child_env(PYTHONPATH=str(tree))  # before the editable install of this checkout
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=tree, stderr=subprocess.PIPE, env=env
    )
    assert proc.stderr is not None
    while True:
        line = (await proc.stderr.readline()).decode()
        if not line:
            raise RuntimeError("the hub exited")
        if "listening on" in line:
            url = line.split("listening on ", 1)[1].split()[0]
            # keep draining its stderr so it never blocks on a full pipe
            task = asyncio.create_task(proc.stderr.read())
            _background.add(task)
            task.add_done_callback(_background.discard)
            return proc, url


async def start_subscribers(url: str, subscribers: int, procs: int) -> list[Any]:
    counts = [subscribers // procs + (1 if i < subscribers % procs else 0) for i in range(procs)]
    started = []
    for n in counts:
        if n:
            started.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--subscriber-process",
                    url,
                    str(n),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    limit=64 * 1024 * 1024,  # a report is one line of JSON
                )
            )
    for proc in started:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"a subscriber process failed to start: {line!r}")
    return started


async def ask(proc: Any, question: str) -> str:
    proc.stdin.write(f"{question}\n".encode())
    await proc.stdin.drain()
    return str((await asyncio.wait_for(proc.stdout.readline(), 60)).decode())


async def run_one(
    bus: str,
    hub_name: str,
    tree: Path,
    dsn: str,
    redis_url: str | None,
    rate: int,
    subscribers: int,
    duration: float,
    procs: int,
    writers: int,
) -> Result:
    hub, url = await start_hub(tree, dsn, redis_url)
    subs: list[Any] = []
    probe = BusProbe(dsn, redis_url)
    try:
        subs = await start_subscribers(url, subscribers, min(procs, subscribers))
        await probe.start()
        # the rate is shared by `writers` processes, as it is by the workers of a real app
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WORKER,
                dsn,
                redis_url or "",
                str(rate / writers),
                str(duration),
                f"bench-{n}",
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            for n in range(writers)
        ]
        for worker in workers:
            assert (await worker.stdout.readline()).strip() == b"ready"
        cpu0, t0 = cpu_seconds(hub.pid), time.monotonic()
        for worker in workers:
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()
        sent, publish_s = 0, 0.0
        for worker in workers:
            done = (await worker.stdout.readline()).decode().split()
            sent, publish_s = sent + int(done[1]), max(publish_s, float(done[2]))
            await worker.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            counts = [int(await ask(p, "count")) for p in subs]
            if min(counts) >= sent:
                break
            await asyncio.sleep(0.1)
        cpu1, t1 = cpu_seconds(hub.pid), time.monotonic()
        reports = [json.loads(await ask(p, "report")) for p in subs]
    finally:
        await probe.stop()
        for proc in subs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        hub.terminate()
        await hub.wait()
    histogram: dict[int, int] = {}
    for report in reports:
        for ms, n in report["histogram"].items():
            histogram[int(ms)] = histogram.get(int(ms), 0) + n
    each = [s for r in reports for s in r["subscribers"]]
    return Result(
        bus,
        hub_name,
        rate,
        subscribers,
        sent,
        publish_s,
        histogram,
        [s["unique"] for s in each],
        [s["events"] for s in each],
        sum(s["gaps"] for s in each),
        cpu1 - cpu0,
        t1 - t0,
        probe.histogram,
    )


def export_revision(rev: str, into: Path) -> Path:
    """The tree of `rev` (a commit, branch or tag of this repository) under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev],
        check=True,
        capture_output=True,
    ).stdout
    tar_path = into / "tree.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def summary(results: list[Result]) -> list[str]:
    groups: dict[tuple[str, str, int, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.bus, r.hub, r.rate, r.subscribers), []).append(r)
    lines = []
    for (bus, hub, rate, subscribers), rs in groups.items():
        lines.append(
            f"{bus:8} {hub:10} {rate:>5}/s x{subscribers:<3} n={len(rs)}  "
            f"p50 {spread([r.percentiles['p50'] for r in rs], '.0f')} ms  "
            f"p99 {spread([r.percentiles['p99'] for r in rs], '.0f')} ms  "
            f"hub {spread([r.per_delivery_us for r in rs], '.1f')} us/delivery  "
            f"bus p99 {spread([r.on_bus['p99'] for r in rs], '.0f')} ms  "
            f"missing {sum(r.missing for r in rs)}  gaps {sum(r.gaps for r in rs)}"
        )
    return lines


async def main(args: argparse.Namespace) -> None:
    redis_url = REDIS_URL
    runs = [tuple(int(x) for x in r.split("x")) for r in args.runs.split(",")]
    buses = ["postgres", "redis"] if args.bus == "both" else [args.bus]
    with tempfile.TemporaryDirectory(prefix="taskmon-bench-hub-") as tmp:
        hubs = [("this", ROOT)]
        if args.compare:
            hubs.insert(0, (args.compare[:10], export_revision(args.compare, Path(tmp))))
        print(
            f"{os.cpu_count()} CPUs; writer flush interval 0.1 s; {args.duration:g} s per run; "
            f"subscribers in up to {args.procs} processes; hubs: "
            + ", ".join(f"{name} ({tree})" for name, tree in hubs),
            flush=True,
        )
        results: list[Result] = []
        for bus in buses:
            dsn = await scratch_database("taskmon_bench_hub")
            redis = redis_url if bus == "redis" else None
            for rate, subscribers in runs:
                for _ in range(args.repeat):
                    for name, tree in hubs:
                        if redis:
                            import redis as redis_lib

                            redis_lib.Redis.from_url(redis).flushdb()
                        result = await run_one(
                            bus,
                            name,
                            tree,
                            dsn,
                            redis,
                            rate,
                            subscribers,
                            args.duration,
                            args.procs,
                            args.writers,
                        )
                        results.append(result)
                        print(result.line(), flush=True)
        print("\nmedian (min-max) over runs:")
        for line in summary(results):
            print(line)


def cli() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--subscriber-process":
        asyncio.run(subscriber_process(sys.argv[2], int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bus", choices=["postgres", "redis", "both"], default="both")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="RATExSUBSCRIBERS,... (events/s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per hub and configuration")
    parser.add_argument("--procs", type=int, default=5, help="processes the subscribers share")
    parser.add_argument(
        "--writers", type=int, default=1, help="worker processes sharing the event rate"
    )
    parser.add_argument("--compare", metavar="REV", help="also run the hub of this revision")
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
