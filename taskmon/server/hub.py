"""The websocket hub: reads the event bus once and fans events out to many clients.

``taskmon serve`` runs one; the TUI and ``taskmon tail`` can run one in-process.
The wire protocol is documented in ``docs/protocol.md``. In short:

* on connect the hub sends ``hello``, then nothing until the client sends
  ``{"op": "subscribe", "filters": {...}, "since_seq": N}``, answered by
  ``subscribed``, then a replay of what the hub still holds after ``N`` (or,
  without ``N``, of what arrived since the hello), then the live stream;
* without its bus the hub answers ``/healthz`` and new connections with 503
  and closes its clients with 1013, saying why;
* ``/metrics`` is for Prometheus (:mod:`taskmon.server.exporter`), behind the token
  when one is set, with or without the bus;
* ``gap`` says that events may be missing (the hub no longer holds what was
  asked, the bus reconnected, or the client was too slow): the client heals
  from the database.

Events are forwarded, not re-encoded: the bus hands over each event's JSON as
the recorder published it, parsed once for the filters, and the hub wraps it
once into a websocket frame kept in a ring of recent frames. The events of one
bus read go out together: every client that keeps up gets one write of the
concatenated frames it wants (the same bytes for every client with the same
filter), so a delivery costs a slice of a join, not an encoding and a system
call. A client whose socket is full falls behind and is fed from the ring by a
task of its own, at the pace its socket accepts; memory does not grow with it.
A client more than ``client_queue`` events behind skips to the newest event
and receives a ``gap``.

Replay follows arrival order, not ``seq`` order. ``NOTIFY`` seqs come from one
sequence but transactions of different workers commit in their own order, so
seq 10 may arrive after seq 12. The ring remembers where each seq arrived and
a client resuming from seq S receives everything that arrived after S did —
nothing is lost and nothing is sent twice, although seqs are not monotonic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from taskmon.bus.postgres import shrink
from taskmon.bus.subscriber import Backoff, BusEvents, BusGap, BusState, Subscriber
from taskmon.domain.events import EVENT_VERSION, dumps
from taskmon.domain.filters import FilterError, TaskFilter
from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S
from taskmon.domain.version import __version__

__all__ = ["PROTOCOL_VERSION", "Hub", "HubError", "HubStats", "MetricsDocument", "is_loopback"]


class MetricsDocument(Protocol):
    """What serves ``GET /metrics`` (:class:`taskmon.server.exporter.MetricsExporter`).

    The hub does not build it: ``taskmon serve`` hands the hub a factory, so the
    hub does not depend on the exporter, which reads the hub's counters.
    """

    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The document and its content type, for the request's ``Accept`` header."""
        ...

    async def close(self) -> None:
        """Release what the document holds (its database connection)."""
        ...


logger = logging.getLogger("taskmon.server.hub")

PROTOCOL_VERSION = 1
# frames sent to clients stay under this size (params, then error text, are cut)
MAX_EVENT_BYTES = 16 * 1024
# a client sending this many bad messages is disconnected (close code 1008)
MAX_BAD_MESSAGES = 20
# frames are written to a client in slices of about this many bytes: a bound on
# what one write adds to a socket's buffer beyond its high-water mark
_SLICE_BYTES = 64 * 1024
# a client's socket buffer may hold this much before the client counts as slow
# (then it is fed from the ring by its own task, at its pace)
_WRITE_LIMIT = 256 * 1024


class HubError(Exception):
    """The hub cannot start; the message is one line for the user."""


