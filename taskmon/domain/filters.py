"""One filter language for the CLI, the TUI and the live websocket.

A query such as ``status:failed,retrying task:extract* since:7d error:"timed out" boom``
parses into a :class:`TaskFilter`, which can then be

* rendered back to canonical text (:meth:`TaskFilter.to_query`),
* sent over the websocket (:meth:`TaskFilter.to_dict` / :meth:`TaskFilter.from_dict`),
* applied to a live event dict (:meth:`TaskFilter.matches`),
* compiled by the store to a parameterised SQL condition with the same meaning
  (:func:`taskmon.store.filter_sql.filter_sql`).

Standard library only (and the status rules of :mod:`taskmon.domain.statuses`, which
are too): this module is imported inside worker processes.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeGuard, TypeVar

from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S, STATUSES, is_stale

__all__ = [
    "ERROR_COLUMNS",
    "KEYS",
    "STATUSES",
    "WORD_COLUMNS",
    "FilterError",
    "TaskFilter",
    "contains_pattern",
    "parse",
    "parse_duration_ms",
    "parse_statuses",
    "parse_time",
    "parse_window",
    "task_like_patterns",
    "term_candidates",
    "term_for",
    "term_values",
]


# Query keys in the order used by error messages and by to_query().
_KEYS = (
    "status",
    "task",
    "since",
    "until",
    "error",
    "worker",
    "task_id",
    "min_duration",
    "max_duration",
    "attempt",
    "param",
    "label",
    "queue",
)
# Keys that hold one value: typing one twice is a mistake, not "the last one wins".
_SINGLE_KEYS = frozenset(("since", "until", "task_id", "min_duration", "max_duration", "attempt"))
KEYS: tuple[str, ...] = _KEYS
"""The query keys, in the order error messages list them."""
_CANONICAL_ORDER = (
    "status",
    "task",
    "worker",
    "error",
    "task_id",
    "since",
    "until",
    "min_duration",
    "max_duration",
    "attempt",
    "queue",
    "param",
    "label",
)
# Shown after "empty value" so the user sees what a value looks like.
_EXAMPLES = {
    "status": "failed,retrying",
    "task": "extract*",
    "since": "7d",
    "until": "2026-11-01",
    "error": '"timed out"',
    "worker": "host-1",
    "task_id": "3f2c",
    "min_duration": "500ms",
    "max_duration": "2s",
    "attempt": ">0",
    "param": "user.id=42",
    "label": "tenant=acme",
    "queue": "emails",
}
_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "=": operator.eq,
}
_ATTEMPT_OPS = tuple(_OPERATORS)
_INT4_MAX = 2**31 - 1  # `attempt` is a Postgres integer column

_WINDOW_HELP = "use 90s, 15m, 24h, 7d, 2w or 2026-11-01"
_DURATION_HELP = "use 500ms, 2s, 1.5s, 2m or a number of ms"
_ATTEMPT_HELP = "use >0, >=1, <3, <=2, =1 or 1"

# Only an identifier-shaped prefix makes `prefix:rest` a key; anything else
# (`app.tasks:extract`, `12:00`, `:x`) is a free word, so task names can be typed bare.
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_WINDOW_RE = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?"  # exponents so repr(float) parses back
_DURATION_RE = re.compile(rf"({_NUMBER})(ms|s|m|h)?")
_ATTEMPT_RE = re.compile(r"(>=|<=|>|<|=)?(\d+)")

_WINDOW_UNITS = {
    "ms": "milliseconds",
    "s": "seconds",
    "m": "minutes",
    "h": "hours",
    "d": "days",
    "w": "weeks",
}
_MS_PER_UNIT = {"ms": 1.0, "s": 1_000.0, "m": 60_000.0, "h": 3_600_000.0}

_T = TypeVar("_T")


class FilterError(ValueError):
    """A filter query or value that cannot be understood.

    Its message is a single line naming the offending token and what is accepted.
    """


# ---------------------------------------------------------------------------
# value parsers
# ---------------------------------------------------------------------------


def parse_statuses(values: Iterable[str]) -> frozenset[str]:
    """Parse status values, each possibly a comma-separated list.

    Args:
        values: e.g. ``["failed,retrying", "lost"]``; case-insensitive.

    Returns:
        The union of all statuses named.

    Raises:
        FilterError: on an unknown status or an empty list item.
    """
    accepted = ", ".join(STATUSES)
    result: set[str] = set()
    for value in values:
        for item in value.split(","):
            status = item.strip().lower()
            if not status:
                raise FilterError(f"empty item in {value!r} (accepted: {accepted})")
            if status not in STATUSES:
                raise FilterError(f"unknown status {item.strip()!r} (accepted: {accepted})")
            result.add(status)
    return frozenset(result)


def parse_window(text: str) -> timedelta:
    """Parse a relative window such as ``90s``, ``15m``, ``24h``, ``7d``, ``2w`` (or ``500ms``).

    Args:
        text: a positive integer count followed by a unit.

    Returns:
        The (positive) length of the window.

    Raises:
        FilterError: if the text is malformed, zero, or too large for a timedelta.
    """
    match = _WINDOW_RE.fullmatch(text.lower())
    if match is None:
        raise FilterError(f"{text!r} is not a duration (use 90s, 15m, 24h, 7d or 2w)")
    digits, unit = match.groups()
    # int() refuses very long digit strings and timedelta() overflows far sooner anyway.
    try:
        window = timedelta(**{_WINDOW_UNITS[unit]: int(digits)})
    except (OverflowError, ValueError):
        raise FilterError(f"{text!r} is too long a duration") from None
    if window <= timedelta(0):
        raise FilterError(f"{text!r} is not a positive duration")
    return window


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """Parse a point in time: a window ago (``7d``) or an ISO date/datetime.

    Args:
        text: ``7d`` (now minus 7 days), ``2026-11-01`` (midnight UTC),
            ``2026-11-01T12:00`` (naive means UTC) or ``2026-11-01T12:00:00+02:00``.
        now: the reference time for windows; defaults to the current time.

    Returns:
        A timezone-aware UTC datetime.

    Raises:
        FilterError: if the text is neither, or the result is out of range.
    """
    if _WINDOW_RE.fullmatch(text.lower()):
        window = parse_window(text)
        try:
            return _utc_now(now) - window
        except OverflowError:
            raise FilterError(f"{text!r} reaches back before year 1") from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(f"{text!r} is not a duration or date ({_WINDOW_HELP})") from None
    return _to_utc(parsed)


def parse_duration_ms(text: str) -> float:
    """Parse a duration such as ``500ms``, ``2s``, ``1.5s``, ``2m`` or ``1h``.

    Args:
        text: a non-negative number with an optional unit; a bare number means ms.

    Returns:
        The duration in milliseconds.

    Raises:
        FilterError: if the text is malformed or not finite.
    """
    match = _DURATION_RE.fullmatch(text.lower())
    if match is None:
        raise FilterError(f"{text!r} is not a duration ({_DURATION_HELP})")
    number, unit = match.groups()
    ms = float(number) * _MS_PER_UNIT[unit or "ms"]
    if not math.isfinite(ms):
        raise FilterError(f"{text!r} is too long a duration")
    return ms


def _parse_attempt(text: str) -> tuple[str, int]:
    match = _ATTEMPT_RE.fullmatch(text)
    if match is None:
        raise FilterError(f"{text!r} is not a comparison ({_ATTEMPT_HELP})")
    op, digits = match.groups()
    # A length check first: int() refuses huge digit strings with its own ValueError.
    if len(digits) > 10 or int(digits) > _INT4_MAX:
        raise FilterError(f"{text!r} is out of range (at most {_INT4_MAX})")
    return (op or "=", int(digits))


def _utc_now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else _to_utc(now)


def _to_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00
        raise FilterError(f"{value.isoformat()!r} is out of range") from None


# ---------------------------------------------------------------------------
# the filter
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """A parsed filter: every set field must match (AND).

    Within ``statuses`` and ``tasks`` and ``workers`` any value may match (OR);
    every entry of ``errors`` and ``words`` must match (AND). Construction
    normalises datetimes to UTC, removes duplicate values and validates the
    fields, raising :class:`FilterError`.
    """

    statuses: frozenset[str] = frozenset()
    tasks: tuple[str, ...] = ()
    workers: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    task_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_duration_ms: float | None = None
    max_duration_ms: float | None = None
    attempt: tuple[str, int] | None = None
    words: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    params: tuple[tuple[str, str | None], ...] = ()
    """``(path, value)`` terms on the call's arguments; a ``None`` value asks for presence."""
    labels: tuple[tuple[str, str | None], ...] = ()
    """``(key, value)`` terms on the message's labels; a ``None`` value asks for presence."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: the only way to normalise in place
        set_(self, "statuses", parse_statuses(self.statuses))
        for name in ("params", "labels"):
            try:
                terms = tuple(dict.fromkeys(_check_term(name, t) for t in getattr(self, name)))
            except FilterError as exc:
                raise FilterError(f"{name[:-1]}: {exc}") from None
            set_(self, name, terms)
        for name in ("tasks", "workers", "errors", "words", "task_id", "queues"):
            value = getattr(self, name)
            values: tuple[str, ...] = (value,) if isinstance(value, str) else tuple(value or ())
            if "" in values:
                raise FilterError(f"{name}: empty value")
            # PostgreSQL text cannot hold NUL: fail here rather than at query time.
            if any("\x00" in v for v in values):
                raise FilterError(f"{name}: {value!r} contains a NUL character")
            if name != "task_id":
                set_(self, name, tuple(dict.fromkeys(values)))
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _to_utc(value))
        if self.since is not None and self.until is not None and self.since > self.until:
            raise FilterError(
                f"since {self.since.isoformat()} is later than until {self.until.isoformat()}"
            )
        for name in ("min_duration_ms", "max_duration_ms"):
            ms = getattr(self, name)
            if ms is not None:
                if not (math.isfinite(ms) and ms >= 0):
                    raise FilterError(f"{name}: {ms!r} is not a finite number of ms >= 0")
                set_(self, name, float(ms))
        if self.attempt is not None:
            op, n = self.attempt
            if op not in _ATTEMPT_OPS or isinstance(n, bool) or not 0 <= n <= _INT4_MAX:
                raise FilterError(f"attempt: {self.attempt!r} is not a comparison")
            set_(self, "attempt", (op, n))

    def is_empty(self) -> bool:
        """Whether this filter matches everything."""
        return self == _EMPTY

    def merge(self, other: TaskFilter) -> TaskFilter:
        """Combine two filters as if ``other``'s query were typed after this one's.

        List-like fields accumulate; single-valued fields set in ``other`` win.

        Raises:
            FilterError: if the result has since later than until.
        """
        return TaskFilter(
            statuses=self.statuses | other.statuses,
            tasks=self.tasks + other.tasks,
            workers=self.workers + other.workers,
            errors=self.errors + other.errors,
            task_id=_last(self.task_id, other.task_id),
            since=_last(self.since, other.since),
            until=_last(self.until, other.until),
            min_duration_ms=_last(self.min_duration_ms, other.min_duration_ms),
            max_duration_ms=_last(self.max_duration_ms, other.max_duration_ms),
            attempt=_last(self.attempt, other.attempt),
            words=self.words + other.words,
            queues=self.queues + other.queues,
            params=self.params + other.params,
            labels=self.labels + other.labels,
        )

    # -- text and dict forms ------------------------------------------------

    def to_query(self) -> str:
        """Canonical query text; ``parse(f.to_query()) == f`` for every filter ``f``."""
        values = self._string_values()
        parts = [
            f"{key}:{_quote(value)}" for key in _CANONICAL_ORDER for value in values.get(key, ())
        ]
        parts += [_quote(word, is_word=True) for word in self.words]
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (only set fields) that :meth:`from_dict` turns back into this filter."""
        data: dict[str, Any] = {
            "status": [s for s in STATUSES if s in self.statuses],
            "task": list(self.tasks),
            "worker": list(self.workers),
            "error": list(self.errors),
            "words": list(self.words),
            "task_id": self.task_id,
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "min_duration": self.min_duration_ms,
            "max_duration": self.max_duration_ms,
            "attempt": None if self.attempt is None else _format_attempt(self.attempt),
            "queue": list(self.queues),
            "param": [_format_term(term) for term in self.params],
            "label": [_format_term(term) for term in self.labels],
        }
        return {key: value for key, value in data.items() if value not in (None, [])}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, now: datetime | None = None) -> TaskFilter:
        """Build a filter from :meth:`to_dict` output or a hand-written dict.

        Keys are the query keys plus ``words``. String values go through the same
        parsers as the query language (``{"status": "failed,retrying", "since": "7d"}``);
        lists of strings are accepted for status/task/worker/error/words, numbers (ms)
        for min/max_duration, an int or ``[op, n]`` for attempt, datetimes for
        since/until. ``None`` values are ignored.

        Args:
            data: the dict.
            now: the reference time for relative since/until values.

        Raises:
            FilterError: on an unknown key or a value of the wrong type or form.
        """
        if not isinstance(data, Mapping):
            raise FilterError(f"a filter must be a JSON object, not {type(data).__name__}")
        builder = _Builder(_utc_now(now))
        for key, value in data.items():
            if value is None:
                continue
            if key not in _KEYS and key != "words":
                raise FilterError(
                    f"unknown filter key {key!r} (known: {', '.join((*_KEYS, 'words'))})"
                )
            builder.add_json(key, value)
        return builder.build()

    def _string_values(self) -> dict[str, list[str]]:
        """Each query key's values as the text parse() reads back to the same value."""
        values: dict[str, list[str]] = {
            "task": list(self.tasks),
            "worker": list(self.workers),
            "error": list(self.errors),
            "queue": list(self.queues),
            "param": [_format_term(term) for term in self.params],
            "label": [_format_term(term) for term in self.labels],
        }
        if self.statuses:
            values["status"] = [",".join(s for s in STATUSES if s in self.statuses)]
        if self.task_id is not None:
            values["task_id"] = [self.task_id]
        if self.since is not None:
            values["since"] = [self.since.isoformat()]
        if self.until is not None:
            values["until"] = [self.until.isoformat()]
        if self.min_duration_ms is not None:
            values["min_duration"] = [_format_ms(self.min_duration_ms)]
        if self.max_duration_ms is not None:
            values["max_duration"] = [_format_ms(self.max_duration_ms)]
        if self.attempt is not None:
            values["attempt"] = [_format_attempt(self.attempt)]
        return values

    # -- live events ------------------------------------------------------------

    def matches(
        self,
        event: Mapping[str, Any],
        *,
        now: datetime | None = None,
        lost_after_s: float = DEFAULT_LOST_AFTER_S,
    ) -> bool:
        """Apply the filter to a live event dict, with the same meaning as its SQL.

        Fields are read from the event, then from its ``data``; time bounds
        compare against ``timestamp``. A missing or malformed field never raises:
        a filter on it just does not match.

        Args:
            event: ``{"task_name", "status", "timestamp", "data": {"task_id",
                "attempt", "worker", "duration_ms", "error_type", "error_message",
                "params", "labels", "queue", "timeout_s" (optional)}}``.
            now: the current time, for deciding whether a running task is lost.
            lost_after_s: how long a ``running`` attempt without ``timeout_s`` may run
                before it counts as ``lost`` (the store's lost rule).
        """
        data = event.get("data")
        fields = _EventFields(event, data if isinstance(data, Mapping) else {})
        timestamp = fields.timestamp()
        name = fields.text("task_name")
        worker = fields.text("worker")
        error_texts = [t.lower() for t in map(fields.text, ERROR_COLUMNS) if t is not None]
        word_texts = error_texts if name is None else [name.lower(), *error_texts]
        checks = (
            not self.statuses or fields.status(timestamp, now, lost_after_s) in self.statuses,
            not self.tasks
            or (name is not None and any(_task_matches(t, name) for t in self.tasks)),
            not self.workers or (worker is not None and any(w in worker for w in self.workers)),
            all(any(e.lower() in t for t in error_texts) for e in self.errors),
            all(any(w.lower() in t for t in word_texts) for w in self.words),
            self.task_id is None or fields.get("task_id") == self.task_id,
            _in_range(timestamp, self.since, self.until, upper_open=True),
            _in_range(fields.number("duration_ms"), self.min_duration_ms, self.max_duration_ms),
            self.attempt is None or _compare(fields.number("attempt"), *self.attempt),
            not self.queues or fields.get("queue") in self.queues,
            all(
                _term_matches(fields.get("params"), ("kwargs", *_path(k)), v)
                for k, v in self.params
            ),
            all(_term_matches(fields.get("labels"), (k,), v) for k, v in self.labels),
        )
        return all(checks)


