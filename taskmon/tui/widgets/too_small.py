"""What replaces the screen when the terminal is smaller than the layout needs."""

from __future__ import annotations

from textual.widgets import Static

__all__ = ["MIN_HEIGHT", "MIN_WIDTH", "TooSmall"]

MIN_WIDTH = 80
MIN_HEIGHT = 24


class TooSmall(Static):
    """Names the size it has and the size it needs, instead of a broken layout."""

    def show_size(self, width: int, height: int) -> None:
        self.update(f"terminal too small: {width}×{height}, need {MIN_WIDTH}×{MIN_HEIGHT}")
