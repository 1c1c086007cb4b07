"""Reconnection delays: one rule for every client that reconnects.

The bus subscribers (PostgreSQL ``LISTEN``, Redis streams), the hub client the
TUI and ``taskmon tail`` use, and the recorder's writer all wait by
:class:`Backoff` between attempts.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Exponential reconnection delays with jitter: ~0.1, 0.2, 0.4 … capped at `maximum` s."""

    def __init__(self, first: float = 0.1, maximum: float = 5.0) -> None:
        self.first = first
        self.maximum = max(first, maximum)
        self.current = first

    def next(self) -> float:
        """The next delay in seconds."""
        delay = self.current
        self.current = min(self.current * 2, self.maximum)
        # jitter keeps the clients of a restarted server from reconnecting in lockstep
        return delay * random.uniform(0.75, 1.25)

    def reset(self) -> None:
        """Start again from the first delay (after a successful connection)."""
        self.current = self.first