_EMPTY = TaskFilter()
ERROR_COLUMNS: tuple[str, ...] = ("error_message", "error_type")
"""The columns an ``error:`` text is looked for in (either may match)."""
WORD_COLUMNS: tuple[str, ...] = ("task_name", *ERROR_COLUMNS)
"""The columns a free word is looked for in (any may match)."""


def _last(current: _T | None, new: _T | None) -> _T | None:
    return current if new is None else new


def _compare(value: float | None, op: str, n: int) -> bool:
    """``value op n`` for an attempt filter; a missing value never matches."""
    if value is None:
        return False
    return bool(_OPERATORS[op](value, n))


def _in_range(value: Any, low: Any, high: Any, *, upper_open: bool = False) -> bool:
    """``low <= value <= high`` (``< high`` if upper_open); a None bound is no bound.

    A missing value is outside any range, like NULL in SQL.
    """
    if low is None and high is None:
        return True
    if value is None:
        return False
    above_low = low is None or value >= low
    below_high = high is None or (value < high if upper_open else value <= high)
    return bool(above_low and below_high)


# ---------------------------------------------------------------------------
# parsing query text
# ---------------------------------------------------------------------------


class _Token(NamedTuple):
    key: str | None  # as typed; None for a free word
    value: str  # quotes removed


