"""`R`: send the selected attempt's task again, after asking, through the user's broker.

The key works on a history row and in the detail screen; with rows marked
(`m`) in the history it sends every marked attempt's task again after one
question that names them all. Planning, the question and sending run in a
worker of the screen the key was pressed on; every outcome is said in a
notification with its words (sent, cancelled, refused and why), never by
colour alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from taskmon.domain.display import status_label

if TYPE_CHECKING:
    from taskmon.service.resend import Retrier, RetryPlan
    from taskmon.service.rows import AttemptRow

__all__ = [
    "HOW_TO_ENABLE",
    "ConfirmRetryManyScreen",
    "ConfirmRetryScreen",
    "retry_attempt",
    "retry_attempts",
]

NOTICE_LINES = 8
"""A notification about many retries names this many of them, then counts the rest."""

HOW_TO_ENABLE = (
    "R sends a task again through your broker: start the TUI with "
    "--broker module:variable (as for `taskiq worker`), or set TASKMON_BROKER "
    "or `broker` in the config file."
)


class RetryQuestion(ModalScreen[bool]):
    """The dialog both retry questions share: its frame, and `y`/`n`/`esc`."""

    DEFAULT_CSS = """
    RetryQuestion {
        align: center middle;
    }
    RetryQuestion > Vertical {
        width: 76;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: thick $warning;
        padding: 0 1;
        background: $surface;
    }
    RetryQuestion #retry-keys {
        margin-top: 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Send"),
        Binding("n", "answer(False)", "Cancel"),
        Binding("escape", "answer(False)", "Cancel", show=False),
    ]

    def action_answer(self, send: bool) -> None:
        self.dismiss(send)


class ConfirmRetryScreen(RetryQuestion):
    """Asks whether to send one planned retry; dismissed with True to send it.

    | Key | Description |
    | :- | :- |
    | y | Send it. |
    | n, escape | Cancel: nothing is sent. |
    """

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


def retry_attempt(screen: Screen[Any], row: AttemptRow | None) -> None:
    """Retry the attempt `row` from `screen`: plan, ask, send; or say why not.

    Without a broker configured (the app's ``retrier`` is None), says how to
    enable it.
    """
    if row is None:
        screen.notify("no attempt selected", title="retry", severity="warning")
        return
    _start(screen, lambda retrier: _plan_ask_send(screen, retrier, row["task_id"], row["attempt"]))


def _start(screen: Screen[Any], work: Callable[[Retrier], Coroutine[Any, Any, None]]) -> None:
    """Run `work` with the app's retrier in a worker of `screen`, or say how to enable retry."""
    retrier: Retrier | None = getattr(screen.app, "retrier", None)
    if retrier is None:
        screen.notify(HOW_TO_ENABLE, title="retry is off", severity="warning", timeout=10)
        return
    screen.run_worker(work(retrier), group="retry", exclusive=True, exit_on_error=False)


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
        text = _error_text(exc)
        screen.notify(f"{text}; nothing sent", title="retry not sent", severity="error", timeout=10)
        return
    screen.notify(f"sent {plan.task_name} {task_id} again as {new_id}", title="retry sent")


