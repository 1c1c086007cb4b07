"""Snapshotting task parameters: JSON with a fallback, secrets redacted, sizes bounded.

Runs inside the worker's hooks, so it must be cheap and must never raise on
odd input: anything that is not JSON becomes its ``repr``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_MAX_ROW_BYTES",
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_REDACT_KEYS",
    "REDACTED",
    "ParamsPolicy",
    "to_jsonable",
]

DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "credential",
)
DEFAULT_MAX_VALUE_BYTES = 4 * 1024
DEFAULT_MAX_ROW_BYTES = 16 * 1024
REDACTED = "[REDACTED]"
TRUNCATED_MARK = "…[truncated {n} bytes]"
_MAX_DEPTH = 20
_MAX_REPR = 64 * 1024  # a repr is cut before it is measured, so a huge object costs little


def _safe_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the task
        text = f"<unrepresentable {type(obj).__name__}: {type(exc).__name__}>"
    return text[:_MAX_REPR]


def to_jsonable(obj: object, _depth: int = 0, _seen: set[int] | None = None) -> Any:
    """Return a JSON-safe copy of `obj`; whatever JSON cannot hold becomes its repr."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        # NaN and infinities are not JSON (PostgreSQL's jsonb refuses them)
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else repr(obj)
    if _depth >= _MAX_DEPTH:
        return _safe_repr(obj)
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return "<cycle>"
    if isinstance(obj, Mapping):
        seen.add(id(obj))
        out = {str(k): to_jsonable(v, _depth + 1, seen) for k, v in obj.items()}
        seen.discard(id(obj))
        return out
    if isinstance(obj, list | tuple | set | frozenset):
        seen.add(id(obj))
        items = [to_jsonable(v, _depth + 1, seen) for v in obj]
        seen.discard(id(obj))
        return items
    return _safe_repr(obj)


def _encoded_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


class ParamsPolicy:
    """How task arguments are turned into the `params` stored and published.

    Args:
        redact_keys: substrings; a mapping key containing any of them (any case)
            has its value replaced by ``[REDACTED]``, at any depth.
        max_value_bytes: a single value larger than this (as JSON) is stored
            truncated, with a visible marker.
        max_row_bytes: the whole params object is bounded by this.
    """

    def __init__(
        self,
        redact_keys: Iterable[str] = DEFAULT_REDACT_KEYS,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    ) -> None:
        keys = [k.lower() for k in redact_keys if k]
        self._pattern = (
            re.compile("|".join(re.escape(k) for k in keys), re.IGNORECASE) if keys else None
        )
        self.max_value_bytes = max_value_bytes
        self.max_row_bytes = max_row_bytes

    def is_secret(self, key: str) -> bool:
        return self._pattern is not None and self._pattern.search(key) is not None

    def redact(self, value: Any) -> Any:
        """Replace the values of secret-looking keys, in nested mappings and lists too."""
        if isinstance(value, dict):
            return {
                k: (REDACTED if self.is_secret(k) else self.redact(v)) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        return value

    def _truncate(self, value: Any, limit: int) -> Any:
        size = _encoded_size(value)
        if size <= limit:
            return value
        if isinstance(value, dict):
            return {k: self._truncate(v, limit) for k, v in value.items()}
        if isinstance(value, list) and len(value) <= 64:
            return [self._truncate(v, limit) for v in value]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return _cut(text, limit)

    def snapshot(self, args: Iterable[object], kwargs: Mapping[str, object]) -> dict[str, Any]:
        """The stored form of a call's arguments: ``{"args": [...], "kwargs": {...}}``."""
        params = {"args": to_jsonable(list(args)), "kwargs": to_jsonable(dict(kwargs))}
        return self.bound(self.redact(params))

    def bound(self, params: dict[str, Any]) -> dict[str, Any]:
        """Apply the per-value and per-row size bounds to an already redacted object."""
        # the common case, small arguments, costs one encoding (ASCII-escaped JSON is
        # never shorter than its UTF-8 form, so this size is a safe upper bound)
        if len(json.dumps(params)) <= min(self.max_value_bytes, self.max_row_bytes):
            return params
        params = self._truncate(params, self.max_value_bytes)
        if _encoded_size(params) > self.max_row_bytes:
            text = json.dumps(params, ensure_ascii=False)
            params = {"_truncated": _cut(text, self.max_row_bytes - 64)}
        return params


def _cut(text: str, limit: int) -> str:
    """Cut `text` to about `limit` UTF-8 bytes and say how much was dropped."""
    data = text.encode()
    if len(data) <= limit:
        return text
    keep = max(limit - 40, 0)
    head = data[:keep].decode(errors="ignore")
    return head + TRUNCATED_MARK.format(n=len(data) - len(head.encode()))
