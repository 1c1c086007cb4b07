"""Serialisation, redaction and truncation of task parameters."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

from taskmon.domain.params import REDACTED, ParamsPolicy, to_jsonable


def test_json_values_pass_through_unchanged() -> None:
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": False}}
    assert to_jsonable(value) == value


def test_anything_not_json_becomes_its_repr() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<Thing 42>"

    out = to_jsonable({"when": date(2026, 11, 28), "amount": Decimal("1.5"), "t": Thing()})
    assert out == {
        "when": "datetime.date(2026, 11, 28)",
        "amount": "Decimal('1.5')",
        "t": "<Thing 42>",
    }
    json.dumps(out)


def test_non_string_keys_tuples_sets_nan_and_cycles_are_made_safe() -> None:
    loop: list[object] = [1]
    loop.append(loop)
    out = to_jsonable({1: (1, 2), "s": {3}, "nan": float("nan"), "inf": float("inf"), "loop": loop})
    assert out["1"] == [1, 2]
    assert out["s"] == [3]
    assert out["nan"] == "nan" and out["inf"] == "inf"
    assert out["loop"] == [1, "<cycle>"]
    json.dumps(out, allow_nan=False)


def test_a_broken_repr_does_not_raise() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("nope")

    assert to_jsonable(Broken()) == "<unrepresentable Broken: RuntimeError>"


def test_default_secret_keys_are_redacted_case_insensitively_at_any_depth() -> None:
    policy = ParamsPolicy()
    params = policy.snapshot(
        [{"db": {"PASSWORD": "p"}, "items": [{"x_api_key": "k", "ok": 1}]}],
        {
            "Authorization": "Bearer t",
            "refresh_token": "r",
            "session_cookie": "c",
            "aws_credentials": {"id": "i"},
            "passwd": "p2",
            "apikey": "a",
            "client_secret": "s",
            "user": "alice",
        },
    )
    assert params["args"][0]["db"]["PASSWORD"] == REDACTED
    assert params["args"][0]["items"][0] == {"x_api_key": REDACTED, "ok": 1}
    kwargs = params["kwargs"]
    for key in (
        "Authorization",
        "refresh_token",
        "session_cookie",
        "aws_credentials",
        "passwd",
        "apikey",
        "client_secret",
    ):
        assert kwargs[key] == REDACTED, key
    assert kwargs["user"] == "alice"


def test_the_secret_list_is_configurable() -> None:
    policy = ParamsPolicy(redact_keys=["ssn"])
    params = policy.snapshot([], {"user_ssn": "123", "password": "visible-now"})
    assert params["kwargs"] == {"user_ssn": REDACTED, "password": "visible-now"}


def test_a_large_value_is_truncated_with_a_visible_marker() -> None:
    policy = ParamsPolicy(max_value_bytes=100, max_row_bytes=10_000)
    params = policy.snapshot(["é" * 500, "small"], {})
    big, small = params["args"]
    assert small == "small"
    assert big.startswith("éé") and "…[truncated" in big
    assert len(big.encode()) <= 100


def test_a_large_row_is_bounded_as_a_whole() -> None:
    policy = ParamsPolicy(max_value_bytes=1000, max_row_bytes=2000)
    params = policy.snapshot([f"v{i}" * 100 for i in range(20)], {})
    assert list(params) == ["_truncated"]
    assert "…[truncated" in params["_truncated"]
    assert len(json.dumps(params).encode()) <= 2000


def test_a_large_nested_value_keeps_its_shape_where_it_can() -> None:
    policy = ParamsPolicy(max_value_bytes=200, max_row_bytes=10_000)
    params = policy.snapshot([], {"doc": {"title": "t", "body": "b" * 1000}})
    assert params["kwargs"]["doc"]["title"] == "t"
    assert "…[truncated" in params["kwargs"]["doc"]["body"]


def test_remembered_encodings_are_those_of_encode() -> None:
    policy = ParamsPolicy(max_value_bytes=64, max_row_bytes=64)
    plain = {"_retries": 0, "queue": "default"}
    secret = {"_retries": 0, "api_token": "s3cr3t"}
    large = {"note": "x" * 100}
    for _ in range(3):  # the first time encodes, the others may remember
        assert policy.encode(plain, remember=True) == policy.encode(plain)
        assert b"s3cr3t" not in policy.encode(secret, remember=True)
        assert policy.encode(secret, remember=True) == policy.encode(secret)
        assert policy.encode(large, remember=True) == policy.encode(large)
        assert len(policy.encode(large, remember=True)) <= 64
    # a nested value is never remembered, whatever its encoding
    nested = {"outer": {"password": "hunter2"}}
    assert b"hunter2" not in policy.encode(nested, remember=True)
    assert b"hunter2" not in policy.encode(nested, remember=True)
