"""Re-sending a recorded task through the user's own broker, as a new task linked to it.

A retry is the same call again: the task registered on the broker under the
recorded name, with the recorded arguments, as a new task (a new task id)
whose label ``taskmon_retry_of`` names the original. Its worker records that
label, which is how "retried as" is found later (:mod:`taskmon.store.retry_links`).

Only a faithful call is sent. The recorder stores parameters redacted and
bounded (``taskmon.domain.params``), with arguments passed by position stored under
their parameter names; so a retry is refused, and nothing sent, when a
recorded value was redacted or truncated, when the call cannot be rebuilt
from the task's signature, or when the broker does not carry arguments as
JSON (other values were recorded as their ``repr``).

No textual, typer or rich here: the CLI and the TUI both call this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskmon.domain.params import REDACTED, TRUNCATED_MARK
from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S
from taskmon.store.retry_links import RETRY_LABEL, fetch_retried_as
from taskmon.worker.imports import SpecError, import_object

if TYPE_CHECKING:
    import asyncpg
    from taskiq import AsyncBroker

    from taskmon.domain.filters import TaskFilter
    from taskmon.store.schema import AttemptRow

__all__ = [
    "RETRY_LABEL",
    "BrokerError",
    "Retrier",
    "RetryError",
    "RetryPlan",
    "check_task_id",
    "load_broker",
    "make_plan",
    "plan_matching",
    "plan_task",
    "rebuild_call",
    "resolve_broker_spec",
    "send",
    "started",
]

SEND_TIMEOUT_S = 10.0
"""How long sending one task may take before the broker counts as unreachable."""
MAX_TASK_ID = 255
# labels the retry does not carry over: a retry middleware's attempt counter
# (the retry starts afresh) and taskmon's own (stamped again, or replaced)
_NOT_CARRIED = ("_retries",)
_TRUNCATED = re.compile(re.escape(TRUNCATED_MARK).replace(r"\{n\}", r"\d+") + r"\Z")
_UNFINISHED = ("running", "pending")


class RetryError(Exception):
    """A retry that cannot be done; the message is one line for the user, nothing was sent."""


class BrokerError(RetryError):
    """The broker cannot be loaded, started or reached."""


# -- the broker --------------------------------------------------------------------------


def resolve_broker_spec(flag: str | None) -> str | None:
    """``--broker`` if given, else ``TASKMON_BROKER``, else ``broker`` in the config file.

    Raises:
        ConfigError: the config file is broken.
    """
    from taskmon.config import resolve_setting

    return resolve_setting(flag, "TASKMON_BROKER", "broker")


def load_broker(spec: str) -> AsyncBroker:
    """Import the broker `spec` names: ``module:variable``, the form ``taskiq worker`` takes.

    Raises:
        BrokerError: `spec` is malformed, the module cannot be imported, or the
            variable is missing or not a TaskIQ broker.
    """
    from taskiq import AsyncBroker

    try:
        broker: AsyncBroker = import_object(
            spec, what="broker", kind=AsyncBroker, kind_name="TaskIQ broker"
        )
    except SpecError as exc:
        raise BrokerError(str(exc)) from None
    return broker


@contextlib.asynccontextmanager
async def started(broker: AsyncBroker, timeout: float = SEND_TIMEOUT_S) -> AsyncIterator[None]:
    """The broker started as a client for the block, and shut down after it.

    Raises:
        BrokerError: it does not start within `timeout` seconds.
    """
    try:
        await asyncio.wait_for(broker.startup(), timeout)
    except TimeoutError:
        raise BrokerError(f"the broker did not start within {timeout:g} s") from None
    except Exception as exc:
        raise BrokerError(f"cannot start the broker: {_cause(exc)}") from exc
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.shutdown(), timeout)


def _cause(exc: BaseException) -> str:
    inner = exc.__cause__ or exc
    text = " ".join(str(inner).split())
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


def _json_serializer(broker: AsyncBroker) -> bool:
    from taskiq.serializers import JSONSerializer

    kinds: tuple[type[Any], ...] = (JSONSerializer,)
    with contextlib.suppress(ImportError):
        from taskiq.serializers import ORJSONSerializer

        kinds = (*kinds, ORJSONSerializer)
    return isinstance(broker.serializer, kinds)


# -- the call -----------------------------------------------------------------------------


def _marked(value: Any, path: str) -> str | None:
    """Where `value` holds a redacted or truncated value: ``kwargs.password was redacted``."""
    if isinstance(value, str):
        if value == REDACTED:
            return f"{path} was redacted"
        if _TRUNCATED.search(value):
            return f"{path} was truncated"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _marked(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _marked(item, f"{path}[{i}]")
            if found:
                return found
    return None


def rebuild_call(params: Any, func: Callable[..., Any] | None) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments of the recorded call `params`.

    The recorder stores an argument passed by position under its parameter's
    name (in ``kwargs``); only positional-only arguments and ``*args`` stay in
    ``args``. Passing the named ones by keyword is the same call, except where
    ``*args`` follow them: then they are put back in their positions.

    Args:
        params: the stored ``{"args": [...], "kwargs": {...}}``.
        func: the task's function, whose signature tells the positions (None:
            unknown, and the recorder could not bind names either).

    Raises:
        RetryError: a value was redacted or truncated, or the call cannot be
            rebuilt faithfully from the signature.
    """
    if params is None:
        raise RetryError("no parameters were recorded for it")
    if isinstance(params, dict) and "_truncated" in params:
        raise RetryError("its recorded parameters were truncated (over the row size bound)")
    if (
        not isinstance(params, dict)
        or set(params) - {"args", "kwargs"}
        or not isinstance(params.get("args", []), list)
        or not isinstance(params.get("kwargs", {}), dict)
    ):
        raise RetryError("its recorded parameters are not {args, kwargs}")
    args: list[Any] = list(params.get("args") or [])
    kwargs: dict[str, Any] = dict(params.get("kwargs") or {})
    marked = _marked(args, "args") or _marked(kwargs, "kwargs")
    if marked:
        raise RetryError(f"its recorded parameters are not the ones it was called with: {marked}")
    try:
        signature = inspect.signature(func) if func is not None else None
    except (TypeError, ValueError):
        signature = None
    if signature is None:
        return args, kwargs  # recorded as passed: nothing was bound to names
    kinds = inspect.Parameter
    parameters = list(signature.parameters.values())
    if not any(p.kind is kinds.VAR_KEYWORD for p in parameters):
        names = {
            p.name
            for p in parameters
            if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        }
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            raise RetryError(
                f"the task has no parameter {unknown[0]!r} any more (its signature changed)"
            )
    # jsonb keeps keys in its own order: put them back in the signature's
    order = {p.name: i for i, p in enumerate(parameters)}
    kwargs = dict(sorted(kwargs.items(), key=lambda kv: order.get(kv[0], len(order))))
    positional_only = sum(1 for p in parameters if p.kind is kinds.POSITIONAL_ONLY)
    if len(args) <= positional_only or not any(p.kind is kinds.VAR_POSITIONAL for p in parameters):
        return args, kwargs
    # *args were passed: every positional parameter before them was passed by position
    named = [p.name for p in parameters if p.kind is kinds.POSITIONAL_OR_KEYWORD]
    present = [n for n in named if n in kwargs]
    if not present:
        return args, kwargs  # recorded as passed, unbound
    if present != named:
        missing = next(n for n in named if n not in kwargs)
        raise RetryError(
            f"its *args cannot be put back in place: parameter {missing!r} was not recorded"
        )
    rebuilt = args[:positional_only] + [kwargs.pop(n) for n in named] + args[positional_only:]
    return rebuilt, kwargs


