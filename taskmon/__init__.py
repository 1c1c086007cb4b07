"""taskmon: a terminal monitor for TaskIQ background tasks.

Add :class:`MonitoringMiddleware` to a broker and every task execution is
recorded in PostgreSQL; ``taskmon tui``, ``taskmon history`` and ``taskmon
stats`` read it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskmon.domain.version import __version__

__all__ = ["MonitoringMiddleware", "__version__"]

if TYPE_CHECKING:
    from taskmon.worker.middleware import MonitoringMiddleware


def __getattr__(name: str) -> Any:
    # lazy, so that `taskmon history` does not pay for importing taskiq
    if name == "MonitoringMiddleware":
        from taskmon.worker.middleware import MonitoringMiddleware

        return MonitoringMiddleware
    raise AttributeError(name)
