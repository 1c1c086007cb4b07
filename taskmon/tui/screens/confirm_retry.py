"""`R`: send the selected attempt's task again, after asking, through the user's broker.

The key works on a history row and in the detail screen. Planning, the
question and sending run in a worker of the screen the key was pressed on;
every outcome is said in a notification with its words (sent, cancelled,
refused and why), never by colour alone.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from taskmon.domain.display import status_label

if TYPE_CHECKING:
    from taskmon.service.resend import Retrier, RetryPlan
    from taskmon.service.rows import AttemptRow

__all__ = ["HOW_TO_ENABLE", "ConfirmRetryScreen", "retry_attempt"]

HOW_TO_ENABLE = (
    "R sends a task again through your broker: start the TUI with "
    "--broker module:variable (as for `taskiq worker`), or set TASKMON_BROKER "
    "or `broker` in the config file."
)


class ConfirmRetryScreen(ModalScreen[bool]):
    """Asks whether to send one planned retry; dismissed with True to send it.

    | Key | Description |
    | :- | :- |
    | y | Send it. |
    | n, escape | Cancel: nothing is sent. |
    """

    DEFAULT_CSS = """
    ConfirmRetryScreen {
        align: center middle;
    }
    ConfirmRetryScreen > Vertical {
        width: 76;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: thick $warning;
        padding: 0 1;
        background: $surface;
    }
    ConfirmRetryScreen #retry-keys {
        margin-top: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Send"),
        Binding("n", "answer(False)", "Cancel"),
        Binding("escape", "answer(False)", "Cancel", show=False),
    ]

    def __init__(self, plan: RetryPlan, broker_spec: str) -> None:
        super().__init__()
        self.plan = plan
        self.broker_spec = broker_spec

    def compose(self) -> ComposeResult:
        with Vertical(id="retry-dialog") as dialog:
            dialog.border_title = "Send this task again?"
            yield Static(self._summary(), id="retry-summary")
            yield Static(
                Text.assemble(("y", "bold"), " send   ", ("n", "bold"), " / ", ("esc", "bold"),
                              " cancel: nothing is sent"),
                id="retry-keys",
            )  # fmt: skip

    def _summary(self) -> Table:
        plan = self.plan
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        table.add_row("task", plan.task_name)
        table.add_row("task id", f"{plan.task_id} · attempt {plan.attempt}")
        table.add_row("status", status_label(plan.status))
        table.add_row("call", plan.call_text(limit=300))
        table.add_row("via", self.broker_spec)
        if plan.retried_as:
            table.add_row("note", f"already retried as {', '.join(plan.retried_as)}")
        table.add_row("sent as", "a new task, labelled taskmon_retry_of")
        return table

    def action_answer(self, send: bool) -> None:
        self.dismiss(send)


def retry_attempt(screen: Screen[Any], row: AttemptRow | None) -> None:
    """Retry the attempt `row` from `screen`: plan, ask, send; or say why not.

    Without a broker configured (the app's ``retrier`` is None), says how to
    enable it.
    """
    retrier: Retrier | None = getattr(screen.app, "retrier", None)
    if row is None:
        screen.notify("no attempt selected", title="retry", severity="warning")
        return
    if retrier is None:
        screen.notify(HOW_TO_ENABLE, title="retry is off", severity="warning", timeout=10)
        return
    screen.run_worker(
        _plan_ask_send(screen, retrier, row["task_id"], row["attempt"]),
        group="retry",
        exclusive=True,
        exit_on_error=False,
    )


async def _plan_ask_send(screen: Screen[Any], retrier: Retrier, task_id: str, attempt: int) -> None:
    from taskmon.service.resend import RetryError

    try:
        # importing the user's broker module may take a while: not on the UI's loop
        await asyncio.to_thread(lambda: retrier.broker)
        plan = await retrier.plan(task_id, attempt)
    except RetryError as exc:
        screen.notify(f"{exc}; nothing sent", title="cannot retry", severity="error", timeout=10)
        return
    except Exception as exc:
        screen.notify(f"{type(exc).__name__}: {exc}", title="cannot retry", severity="error")
        return
    if plan.refused:
        screen.notify(
            f"cannot retry {task_id}: {plan.refused}; nothing sent",
            title="retry refused",
            severity="error",
            timeout=10,
        )
        return
    send = await screen.app.push_screen_wait(ConfirmRetryScreen(plan, retrier.broker_spec))
    if not send:
        screen.notify("retry cancelled: nothing sent", title="retry", timeout=4)
        return
    try:
        new_id = await retrier.send(plan)
    except Exception as exc:
        text = str(exc) if isinstance(exc, RetryError) else f"{type(exc).__name__}: {exc}"
        screen.notify(f"{text}; nothing sent", title="retry not sent", severity="error", timeout=10)
        return
    screen.notify(f"sent {plan.task_name} {task_id} again as {new_id}", title="retry sent")
