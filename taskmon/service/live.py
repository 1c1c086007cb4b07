"""The live side for the front ends: the hub they run or follow, and its client.

``taskmon serve`` runs a hub for the network, with ``/metrics`` and the alert
runner beside it; ``taskmon tail`` and the TUI run a private one on loopback
when no hub is named. Both are built here from one
:class:`~taskmon.service.settings.Settings`, so every hub, the alert rules
and the history read the same lost rule.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from taskmon.server.client import (
    ClientMessage,
    Connected,
    Disconnected,
    EventReceived,
    Gap,
    subscribe,
)
from taskmon.server.hub import Hub, HubError, is_loopback
from taskmon.store.db import redact_dsn
from taskmon.store.replica import is_standby

if TYPE_CHECKING:
    from taskmon.service.settings import Settings

__all__ = [
    "ClientMessage",
    "Connected",
    "Disconnected",
    "EventReceived",
    "Gap",
    "Hub",
    "HubError",
    "is_loopback",
    "is_standby",
    "local_hub",
    "redact_dsn",
    "served_hub",
    "subscribe",
]


def served_hub(
    settings: Settings,
    *,
    source: str | None,
    token: str | None,
    ring_size: int,
    client_queue: int,
    metrics_dsn: str | None,
) -> Hub:
    """The hub of ``taskmon serve``: `source`'s NOTIFY (or Redis), ``/metrics`` from `metrics_dsn`.

    Args:
        settings: the Redis URL and the lost rule come from here.
        source: the primary whose NOTIFY is the bus (``None`` on the Redis bus).
        token: the shared secret clients must present.
        ring_size: recent events kept for clients that resume.
        client_queue: events a client may fall behind before it gets a gap.
        metrics_dsn: where ``/metrics`` reads attempts (a replica when named).
    """
    from taskmon.server.exporter import for_hub

    return Hub(
        dsn=source,
        redis_url=settings.redis_url,
        token=token,
        ring_size=ring_size,
        client_queue=client_queue,
        read_dsn=metrics_dsn,
        lost_after_s=settings.lost_after_s,
        metrics=for_hub,
    )


def local_hub(settings: Settings, *, source: str | None) -> tuple[Hub, str]:
    """A private hub for one process (``tail``, the TUI) and the random token it wants.

    The token is random because loopback is open to every local user, who must
    not read a feed the database may not show them.
    """
    token = secrets.token_urlsafe(16)
    hub = Hub(
        dsn=source,
        redis_url=settings.redis_url,
        token=token,
        lost_after_s=settings.lost_after_s,
    )
    return hub, token
