"""Live feed benchmark: task finished in a worker -> event at a websocket subscriber.

For each bus (PostgreSQL NOTIFY, Redis stream) it runs a real hub
(``python -m taskmon serve``, its own process), a real worker process whose
``Recorder`` records finished attempts at a fixed rate (the path
``MonitoringMiddleware.post_execute`` takes), and N subscribers in this
process, then reports:

* latency from the attempt's ``finished_at`` (wall clock, in the worker) to its
  arrival at the probe subscriber (a ``taskmon.server.client.subscribe`` consumer
  that decodes every event): p50 / p99 / max;
* completeness: every subscriber must receive every event, with no ``gap``;
* hub CPU (its process's user+system time over the run) and CPU per delivery.

All but one subscriber are light websocket clients (raw frames, no JSON
decoding) so that 50 subscribers do not need 50 Python JSON decoders on the
benchmark machine; the hub cannot tell them apart.

Usage::

    python bench/feed.py                       # both buses, the full matrix
    python bench/feed.py --bus redis --duration 3 --runs 1000x50

Environment: ``TASKMON_BENCH_DSN`` (a server where a scratch database may be
created; default ``postgresql://postgres@127.0.0.1:5432/postgres``) and
``TASKMON_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/14``, flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from common import REDIS_URL, ROOT, child_env, scratch_database

DEFAULT_RUNS = "100x1,1000x1,5000x1,1000x10,1000x50,5000x10"
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
            rec.submit(AttemptRecord(task_id=f"b{sent}", attempt=0, task_name="bench:task",
                status=Status.SUCCESS, worker="bench:1", params={"args": [sent], "kwargs": {}},
                started_at=now, finished_at=now, duration_ms=1.0))
            sent += 1
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - start
    await rec.flush(timeout=60)
    print(f"done {sent} {elapsed:.3f} {rec.stats.events_published}", flush=True)
    await rec.stop()

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LightSubscriber(asyncio.Protocol):
    """A websocket client that counts event frames and notices gaps, without decoding JSON."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.handshaken = False
        self.events = 0
        self.gaps = 0
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()

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

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.handshaken:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            del self.buffer[: end + 4]
            self.handshaken = True
            # the hub sends no event before a subscription (masked, as a client must;
            # a zero mask leaves the payload as is)
            payload = b'{"op":"subscribe"}'
            assert self.transport is not None
            self.transport.write(bytes([0x81, 0x80 | len(payload), 0, 0, 0, 0]) + payload)
        buf = self.buffer
        i, n = 0, len(buf)
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
                if payload.startswith(b'{"v":'):
                    self.events += 1
                elif b'"type":"gap"' in payload:
                    self.gaps += 1
                elif b'"type":"subscribed"' in payload and not self.ready.done():
                    self.ready.set_result(None)
            elif opcode == 0x9 and self.transport is not None:  # ping: answer with a masked pong
                self.transport.write(bytes([0x8A, 0x80 | len(payload), 0, 0, 0, 0]) + payload)
        del buf[:i]


@dataclass
class Result:
    bus: str
    rate: int
    subscribers: int
    sent: int
    publish_s: float
    latencies: list[float]
    received: list[int]
    gaps: int
    hub_cpu: float
    wall: float

    def line(self) -> str:
        lat = sorted(self.latencies)
        p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: 0)
        complete = sum(1 for r in self.received if r == self.sent)
        deliveries = sum(self.received)
        per = self.hub_cpu / deliveries * 1e6 if deliveries else 0.0
        return (
            f"{self.bus:8} {self.rate:>5}/s x{self.subscribers:<3} "
            f"sent {self.sent:>6} ({self.sent / self.publish_s:>6.0f}/s)  "
            f"p50 {p(0.5):6.1f} ms  p99 {p(0.99):6.1f} ms  "
            f"max {lat[-1] * 1000 if lat else 0:6.1f} ms  "
            f"complete {complete}/{self.subscribers}  gaps {self.gaps}  "
            f"hub CPU {self.hub_cpu / self.wall * 100:5.1f}% ({per:4.1f} us/delivery)"
        )


