"""Snapshotting task parameters: JSON with a fallback, secrets redacted, sizes bounded.

Runs inside the worker's hooks, so it must be cheap and must never raise on
odd input: anything that is not JSON becomes its ``repr``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "DEFAULT_MAX_ROW_BYTES",
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_REDACT_KEYS",
    "REDACTED",
    "CallSpec",
    "ParamsPolicy",
    "capture_call",
    "dumps",
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
_CONTAINERS = (dict, list)
_PLAIN = frozenset({str, int, float, bool, type(None)})
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


def _orjson_default(obj: object) -> Any:
    if isinstance(obj, set | frozenset):
        return list(obj)
    return _safe_repr(obj)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of a JSON-safe value, never failing on odd input.

    orjson is fast but refuses integers beyond 64 bits, non-string keys and very
    deep nesting; those rare values take the slow, general path.
    """
    try:
        return orjson.dumps(value, default=_orjson_default)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(to_jsonable(value), ensure_ascii=False, separators=(",", ":")).encode()


def loads(data: bytes) -> Any:
    """Decode what :func:`dumps` or :func:`capture_call` wrote."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # an integer beyond 64 bits, say
        return json.loads(data)


def _kept(data: bytes) -> bytes:
    """`data` in a block of its own size, for bytes kept a while (until the writer's batch).

    orjson writes into a buffer of 1 KiB or more and shrinks it in place: kept by
    the hundreds, such leftovers cut the heap into pieces no later buffer fits, and
    each new one is carved from fresh memory (a call of a few hundred bytes then
    costs 3 to 5 times as much to encode). An exact copy costs far less than that.
    """
    return memoryview(data).tobytes()


def capture_call(
    args: list[Any],
    kwargs: dict[str, Any],
    spec: CallSpec | None = None,
    policy: ParamsPolicy | None = None,
) -> bytes:
    """A call's arguments in stored shape, as JSON, taken inside a hook.

    Encoding is the cheapest complete copy: the task may mutate what it was
    given, and TaskIQ replaces the arguments by their annotated types before it
    runs. Arguments passed by position are stored under their names when `spec`
    knows them (see :meth:`ParamsPolicy.bind`); redaction of keys and size bounds
    are left to the writer (:meth:`ParamsPolicy.encode_captured`).
    """
    if spec is None or not args:
        value: dict[str, Any] = {"args": args, "kwargs": kwargs}
    elif not kwargs and not spec.positional_only and len(args) <= len(spec.names):
        # the usual call, all by position (ParamsPolicy.bind's first case, inlined)
        value = {"args": [], "kwargs": dict(zip(spec.names, args, strict=False))}
    else:
        value = (policy or _DEFAULT_POLICY).bind(args, kwargs, spec)
    try:
        data = orjson.dumps(value, default=_orjson_default)
    except (TypeError, orjson.JSONEncodeError):
        data = dumps(value)
    return _kept(data)


def _encoded_size(value: Any) -> int:
    return len(dumps(value))


@dataclass(frozen=True, slots=True)
class CallSpec:
    """How a task's positional arguments map to its parameter names.

    Attributes:
        names: the positional parameters, in order.
        positional_only: how many of them cannot be passed by keyword.
    """

    names: tuple[str, ...]
    positional_only: int = 0

    @classmethod
    def of(cls, func: Callable[..., Any]) -> CallSpec | None:
        """The spec of `func`, or None when it has no signature Python can read."""
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):
            return None
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = [p for p in signature.parameters.values() if p.kind in kinds]
        only = sum(1 for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY)
        return cls(tuple(p.name for p in params), only)


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
        self._words = tuple(dict.fromkeys(k.lower() for k in redact_keys if k))
        self.max_value_bytes = max_value_bytes
        self.max_row_bytes = max_row_bytes
        self._verdicts: dict[str, bool] = {}
        self._plain: dict[bytes, bytes] = {}
        """Encodings of flat mappings known to hold no secret and to fit (see :meth:`encode`)."""

    def is_secret(self, key: str) -> bool:
        secret = self._verdicts.get(key)
        if secret is None:
            secret = self._mentions_secret(key)
            if len(self._verdicts) < 4096:  # task code uses few distinct keys
                self._verdicts[key] = secret
        return secret

    def _mentions_secret(self, text: str) -> bool:
        # substring tests on the lowered text: far cheaper than one case-insensitive
        # regex over it, and a key that holds a word holds it in any text holding the key
        low = text.lower()
        # a plain loop: any() over a generator costs ~30 ns more per word, on every attempt
        for word in self._words:  # noqa: SIM110
            if word in low:
                return True
        return False

    def redact(self, value: Any) -> Any:
        """Replace the values of secret-looking keys, in nested mappings and lists too."""
        if isinstance(value, dict):
            return {
                k: REDACTED
                if self.is_secret(k)
                else (self.redact(v) if isinstance(v, _CONTAINERS) else v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.redact(v) if isinstance(v, _CONTAINERS) else v for v in value]
        return value

    def _redact_in_place(self, value: Any) -> None:
        """:meth:`redact` for a value nobody else holds (freshly decoded): no copies."""
        verdicts = self._verdicts
        if type(value) is dict:
            for k, v in value.items():
                secret = verdicts.get(k)
                if secret is None:
                    secret = self.is_secret(k)
                if secret:
                    value[k] = REDACTED
                elif type(v) is dict or type(v) is list:
                    self._redact_in_place(v)
        elif type(value) is list:
            for v in value:
                if type(v) is dict or type(v) is list:
                    self._redact_in_place(v)

    def _flat_secret(self, value: dict[str, Any]) -> bool | None:
        """Whether a mapping of plain values has a secret key; None when it nests."""
        verdicts = self._verdicts
        found = False
        for k, v in value.items():
            if type(v) not in _PLAIN or type(k) is not str:
                return None
            secret = verdicts.get(k)
            if secret is None:
                secret = self.is_secret(k)
            found = found or secret
        return found

    def _truncate(self, value: Any, limit: int) -> Any:
        size = _encoded_size(value)
        if size <= limit:
            return value
        if isinstance(value, dict):
            return {k: self._truncate(v, limit) for k, v in value.items()}
        if isinstance(value, list) and len(value) <= 64:
            return [self._truncate(v, limit) for v in value]
        text = value if isinstance(value, str) else dumps(value).decode()
        return _cut(text, limit)

    def snapshot(self, args: Iterable[object], kwargs: Mapping[str, object]) -> dict[str, Any]:
        """The stored form of a call's arguments: ``{"args": [...], "kwargs": {...}}``."""
        params = {"args": to_jsonable(list(args)), "kwargs": to_jsonable(dict(kwargs))}
        return self.bound(self.redact(params))

    def bind(self, args: list[Any], kwargs: dict[str, Any], spec: CallSpec) -> dict[str, Any]:
        """``{"args": [...], "kwargs": {...}}`` with positional arguments under their names.

        An argument passed by position goes into ``kwargs`` under its parameter's
        name, so it is redacted by that name and shows it; only what has no name
        (``*args``) or cannot be passed by keyword stays in ``args`` (a secret
        positional-only argument is redacted there, by its name).
        """
        names = spec.names
        if not kwargs and not spec.positional_only and len(args) <= len(names):
            # the usual call, all by position: one C-level pass
            return {"args": [], "kwargs": dict(zip(names, args, strict=False))}
        named: dict[str, Any] = {}
        rest: list[Any] = []
        for i, value in enumerate(args):
            name = spec.names[i] if i < len(spec.names) else None
            if name is None or name in kwargs:
                rest.append(value)  # *args, or a call TaskIQ will refuse anyway
            elif i < spec.positional_only:
                rest.append(REDACTED if self.is_secret(name) else value)
            else:
                named[name] = value
        return {"args": rest, "kwargs": {**named, **kwargs} if named else kwargs}

    def encode_captured(self, raw: bytes) -> bytes:
        """Stored JSON of arguments captured by :func:`capture_call`: redacted and bounded.

        The common case only reads the bytes: without any secret-looking word
        anywhere, and within the bounds, the captured JSON is stored as it is.
        """
        # _mentions_secret_bytes, written out: this runs once per attempt
        low = raw.decode(errors="replace").lower()
        for word in self._words:
            if word in low:
                break
        else:
            if len(raw) <= min(self.max_value_bytes, self.max_row_bytes):
                return raw
            return dumps(self.bound(loads(raw)))
        value = loads(raw)
        self._redact_in_place(value)
        data = dumps(value)
        if len(data) > min(self.max_value_bytes, self.max_row_bytes):
            data = dumps(self.bound(value))
        return data

    def _mentions_secret_bytes(self, data: bytes) -> bool:
        # decoding first: substring search is faster on str than on bytes
        return self._mentions_secret(data.decode(errors="replace"))

    def encode(self, value: dict[str, Any], *, remember: bool = False) -> bytes:
        """Compact JSON of a JSON-safe mapping, redacted and bounded.

        The common cases cost one encoding and a look at the keys (a mapping of
        plain values, such as labels) or one search of the text (a text without
        any secret-looking word anywhere has no secret key to redact).

        With `remember`, for values that repeat (labels): a flat mapping of plain
        values found to hold no secret key and to fit the bounds is stored as it
        is encoded, and the same encoding met again is returned at once. That is
        exact: the verdict depends only on the keys and the sizes, which the
        encoding gives; a value whose encoding merely equals a remembered one
        (say, an object shown as its text) has the same keys, so the same verdict.
        """
        data = dumps(value)
        if remember:
            known = self._plain.get(data)
            if known is not None:
                return known
        flat = self._flat_secret(value)
        secret = self._mentions_secret_bytes(data) if flat is None else flat
        if secret:
            value = self.redact(value)
            data = dumps(value)
        if len(data) > min(self.max_value_bytes, self.max_row_bytes):
            data = dumps(self.bound(value))
        elif remember and flat is False and len(data) <= 1024 and len(self._plain) < 1024:
            self._plain[data] = data
        return data

    def bound(self, params: dict[str, Any]) -> dict[str, Any]:
        """Apply the per-value and per-row size bounds to an already redacted object."""
        if _encoded_size(params) <= min(self.max_value_bytes, self.max_row_bytes):
            return params
        params = self._truncate(params, self.max_value_bytes)
        if _encoded_size(params) > self.max_row_bytes:
            text = dumps(params).decode()
            params = {"_truncated": _cut(text, self.max_row_bytes - 64)}
        return params


_DEFAULT_POLICY = ParamsPolicy()


def _cut(text: str, limit: int) -> str:
    """Cut `text` to about `limit` UTF-8 bytes and say how much was dropped."""
    data = text.encode()
    if len(data) <= limit:
        return text
    keep = max(limit - 40, 0)
    head = data[:keep].decode(errors="ignore")
    return head + TRUNCATED_MARK.format(n=len(data) - len(head.encode()))
