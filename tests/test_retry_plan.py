"""Rebuilding a recorded call, and what a retry refuses, on real TaskIQ brokers and functions.

The recorder stores an argument passed by position under its parameter's name
(``taskmon.domain.params.ParamsPolicy.bind``); these check that the call rebuilt from
what it stored is the call that was made, by binding both to the signature.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from typing import Any

import pytest
from helpers import attempt_row
from taskiq import InMemoryBroker
from taskiq.serializers import PickleSerializer

from taskmon.domain.params import CallSpec, ParamsPolicy, loads
from taskmon.service.resend import RetryError, make_plan, rebuild_call
from taskmon.store.schema import AttemptRow


def plain(user: str, size: int = 1, *, note: str = "") -> None: ...


def spread(marker: str, first: int, *rest: int, **extra: Any) -> None: ...


def only(a: int, b: int, /, c: int, *rest: int) -> None: ...


CALLS: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
    (plain, ("carol", 3), {"note": "x"}),
    (plain, ("carol",), {}),
    (plain, (), {"user": "carol", "size": 2}),
    (spread, ("m", 1, 2, 3), {"flag": True}),
    (spread, ("m", 1), {}),
    (only, (1, 2, 3, 4, 5), {}),
    (only, (1, 2), {"c": 3}),
]


@pytest.mark.parametrize(("func", "args", "kwargs"), CALLS)
def test_the_rebuilt_call_binds_like_the_original(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    # given a call stored as the worker stores it (names bound, then redacted and bounded)
    policy = ParamsPolicy()
    spec = CallSpec.of(func)
    assert spec is not None
    stored = loads(policy.encode(policy.bind(list(args), kwargs, spec)))
    # when it is rebuilt from the signature
    new_args, new_kwargs = rebuild_call(stored, func)
    # then it binds to the same arguments as the original call
    signature = inspect.signature(func)
    assert signature.bind(*new_args, **new_kwargs).arguments == (
        signature.bind(*args, **kwargs).arguments
    )


def test_a_call_recorded_without_a_signature_is_sent_as_recorded() -> None:
    assert rebuild_call({"args": ["a", 1], "kwargs": {"k": 2}}, None) == (["a", 1], {"k": 2})


@pytest.mark.parametrize(
    ("params", "func", "reason"),
    [
        ({"args": [], "kwargs": {"user": "c", "password": "[REDACTED]"}}, None,
         "kwargs.password was redacted"),
        ({"args": [{"token": "[REDACTED]"}], "kwargs": {}}, None, "args[0].token was redacted"),
        ({"args": [], "kwargs": {"user": "ab…[truncated 4096 bytes]"}}, plain,
         "kwargs.user was truncated"),
        ({"_truncated": '{"args": [], "kw…[truncated 9 bytes]'}, plain, "were truncated"),
        (None, plain, "no parameters were recorded"),
        ({"args": [], "kwargs": {"gone": 1}}, plain, "no parameter 'gone' any more"),
        ({"args": [2, 3], "kwargs": {"marker": "m"}}, spread, "'first' was not recorded"),
    ],
)  # fmt: skip
def test_calls_that_cannot_be_rebuilt_faithfully_are_refused(
    params: Any, func: Any, reason: str
) -> None:
    with pytest.raises(RetryError, match=reason.replace("[", r"\[").replace("(", r"\(")):
        rebuild_call(params, func)


def row(task_name: str, status: str = "failed", labels: dict[str, Any] | None = None) -> AttemptRow:
    """A recorded attempt of `task_name`, called with ``user="carol"``."""
    now = datetime.now(UTC)
    return attempt_row(
        id=1, task_id="t1", task_name=task_name, status=status, attempt=0, worker="h:1",
        params={"args": [], "kwargs": {"user": "carol"}}, labels=labels or {},
        started_at=now, created_at=now, updated_at=now,
    )  # fmt: skip


def test_the_plan_carries_labels_but_not_the_retry_counter_and_links_the_original() -> None:
    broker = InMemoryBroker()
    broker.register_task(plain, task_name="app:plain")
    labels = {"tenant": "acme", "_retries": 2, "taskmon_retry_of": "t0", "timeout": 5}
    plan = make_plan(row("app:plain", labels=labels), broker)
    assert plan.refused is None
    assert plan.labels == {"tenant": "acme", "timeout": 5, "taskmon_retry_of": "t1"}
    assert plan.kwargs == {"user": "carol"}


@pytest.mark.parametrize(
    ("status", "labels", "reason"),
    [
        ("running", {}, "attempt 0 is still running"),
        ("failed", {"auth_token": "[REDACTED]"}, "label.auth_token was redacted"),
    ],
)
def test_running_attempts_and_redacted_labels_are_refused(
    status: str, labels: dict[str, Any], reason: str
) -> None:
    broker = InMemoryBroker()
    broker.register_task(plain, task_name="app:plain")
    plan = make_plan(row("app:plain", status, labels=labels), broker)
    assert plan.refused is not None and reason in plan.refused


def test_a_broker_without_the_task_or_with_a_non_json_serializer_is_refused() -> None:
    broker = InMemoryBroker()
    assert make_plan(row("app:plain"), broker).refused == (
        "the broker has no task named 'app:plain'"
    )
    pickled = InMemoryBroker().with_serializer(PickleSerializer())
    pickled.register_task(plain, task_name="app:plain")
    refused = make_plan(row("app:plain"), pickled).refused
    assert refused is not None and "PickleSerializer" in refused