async def start_hub(dsn: str, redis_url: str | None) -> tuple[asyncio.subprocess.Process, str]:
    args = ["-m", "taskmon", "serve", "--port", "0", "--dsn", dsn]
    if redis_url:
        args += ["--redis-url", redis_url]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, stderr=subprocess.PIPE, env=child_env()
    )
    assert proc.stderr is not None
    while True:
        line = (await proc.stderr.readline()).decode()
        if not line:
            raise RuntimeError("the hub exited")
        if "listening on" in line:
            url = line.split("listening on ", 1)[1].split()[0]
            # keep draining its stderr so it never blocks on a full pipe
            _background.add(asyncio.create_task(proc.stderr.read()))
            return proc, url


_background: set[asyncio.Task[bytes]] = set()


async def run_one(
    bus: str,
    dsn: str,
    redis_url: str | None,
    hub: asyncio.subprocess.Process,
    url: str,
    rate: int,
    subscribers: int,
    duration: float,
) -> Result:
    from taskmon.server.client import EventReceived, Gap, subscribe

    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    lights: list[LightSubscriber] = []
    for _ in range(subscribers - 1):
        _, proto = await loop.create_connection(LightSubscriber, parts.hostname, parts.port)
        lights.append(proto)
    for proto in lights:
        await asyncio.wait_for(proto.ready, 60)

    latencies: list[float] = []
    probe = {"events": 0, "gaps": 0}
    connected = asyncio.Event()

    async def follow() -> None:
        async for message in subscribe(url):
            if isinstance(message, EventReceived):
                finished = datetime.fromisoformat(message.event["timestamp"]).timestamp()
                latencies.append(time.time() - finished)
                probe["events"] += 1
            elif isinstance(message, Gap):
                probe["gaps"] += 1
            else:
                connected.set()

    probe_task = asyncio.create_task(follow())
    await asyncio.wait_for(connected.wait(), 10)

    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WORKER,
        dsn,
        redis_url or "",
        str(rate),
        str(duration),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert worker.stdin is not None and worker.stdout is not None
    assert (await worker.stdout.readline()).strip() == b"ready"
    cpu0, t0 = cpu_seconds(hub.pid), time.monotonic()
    worker.stdin.write(b"go\n")
    await worker.stdin.drain()
    done = (await worker.stdout.readline()).decode().split()
    sent, publish_s = int(done[1]), float(done[2])
    await worker.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if probe["events"] >= sent and all(p.events >= sent for p in lights):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    cpu1, t1 = cpu_seconds(hub.pid), time.monotonic()
    probe_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await probe_task
    for proto in lights:
        if proto.transport is not None:
            proto.transport.close()
    return Result(
        bus,
        rate,
        subscribers,
        sent,
        publish_s,
        latencies,
        [probe["events"], *(p.events for p in lights)],
        probe["gaps"] + sum(p.gaps for p in lights),
        cpu1 - cpu0,
        t1 - t0,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bus", choices=["postgres", "redis", "both"], default="both")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="RATExSUBSCRIBERS,... (events/s)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    args = parser.parse_args()
    redis_url = REDIS_URL
    runs = [tuple(int(x) for x in r.split("x")) for r in args.runs.split(",")]
    buses = ["postgres", "redis"] if args.bus == "both" else [args.bus]
    print(f"{os.cpu_count()} CPUs; writer flush interval 0.1 s; {args.duration:g} s per run")
    for bus in buses:
        dsn = await scratch_database("taskmon_bench_feed")
        redis = redis_url if bus == "redis" else None
        if redis:
            import redis as redis_lib

            redis_lib.Redis.from_url(redis).flushdb()
        hub, url = await start_hub(dsn, redis)
        try:
            for rate, subscribers in runs:
                result = await run_one(bus, dsn, redis, hub, url, rate, subscribers, args.duration)
                print(result.line(), flush=True)
        finally:
            hub.terminate()
            await hub.wait()


if __name__ == "__main__":
    asyncio.run(main())
