"""The event bus between recorders (in every worker) and hubs.

Two transports: PostgreSQL ``NOTIFY`` (the default; events go out in the
transaction that records their rows) and a Redis stream (``XADD``, resumable
by stream id).
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Publisher"]


class Publisher(Protocol):
    """Sends a batch of events for rows the recorder is writing.

    Events arrive encoded (compact UTF-8 JSON objects, see ``taskmon.encode``):
    a publisher forwards them without parsing them again.
    """

    name: str

    async def in_transaction(self, conn: Any, events: list[bytes]) -> None:
        """Called inside the batch's transaction, after its rows were written."""

    async def after_commit(self, events: list[bytes]) -> None:
        """Called once the batch's transaction committed."""

    async def close(self) -> None:
        """Release what the publisher holds."""
