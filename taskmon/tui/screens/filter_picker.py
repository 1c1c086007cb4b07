"""`f` in the detail screen: filter the history by one of the attempt's values.

The picker lists what a term of the filter language can match on the
attempt: each param (nested keys dotted, ``user.id = 42``), each label and
the queue. A redacted value is never offered: searching for it would find
nothing (``docs/architecture.md``: the filter language lives in the domain,
which builds and quotes the term).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from taskmon.domain.filters import FilterError, term_for, term_values
from taskmon.service.rows import AttemptRow

__all__ = ["FilterChoice", "FilterPickerScreen", "filter_choices"]

VALUE_CELLS = 60
"""A value longer than this is cut on the picker's line (the term keeps it whole)."""


@dataclass(frozen=True, slots=True)
class FilterChoice:
    """One line of the picker: what it reads, and the term it applies."""

    kind: str
    """``param``, ``label`` or ``queue``."""
    key: str
    value: str | None
    term: str

    @property
    def label(self) -> Text:
        """``param  user.id = 42``: the kind in words, so it reads the same without colour."""
        shown = self.key if self.value is None else f"{self.key} = {self.value}"
        if len(shown) > VALUE_CELLS:
            shown = shown[: VALUE_CELLS - 1] + "…"
        return Text.assemble((f"{self.kind:<6}", "bold"), " ", shown)


def _mapping(value: Any) -> Mapping[str, Any]:
    if isinstance(value, str):  # a source may hand jsonb over as its text
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, Mapping) else {}


def filter_choices(row: AttemptRow) -> list[FilterChoice]:
    """The terms the attempt `row` can be filtered by: params, then labels, then its queue."""
    found: list[FilterChoice] = []
    kwargs = _mapping(row.get("params")).get("kwargs")
    pairs: list[tuple[str, str, str | None]] = [("param", k, v) for k, v in term_values(kwargs)]
    pairs += [("label", k, v) for k, v in term_values(_mapping(row.get("labels")), nested=False)]
    queue = row.get("queue")
    if isinstance(queue, str) and queue:
        pairs.append(("queue", queue, None))
    for kind, key, value in pairs:
        try:
            term = term_for(kind, key, value)
        except FilterError:  # a key the language cannot name: left out
            continue
        found.append(FilterChoice(kind, key, value, term))
    return found


class FilterPickerScreen(ModalScreen[str | None]):
    """Pick one of the attempt's values; dismissed with its term (None: nothing picked).

    | Key | Description |
    | :- | :- |
    | up / down, j / k | Move. |
    | enter | Filter the history by it. |
    | escape | Back to the detail, nothing changed. |
    """

    DEFAULT_CSS = """
    FilterPickerScreen {
        align: center middle;
    }
    FilterPickerScreen > Vertical {
        width: 76;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: thick $accent;
        padding: 0 1;
        background: $surface;
    }
    FilterPickerScreen OptionList {
        height: auto;
        max-height: 16;
    }
    FilterPickerScreen #picker-keys {
        margin-top: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Back"),
        Binding("j", "move('down')", "Down", show=False),
        Binding("k", "move('up')", "Up", show=False),
    ]

    def __init__(self, choices: list[FilterChoice]) -> None:
        super().__init__()
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-dialog") as dialog:
            dialog.border_title = "Filter the history by"
            yield OptionList(
                *(Option(c.label, id=str(i)) for i, c in enumerate(self.choices)),
                id="picker-options",
                markup=False,
                compact=True,
            )
            yield Static(
                Text.assemble(("enter", "bold"), " filter the history   ", ("esc", "bold"),
                              " back"),
                id="picker-keys",
            )  # fmt: skip

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = 0
        options.focus()

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.choices[event.option_index].term)

    def action_move(self, where: str) -> None:
        options = self.query_one(OptionList)
        if where == "down":
            options.action_cursor_down()
        else:
            options.action_cursor_up()

    def action_cancel(self) -> None:
        self.dismiss(None)