class ConfirmRetryManyScreen(RetryQuestion):
    """Asks once whether to send every planned retry of the marked rows; True sends them.

    It says how many and names each task; those that cannot be sent are
    listed with why, and are not sent either way.

    | Key | Description |
    | :- | :- |
    | y | Send them all. |
    | n, escape | Cancel: nothing is sent. |
    """

    DEFAULT_CSS = """
    ConfirmRetryManyScreen #retry-list {
        height: auto;
        max-height: 14;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("y", "answer(True)", "Send all")]

    def __init__(
        self,
        plans: Sequence[RetryPlan],
        refused: Sequence[tuple[str, str, str]],
        broker_spec: str,
    ) -> None:
        super().__init__()
        self.plans = list(plans)
        self.refused = list(refused)
        """``(task name, task id, why)`` of the marked attempts that cannot be sent."""
        self.broker_spec = broker_spec

    @property
    def title_text(self) -> str:
        n = len(self.plans)
        return f"Send {n} task{'' if n == 1 else 's'} again?"

    def compose(self) -> ComposeResult:
        with Vertical(id="retry-dialog") as dialog:
            dialog.border_title = self.title_text
            with VerticalScroll(id="retry-list"):
                yield Static(self._summary(), id="retry-summary")
            yield Static(
                Text.assemble(("y", "bold"), f" send {len(self.plans)}   ", ("n", "bold"), " / ",
                              ("esc", "bold"), " cancel: nothing is sent"),
                id="retry-keys",
            )  # fmt: skip

    def _summary(self) -> Group:
        n = len(self.plans)
        head = Text(
            f"{n} marked attempt{'' if n == 1 else 's'} sent again via {self.broker_spec},"
            " each as a new task labelled taskmon_retry_of:"
        )
        sent = Table.grid(padding=(0, 2))
        sent.add_column(style="bold", no_wrap=True, max_width=28)
        sent.add_column(overflow="fold")
        for plan in self.plans:
            note = f" · already retried as {', '.join(plan.retried_as)}" if plan.retried_as else ""
            sent.add_row(
                plan.task_name,
                f"{plan.task_id} · attempt {plan.attempt} · {status_label(plan.status)}{note}",
            )
        parts: list[Text | Table] = [head, sent]
        if self.refused:
            parts.append(Text(f"not sent ({len(self.refused)}):", style="bold"))
            refused = Table.grid(padding=(0, 2))
            refused.add_column(no_wrap=True, max_width=28)
            refused.add_column(overflow="fold")
            for task, task_id, why in self.refused:
                refused.add_row(task, f"{task_id}: {why}")
            parts.append(refused)
        return Group(*parts)


def retry_attempts(
    screen: Screen[Any], rows: Sequence[AttemptRow], *, on_sent: Callable[[], None]
) -> None:
    """Retry every attempt of `rows` from `screen`: plan each, ask once, send; or say why not.

    `on_sent` runs once the retries were sent (some may have failed; the
    notification says which). Without a broker configured, says how to enable it.
    """
    if not rows:
        screen.notify("no attempt marked", title="retry", severity="warning")
        return
    marked = list(rows)
    _start(screen, lambda retrier: _plan_ask_send_many(screen, retrier, marked, on_sent))


def _name(task_name: object, task_id: object) -> str:
    return f"{task_name} {task_id}"


def _error_text(exc: BaseException) -> str:
    from taskmon.service.resend import RetryError

    return str(exc) if isinstance(exc, RetryError) else f"{type(exc).__name__}: {exc}"


def _lines(lines: Sequence[str]) -> str:
    shown = list(lines[:NOTICE_LINES])
    if len(lines) > NOTICE_LINES:
        shown.append(f"… and {len(lines) - NOTICE_LINES} more")
    return "\n".join(shown)


async def _plan_ask_send_many(
    screen: Screen[Any], retrier: Retrier, rows: list[AttemptRow], on_sent: Callable[[], None]
) -> None:
    from taskmon.service.resend import RetryError

    keys = [(str(row["task_id"]), int(row["attempt"])) for row in rows]
    try:
        await asyncio.to_thread(lambda: retrier.broker)
        planned = await retrier.plan_many(keys)
    except Exception as exc:
        text = _error_text(exc)
        screen.notify(f"{text}; nothing sent", title="cannot retry", severity="error", timeout=10)
        return
    plans: list[RetryPlan] = []
    refused: list[tuple[str, str, str]] = []
    for row, plan in zip(rows, planned, strict=True):
        if isinstance(plan, RetryError):
            refused.append((str(row["task_name"]), str(row["task_id"]), str(plan)))
        elif plan.refused is not None:
            refused.append((plan.task_name, plan.task_id, plan.refused))
        else:
            plans.append(plan)
    if not plans:
        screen.notify(
            _lines([f"cannot retry {_name(t, i)}: {why}" for t, i, why in refused])
            + "\nnothing sent",
            title="retry refused",
            severity="error",
            timeout=10,
        )
        return
    send = await screen.app.push_screen_wait(
        ConfirmRetryManyScreen(plans, refused, retrier.broker_spec)
    )
    if not send:
        screen.notify("retry cancelled: nothing sent", title="retry", timeout=4)
        return
    try:
        results = await retrier.send_many(plans)
    except Exception as exc:
        text = _error_text(exc)
        screen.notify(f"{text}; nothing sent", title="retry not sent", severity="error", timeout=10)
        return
    on_sent()
    sent: list[str] = []
    failed = [f"not sent {_name(t, i)}: {why}" for t, i, why in refused]
    for plan, result in zip(plans, results, strict=True):
        if isinstance(result, str):
            sent.append(f"sent {_name(plan.task_name, plan.task_id)} again as {result}")
        else:
            failed.append(f"not sent {_name(plan.task_name, plan.task_id)}: {_error_text(result)}")
    screen.notify(
        _lines(sent + failed),
        title=f"retry: {len(sent)} sent, {len(failed)} not sent",
        severity="warning" if failed else "information",
        timeout=10 if failed else 6,
    )
