"""Messages workers post to the UI: past-tense events, each a small dataclass.

Data reaches widgets only this way: a worker awaits a source, then posts one of
these; an ``@on(...)`` handler on the UI side applies it. Each load carries the
``generation`` of the view state it answered, so a handler can drop a result
whose question changed while it was on its way (the stale-result guard).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from taskmon.service.rows import AttemptRow, HistoryPage, Stats

__all__ = [
    "AttemptsLoaded",
    "EventsReceived",
    "GapFilled",
    "HistoryLoaded",
    "HubConnected",
    "HubDisconnected",
    "HubGapReported",
    "LoadFailed",
    "MetricsLoaded",
    "ReplicaLagMeasured",
]


@dataclass
class MetricsLoaded(Message):
    """The window's statistics arrived."""

    stats: Stats
    generation: int

    def can_replace(self, message: Message) -> bool:
        # only the newest numbers matter: a queued older result is skipped
        return isinstance(message, MetricsLoaded)


@dataclass
class HistoryLoaded(Message):
    """One page of history arrived."""

    page: HistoryPage
    generation: int
    page_index: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, HistoryLoaded)


@dataclass
class AttemptsLoaded(Message):
    """Every attempt of one task id arrived (detail screen)."""

    task_id: str
    attempts: list[AttemptRow]


@dataclass
class LoadFailed(Message):
    """A database read failed; the UI shows it and the next refresh retries."""

    what: str
    error: str


@dataclass
class ReplicaLagMeasured(Message):
    """The read replica said how far behind its primary it is (a few words, e.g. ``0.4s``)."""

    text: str

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ReplicaLagMeasured)


@dataclass
class EventsReceived(Message):
    """Live events arrived from the hub (a burst is batched into one message)."""

    events: list[dict[str, Any]]


@dataclass
class HubConnected(Message):
    """The live stream is (again) connected."""

    reconnected: bool


@dataclass
class HubDisconnected(Message):
    """The live stream dropped; it retries on its own (`attempt` counts the tries).

    With `final` it does not: `error` says why (a refused token, no hub there).
    """

    error: str
    attempt: int
    final: bool = False


@dataclass
class HubGapReported(Message):
    """The hub could not replay everything after our last seq: events were missed."""

    reason: str


@dataclass
class GapFilled(Message):
    """Attempts missed by the live stream were read back from the database."""

    since: datetime
    until: datetime
    rows: list[AttemptRow] = field(default_factory=list)
    reason: str = ""
    quiet: bool = False
    """Say nothing when nothing was missing (a follow-up to another fill)."""
