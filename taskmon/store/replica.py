"""Read replicas: whether a server is a standby, and how far behind its primary it is.

Reads (history, stats, the TUI, ``/metrics``) may go to a streaming replica
(``--read-dsn``, ``TASKMON_READ_DSN``); writes and ``LISTEN`` stay on the
primary, since a standby accepts neither. No textual, typer or rich here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

__all__ = ["ReplicaStatus", "fetch_replica_status", "is_standby"]

# The lag is `now() - pg_last_xact_replay_timestamp()`, the age of the last
# transaction replayed: while the primary is idle that age grows although
# nothing is missing, so a standby that streams and has replayed all it has
# received counts as caught up (lag 0).
_STATUS_SQL = """
SELECT pg_is_in_recovery() AS standby,
       EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming') AS streaming,
       pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() AS caught_up,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS since_replay
"""


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What a read connection says about replication."""

    standby: bool
    """The server is in recovery (a hot standby)."""
    streaming: bool
    """It receives WAL from its primary now."""
    lag_s: float | None
    """How far its data is behind the primary's, in seconds (None: not a standby, or
    nothing replayed yet)."""

    def describe(self) -> str:
        """A few words for a status line: ``0.0s``, ``12s (not streaming)``, ``not a standby``."""
        if not self.standby:
            return "not a standby"
        lag = "?" if self.lag_s is None else _seconds(self.lag_s)
        return lag if self.streaming else f"{lag} (not streaming)"


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.1f}s"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.0f}h"


async def fetch_replica_status(conn: asyncpg.Connection[Any]) -> ReplicaStatus:
    """Whether `conn`'s server is a standby, and its lag behind the primary."""
    row = await conn.fetchrow(_STATUS_SQL)
    assert row is not None
    standby = bool(row["standby"])
    if not standby:
        return ReplicaStatus(standby=False, streaming=False, lag_s=None)
    streaming = bool(row["streaming"])
    since = row["since_replay"]
    lag = 0.0 if streaming and row["caught_up"] else since
    return ReplicaStatus(
        standby=True, streaming=streaming, lag_s=None if lag is None else max(0.0, lag)
    )


async def is_standby(dsn: str, *, timeout: float = 5.0) -> bool | None:
    """Whether the server of `dsn` is a standby; None when it cannot be asked."""
    from taskmon.store.db import connect

    try:
        conn = await connect(dsn, timeout=timeout)
    except Exception:
        return None
    try:
        return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
    except Exception:
        return None
    finally:
        conn.terminate()