# -- plans --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPlan:
    """What a retry of one recorded attempt would send, or why it cannot.

    Attributes:
        task_id, attempt, task_name, status: the recorded attempt.
        args, kwargs: the call to send again.
        labels: labels to send on top of the task's own (the original's, and the link).
        retried_as: task ids of earlier retries of this task that a worker started.
        refused: why it cannot be sent (None: it can).
    """

    task_id: str
    attempt: int
    task_name: str
    status: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    retried_as: tuple[str, ...] = ()
    refused: str | None = None

    def call_text(self, limit: int = 120) -> str:
        """The call as it will be sent: ``("a", 2, note="x")``, cut at about `limit` characters."""
        parts = [json.dumps(a, ensure_ascii=False, default=str) for a in self.args]
        parts += [
            f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in self.kwargs.items()
        ]
        text = f"({', '.join(parts)})"
        return text if len(text) <= limit else text[: limit - 2] + "…)"

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-safe data (``taskmon retry --format json``)."""
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "attempt": self.attempt,
            "status": self.status,
            "args": self.args,
            "kwargs": self.kwargs,
            "retried_as": list(self.retried_as),
            "refused": self.refused,
        }


def make_plan(row: AttemptRow, broker: AsyncBroker, retried_as: Iterable[str] = ()) -> RetryPlan:
    """The retry of the recorded attempt `row` (a history row) through `broker`."""
    base = RetryPlan(
        task_id=str(row["task_id"]),
        attempt=int(row["attempt"]),
        task_name=str(row["task_name"]),
        status=str(row["status"]),
        retried_as=tuple(retried_as),
    )
    try:
        return _complete(base, row, broker)
    except RetryError as exc:
        return RetryPlan(**{**base.__dict__, "refused": str(exc)})


def _complete(plan: RetryPlan, row: AttemptRow, broker: AsyncBroker) -> RetryPlan:
    if plan.status in _UNFINISHED:
        raise RetryError(f"attempt {plan.attempt} is still {plan.status}")
    task = broker.find_task(plan.task_name)
    if task is None:
        raise RetryError(f"the broker has no task named {plan.task_name!r}")
    if not _json_serializer(broker):
        raise RetryError(
            f"the broker serializes with {type(broker.serializer).__name__}: arguments that "
            "are not JSON were recorded as their repr and cannot be sent again"
        )
    args, kwargs = rebuild_call(row.get("params"), getattr(task, "original_func", None))
    stored = row.get("labels") or {}
    if not isinstance(stored, dict):
        stored = {}
    marked = _marked(stored, "label")
    if marked:
        raise RetryError(f"its recorded labels are not the ones it was sent with: {marked}")
    labels = {
        k: v for k, v in stored.items() if k not in _NOT_CARRIED and not k.startswith("taskmon_")
    }
    labels[RETRY_LABEL] = plan.task_id
    return RetryPlan(**{**plan.__dict__, "args": args, "kwargs": kwargs, "labels": labels})


def check_task_id(task_id: str) -> str:
    """`task_id` stripped, or :class:`RetryError` for text that cannot be a task id."""
    text = task_id.strip()
    if not text or len(text) > MAX_TASK_ID or not text.isprintable():
        shown = text[:40] + ("…" if len(text) > 40 else "")
        raise RetryError(f"{shown!r} is not a task id")
    return text


async def plan_task(
    conn: asyncpg.Connection[Any],
    broker: AsyncBroker,
    task_id: str,
    attempt: int | None = None,
) -> RetryPlan:
    """The retry of one recorded task: attempt `attempt`, else its latest.

    Raises:
        RetryError: `task_id` is not a task id, no such task (or attempt) is recorded.
    """
    from taskmon.store.history import fetch_attempts

    task_id = check_task_id(task_id)
    attempts = await fetch_attempts(conn, task_id)
    if not attempts:
        raise RetryError(f"no task {task_id} is recorded")
    if attempt is None:
        row = attempts[-1]
    else:
        matches = [a for a in attempts if a["attempt"] == attempt]
        if not matches:
            known = ", ".join(str(a["attempt"]) for a in attempts)
            raise RetryError(f"task {task_id} has no attempt {attempt} (recorded: {known})")
        row = matches[-1]
    links = await fetch_retried_as(conn, [task_id], since=attempts[0]["created_at"])
    return make_plan(row, broker, links.get(task_id, ()))


async def plan_matching(
    conn: asyncpg.Connection[Any],
    broker: AsyncBroker,
    flt: TaskFilter,
    *,
    limit: int,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
) -> list[RetryPlan]:
    """The retries of the tasks with attempts matching `flt`, newest first, at most `limit`.

    Each task is retried once, with its newest matching attempt.
    """
    from taskmon.store.history import fetch_history

    rows: dict[str, AttemptRow] = {}
    after: str | None = None
    while len(rows) < limit:
        page = await fetch_history(
            conn, flt, limit=min(500, 2 * limit), after=after, lost_after_s=lost_after_s
        )
        for row in page.rows:
            rows.setdefault(row["task_id"], row)
        if page.next_cursor is None:
            break
        after = page.next_cursor
    chosen = list(rows.values())[:limit]
    if not chosen:
        return []
    links = await fetch_retried_as(
        conn, [r["task_id"] for r in chosen], since=min(r["created_at"] for r in chosen)
    )
    return [make_plan(r, broker, links.get(r["task_id"], ())) for r in chosen]


# -- sending ------------------------------------------------------------------------------


async def send(broker: AsyncBroker, plan: RetryPlan, timeout: float = SEND_TIMEOUT_S) -> str:
    """Send `plan` through `broker` (started, see :func:`started`); the new task's id.

    Raises:
        RetryError: the plan was refused, or the task is not on the broker.
        BrokerError: the broker did not take the message.
    """
    from taskiq.exceptions import SendTaskError

    if plan.refused is not None:
        raise RetryError(plan.refused)
    task = broker.find_task(plan.task_name)
    if task is None:
        raise RetryError(f"the broker has no task named {plan.task_name!r}")
    kicker = task.kicker()
    kicker.labels.update(plan.labels)
    try:
        sent = await asyncio.wait_for(kicker.kiq(*plan.args, **plan.kwargs), timeout)
    except TimeoutError:
        raise BrokerError(f"the broker did not take the task within {timeout:g} s") from None
    except SendTaskError as exc:
        raise BrokerError(f"cannot reach the broker: {_cause(exc)}") from exc
    return str(sent.task_id)


class Retrier:
    """Retries for an app that has a database and a broker: plan, then send.

    The broker is imported when first needed and started for each send only.

    Args:
        broker_spec: ``module:variable``.
        dsn: the database the attempts are recorded in.
    """

    def __init__(self, broker_spec: str, dsn: str) -> None:
        self.broker_spec = broker_spec
        self.dsn = dsn
        self._broker: AsyncBroker | None = None

    @property
    def broker(self) -> AsyncBroker:
        """The broker (imported on first use).

        Raises:
            BrokerError: it cannot be imported.
        """
        if self._broker is None:
            self._broker = load_broker(self.broker_spec)
        return self._broker

    async def plan(self, task_id: str, attempt: int | None = None) -> RetryPlan:
        """See :func:`plan_task`."""
        from taskmon.store.db import connect

        broker = self.broker
        conn = await connect(self.dsn, timeout=5.0)
        try:
            return await plan_task(conn, broker, task_id, attempt)
        finally:
            await conn.close()

    async def plan_many(self, keys: Sequence[tuple[str, int]]) -> list[RetryPlan | RetryError]:
        """:meth:`plan` for each ``(task_id, attempt)`` of `keys` on one connection, in order.

        A key that cannot be planned (no such attempt recorded) gives its
        :class:`RetryError` in its place; the others are still planned.

        Raises:
            BrokerError: the broker cannot be imported.
        """
        from taskmon.store.db import connect

        broker = self.broker
        conn = await connect(self.dsn, timeout=5.0)
        try:
            plans: list[RetryPlan | RetryError] = []
            for task_id, attempt in keys:
                try:
                    plans.append(await plan_task(conn, broker, task_id, attempt))
                except RetryError as exc:
                    plans.append(exc)
            return plans
        finally:
            await conn.close()

    async def retried_as(self, task_ids: Sequence[str]) -> dict[str, list[str]]:
        """See :func:`taskmon.store.retry_links.fetch_retried_as`."""
        from taskmon.store.db import connect

        conn = await connect(self.dsn, timeout=5.0)
        try:
            return await fetch_retried_as(conn, task_ids)
        finally:
            await conn.close()

    async def send(self, plan: RetryPlan) -> str:
        """Start the broker, send `plan` (see :func:`send`), stop the broker."""
        broker = self.broker
        async with started(broker):
            return await send(broker, plan)

    async def send_many(self, plans: Sequence[RetryPlan]) -> list[str | Exception]:
        """Start the broker once, send each of `plans` in order, stop the broker.

        Each plan gets the new task's id, or the exception that kept it from
        being sent (a refused plan, a broker that did not take it); one failure
        does not stop the others.

        Raises:
            BrokerError: the broker cannot be imported or started: nothing was sent.
        """
        broker = self.broker
        results: list[str | Exception] = []
        async with started(broker):
            for plan in plans:
                try:
                    results.append(await send(broker, plan))
                except Exception as exc:
                    results.append(exc)
        return results
