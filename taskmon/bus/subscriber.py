"""What a bus subscriber yields, whichever transport carries the events.

A subscriber's :meth:`Subscriber.listen` is an endless async iterator of
:data:`BusItem` values: batches of events in arrival order, changes of the
connection state, and gaps (events the bus may have lost, e.g. ``NOTIFY``
payloads sent while the listening connection was down). Subscribers reconnect
by themselves; they end only when the consumer stops iterating.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from taskmon.domain.backoff import Backoff

__all__ = [
    "Backoff",
    "BusEvents",
    "BusGap",
    "BusItem",
    "BusState",
    "Subscriber",
    "check_cancelled",
    "split_events",
]

_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


@dataclass(frozen=True, slots=True)
class BusEvents:
    """Events in the order the bus delivered them (not necessarily by `seq`)."""

    events: list[dict[str, Any]]
    raw: list[bytes] | None = None
    """Each event's JSON (UTF-8) exactly as published, when the transport has it.

    A hub forwards these bytes rather than encoding the event again; they are
    parsed once, into `events`, for filtering.
    """


@dataclass(frozen=True, slots=True)
class BusState:
    """The subscriber (re)connected, or lost its connection (`error` says why)."""

    connected: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BusGap:
    """Events may have been lost here; readers should heal from the database."""

    reason: str


BusItem = BusEvents | BusState | BusGap


class Subscriber(Protocol):
    """Reads events from a bus: PostgreSQL ``NOTIFY`` or a Redis stream."""

    name: str
    """The transport's name as shown to users: ``postgres`` or ``redis``."""

    def listen(self) -> AsyncIterator[BusItem]:
        """Yield bus items forever, reconnecting with backoff.

        The first item is always a :class:`BusState`: connected, or the error
        of the first connection attempt (the iterator keeps retrying after it).
        """
        ...


def split_events(text: str) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The events of a JSON object or array of objects, each with its own JSON text.

    Every item is parsed once; its text is sliced from `text` as it was
    published, not encoded again. Items that are not objects are skipped.

    Returns:
        The events, and each one's JSON as UTF-8 bytes, in the same order.

    Raises:
        ValueError: if `text` is not one JSON value.
    """
    events: list[dict[str, Any]] = []
    raws: list[bytes] = []
    n = len(text)
    i = _skip_space(text, 0)
    try:
        if text[i] != "[":
            item, end = _DECODER.raw_decode(text, i)
            if _skip_space(text, end) != n:
                raise ValueError("extra data after the JSON value")
            if isinstance(item, dict):
                events.append(item)
                raws.append(text[i:end].encode())
            return events, raws
        i = _skip_space(text, i + 1)
        if text[i] == "]":
            i += 1
        else:
            while True:
                item, end = _DECODER.raw_decode(text, i)
                if isinstance(item, dict):
                    events.append(item)
                    raws.append(text[i:end].encode())
                i = _skip_space(text, end)
                if text[i] == ",":
                    i = _skip_space(text, i + 1)
                    continue
                if text[i] == "]":
                    i += 1
                    break
                raise ValueError(f"expected ',' or ']' at {i}")
    except IndexError:
        raise ValueError("the JSON text ends too soon") from None
    if _skip_space(text, i) != n:
        raise ValueError("extra data after the JSON array")
    return events, raws


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SPACE:
        i += 1
    return i


def check_cancelled() -> None:
    """Raise CancelledError if the current task was asked to stop.

    redis-py (8.1) can swallow the cancellation of a task blocked in a read and
    go on reading, so a subscriber's loop would run forever after
    ``task.cancel()``. The task still counts the request (``cancelling()``),
    so a loop that checks this between reads stops within one read.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
