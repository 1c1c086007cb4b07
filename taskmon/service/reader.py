"""Reading what was recorded: the one read path of the CLI and the TUI.

A :class:`Reader` holds a small asyncpg pool on the read DSN of a
:class:`~taskmon.service.settings.Settings`, rebuilt after an outage, and
answers every question the front ends ask of the database: history pages,
window statistics, the attempts of a task, retries, workers, queues, schedules
and the replica's lag. The lost rule's threshold is the settings' one, so the CLI and
the TUI cannot disagree on what is lost.

``taskmon history`` opens one for one page (``async with Reader(settings)``);
the TUI keeps one open for the session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from taskmon.domain.schedules import DEFAULT_GRACE_S, DEFAULT_LATE_AFTER_S, DEFAULT_WINDOW_S
from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S
from taskmon.store.db import CONNECTION_ERRORS, connect, redact_dsn

if TYPE_CHECKING:
    import asyncpg

    from taskmon.domain.filters import TaskFilter
    from taskmon.domain.schedules import Schedule, ScheduleReport
    from taskmon.service.rows import (
        AttemptRow,
        HistoryPage,
        QueueRow,
        ReplicaStatus,
        WaitingRow,
        WorkerRow,
    )
    from taskmon.service.settings import Settings
    from taskmon.store.stats import Stats

__all__ = ["Reader"]


class Reader:
    """Reads through the store on a small pool, rebuilt after an outage.

    Args:
        dsn: the database.
        lost_after_s: the age after which a running attempt without timeout counts as lost.
        statement_timeout: seconds a query may run.
        replica: `dsn` is a read replica (``--read-dsn``): the TUI's status bar shows its lag.
        pool_size: connections at most (the TUI's metrics, history and detail read at once).
    """

    def __init__(
        self,
        dsn: str,
        *,
        lost_after_s: float = DEFAULT_LOST_AFTER_S,
        statement_timeout: float = 30.0,
        replica: bool = False,
        pool_size: int = 3,
    ) -> None:
        self.dsn = dsn
        self.label = redact_dsn(dsn)
        """What the status bar shows as "the database" (no password)."""
        self.lost_after_s = lost_after_s
        self.statement_timeout = statement_timeout
        self.replica = replica
        self.pool_size = pool_size
        self._pool: asyncpg.Pool[Any] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def for_settings(cls, settings: Settings, *, pool_size: int = 3) -> Reader:
        """A reader on the settings' read DSN (a replica when one is named)."""
        return cls(
            settings.read_dsn,
            lost_after_s=settings.lost_after_s,
            replica=settings.reads_from_replica,
            pool_size=pool_size,
        )

    async def __aenter__(self) -> Reader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _get_pool(self) -> asyncpg.Pool[Any]:
        import asyncpg

        async with self._lock:
            if self._pool is None:

                async def open_conn(*_args: Any, **_kwargs: Any) -> asyncpg.Connection[Any]:
                    return await connect(
                        self.dsn, timeout=5.0, command_timeout=self.statement_timeout
                    )

                self._pool = await asyncpg.create_pool(
                    min_size=1,
                    max_size=self.pool_size,
                    connect=open_conn,
                    max_inactive_connection_lifetime=60,
                )
            return self._pool

    async def _reset(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn:
                return await fn(conn, *args, **kwargs)
        except CONNECTION_ERRORS:
            # a dead server leaves dead connections behind: start afresh next time
            await self._reset()
            raise

    async def history(
        self, flt: TaskFilter, *, limit: int = 50, after: str | None = None
    ) -> HistoryPage:
        """One page of attempts, newest first, after the keyset cursor `after`, with retry links."""
        from taskmon.store.retry_links import fetch_history_with_links

        page: HistoryPage = await self._run(
            fetch_history_with_links, flt, limit=limit, after=after, lost_after_s=self.lost_after_s
        )
        return page

    async def stats(
        self,
        flt: TaskFilter,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        now: datetime | None = None,
    ) -> Stats:
        """The numbers of ``taskmon stats`` for the filter's window, or [since, until)."""
        from taskmon.store import stats as store_stats

        stats: Stats = await self._run(
            store_stats.fetch_stats,
            flt,
            since=since,
            until=until,
            lost_after_s=self.lost_after_s,
            now=now,
        )
        return stats

    async def attempts(self, task_id: str) -> list[AttemptRow]:
        """Every attempt of `task_id`, in attempt order."""
        from taskmon.store import history

        rows: list[AttemptRow] = await self._run(
            history.fetch_attempts, task_id, lost_after_s=self.lost_after_s
        )
        return rows

    async def attempts_by_key(self, keys: Sequence[tuple[str, int]]) -> list[AttemptRow]:
        """The current state of the attempts `keys` names (``(task_id, attempt)``)."""
        from taskmon.store import history

        rows: list[AttemptRow] = await self._run(
            history.fetch_attempts_by_key, keys, lost_after_s=self.lost_after_s
        )
        return rows

    async def retried_as(self, task_id: str) -> list[str]:
        """Task ids of the retries of `task_id` (``taskmon retry``) that a worker started."""
        from taskmon.store.retry_links import fetch_retried_as

        links: dict[str, list[str]] = await self._run(fetch_retried_as, [task_id])
        return links.get(task_id, [])

    async def workers(self) -> list[WorkerRow]:
        """Worker processes by their heartbeat rows: alive, stale or stopped."""
        from taskmon.store.workers import fetch_workers

        rows: list[WorkerRow] = await self._run(fetch_workers)
        return rows

    async def queues(self, window_s: float = 300.0) -> list[QueueRow]:
        """Each queue's backlog as its workers last saw it, and its trend over `window_s`."""
        from taskmon.store.workers import fetch_queues

        rows: list[QueueRow] = await self._run(fetch_queues, window_s)
        return rows

    async def waiting(self, older_than_s: float | None = None) -> list[WaitingRow]:
        """The tasks sent more than `older_than_s` ago and not started, by task and queue.

        `older_than_s`: default :data:`~taskmon.store.pending.DEFAULT_WAITING_OVER_S`.
        """
        from taskmon.store.pending import DEFAULT_WAITING_OVER_S, fetch_waiting

        if older_than_s is None:
            older_than_s = DEFAULT_WAITING_OVER_S
        rows: list[WaitingRow] = await self._run(fetch_waiting, older_than_s=older_than_s)
        return rows

    async def schedules(
        self,
        schedules: Sequence[Schedule],
        *,
        now: datetime,
        window_s: float = DEFAULT_WINDOW_S,
        grace_s: float = DEFAULT_GRACE_S,
        late_after_s: float = DEFAULT_LATE_AFTER_S,
    ) -> list[ScheduleReport]:
        """Each schedule over the `window_s` before `now`: its fires, missed, late, last run."""
        from taskmon.store.schedules import reports

        judged: list[ScheduleReport] = await self._run(
            reports,
            schedules,
            now=now,
            window_s=window_s,
            grace_s=grace_s,
            late_after_s=late_after_s,
            lost_after_s=self.lost_after_s,
        )
        return judged

    async def replica_status(self) -> ReplicaStatus:
        """Whether the database is a standby, and how far behind its primary."""
        from taskmon.store.replica import fetch_replica_status

        status: ReplicaStatus = await self._run(fetch_replica_status)
        return status

    async def close(self) -> None:
        """Release the pool's connections."""
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 2.0)
            pool.terminate()
