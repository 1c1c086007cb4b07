"""Where the TUI gets its data: a database side and a live side, each behind a protocol.

The app only talks to these protocols, so tests and the benchmark can hand it
real sources (:class:`~taskmon.service.reader.Reader`, :class:`HubLiveSource`,
:class:`InProcessHubSource`) or small fakes with fixed data (snapshots).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S
from taskmon.service.reader import Reader
from taskmon.service.rows import AttemptRow

if TYPE_CHECKING:
    from taskmon.domain.filters import TaskFilter
    from taskmon.service.rows import HistoryPage, Stats

__all__ = [
    "DataSource",
    "HubLiveSource",
    "InProcessHubSource",
    "LiveConnected",
    "LiveDisconnected",
    "LiveEvent",
    "LiveGap",
    "LiveItem",
    "LiveSource",
    "PgDataSource",
]


class DataSource(Protocol):
    """The database side: history pages, window statistics, attempts of one task."""

    label: str
    """What the status bar shows as "the database" (no password)."""

    async def history(
        self, flt: TaskFilter, *, limit: int = 50, after: str | None = None
    ) -> HistoryPage:
        """One page of attempts, newest first, after the keyset cursor `after`."""

    async def stats(
        self, flt: TaskFilter, *, since: datetime, until: datetime | None, now: datetime
    ) -> Stats:
        """The numbers of `taskmon stats` for the window [since, until)."""

    async def attempts(self, task_id: str) -> list[AttemptRow]:
        """Every attempt of `task_id`, in attempt order."""

    async def attempts_by_key(self, keys: Sequence[tuple[str, int]]) -> list[AttemptRow]:
        """The current state of the attempts `keys` names (``(task_id, attempt)``)."""

    async def retried_as(self, task_id: str) -> list[str]:
        """Task ids of the retries of `task_id` (``taskmon retry``) that a worker started."""

    async def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True)
class LiveConnected:
    """The stream is connected (`reconnected`: after a drop)."""

    reconnected: bool


@dataclass(frozen=True)
class LiveDisconnected:
    """The stream dropped and is retrying; with `final`, it gave up (the reason is `error`)."""

    error: str
    attempt: int
    final: bool = False


@dataclass(frozen=True)
class LiveGap:
    """Events were missed (the hub could not replay them)."""

    reason: str


@dataclass(frozen=True)
class LiveEvent:
    """One live event (the wire dict of docs/protocol.md)."""

    event: dict[str, Any]


LiveItem = LiveConnected | LiveDisconnected | LiveGap | LiveEvent


class LiveSource(Protocol):
    """The live side: a stream that reconnects by itself and says so."""

    label: str

    def stream(self) -> AsyncIterator[LiveItem]:
        """Items for as long as the app runs; never ends on a connection error."""

    async def close(self) -> None:
        """Stop what the source started."""


PgDataSource = Reader
"""The database side of a real session: the application layer's reader."""


class HubLiveSource:
    """Subscribes to a running hub's websocket (``taskmon serve`` or an in-process one).

    A hub that was never reached, or that refuses the token, is not retried:
    the stream yields a final :class:`LiveDisconnected` saying why, then stays
    quiet until :meth:`close` (retrying could not help; the app shows offline).

    Args:
        url: the hub's ws:// URL.
        token: the hub's token, if it wants one.
        max_backoff: the longest pause between reconnection attempts.
    """

    def __init__(self, url: str, *, token: str | None = None, max_backoff: float = 5.0) -> None:
        self.url = url
        self.label = url
        self.token = token
        self.max_backoff = max_backoff
        self._closed = asyncio.Event()

    async def stream(self) -> AsyncIterator[LiveItem]:
        from taskmon.service import live as client

        # the client resumes from the last seq by itself across reconnects
        async for item in client.subscribe(
            self.url, token=self.token, max_backoff=self.max_backoff
        ):
            if isinstance(item, client.EventReceived):
                yield LiveEvent(item.event)
            elif isinstance(item, client.Connected):
                yield LiveConnected(item.reconnected)
            elif isinstance(item, client.Disconnected) and item.final:
                # short: the status bar shows it next to "offline" at 80 columns
                why = "hub refused the token" if item.refused else f"no hub answers at {self.url}"
                yield LiveDisconnected(why, item.attempt, final=True)
                # a stream that ended would be started again: wait for the app to close
                await self._closed.wait()
                return
            elif isinstance(item, client.Disconnected):
                yield LiveDisconnected(item.error, item.attempt)
            elif isinstance(item, client.Gap):
                yield LiveGap(item.reason)

    async def close(self) -> None:
        self._closed.set()


class InProcessHubSource:
    """Starts a :class:`~taskmon.server.hub.Hub` on 127.0.0.1 (port 0) for the same DSN, subscribes.

    The hub wants a random token, as ``taskmon tail``'s does
    (:func:`taskmon.service.live.local_hub`).

    Args:
        dsn: the database whose events the hub relays.
        redis_url: relay a Redis stream instead of PostgreSQL NOTIFY.
        lost_after_s: the lost rule's threshold, for the hub's ``/metrics``.
    """

    def __init__(
        self, dsn: str, *, redis_url: str | None = None, lost_after_s: float = DEFAULT_LOST_AFTER_S
    ) -> None:
        self.dsn = dsn
        self.redis_url = redis_url
        self.lost_after_s = lost_after_s
        self.label = "in-process hub"
        self._hub: Any = None
        self._start_lock = asyncio.Lock()
        self._token = ""

    async def _url(self) -> str:
        from taskmon.service.live import local_hub
        from taskmon.service.settings import Settings

        async with self._start_lock:
            if self._hub is None:
                settings = Settings(redis_url=self.redis_url, lost_after_s=self.lost_after_s)
                hub, self._token = local_hub(settings, source=self.dsn)
                url = await hub.start("127.0.0.1", 0)
                self._hub = hub
                self._url_value = url
            return self._url_value

    async def stream(self) -> AsyncIterator[LiveItem]:
        attempt = 0
        while True:
            try:
                url = await self._url()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # the hub could not start (database down?): say so and try again
                attempt += 1
                yield LiveDisconnected(f"cannot start the hub: {exc}", attempt)
                await asyncio.sleep(min(0.5 * 2**attempt, 5.0))
                continue
            async for item in HubLiveSource(url, token=self._token).stream():
                yield item

    async def close(self) -> None:
        hub, self._hub = self._hub, None
        if hub is not None:
            with contextlib.suppress(Exception):
                await hub.stop()