def _tokenize(text: str) -> Iterator[_Token]:
    """Split on whitespace outside double quotes; `key:` only before the first colon."""
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start = i
        key: str | None = None
        chunks: list[str] = []
        seen_colon = seen_quote = False
        while i < n and not text[i].isspace():
            if text[i] == '"':
                chunk, i = _read_quoted(text, i, start)
                chunks.append(chunk)
                seen_quote = True
                continue
            # Only the first unquoted colon can end a key: checking later ones would
            # be quadratic on `a::::...` and would misread `app.tasks:extract`.
            if text[i] == ":" and not seen_colon and not seen_quote:
                seen_colon = True
                prefix = "".join(chunks)
                if _KEY_RE.fullmatch(prefix):
                    key, chunks = prefix, []
                    i += 1
                    continue
            chunks.append(text[i])
            i += 1
        yield _Token(key, "".join(chunks))


def _read_quoted(text: str, i: int, token_start: int) -> tuple[str, int]:
    """Read the quoted string opening at ``text[i]``; ``\\"`` and ``\\\\`` are escapes."""
    chars: list[str] = []
    i += 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and text[i + 1 : i + 2] in ('"', "\\"):
            chars.append(text[i + 1])
            i += 2
        elif ch == '"':
            return "".join(chars), i + 1
        else:  # other backslashes stay literal, e.g. in Windows paths
            chars.append(ch)
            i += 1
    raise FilterError(f'unterminated quote in {text[token_start:]!r} (close it with ")')


