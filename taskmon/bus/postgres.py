"""PostgreSQL ``NOTIFY`` transport."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from taskmon.events import dumps

__all__ = ["CHANNEL", "MAX_PAYLOAD", "PgNotifyPublisher", "pack_payloads"]

logger = logging.getLogger("taskmon.bus")

CHANNEL = "taskmon_events"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; keep a margin.
MAX_PAYLOAD = 7900


def _shrink(event: dict[str, Any]) -> str:
    """Encode one event, dropping its params (then its error text) if it would not fit."""
    text = dumps(event)
    if len(text.encode()) < MAX_PAYLOAD:
        return text
    event = {**event, "data": {**event["data"], "params": {"_omitted": "too large; see history"}}}
    text = dumps(event)
    if len(text.encode()) < MAX_PAYLOAD:
        return text
    message = (event["data"].get("error_message") or "")[:1000]
    event["data"] = {**event["data"], "error_message": message}
    return dumps(event)


def pack_payloads(events: list[dict[str, Any]]) -> Iterator[str]:
    """Group events into JSON arrays, each payload under PostgreSQL's limit."""
    batch: list[str] = []
    size = 2
    for event in events:
        text = _shrink(event)
        n = len(text.encode()) + 1
        if batch and size + n > MAX_PAYLOAD:
            yield "[" + ",".join(batch) + "]"
            batch, size = [], 2
        batch.append(text)
        size += n
    if batch:
        yield "[" + ",".join(batch) + "]"


def unpack_payload(payload: str) -> list[dict[str, Any]]:
    """The events of one notification (an array, or a single object)."""
    data = json.loads(payload)
    return data if isinstance(data, list) else [data]


class PgNotifyPublisher:
    """Publishes with ``pg_notify`` in the recorder's transaction: committed rows only."""

    name = "postgres"

    def __init__(self, channel: str = CHANNEL) -> None:
        self.channel = channel

    async def in_transaction(self, conn: Any, events: list[dict[str, Any]]) -> None:
        payloads = list(pack_payloads(events))
        if payloads:
            await conn.execute(
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", self.channel, payloads
            )

    async def after_commit(self, events: list[dict[str, Any]]) -> None:
        return None

    async def close(self) -> None:
        return None