def is_loopback(host: str) -> bool:
    """Whether `host` binds only the local machine (then a token is optional)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class HubStats:
    """Counters for tests, the benchmark and ``/healthz``."""

    events: int = 0
    """Events received from the bus (duplicates excluded)."""
    duplicates: int = 0
    bus_gaps: int = 0
    slow_gaps: int = 0
    """Times a client fell more than ``client_queue`` events behind and skipped ahead."""
    skipped: int = 0
    """Ring entries skipped for slow clients, summed over clients."""
    bad_messages: int = 0
    refused: int = 0
    """Connections refused for a missing or wrong token."""
    last_event_at: float | None = None
    """When the last event was received (Unix time)."""
    event_lag_s: float | None = None
    """How old the last event was when it was received (its timestamp to the hub's clock)."""


@dataclass(slots=True)
class _Entry:
    pos: int
    seq: int | None
    """None for a gap marker."""
    view: dict[str, Any] | None
    """The event without its params, for filters; None for a gap marker."""
    frame: bytes
    """The whole websocket frame (header and JSON), written as is to every client."""


class _Ring:
    """Recent frames in arrival order; positions count every entry ever appended."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.entries: deque[_Entry] = deque()
        self.by_seq: dict[int, int] = {}
        self.next_pos = 1
        self.last_seq: int | None = None

    @property
    def first_pos(self) -> int:
        return self.entries[0].pos if self.entries else self.next_pos

    @property
    def last_pos(self) -> int:
        return self.next_pos - 1

    def append(self, seq: int | None, view: dict[str, Any] | None, frame: bytes) -> _Entry:
        """Add an entry; `frame` is the websocket frame to send."""
        if len(self.entries) >= self.size:
            old = self.entries.popleft()
            if old.seq is not None and self.by_seq.get(old.seq) == old.pos:
                del self.by_seq[old.seq]
        entry = _Entry(self.next_pos, seq, view, frame)
        self.next_pos += 1
        self.entries.append(entry)
        if seq is not None:
            self.by_seq[seq] = entry.pos
            self.last_seq = seq
        return entry

    def at(self, pos: int) -> _Entry | None:
        index = pos - self.first_pos
        return self.entries[index] if 0 <= index < len(self.entries) else None


@dataclass(eq=False, slots=True)
class _Client:
    ws: ServerConnection
    cursor: int
    """The last ring position handled for this client (sent, or not wanted)."""
    subscribed: bool = False
    """Nothing is sent before the first subscription: it would ignore its filters."""
    filter: TaskFilter | None = None
    replay_end: int = 0
    """Positions up to this one are a replay; the lag limit counts from here."""
    replay_after_seq: int | None = None
    """While replaying for a seq the hub did not hold: only events with a greater seq."""
    last_seq: int | None = None
    lagging: bool = False
    flusher: asyncio.Task[None] | None = None
    bad: int = 0


@dataclass(slots=True)
class _BusStatus:
    name: str
    connected: bool = False
    error: str | None = None
    first: asyncio.Future[BusState] | None = field(default=None)


class Hub:
    """A websocket server fanning out bus events to subscribers.

    Args:
        dsn: the database whose ``NOTIFY`` channel to read (when `redis_url` is not set).
        redis_url: read the Redis stream instead.
        token: the shared secret clients must present; required unless bound to loopback.
        ring_size: recent events held for replay.
        client_queue: how many events a client may fall behind before it skips
            ahead and receives a ``gap``.
        max_frame: the largest message accepted from a client, in bytes.
        read_dsn: the database ``/metrics`` reads attempts from (default: `dsn`;
            without either, ``/metrics`` has the hub's own metrics only).
        lost_after_s: for ``/metrics``, how long an attempt without a timeout
            may run before it counts as lost.
        metrics: makes the ``/metrics`` document for this hub at the first
            scrape (e.g. :func:`taskmon.server.exporter.for_hub`); without it
            ``/metrics`` is not served (404).
    """

    def __init__(
        self,
        *,
        dsn: str | None = None,
        redis_url: str | None = None,
        token: str | None = None,
        ring_size: int = 10_000,
        client_queue: int = 1_000,
        max_frame: int = 64 * 1024,
        read_dsn: str | None = None,
        lost_after_s: float = DEFAULT_LOST_AFTER_S,
        metrics: Callable[[Hub], MetricsDocument] | None = None,
    ) -> None:
        if not dsn and not redis_url:
            raise ValueError("the hub needs a database DSN or a Redis URL to read events from")
        self.dsn = dsn
        self.redis_url = redis_url
        self.token = token or None
        self.ring_size = max(1, ring_size)
        self.client_queue = max(1, client_queue)
        self.max_frame = max_frame
        self.read_dsn = read_dsn or dsn
        self.lost_after_s = lost_after_s
        self._make_metrics = metrics
        self.metrics: MetricsDocument | None = None
        """The ``/metrics`` document, made at the first scrape."""
        self.url: str | None = None
        """The ``ws://`` URL actually bound, once started."""
        self.stats = HubStats()
        self._ring = _Ring(self.ring_size)
        self._clients: dict[ServerConnection, _Client] = {}
        self._server: Server | None = None
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        """Every other task the hub started (flushers, closings): kept, awaited on stop."""
        self._subscriber = self._make_subscriber()
        self._bus = _BusStatus(self._subscriber.name)

    def _make_subscriber(self) -> Subscriber:
        if self.redis_url:
            from taskmon.bus.redis import RedisStreamSubscriber

            # the stream outlives the hub: refill the ring, so clients resume across restarts
            return RedisStreamSubscriber(self.redis_url, history=self.ring_size)
        from taskmon.bus.postgres import PgNotifySubscriber

        assert self.dsn is not None
        return PgNotifySubscriber(self.dsn)

    @property
    def bus(self) -> str:
        """The bus transport: ``postgres`` or ``redis``."""
        return self._bus.name

    @property
    def bus_connected(self) -> bool:
        """Whether the hub is reading its bus now (``/healthz`` says the same)."""
        return self._bus.connected

    @property
    def bus_error(self) -> str | None:
        """Why the hub is not reading its bus, while it is not."""
        return None if self._bus.connected else self._bus.error

    @property
    def clients(self) -> int:
        return len(self._clients)

    # -- lifecycle -------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, bus_timeout: float = 10.0
    ) -> str:
        """Connect to the bus, then listen; returns the ``ws://`` URL bound.

        Raises:
            HubError: no token for a non-loopback address, or the bus is unreachable.
            OSError: the address cannot be bound.
        """
        if self._server is not None:
            raise HubError("the hub is already running")
        if not self.token and not is_loopback(host):
            raise HubError(
                f"a token is required to listen on {host}: "
                "pass --token or set TASKMON_HUB_TOKEN (or bind 127.0.0.1)"
            )
        loop = asyncio.get_running_loop()
        self._bus.first = loop.create_future()
        self._pump = asyncio.create_task(self._read_bus(), name="taskmon-hub-bus")
        self._pump.add_done_callback(self._pump_ended)
        try:
            state = await asyncio.wait_for(asyncio.shield(self._bus.first), bus_timeout)
        except TimeoutError:
            state = BusState(False, f"no answer within {bus_timeout:g}s")
        if not state.connected:
            await self._stop_pump()
            raise HubError(f"cannot reach the event bus ({self.bus}): {state.error}")
        try:
            self._server = await serve(
                self._handle,
                host,
                port,
                process_request=self._process_request,
                max_size=self.max_frame,
                # a frame per event is encoded once for all clients: per-client
                # compression would cost CPU per delivery
                compression=None,
                write_limit=_WRITE_LIMIT,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
            )
        except BaseException:
            await self._stop_pump()
            raise
        sockname = self._server.sockets[0].getsockname()
        bound_host, bound_port = sockname[0], sockname[1]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"ws://{shown}:{bound_port}/"
        logger.info("taskmon hub listening on %s (bus: %s)", self.url, self.bus)
        return self.url

    async def stop(self) -> None:
        """Close every connection (code 1001), stop reading the bus."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5.0)
        self._clients.clear()
        await self._stop_pump()
        if self.metrics is not None:
            await self.metrics.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.url = None

    async def _stop_pump(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.remove_done_callback(self._pump_ended)
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump

    def _spawn(
        self,
        coro: Coroutine[Any, Any, None],
        name: str,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> asyncio.Task[None]:
        """Start a background task the hub keeps until it ends, and log its failure."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if task.cancelled() or task.exception() is None:
                return
            exc = task.exception()
            assert exc is not None
            if on_error is not None:
                on_error(exc)  # which says so
            else:
                logger.error("taskmon hub: %s failed: %s", name, _describe(exc), exc_info=exc)

        task.add_done_callback(done)
        return task

    def _pump_ended(self, task: asyncio.Task[None]) -> None:
        # the pump restarts its reader after any error; it ends only on a BaseException
        error = "the event bus reader stopped"
        if not task.cancelled() and task.exception() is not None:
            error = f"the event bus reader stopped: {_describe(task.exception())}"
        logger.error("taskmon hub: %s; no more events will be served", error)
        self._bus_state(BusState(False, error))

    # -- the bus -----------------------------------------------------------------

    async def _read_bus(self) -> None:
        """Read the bus forever; a reader that fails is reported, then started again."""
        backoff = Backoff()
        failed = False
        while True:
            try:
                async for item in self._subscriber.listen():
                    if isinstance(item, BusState) and item.connected:
                        backoff.reset()
                        if failed:
                            failed = False
                            # what was published while no reader ran may be lost (NOTIFY)
                            self.stats.bus_gaps += 1
                            self._publish_gap("the event bus reader was restarted")
                    self._on_bus_item(item)
                error = "the event bus reader ended"
            except Exception as exc:
                error = f"the event bus reader failed: {_describe(exc)}"
                logger.exception("taskmon hub: %s; restarting it", error)
            failed = True
            self._bus_state(BusState(False, error))
            await asyncio.sleep(backoff.next())

    def _on_bus_item(self, item: BusEvents | BusGap | BusState) -> None:
        try:
            if isinstance(item, BusEvents):
                self._publish_events(item)
            elif isinstance(item, BusGap):
                self.stats.bus_gaps += 1
                self._publish_gap(item.reason)
            else:
                self._bus_state(item)
        except Exception:
            logger.exception("taskmon hub: could not fan out an event")

    def _bus_state(self, state: BusState) -> None:
        first = self._bus.first
        was = self._bus.connected
        self._bus.connected = state.connected
        self._bus.error = state.error
        if first is not None and not first.done():
            first.set_result(state)
            return
        if state.connected:
            if not was:
                logger.warning("taskmon hub: event bus (%s) reachable again", self.bus)
            return
        logger.warning("taskmon hub: lost the event bus (%s): %s", self.bus, state.error)
        # a client left connected would wait for events that cannot come: close it
        # with the reason; it reconnects (refused with 503 until the bus is back)
        # and resumes from its last seq
        reason = _close_reason(f"event bus ({self.bus}) unreachable: {state.error}")
        for client in list(self._clients.values()):
            self._close(client, CloseCode.TRY_AGAIN_LATER, reason)

    def _close(self, client: _Client, code: int, reason: str) -> None:
        self._clients.pop(client.ws, None)
        if client.flusher is not None and client.flusher is not asyncio.current_task():
            client.flusher.cancel()
        self._spawn(client.ws.close(code, reason), "taskmon-hub-close")

    def _publish_events(self, item: BusEvents) -> None:
        ring, stats = self._ring, self.stats
        raws = item.raw
        entries: list[_Entry] = []
        size = 0
        for index, event in enumerate(item.events):
            raw_seq = event.get("seq")
            seq = raw_seq if type(raw_seq) is int else None
            if seq is not None and seq in ring.by_seq:
                stats.duplicates += 1
                continue
            stats.events += 1
            raw = raws[index] if raws is not None else None
            if raw is None:
                raw = dumps(event).encode()
            if len(raw) >= MAX_EVENT_BYTES:
                raw = shrink(raw, MAX_EVENT_BYTES)
            # the view keeps the params: the param: filter term reads them
            entry = ring.append(seq, event, _text_frame(raw))
            entries.append(entry)
            size += len(entry.frame)
            if size >= _SLICE_BYTES:
                self._fan_out(entries)
                entries, size = [], 0
        if entries:
            self._fan_out(entries)
        if item.events:
            _note_lag(stats, item.events[-1])

    def _publish_gap(self, reason: str) -> None:
        frame = _text_frame(_gap_json(self._ring.last_seq, reason))
        self._fan_out([self._ring.append(None, None, frame)])

    def _fan_out(self, entries: list[_Entry]) -> None:
        """Write `entries` (the newest in the ring) to every client that keeps up."""
        first = entries[0].pos
        last = entries[-1].pos
        # what each distinct filter wants is worked out once: (frames, last seq)
        wanted: dict[TaskFilter | None, tuple[bytes, int | None]] = {}
        for client in list(self._clients.values()):
            if client.lagging or not client.subscribed:
                continue  # its flusher sends these from the ring, or its subscription will
            if client.cursor != first - 1 or client.ws.paused:
                # behind already, or its socket is full: feed it from the ring at its pace
                self._lag(client)
                continue
            try:
                batch = wanted.get(client.filter)
                if batch is None:
                    batch = wanted[client.filter] = _select(client.filter, entries)
            except Exception as exc:
                self._failed(client, exc)
                continue
            client.cursor = last
            frames, last_seq = batch
            if frames and self._write(client, frames) and last_seq is not None:
                client.last_seq = last_seq

    def _write(self, client: _Client, frames: bytes) -> bool:
        """Write whole frames to the client's socket; False if it is closing.

        The frames were encoded once for every client, so they go to the
        transport directly rather than through the connection's ``send``, which
        would frame (and copy) them again per client. Frames are written whole
        and in order, between the connection's own (pings, close), so the
        stream stays valid.
        """
        ws = client.ws
        if ws.protocol.state is not State.OPEN:
            return False
        ws.transport.write(frames)
        return True

    def _failed(self, client: _Client, exc: BaseException) -> None:
        """Serving `client` failed unexpectedly: log it and close that client only."""
        logger.error(
            "taskmon hub: cannot serve %s: %s", _peer(client.ws), _describe(exc), exc_info=exc
        )
        # what it has had is unknown now: it reconnects and resumes from its last seq
        reason = _close_reason(f"hub error: {_describe(exc)}")
        self._close(client, CloseCode.INTERNAL_ERROR, reason)

    def _lag(self, client: _Client) -> None:
        client.lagging = True
        if client.flusher is None or client.flusher.done():
            client.flusher = self._spawn(
                self._flush(client),
                f"taskmon-hub-client {_peer(client.ws)}",
                lambda exc: self._failed(client, exc),
            )

    async def _flush(self, client: _Client) -> None:
        """Send a lagging client what it has not had yet, then hand it back to the fan-out."""
        ring, ws = self._ring, client.ws
        try:
            while ws.protocol.state is State.OPEN:
                if ws.paused:
                    await ws.drain()  # until its socket takes more
                    continue
                if client.cursor >= ring.last_pos:
                    client.lagging = False
                    return
                behind = ring.last_pos - max(client.cursor, client.replay_end)
                if client.cursor < ring.first_pos - 1 or behind > self.client_queue:
                    skipped = ring.last_pos - client.cursor
                    client.cursor = ring.last_pos
                    client.replay_end = 0
                    self.stats.slow_gaps += 1
                    self.stats.skipped += skipped
                    reason = f"client too slow: {skipped} events skipped"
                    self._write(client, _text_frame(_gap_json(client.last_seq, reason)))
                    continue
                frames: list[bytes] = []
                size = 0
                while client.cursor < ring.last_pos and size < _SLICE_BYTES:
                    entry = ring.at(client.cursor + 1)
                    client.cursor += 1
                    if entry is None or not self._replay_wanted(client, entry):
                        continue
                    frames.append(entry.frame)
                    size += len(entry.frame)
                    if entry.seq is not None:
                        client.last_seq = entry.seq
                if frames:
                    self._write(client, b"".join(frames))
                await asyncio.sleep(0)  # the pump and the other clients run between slices
        except (ConnectionClosed, OSError):
            return  # the connection ended; its handler forgets the client
        finally:
            if client.flusher is asyncio.current_task():
                client.flusher = None

    def _replay_wanted(self, client: _Client, entry: _Entry) -> bool:
        if (
            client.replay_after_seq is not None
            and entry.pos <= client.replay_end
            and entry.seq is not None
            and entry.seq <= client.replay_after_seq
        ):
            return False
        return _wanted(client.filter, entry, {})

    # -- connections ---------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        url = urlsplit(request.path)
        if url.path.rstrip("/") == "/metrics":
            if self._make_metrics is None:
                return connection.respond(HTTPStatus.NOT_FOUND, "no /metrics on this hub\n")
            # served without the bus too: that is when an alert is wanted
            return self._refuse(connection) or await self._metrics(connection, request)
        if not self._bus.connected:
            # /healthz, and any client: nothing can be served without the bus
            text = f"event bus ({self.bus}) unreachable: {self._bus.error}\n"
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, text)
        if url.path.rstrip("/") == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        return self._refuse(connection)

    def _refuse(self, connection: ServerConnection) -> Response | None:
        """None if the request presents the token (or none is set), else the 401 response."""
        if self.token is None:
            return None
        request = connection.request
        assert request is not None
        presented = _presented_token(request.headers, urlsplit(request.path).query)
        if presented is not None and hmac.compare_digest(presented.encode(), self.token.encode()):
            return None
        self.stats.refused += 1
        response = connection.respond(HTTPStatus.UNAUTHORIZED, "a valid token is required\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="taskmon"'
        return response

    async def _metrics(self, connection: ServerConnection, request: Request) -> Response:
        if self.metrics is None:
            assert self._make_metrics is not None
            self.metrics = self._make_metrics(self)
        body, content_type = await self.metrics.render(request.headers.get("Accept"))
        response = connection.respond(HTTPStatus.OK, body.decode())
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = content_type
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        hello = {
            "type": "hello",
            "protocol": PROTOCOL_VERSION,
            "v": EVENT_VERSION,
            "version": __version__,
            "bus": self.bus,
            "bus_connected": self._bus.connected,
            "last_seq": self._ring.last_seq,
            "ring": self.ring_size,
            "max_frame": self.max_frame,
        }
        try:
            await ws.send(dumps(hello))
            # its first subscription starts here: what arrives meanwhile waits in the ring
            client = _Client(ws, cursor=self._ring.last_pos)
            self._clients[ws] = client
            async for message in ws:
                self._on_message(client, message)
                if client.bad >= MAX_BAD_MESSAGES:
                    await ws.close(1008, "too many bad messages")
                    break
        except ConnectionClosed:
            pass
        finally:
            gone = self._clients.pop(ws, None)
            if gone is not None and gone.flusher is not None:
                gone.flusher.cancel()

    def _reply(self, client: _Client, message: dict[str, Any]) -> None:
        # written synchronously, so it stays in order with the events around it
        broadcast([client.ws], dumps(message))

    def _error(self, client: _Client, text: str, op: object = None) -> None:
        client.bad += 1
        self.stats.bad_messages += 1
        self._reply(client, {"type": "error", "error": text, "op": op})

    def _on_message(self, client: _Client, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._error(client, "binary frames are not accepted; send JSON text")
            return
        try:
            request = json.loads(message)
        except ValueError as exc:
            self._error(client, f"malformed JSON: {exc}")
            return
        if not isinstance(request, dict):
            self._error(client, "a message must be a JSON object with an 'op'")
            return
        op = request.get("op")
        if op == "subscribe":
            try:
                self._subscribe(client, request)
            except (FilterError, ValueError, TypeError) as exc:
                self._error(client, str(exc), op)
        elif op == "ping":
            self._reply(client, {"type": "pong"})
        else:
            self._error(client, f"unknown op {op!r} (known: subscribe, ping)", op)

    def _subscribe(self, client: _Client, request: dict[str, Any]) -> None:
        raw_filters = request.get("filters")
        if raw_filters is None:
            raw_filters = {}
        if not isinstance(raw_filters, dict):
            raise ValueError("filters must be a JSON object")
        task_filter = TaskFilter.from_dict(raw_filters)
        since = request.get("since_seq")
        if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
            raise ValueError("since_seq must be an integer or null")
        ring = self._ring
        resumed: bool | None = None
        client.replay_after_seq = None
        if since is None:
            if client.subscribed:
                client.cursor = ring.last_pos
            # else: from the hello on, so that nothing falls between hello and subscribe
        else:
            pos = ring.by_seq.get(since)
            if pos is not None:
                client.cursor, resumed = pos, True
            else:
                # not held (hub restarted, or older than the ring): send what is held after it
                client.cursor, resumed = ring.first_pos - 1, False
                client.replay_after_seq = since
        client.replay_end = ring.last_pos
        client.filter = None if task_filter.is_empty() else task_filter
        client.subscribed = True
        self._reply(
            client,
            {
                "type": "subscribed",
                "filters": task_filter.to_dict(),
                "since_seq": since,
                "resumed": resumed,
                "last_seq": ring.last_seq,
            },
        )
        if resumed is False:
            reason = f"the hub does not hold seq {since} (restarted, or older than its last events)"
            self._write(client, _text_frame(_gap_json(since, reason)))
        if client.cursor < ring.last_pos:
            self._lag(client)


def _wanted(
    task_filter: TaskFilter | None, entry: _Entry, verdicts: dict[TaskFilter, bool]
) -> bool:
    if task_filter is None or entry.view is None:
        return True  # no filter, or a gap marker: every client gets it
    verdict = verdicts.get(task_filter)
    if verdict is None:
        verdict = verdicts[task_filter] = task_filter.matches(entry.view)
    return verdict


def _select(task_filter: TaskFilter | None, entries: list[_Entry]) -> tuple[bytes, int | None]:
    """The frames of `entries` that `task_filter` wants, joined, and the last seq among them."""
    if task_filter is None:
        chosen = entries
    else:
        chosen = [e for e in entries if e.view is None or task_filter.matches(e.view)]
    last_seq = next((e.seq for e in reversed(chosen) if e.seq is not None), None)
    return b"".join(e.frame for e in chosen), last_seq


def _text_frame(payload: bytes) -> bytes:
    """`payload` (UTF-8 JSON) as one unmasked websocket text frame, as a server sends it."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


def _gap_json(after_seq: int | None, reason: str) -> bytes:
    return dumps({"type": "gap", "after_seq": after_seq, "reason": reason}).encode()


def _note_lag(stats: HubStats, event: dict[str, Any]) -> None:
    """Keep when `event` (the newest of a bus read) arrived and how old it was then."""
    now = time.time()
    stats.last_event_at = now
    stamp = event.get("timestamp")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            stats.event_lag_s = max(0.0, now - datetime.fromisoformat(stamp).timestamp())


def _describe(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _close_reason(text: str) -> str:
    # a close frame's reason is at most 123 bytes of UTF-8
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else "a client"


def _presented_token(headers: Headers, query: str) -> str | None:
    auth = headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    values = parse_qs(query).get("token")
    return values[0] if values else None
