"""The window's headline numbers and a throughput sparkline."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from rich.columns import Columns
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from taskmon.domain.display import duration, status_label
from taskmon.tui.format import count, percent

if TYPE_CHECKING:
    from taskmon.service.rows import Stats

__all__ = ["MetricsPanel"]


class MetricsPanel(Vertical):
    """Total, success, failed, running, lost, failure rate and p95 for the window."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "metrics-panel--label",
        "metrics-panel--success",
        "metrics-panel--failed",
        "metrics-panel--running",
        "metrics-panel--lost",
    }

    def compose(self) -> ComposeResult:
        yield Static("loading…", id="metrics-summary")
        yield Sparkline([], id="metrics-sparkline")

    def show(self, stats: Stats, window: str) -> None:
        """Display `stats`, computed for the window `window` names (``last 1h``, ``since …``)."""
        by_status = stats.by_status
        label = self.get_component_rich_style("metrics-panel--label")

        def item(name: str, value: str, style_name: str = "") -> Text:
            style = self.get_component_rich_style(style_name) if style_name else ""
            return Text.assemble((f"{name} ", label), (value, style))

        items = [
            item("total", count(stats.total)),
            item(
                status_label("success"),
                count(by_status.get("success", 0)),
                "metrics-panel--success",
            ),
            item(
                status_label("failed"), count(by_status.get("failed", 0)), "metrics-panel--failed"
            ),
            item(status_label("running"), count(stats.running), "metrics-panel--running"),
            item(status_label("lost"), count(stats.lost), "metrics-panel--lost"),
            item("failure rate", percent(stats.failure_rate)),
            item("p95", duration(stats.p95_ms)),
        ]
        retrying = by_status.get("retrying", 0)
        if retrying:
            items.insert(3, item(status_label("retrying"), count(retrying)))
        self.query_one("#metrics-summary", Static).update(Columns(items, padding=(0, 2)))
        self.query_one("#metrics-sparkline", Sparkline).data = [
            float(n) for _, n in stats.throughput
        ]
        bucket = duration(stats.bucket_seconds * 1000.0)
        self.border_title = f"Metrics · {window}"
        self.border_subtitle = f"throughput per {bucket}"
