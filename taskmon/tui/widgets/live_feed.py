"""The live feed: the newest events as they arrive, bounded, pausable."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import Any, ClassVar

from rich.segment import Segment
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from taskmon.domain.display import duration
from taskmon.domain.events import TERMINAL_STATUSES
from taskmon.service.rows import AttemptRow
from taskmon.tui.format import clip, count, parse_timestamp, timestamp
from taskmon.tui.widgets.status_styles import STATUS_CLASSES, styled_status

__all__ = ["FEED_LINES", "LiveFeed"]

FEED_LINES = 500
"""Lines the feed keeps; older attempts are in History."""

LINE_WIDTH = 160
"""The longest a feed line gets; lines are fitted to the panel's width below that."""


def _event_order(event: dict[str, Any]) -> tuple[float, int]:
    """When an event happened, then its seq: the order feed lines are shown in.

    A writer's batch is published in task-id order (its seqs too), so arrival
    order can run backwards in time. An event without a time sorts last.
    """
    when = parse_timestamp(event.get("timestamp"))
    if when is None:
        at = float("inf")
    else:
        at = (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()
    seq = event.get("seq")
    return at, seq if isinstance(seq, int) else 0


@dataclass(frozen=True, slots=True)
class _Line:
    """One feed line, kept raw: it is formatted only if it is ever on screen."""

    number: int
    kind: str
    """``event``, ``row`` (an attempt read from the database) or ``note``."""
    payload: Any


class LiveFeed(ScrollView, can_focus=True):
    """Events appended at the bottom; at most :data:`FEED_LINES` kept.

    A storm of events costs little: an event is stored as it came and turned
    into text only when a repaint shows it, and arrivals are written at most
    ten times a second (:meth:`flush`). Events that arrive together are shown
    in the order they happened (:func:`_event_order`), not the order a writer
    published them. While paused the panel stays still and counts what
    arrives; resuming shows the newest :data:`FEED_LINES`.

    | Key | Description |
    | :- | :- |
    | space | Pause / resume (bound on the screen). |
    | j / k, up / down | Scroll. |
    | g / G | Top / bottom. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j,down", "scroll_down", "Down", show=False),
        Binding("k,up", "scroll_up", "Up", show=False),
        Binding("g,home", "scroll_home", "Top", show=False),
        Binding("G,end", "scroll_end", "Bottom", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = STATUS_CLASSES | {"live-feed--note"}

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.received = 0
        """Every live event that reached the feed (shown or filtered out)."""
        self.shown = 0
        """Events that matched the filter."""
        self.paused = False
        self.new_while_paused = 0
        """Matching events that arrived since the pause."""
        self.tz: tzinfo | None = None
        self.last_event_at: Any = None
        """The timestamp of the newest event received."""
        self._last_event: dict[str, Any] | None = None
        self.open_attempts: OrderedDict[tuple[str, int], None] = OrderedDict()
        """Attempts the feed showed starting and not yet ending (oldest first, bounded)."""
        self._lines: deque[_Line] = deque(maxlen=FEED_LINES)
        self._waiting: deque[_Line] = deque(maxlen=FEED_LINES)
        self._numbers = 0
        self._strips: OrderedDict[int, Strip] = OrderedDict()
        self._dirty = False
        self._follow = True
        """Whether new lines scroll into view (false once the user scrolls up)."""

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._follow = new >= self.max_scroll_y - 1

    def on_mount(self) -> None:
        self._update_title()
        self.set_interval(0.1, self.flush, name="feed-flush")

    # -- input ------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Lines received but not yet shown (the next flush, or the end of a pause)."""
        return len(self._waiting)

    @property
    def line_count(self) -> int:
        """Lines on the panel."""
        return len(self._lines)

    def _add(self, kind: str, payload: Any) -> None:
        self._numbers += 1
        self._waiting.append(_Line(self._numbers, kind, payload))

    def add_events(
        self, events: Iterable[dict[str, Any]], matches: Callable[[dict[str, Any]], bool]
    ) -> int:
        """Queue the events that `matches` accepts; returns how many it accepted."""
        accepted = 0
        last = None
        for event in events:
            self.received += 1
            if event.get("timestamp") and (
                last is None or _event_order(event) > _event_order(last)
            ):
                last = event
            if matches(event):
                accepted += 1
                self._add("event", event)
                data = event.get("data")
                if isinstance(data, dict):
                    self._track(data.get("task_id"), data.get("attempt"), event.get("status"))
        if last is not None and (
            self._last_event is None or _event_order(last) > _event_order(self._last_event)
        ):
            self._last_event = last
            self.last_event_at = last.get("timestamp")
        self.shown += accepted
        if self.paused:
            self.new_while_paused += accepted
        self._dirty = True
        return accepted

    def add_note(self, text: str, rows: Iterable[AttemptRow] = ()) -> None:
        """A line from the app itself (gap filled…), then attempts read from the database."""
        self._add("note", text)
        for row in rows:
            self._add("row", row)
            self._track(row.get("task_id"), row.get("attempt"), row.get("status"))
        if self.paused:
            self.new_while_paused += 1
        self._dirty = True

    def _track(self, task_id: Any, attempt: Any, status: Any) -> None:
        """Keep :attr:`open_attempts` current with one shown attempt's status."""
        if not isinstance(task_id, str) or not isinstance(attempt, int):
            return
        key = (task_id, attempt)
        if status in TERMINAL_STATUSES:
            self.open_attempts.pop(key, None)
        else:
            self.open_attempts[key] = None
            self.open_attempts.move_to_end(key)
            while len(self.open_attempts) > FEED_LINES:
                self.open_attempts.popitem(last=False)

    # -- formatting ---------------------------------------------------------------

    def _text(self, line: _Line, width: int = LINE_WIDTH) -> Text:
        if line.kind == "note":
            style = self.get_component_rich_style("live-feed--note", partial=True)
            return Text(f"── {line.payload} ──", style=style)
        if line.kind == "row":
            return self.row_line(line.payload, width)
        return self.event_line(line.payload, width)

    def event_line(self, event: dict[str, Any], width: int = LINE_WIDTH) -> Text:
        """A live event: time, status, task, attempt, duration, worker, error."""
        data = event.get("data") or {}
        return self._line(event.get("timestamp"), event.get("status"), event, data, width)

    def row_line(self, row: AttemptRow, width: int = LINE_WIDTH) -> Text:
        """An attempt read from the database, shown like an event (the note above says whence)."""
        when = row.get("finished_at") or row.get("started_at") or row.get("created_at")
        return self._line(when, row.get("status"), row, row, width)

    def _line(
        self, when: Any, status: Any, top: Mapping[str, Any], data: Mapping[str, Any], width: int
    ) -> Text:
        """One line in `width` cells: the error, last, is cut at a word with ``…``."""
        error = " ".join(str(p) for p in (data.get("error_type"), data.get("error_message")) if p)
        took = data.get("duration_ms")
        text = Text.assemble(
            timestamp(when, self.tz),
            " ",
            styled_status(self, str(status or ""), width=10),
            " ",
            (str(top.get("task_name", "")), "bold"),
            f"  #{data.get('attempt', 0)}",
            f"  {duration(took)}" if took is not None else "",
            f"  {data.get('worker') or ''}",
        )
        room = width - text.cell_len - 2
        if error and room > 0:
            text.append("  " + clip(" ".join(error.split()), room))
        text.truncate(width, overflow="ellipsis")
        return text

    def plain_lines(self) -> list[str]:
        """The panel's lines as plain text (tests, screen readers of logs)."""
        return [self._text(line).plain for line in self._lines]

    def _strip(self, line: _Line) -> Strip:
        strip = self._strips.get(line.number)
        if strip is None:
            # fitted to the panel: nothing is left off to the right, out of the keys' reach
            width = self.scrollable_content_region.width or LINE_WIDTH
            text = self._text(line, min(width, LINE_WIDTH))
            text.no_wrap = True
            segments = list(text.render(self.app.console))
            strip = Strip(Segment.apply_style(segments, self.rich_style), text.cell_len)
            self._strips[line.number] = strip
            if len(self._strips) > 2 * FEED_LINES:
                self._strips.popitem(last=False)
        return strip

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        if index >= len(self._lines):
            return Strip.blank(width, self.rich_style)
        strip = self._strip(self._lines[index])
        return strip.crop_extend(scroll_x, scroll_x + width, self.rich_style)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    # -- output -----------------------------------------------------------------

    def flush(self) -> None:
        """Show what waits (unless paused): one refresh, however many lines."""
        if not self._dirty:
            return
        self._dirty = False
        self._update_title()
        if self.paused or not self._waiting:
            return
        self._lines.extend(_in_time_order(self._waiting))
        self._waiting.clear()
        self.virtual_size = Size(LINE_WIDTH, len(self._lines))
        if self._follow:
            self._scroll_to_end()
            # the first lines may arrive before the panel has its size: scroll again after layout
            self.call_after_refresh(self._scroll_to_end)
        self.refresh()

    def on_resize(self) -> None:
        self._strips.clear()  # the lines are fitted to the width
        # a panel that shrinks (the filter bar opened) keeps showing the newest lines
        if self._follow:
            self.call_after_refresh(self._scroll_to_end)

    def _scroll_to_end(self) -> None:
        """Show the newest lines.

        Not ``scroll_end()``: it does nothing until a layout has shown the
        scrollbar that the new lines need, and a call after the refresh can run
        before that layout (then the panel kept showing its first lines). The
        offset's bound is known as soon as the lines are: set it.
        """
        if self._follow:
            self.scroll_y = self.scroll_target_y = self.max_scroll_y
            # the scrollbar may not be shown yet: it must show this place once it is
            self.vertical_scrollbar.position = self.scroll_y

    def pause(self) -> None:
        self.paused = True
        self.new_while_paused = 0
        self._update_title()

    def resume(self) -> None:
        self.paused = False
        self.new_while_paused = 0
        self._dirty = True
        self.flush()

    def toggle_pause(self) -> bool:
        """Pause or catch up; returns whether it is now paused."""
        if self.paused:
            self.resume()
        else:
            self.pause()
        return self.paused

    def _update_title(self) -> None:
        self.border_title = f"Live · {count(self.received)} received"
        if self.paused:
            self.border_subtitle = f"PAUSED · +{count(self.new_while_paused)} new"
        else:
            self.border_subtitle = "space: pause"


def _in_time_order(lines: Iterable[_Line]) -> list[_Line]:
    """`lines` with each run of events sorted by :func:`_event_order`.

    Notes and the attempts read after them stay where they are: they say
    where a gap was.
    """
    result: list[_Line] = []
    run: list[_Line] = []
    for line in lines:
        if line.kind == "event":
            run.append(line)
            continue
        result += sorted(run, key=lambda e: _event_order(e.payload))
        run = []
        result.append(line)
    result += sorted(run, key=lambda e: _event_order(e.payload))
    return result
