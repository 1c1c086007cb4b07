"""The event bus between recorders (in every worker) and hubs.

Two transports: PostgreSQL ``NOTIFY`` (the default; events go out in the
transaction that records their rows) and a Redis stream (``XADD``, resumable
by stream id).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

__all__ = ["Publisher", "pack"]


def pack(
    events: Iterable[bytes], *, max_bytes: int, max_events: int | None = None, bare: bool = False
) -> Iterator[bytes]:
    """Group encoded events into JSON arrays of at most `max_bytes` (and `max_events`).

    An event larger than `max_bytes` goes alone (the caller shrinks it first if
    its transport has a hard limit). With `bare`, a group of one is the event
    itself rather than an array of one. Subscribers read either form.
    """
    group: list[bytes] = []
    size = 2  # the brackets
    for event in events:
        n = len(event) + 1  # and its comma
        full = max_events is not None and len(group) >= max_events
        if group and (full or size + n > max_bytes):
            yield group[0] if bare and len(group) == 1 else b"[" + b",".join(group) + b"]"
            group, size = [], 2
        group.append(event)
        size += n
    if group:
        yield group[0] if bare and len(group) == 1 else b"[" + b",".join(group) + b"]"


class Publisher(Protocol):
    """Sends a batch of events for rows the recorder is writing.

    Events arrive encoded (compact UTF-8 JSON objects, see ``taskmon.worker.encode``):
    a publisher forwards them without parsing them again.
    """

    name: str

    async def in_transaction(self, conn: Any, events: list[bytes]) -> None:
        """Called inside the batch's transaction, after its rows were written."""

    async def after_commit(self, events: list[bytes]) -> None:
        """Called once the batch's transaction committed."""

    async def close(self) -> None:
        """Release what the publisher holds."""
