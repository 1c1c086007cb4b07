"""A hub subscriber: an async iterator of events that reconnects and resumes.

::

    async for message in subscribe("ws://127.0.0.1:8765/", filters=parse("status:failed")):
        match message:
            case EventReceived(event): ...
            case Gap(after_seq, reason): ...  # heal from the database
            case Connected() | Disconnected(): ...  # show the connection state

After a disconnection it reconnects with backoff and subscribes again from
the ``seq`` of the last event it yielded; the hub replays what it still holds
after it, or says ``gap``. Reconnecting is for a connection that once
worked: a hub never reached, or one that refuses the token, ends the
iterator after a final :class:`Disconnected`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from taskmon.bus.subscriber import Backoff
from taskmon.domain.events import dumps
from taskmon.domain.filters import TaskFilter

__all__ = [
    "ClientMessage",
    "Connected",
    "Disconnected",
    "EventReceived",
    "Gap",
    "ProtocolError",
    "subscribe",
]

logger = logging.getLogger("taskmon.server.client")

# hub frames stay far below this (the hub cuts events to 16 KiB)
_MAX_MESSAGE = 4 * 1024 * 1024
_OPEN_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Connected:
    """Subscribed to a hub.

    Attributes:
        hello: the hub's ``hello`` message (protocol, version, bus, last_seq).
        reconnected: False for the first connection of this iterator.
        resumed: True when the hub held the resume point and replays everything
            after it; False when it did not (a :class:`Gap` follows); None when
            there was no resume point.
    """

    hello: dict[str, Any]
    reconnected: bool
    resumed: bool | None = None


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection failed or ended; unless `final`, the iterator retries after a pause.

    Attributes:
        error: one line saying why.
        attempt: the number of the reconnection attempt that follows (1, 2, …).
        refused: the hub refused the token (HTTP 401 or close code 1008); retrying
            helps only if the hub's token changes.
        final: the iterator ends after this message: the hub was never reached
            (wrong URL, nothing listening, not a hub) or it refused the token.
    """

    error: str
    attempt: int
    refused: bool = False
    final: bool = False


@dataclass(frozen=True, slots=True)
class Gap:
    """Events after `after_seq` may be missing: heal from the database."""

    after_seq: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class EventReceived:
    """One live event (docs/protocol.md, "Events")."""

    event: dict[str, Any]


ClientMessage = Connected | Disconnected | Gap | EventReceived


class ProtocolError(Exception):
    """The server did not speak the hub protocol."""


async def subscribe(
    url: str,
    *,
    token: str | None = None,
    filters: TaskFilter | None = None,
    since_seq: int | None = None,
    max_backoff: float = 5.0,
) -> AsyncIterator[ClientMessage]:
    """Yield messages from the hub at `url`, reconnecting with backoff once it has worked.

    A hub that is never reached, or that refuses the token, is not retried:
    the iterator yields one :class:`Disconnected` with ``final=True`` and ends.

    Args:
        url: the hub's ``ws://`` or ``wss://`` URL.
        token: sent as ``Authorization: Bearer <token>``.
        filters: only events matching it are sent (applied by the hub).
        since_seq: replay what the hub still holds after this seq first.
        max_backoff: the longest pause between reconnection attempts, in seconds.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else None
    wanted = {} if filters is None else filters.to_dict()
    resume = since_seq
    backoff = Backoff(maximum=max_backoff)
    connections = 0
    attempt = 0
    while True:
        error: str
        refused = False
        try:
            async with connect(
                url,
                additional_headers=headers,
                max_size=_MAX_MESSAGE,
                compression=None,
                open_timeout=_OPEN_TIMEOUT,
                ping_interval=20,
                ping_timeout=20,
                close_timeout=2,
            ) as ws:
                hello = await _receive(ws)
                if hello.get("type") != "hello":
                    raise ProtocolError(f"expected hello, got {str(hello)[:80]}")
                await ws.send(dumps({"op": "subscribe", "filters": wanted, "since_seq": resume}))
                ack = await _until_subscribed(ws)
                if resume is None and isinstance(ack.get("last_seq"), int):
                    # nothing yielded yet: resume from where the subscription began
                    resume = ack["last_seq"]
                backoff.reset()
                attempt = 0
                connections += 1
                yield Connected(hello, reconnected=connections > 1, resumed=ack.get("resumed"))
                if connections > 1 and ack.get("resumed") is None:
                    yield Gap(
                        None, "reconnected without a resume point; events meanwhile may be missing"
                    )
                async for raw in ws:
                    message = _decode(raw)
                    kind = message.get("type")
                    if kind == "gap":
                        after = message.get("after_seq")
                        yield Gap(
                            after if isinstance(after, int) else None, str(message.get("reason"))
                        )
                    elif kind in ("error", "subscribed", "pong", "hello"):
                        if kind == "error":
                            logger.warning("taskmon: the hub reported: %s", message.get("error"))
                    else:
                        seq = message.get("seq")
                        if isinstance(seq, int) and not isinstance(seq, bool):
                            resume = seq
                        yield EventReceived(message)
                error = "the hub closed the connection"
                if ws.close_code == 1008:
                    error, refused = f"the hub refused the connection: {ws.close_reason}", True
        except InvalidStatus as exc:
            status = exc.response.status_code
            refused = status == 401
            error = (
                "the hub refused the token (HTTP 401)"
                if refused
                else f"the hub answered HTTP {status}"
            )
        except ConnectionClosed as exc:
            refused = exc.rcvd is not None and exc.rcvd.code == 1008
            error = f"connection lost: {exc}"
        except (OSError, TimeoutError, WebSocketException, ProtocolError) as exc:
            error = _describe(exc)
        attempt += 1
        if refused or connections == 0:
            # nothing will change by waiting: a wrong URL or token is for the user to fix
            yield Disconnected(error, attempt, refused, final=True)
            return
        yield Disconnected(error, attempt, refused)
        await asyncio.sleep(backoff.next())


async def _receive(ws: ClientConnection) -> dict[str, Any]:
    return _decode(await ws.recv())


def _decode(raw: str | bytes) -> dict[str, Any]:
    try:
        message = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    return message


async def _until_subscribed(ws: ClientConnection) -> dict[str, Any]:
    """Wait for the ``subscribed`` reply; what came before belongs to no subscription of ours."""
    while True:
        # asyncio.timeout, not wait_for (which on Python 3.11 can swallow a cancellation)
        async with asyncio.timeout(_OPEN_TIMEOUT):
            message = await _receive(ws)
        kind = message.get("type")
        if kind == "subscribed":
            return message
        if kind == "error":
            raise ProtocolError(f"the hub refused the subscription: {message.get('error')}")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
