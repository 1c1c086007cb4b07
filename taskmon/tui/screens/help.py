"""The `?` screen: every key, gathered from the bindings themselves so it cannot drift."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

__all__ = ["HelpScreen"]

_KEY_NAMES = {
    "slash": "/",
    "question_mark": "?",
    "space": "space",
    "escape": "esc",
    "pageup": "PgUp",
    "pagedown": "PgDn",
    "ctrl+c": "ctrl+c",
}

# keys that Textual or the tables provide without a binding of ours
_BUILT_IN: tuple[tuple[str, str, str], ...] = (
    ("Panels", "tab / shift+tab", "Move between panels"),
    ("Panels", "up / down", "Move the cursor"),
    ("Panels", "PgUp / PgDn", "Scroll a screenful"),
    ("History", "enter", "Open the attempt's detail screen"),
    ("Tasks", "enter", "Filter by this task"),
    ("App", "ctrl+p", "Command palette (the same actions)"),
)


def _key_text(binding: Binding) -> str:
    return ", ".join(_KEY_NAMES.get(k.strip(), k.strip()) for k in binding.key.split(","))


def help_rows(sections: Iterable[tuple[str, list[BindingType]]]) -> list[tuple[str, str, str]]:
    """(where, key, what) for every binding in `sections`, then the built-in keys."""
    rows: list[tuple[str, str, str]] = []
    for section, bindings in sections:
        for binding in bindings:
            if isinstance(binding, Binding):
                rows.append((section, _key_text(binding), binding.tooltip or binding.description))
    rows.extend(_BUILT_IN)
    return list(dict.fromkeys(rows))


def help_table(rows: list[tuple[str, str, str]]) -> Table:
    """The rows as a table with a header."""
    table = Table(box=None, padding=(0, 2), show_header=True, header_style="bold")
    table.add_column("where")
    table.add_column("key", style="bold")
    table.add_column("what")
    for row in rows:
        table.add_row(*row)
    return table


class HelpScreen(ModalScreen[None]):
    """Lists every key of the app. ``esc``, ``q`` or ``?`` closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close"),
    ]

    def __init__(self, sections: list[tuple[str, list[BindingType]]]) -> None:
        super().__init__()
        self.rows = help_rows(sections)
        """What the screen lists: (where, key, what)."""

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body") as body:
            body.border_title = "Keys"
            body.border_subtitle = "esc: close"
            yield Static(help_table(self.rows), id="help-table")

    def action_close(self) -> None:
        self.dismiss()
