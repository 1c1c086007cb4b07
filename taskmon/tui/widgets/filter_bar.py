"""The filter bar: type a query in the filter language, see parse errors as you type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Input, Static

from taskmon.domain.filters import FilterError, parse

__all__ = ["FilterBar"]


class FilterBar(Vertical):
    """An input for ``status:failed task:extract* since:7d error:"timed out"``.

    | Key | Description |
    | :- | :- |
    | enter | Apply the filter (when it parses). |
    | escape | Clear the filter and close the bar. |
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "clear", "Clear filter", tooltip="Clear the filter and close the bar"),
    ]

    @dataclass
    class Applied(Message):
        """The user applied a query that parses."""

        query: str

    @dataclass
    class Cleared(Message):
        """The user cleared the filter."""

    def compose(self) -> ComposeResult:
        with Horizontal(id="filter-row"):
            yield Static("filter ›", id="filter-prompt")
            yield Input(
                placeholder='status:failed task:extract* since:7d error:"timed out"',
                id="filter-input",
                select_on_focus=False,
                compact=True,
            )
        yield Static("", id="filter-error")

    def on_mount(self) -> None:
        # a blinking cursor makes screenshots differ from run to run, and SSH links busy
        self.query_one(Input).cursor_blink = False

    def open(self, query: str) -> None:
        """Show the bar holding `query` and focus it."""
        self.display = True
        field = self.query_one(Input)
        field.value = query
        field.cursor_position = len(query)
        field.focus()
        self._check(query)

    def close(self) -> None:
        self.display = False
        self.query_one("#filter-error", Static).update("")

    def _check(self, text: str) -> bool:
        error = self.query_one("#filter-error", Static)
        try:
            parse(text)
        except FilterError as exc:
            error.update(f"✕ {exc}")
            error.add_class("-invalid")
            return False
        error.update("enter: apply · esc: clear")
        error.remove_class("-invalid")
        return True

    @on(Input.Changed, "#filter-input")
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        self._check(event.value)

    @on(Input.Submitted, "#filter-input")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self._check(event.value):
            self.post_message(self.Applied(event.value.strip()))

    def action_clear(self) -> None:
        self.query_one(Input).value = ""
        self.post_message(self.Cleared())
