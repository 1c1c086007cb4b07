"""A broker's backlog, read from the broker itself (``taskmon queues --broker``)."""

from __future__ import annotations

from typing import Any

from taskmon.store.workers import QueueSample
from taskmon.worker.queues import NotInspectable, inspect_broker, load_broker

__all__ = ["NotInspectable", "QueueSample", "inspect", "load"]


def load(spec: str) -> Any:
    """The broker `spec` (``module:variable``) names, imported as ``taskiq worker`` does.

    Raises:
        ValueError: the spec is malformed or names nothing importable (one line).
    """
    return load_broker(spec)


async def inspect(broker: Any) -> QueueSample:
    """One sample of `broker`'s queue now: how many messages wait, and the oldest one's age.

    Raises:
        NotInspectable: taskmon cannot read this kind of broker's queue.
    """
    return await inspect_broker(broker)