@dataclass(slots=True)
class _Builder:
    """Accumulates key values with the repeated-key rules, then builds a TaskFilter."""

    now: datetime
    statuses: set[str] = field(default_factory=set)
    tasks: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    params: list[tuple[str, str | None]] = field(default_factory=list)
    labels: list[tuple[str, str | None]] = field(default_factory=list)
    single: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)  # single-valued keys as typed

    def add(self, key: str, value: str) -> None:
        """Add one ``key:value`` (key lower-case and known), prefixing errors with the key."""
        if not value:
            raise FilterError(f"{key}: empty value (e.g. {key}:{_EXAMPLES[key]})")
        if key in _SINGLE_KEYS:
            if key in self.raw:
                first, second = _quote(self.raw[key]), _quote(value)
                raise FilterError(
                    f"{key}: given twice ({key}:{first} and {key}:{second}); keep one"
                )
            self.raw[key] = value
        try:
            self._add(key, value)
        except FilterError as exc:
            raise FilterError(f"{key}: {exc}") from None

    def _add(self, key: str, value: str) -> None:
        if key == "status":
            self.statuses |= parse_statuses([value])
        elif key in ("task", "worker", "error", "queue"):
            getattr(self, key + "s").append(value)
        elif key in ("param", "label"):
            getattr(self, key + "s").append(_parse_term(key, value))
        elif key == "task_id":
            self.single[key] = value
        elif key in ("since", "until"):
            self.single[key] = parse_time(value, now=self.now)
        elif key in ("min_duration", "max_duration"):
            self.single[key + "_ms"] = parse_duration_ms(value)
        else:  # attempt
            self.single[key] = _parse_attempt(value)

    def add_json(self, key: str, value: object) -> None:
        """Add one from_dict() entry: a string goes through add(), other forms are checked."""
        if isinstance(value, str):
            if key == "words":
                self.words.append(value)
            else:
                self.add(key, value)
        elif isinstance(value, list | tuple) and key in (
            "status",
            "task",
            "worker",
            "error",
            "queue",
            "param",
            "label",
        ):
            for item in value:
                self.add_json(key, _require(key, item, str))
        elif isinstance(value, list | tuple) and key == "words":
            self.words.extend(_require(key, item, str) for item in value)
        elif key in ("since", "until") and isinstance(value, datetime):
            self.single[key] = _to_utc(value)
        elif key in ("min_duration", "max_duration") and _is_number(value):
            try:
                self.single[key + "_ms"] = float(value)
            except OverflowError:  # an int beyond float range
                raise FilterError(f"{key}: {value!r} is too long a duration") from None
        elif key == "attempt" and isinstance(value, int) and not isinstance(value, bool):
            self.single[key] = ("=", value)
        elif key == "attempt" and isinstance(value, list | tuple) and len(value) == 2:
            self.single[key] = (_require(key, value[0], str), _require(key, value[1], int))
        else:
            raise FilterError(f"{key}: unsupported value {value!r}")

    def build(self) -> TaskFilter:
        since, until = self.single.get("since"), self.single.get("until")
        if since is not None and until is not None and since > until:
            raise FilterError(
                f"since {self.raw.get('since', since)!r} ({since.isoformat()}) is later than"
                f" until {self.raw.get('until', until)!r} ({until.isoformat()})"
            )
        return TaskFilter(
            statuses=frozenset(self.statuses),
            tasks=tuple(self.tasks),
            workers=tuple(self.workers),
            errors=tuple(self.errors),
            words=tuple(self.words),
            queues=tuple(self.queues),
            params=tuple(self.params),
            labels=tuple(self.labels),
            **self.single,
        )


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require(key: str, value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FilterError(f"{key}: unsupported value {value!r} (expected {kind.__name__})")
    return value


def parse(
    text: str, *, now: datetime | None = None, keys: Iterable[str] | None = None
) -> TaskFilter:
    """Parse a filter query.

    A key that holds one value (since, until, task_id, min_duration,
    max_duration, attempt) may be given once; status, task, worker and error
    may repeat.

    Args:
        text: e.g. ``status:failed,retrying task:extract* since:7d error:"timed out" boom``.
        now: the reference time for relative since/until; defaults to the current time.
        keys: the keys the caller acts on (default: all); another known key is
            refused rather than silently ignored, e.g. ``since`` for a live tail.

    Returns:
        The filter (empty for blank text).

    Raises:
        FilterError: the only exception; its one-line message names the bad token.
    """
    builder = _Builder(_utc_now(now))
    used = _KEYS if keys is None else tuple(k for k in _KEYS if k in set(keys))
    for token in _tokenize(text):
        if token.key is None:
            if token.value:  # `""` is nothing to search for
                builder.words.append(token.value)
            continue
        key = token.key.lower()
        if key not in _KEYS:
            raise FilterError(f"unknown filter key {token.key!r} (known: {', '.join(used)})")
        if key not in used:
            raise FilterError(f"{key}: has no effect here (used here: {', '.join(used)})")
        builder.add(key, token.value)
    return builder.build()


# ---------------------------------------------------------------------------
# param: and label: terms
# ---------------------------------------------------------------------------

_SECRET = "[REDACTED]"  # taskmon.domain.params.REDACTED: what a secret's value is stored as


def _parse_term(key: str, text: str) -> tuple[str, str | None]:
    """``user.id=42`` → ``("user.id", "42")``; ``user.id`` → ``("user.id", None)``."""
    name, eq, value = text.partition("=")
    return _check_term(key + "s", (name, value if eq else None))


def _check_term(field_name: str, term: tuple[str, str | None]) -> tuple[str, str | None]:
    """`term` checked; the message of a bad one does not name the key (its caller does)."""
    kind = "param" if field_name == "params" else "label"
    try:
        name, value = term
    except (TypeError, ValueError):
        raise FilterError(f"{term!r} is not a (key, value) pair") from None
    if not isinstance(name, str) or not (value is None or isinstance(value, str)):
        raise FilterError(f"{term!r} is not a (key, value) pair of text")
    if not name.strip():
        raise FilterError(f"no key before '=' (e.g. {kind}:{_EXAMPLES[kind]})")
    if "\x00" in name or (value is not None and "\x00" in value):
        raise FilterError(f"{name!r} contains a NUL character")
    if kind == "param" and any(not part for part in name.split(".")):
        raise FilterError(f"{name!r} has an empty part between dots (e.g. user.id)")
    return name, value


def _format_term(term: tuple[str, str | None]) -> str:
    name, value = term
    return name if value is None else f"{name}={value}"


def _path(name: str) -> tuple[str, ...]:
    """A param's key as the path under the call's keyword arguments: dots nest."""
    return tuple(name.split("."))


def term_candidates(value: str) -> list[Any]:
    """The JSON values a term's text `value` equals: the text itself, and the number,
    boolean or null it spells (``42`` is both ``"42"`` and ``42``).

    A secret's stored marker equals nothing: a search for it must not tell that
    a secret is there.
    """
    if value == _SECRET:
        return []
    found: list[Any] = [value]
    if value in ("true", "false"):
        found.append(value == "true")
    elif value == "null":
        found.append(None)
    else:
        number = _json_number(value)
        if number is not None:
            found.append(number)
    return found


def term_for(kind: str, key: str, value: str | None = None) -> str:
    """The query text of one term, quoted as :meth:`TaskFilter.to_query` quotes it.

    ``term_for("param", "user.id", "42")`` is ``param:user.id=42``;
    ``term_for("label", "tenant")`` asks for presence (``label:tenant``);
    ``term_for("queue", "emails")`` is ``queue:emails`` (a queue term has no value).
    A value with spaces or quotes is quoted: ``param:"name=Ada Lovelace"``.

    Raises:
        FilterError: an unknown kind, a queue with a value, or a key the term cannot
            carry (empty, with an ``=``, which would end the key early, or a NUL).
    """
    if kind == "queue":
        if value is not None:
            raise FilterError(f"queue: {key!r} takes no value")
        flt = TaskFilter(queues=(key,))
    elif kind in ("param", "label"):
        if "=" in key:
            raise FilterError(f"{kind}: {key!r} holds '=', which would end the key early")
        try:
            term = _check_term(kind + "s", (key, value))
        except FilterError as exc:
            raise FilterError(f"{kind}: {exc}") from None
        flt = TaskFilter(params=(term,)) if kind == "param" else TaskFilter(labels=(term,))
    else:
        raise FilterError(f"{kind!r} is not a term kind (use param, label or queue)")
    return flt.to_query()


def term_values(root: object, *, nested: bool = True) -> list[tuple[str, str]]:
    """The ``(key, value)`` terms that `root` (a call's kwargs, or labels) matches.

    Nested mappings give dotted keys (``user.id``) when `nested`; only plain
    values are given (a list or a mapping is no value a term matches), each as
    the text a term spells it with (``42``, ``true``, ``null``, ``Ada Lovelace``).
    A secret's marker is never given, nor a key a term cannot name (an ``=``,
    a NUL, or a dot when nested, since dots nest there).
    """
    found: list[tuple[str, str]] = []

    def walk(node: object, prefix: str) -> None:
        if not isinstance(node, Mapping):
            return
        for name, item in node.items():
            if not isinstance(name, str) or not name.strip() or "=" in name or "\x00" in name:
                continue
            if nested and "." in name:
                continue
            key = f"{prefix}{name}"
            if isinstance(item, Mapping):
                if nested:
                    walk(item, key + ".")
                continue
            text = _term_text(item)
            if text is not None:
                found.append((key, text))

    walk(root, "")
    return found


def _term_text(value: object) -> str | None:
    """The text a term spells the plain JSON `value` with (None: no term matches it)."""
    if isinstance(value, str):
        return None if value == _SECRET or "\x00" in value else value
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return None


def _json_number(text: str) -> int | float | None:
    if not re.fullmatch(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?", text):
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    number = float(text)
    return number if math.isfinite(number) else None


def _term_matches(root: object, path: tuple[str, ...], value: str | None) -> bool:
    """Whether the JSON `root` holds, at `path`, a value the term accepts (as its SQL does)."""
    node = root
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    if node == _SECRET:
        return False
    if value is None:
        return True
    if isinstance(node, Mapping | list):
        return False
    return any(_json_equal(node, candidate) for candidate in term_candidates(value))


def _json_equal(stored: object, candidate: object) -> bool:
    """JSON equality as ``jsonb`` has it: a boolean is no number, ``42 == 42.0``."""
    if isinstance(stored, bool) or isinstance(candidate, bool):
        return type(stored) is type(candidate) and stored == candidate
    if _is_number(stored) and _is_number(candidate):
        return stored == candidate
    return type(stored) is type(candidate) and stored == candidate


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def _quote(value: str, *, is_word: bool = False) -> str:
    """Quote a value only when the tokenizer would otherwise read it differently."""
    plain = value and '"' not in value and not any(c.isspace() for c in value)
    if plain and not (is_word and ":" in value):  # a bare `a:b` could read as a key
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _format_attempt(attempt: tuple[str, int]) -> str:
    return f"{attempt[0]}{attempt[1]}"


def _format_ms(ms: float) -> str:
    if ms.is_integer() and ms < 1e15:
        return f"{int(ms)}ms"
    return f"{ms!r}ms"  # repr round-trips exactly (the duration grammar takes exponents)


# ---------------------------------------------------------------------------
# patterns: the store's SQL (taskmon.store.filter_sql) and live matching share them
# ---------------------------------------------------------------------------


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains_pattern(text: str) -> str:
    """The ``LIKE`` pattern (escape character ``\\``) of a substring."""
    return f"%{_escape_like(text)}%"


def task_like_patterns(pattern: str) -> tuple[str, ...]:
    """LIKE patterns for a task glob; the row matches if any of them does.

    Without a wildcard the value is a substring. A glob must match the whole name
    or, because TaskIQ names are ``module:function``, the part after a colon, so
    ``extract*`` finds ``app.tasks:extract_all``.
    """
    if "*" not in pattern and "?" not in pattern:
        return (contains_pattern(pattern),)
    like = "".join({"*": "%", "?": "_"}.get(ch, "") or _escape_like(ch) for ch in pattern)
    return (like, f"%:{like}")


@functools.lru_cache(maxsize=256)  # matches() runs for every live event
def _like_regex(like: str) -> re.Pattern[str]:
    """The Python equivalent of ``LIKE like ESCAPE '\\'`` (for fullmatch)."""
    out: list[str] = []
    chars = iter(like)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        else:
            out.append({"%": ".*", "_": "."}.get(ch) or re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _task_matches(pattern: str, name: str) -> bool:
    return any(_like_regex(like).fullmatch(name) for like in task_like_patterns(pattern))


class _EventFields:
    """Typed, never-raising access to a live event's fields (top level, then ``data``)."""

    def __init__(self, event: Mapping[str, Any], data: Mapping[str, Any]) -> None:
        self.event = event
        self.data = data

    def get(self, name: str) -> object:
        return self.event[name] if name in self.event else self.data.get(name)

    def text(self, name: str) -> str | None:
        value = self.get(name)
        return value if isinstance(value, str) else None

    def number(self, name: str) -> float | None:
        value = self.get(name)
        try:
            return float(value) if _is_number(value) else None
        except OverflowError:  # an int beyond float range
            return None

    def timestamp(self) -> datetime | None:
        value = self.get("timestamp")
        try:
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            return _to_utc(value) if isinstance(value, datetime) else None
        except (ValueError, OverflowError):
            return None

    def status(
        self, started: datetime | None, now: datetime | None, lost_after_s: float
    ) -> str | None:
        """The status, with the lost rule of :mod:`taskmon.domain.statuses`."""
        status = self.get("status")
        if not isinstance(status, str):
            return None
        timeout = self.number("timeout_s")
        stale = is_stale(status, started, timeout, now=_utc_now(now), lost_after_s=lost_after_s)
        return "lost" if stale else status
