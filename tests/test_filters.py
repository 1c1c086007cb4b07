"""Tests for taskmon.domain.filters (the query language, its event matcher) and its SQL."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmon.domain.filters import (
    STATUSES,
    FilterError,
    TaskFilter,
    parse,
    parse_duration_ms,
    parse_statuses,
    parse_time,
    parse_window,
)
from taskmon.store.filter_sql import filter_sql
from taskmon.store.schema import lost_cutoff_sql

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
KEYS = (
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
)


def p(text: str, **kwargs: Any) -> TaskFilter:
    return parse(text, now=NOW, **kwargs)


def event(**overrides: Any) -> dict[str, Any]:
    """A live event in the wire shape of taskmon.domain.events; `overrides` go into data too."""
    top = {"task_name", "status", "timestamp"}
    ev: dict[str, Any] = {
        "v": 1,
        "seq": 1,
        "type": "task_failed",
        "task_name": "app.tasks:extract",
        "status": "failed",
        "timestamp": "2026-11-28T11:00:00.123456+00:00",
        "data": {
            "task_id": "3f2c",
            "attempt": 0,
            "worker": "host-1:4242",
            "duration_ms": 812.4,
            "queue_wait_ms": 12.0,
            "error_type": "TimeoutError",
            "error_message": "timed out after 5s",
            "params": {},
        },
    }
    for key, value in overrides.items():
        (ev if key in top else ev["data"])[key] = value
    return ev


# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------


def test_empty_query_is_empty_filter() -> None:
    for text in ("", "   ", '""', "\t\n"):
        f = p(text)
        assert f == TaskFilter()
        assert f.is_empty()
        assert f.to_query() == ""
        assert f.to_dict() == {}
        assert filter_sql(f, []) == "TRUE"
    assert not p("boom").is_empty()


def test_every_key() -> None:
    f = p(
        'status:failed,retrying task:extract* since:7d until:2026-12-01 error:"timed out" '
        "worker:host-1 min_duration:500ms max_duration:2s attempt:>0 task_id:abc "
        'boom "connection reset"'
    )
    assert f == TaskFilter(
        statuses=frozenset({"failed", "retrying"}),
        tasks=("extract*",),
        workers=("host-1",),
        errors=("timed out",),
        task_id="abc",
        since=NOW - timedelta(days=7),
        until=datetime(2026, 12, 1, tzinfo=UTC),
        min_duration_ms=500.0,
        max_duration_ms=2000.0,
        attempt=(">", 0),
        words=("boom", "connection reset"),
    )


def test_keys_are_case_insensitive_and_statuses_too() -> None:
    assert p("STATUS:Failed Task:x SINCE:1h") == p("status:failed task:x since:1h")


def test_values_keep_their_case_and_colons() -> None:
    f = p("task:App.Tasks:Extract worker:host-1:4242 task_id:a:b")
    assert f.tasks == ("App.Tasks:Extract",)
    assert f.workers == ("host-1:4242",)
    assert f.task_id == "a:b"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("app.tasks:extract", ("app.tasks:extract",)),  # not an identifier: not a key
        ("12:00 :x", ("12:00", ":x")),
        ('"status:failed"', ("status:failed",)),  # a quoted key is just text
        ('"connection reset" peer', ("connection reset", "peer")),
        ('"say \\"hi\\""', ('say "hi"',)),
        ('"a\\\\b"', ("a\\b",)),
        ('"C:\\path\\x"', ("C:\\path\\x",)),  # other backslashes stay literal
        ("a\\b\\", ("a\\b\\",)),  # unquoted backslashes are literal
        ('pre"fix suf"fix', ("prefix suffix",)),  # quoted parts join the token
        ('"" x ""', ("x",)),  # empty quoted words are dropped
    ],
)
def test_free_words_and_quoting(text: str, words: tuple[str, ...]) -> None:
    assert p(text).words == words


def test_quoted_values() -> None:
    f = p('error:"timed out" task:"my task" error:"say \\"no\\"" worker:"a b"')
    assert f.errors == ("timed out", 'say "no"')
    assert f.tasks == ("my task",)
    assert f.workers == ("a b",)


def test_repeated_keys() -> None:
    f = p(
        "status:failed status:lost,failed task:a task:b worker:w1 worker:w2 error:x error:y task:a"
    )
    assert f.statuses == {"failed", "lost"}  # union
    assert f.tasks == ("a", "b")  # OR, duplicates dropped
    assert f.workers == ("w1", "w2")
    assert f.errors == ("x", "y")  # AND


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since:7d since:1d", "since: given twice (since:7d and since:1d); keep one"),
        ("until:2026-12-01 x UNTIL:2026-12-02", "until: given twice"),
        ('task_id:1 task_id:"2 3"', 'task_id: given twice (task_id:1 and task_id:"2 3")'),
        ("min_duration:1 min_duration:2", "min_duration: given twice"),
        ("max_duration:8 max_duration:8", "max_duration: given twice"),
        ("attempt:>0 attempt:<3", "attempt: given twice (attempt:>0 and attempt:<3)"),
    ],
)
def test_a_single_valued_key_given_twice_is_refused(query: str, message: str) -> None:
    # "the last one wins" silently dropped what the user typed first
    with pytest.raises(FilterError) as caught:
        p(query)
    assert message in str(caught.value)


def test_keys_the_caller_does_not_use_are_refused() -> None:
    live = ("status", "task", "error", "worker", "task_id", "min_duration", "attempt")
    assert p("status:failed task:a", keys=live) == p("status:failed task:a")
    with pytest.raises(FilterError, match=r"^since: has no effect here \(used here: status, "):
        p("status:failed since:1h", keys=live)
    with pytest.raises(FilterError, match="unknown filter key 'bogus'"):
        p("bogus:1", keys=live)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500.0),
        ("2s", 2000.0),
        ("1.5s", 1500.0),
        ("2m", 120_000.0),
        ("1h", 3_600_000.0),
        ("250", 250.0),
        ("0.5", 0.5),
        (".5s", 500.0),
        ("0", 0.0),
        ("2S", 2000.0),
        ("1e3", 1000.0),
    ],
)
def test_parse_duration_ms(text: str, ms: float) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "ms", "-1s", "2x", "1.5.5s", "2 s", "1e999", "nan", "inf"])
def test_parse_duration_ms_rejects(text: str) -> None:
    with pytest.raises(FilterError, match=re.escape(repr(text))):
        parse_duration_ms(text)


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("500ms", timedelta(milliseconds=500)),
        ("7D", timedelta(days=7)),
    ],
)
def test_parse_window(text: str, delta: timedelta) -> None:
    assert parse_window(text) == delta
    assert parse_time(text, now=NOW) == NOW - delta


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0d", "not a positive duration"),
        ("1.5d", "not a duration"),
        ("7", "not a duration"),
        ("99999999999d", "too long"),
        ("9" * 5000 + "d", "too long"),  # beyond int()'s digit limit
    ],
)
def test_parse_window_rejects(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_window(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T12:00", datetime(2026, 11, 1, 12, tzinfo=UTC)),
        ("2026-11-01T12:00:00+02:00", datetime(2026, 11, 1, 10, tzinfo=UTC)),
        ("2026-11-01T12:00:00Z", datetime(2026, 11, 1, 12, tzinfo=UTC)),
    ],
)
def test_parse_time_iso(text: str, expected: datetime) -> None:
    result = parse_time(text, now=NOW)
    assert result == expected
    assert result.tzinfo is UTC


def test_parse_time_defaults_to_real_now_and_naive_now_is_utc() -> None:
    before = datetime.now(UTC)
    assert before - timedelta(hours=1, seconds=5) < parse_time("1h") <= datetime.now(UTC)
    assert parse_time("1h", now=NOW.replace(tzinfo=None)) == NOW - timedelta(hours=1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (">0", (">", 0)),
        (">=1", (">=", 1)),
        ("<3", ("<", 3)),
        ("<=2", ("<=", 2)),
        ("=1", ("=", 1)),
        ("1", ("=", 1)),
    ],
)
def test_attempt(text: str, expected: tuple[str, int]) -> None:
    assert p(f"attempt:{text}").attempt == expected


def test_parse_statuses() -> None:
    assert parse_statuses(["failed,retrying", "LOST", " success , pending"]) == {
        "failed",
        "retrying",
        "lost",
        "success",
        "pending",
    }
    assert parse_statuses([]) == frozenset()
    assert STATUSES == ("pending", "running", "success", "failed", "retrying", "lost")


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("foo:bar", ["unknown filter key 'foo'", "known: status, task, since"]),
        ("Min-Duration:5", ["unknown filter key 'Min-Duration'"]),
        ("status:", ["status: empty value", "status:failed"]),
        ('error:""', ["error: empty value"]),
        ("task: x", ["task: empty value"]),
        ("status:faild", ["'faild'", "accepted: pending, running, success, failed, retrying"]),
        ("status:failed,", ["'failed,'", "empty item"]),
        ("since:7x", ["since: '7x' is not a duration or date (use 90s, 15m, 24h, 7d, 2w"]),
        ("until:2026-13-01", ["until: '2026-13-01' is not a duration or date"]),
        ("since:0d", ["since: '0d' is not a positive duration"]),
        ("since:99999999999d", ["since: '99999999999d' is too long"]),
        ("since:999999d", ["since: '999999d' reaches back before year 1"]),
        ("since:0001-01-01T00:00+01:00", ["since:", "out of range"]),
        ("min_duration:fast", ["min_duration: 'fast' is not a duration (use 500ms"]),
        ("max_duration:1e999s", ["max_duration: '1e999s' is too long"]),
        ("attempt:>x", ["attempt: '>x' is not a comparison (use >0, >=1"]),
        ("attempt:-1", ["attempt: '-1'"]),
        ("attempt:99999999999", ["attempt: '99999999999' is out of range"]),
        ('error:"timed out', ["unterminated quote in 'error:\"timed out'"]),
        ('a "b', ["unterminated quote in '\"b'"]),
        ('"a\\"', ["unterminated quote"]),  # the escaped quote does not close it
        ("since:1d until:7d", ["since '1d'", "later than until '7d'"]),
    ],
)
def test_errors_name_the_token(text: str, fragments: list[str]) -> None:
    with pytest.raises(FilterError) as info:
        p(text)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_filter_error_is_value_error() -> None:
    assert issubclass(FilterError, ValueError)


def test_construction_validates_and_normalises() -> None:
    f = TaskFilter(
        statuses=frozenset({"FAILED"}),
        tasks=("a", "a", "b"),
        since=datetime(2026, 11, 1, 12),
        until=datetime(2026, 11, 2, 12, tzinfo=timezone(timedelta(hours=2))),
    )
    assert f.statuses == {"failed"}
    assert f.tasks == ("a", "b")
    assert f.since == datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert f.until is not None and f.until.utcoffset() == timedelta(0)
    for bad in (
        {"statuses": frozenset({"nope"})},
        {"tasks": ("",)},
        {"task_id": ""},
        {"words": ("a\x00b",)},
        {"since": NOW, "until": NOW - timedelta(seconds=1)},
        {"min_duration_ms": float("nan")},
        {"max_duration_ms": -1.0},
        {"attempt": ("!=", 1)},
        {"attempt": (">", -1)},
    ):
        with pytest.raises(FilterError):
            TaskFilter(**bad)


def test_merge() -> None:
    base = p("status:failed task:a error:x since:7d attempt:>0 boom")
    other = p("status:lost task:b error:y since:1d")
    merged = base.merge(other)
    assert merged == p("status:failed task:a error:x attempt:>0 boom " + other.to_query())
    assert merged.statuses == {"failed", "lost"}
    assert merged.tasks == ("a", "b")
    assert merged.errors == ("x", "y")
    assert merged.since == NOW - timedelta(days=1)
    assert merged.attempt == (">", 0)  # unset in other: kept
    assert base.merge(TaskFilter()) == base
    assert TaskFilter().merge(base) == base
    with pytest.raises(FilterError, match="later than"):
        p("until:2d").merge(p("since:1d"))


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------

values = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=10)
offsets = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))])
moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
)
durations = st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False)
# a term's key ends at its first '=', and a param's dots nest (no empty part)
term_keys = st.text(st.characters(exclude_characters="\x00="), min_size=1, max_size=8).filter(
    str.strip
)
param_keys = term_keys.filter(lambda k: all(k.split(".")))


@st.composite
def filters(draw: st.DrawFn) -> TaskFilter:
    since, until = draw(st.none() | moments), draw(st.none() | moments)
    if since is not None and until is not None and since > until:
        since, until = until, since
    ops = st.sampled_from([">", ">=", "<", "<=", "="])
    return TaskFilter(
        statuses=draw(st.frozensets(st.sampled_from(STATUSES))),
        tasks=tuple(draw(st.lists(values | st.sampled_from(["x*", "a?b", "*%_\\"]), max_size=3))),
        workers=tuple(draw(st.lists(values, max_size=2))),
        errors=tuple(draw(st.lists(values, max_size=2))),
        task_id=draw(st.none() | values),
        since=since,
        until=until,
        min_duration_ms=draw(st.none() | durations),
        max_duration_ms=draw(st.none() | durations),
        attempt=draw(st.none() | st.tuples(ops, st.integers(0, 2**31 - 1))),
        words=tuple(draw(st.lists(values, max_size=3))),
        queues=tuple(draw(st.lists(values, max_size=2))),
        params=tuple(draw(st.lists(st.tuples(param_keys, st.none() | values), max_size=2))),
        labels=tuple(draw(st.lists(st.tuples(term_keys, st.none() | values), max_size=2))),
    )


@given(filters())
def test_to_query_round_trip(f: TaskFilter) -> None:
    assert parse(f.to_query(), now=NOW) == f


@given(filters())
def test_to_dict_round_trip_through_json(f: TaskFilter) -> None:
    data = json.loads(json.dumps(f.to_dict()))
    assert TaskFilter.from_dict(data) == f


def test_to_query_is_canonical() -> None:
    text = 'boom since:2026-11-01 status:retrying,failed error:"a b" attempt:1 max_duration:1.5s'
    assert p(text).to_query() == (
        'status:failed,retrying error:"a b" since:2026-11-01T00:00:00+00:00 '
        "max_duration:1500ms attempt:=1 boom"
    )


def test_from_dict_string_forms() -> None:
    f = TaskFilter.from_dict(
        {
            "status": "failed,retrying",
            "since": "7d",
            "until": datetime(2026, 12, 1),
            "task": "extract*",
            "worker": ["h1", "h2"],
            "error": "timed out",
            "words": "connection reset",
            "min_duration": "2s",
            "max_duration": 5000,
            "attempt": 1,
            "task_id": None,
        },
        now=NOW,
    )
    assert f == p(
        "status:failed,retrying since:7d until:2026-12-01 task:extract* worker:h1 worker:h2 "
        'error:"timed out" "connection reset" min_duration:2s max_duration:5s attempt:=1'
    )
    assert TaskFilter.from_dict({"attempt": [">=", 2]}).attempt == (">=", 2)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"stat": "failed"}, "unknown filter key 'stat'"),
        ({"status": "nope"}, "status: unknown status 'nope'"),
        ({"status": 3}, "status: unsupported value 3"),
        ({"task": ["a", 1]}, "task: unsupported value 1"),
        ({"since": "7x"}, "since: '7x' is not a duration or date"),
        ({"min_duration": True}, "min_duration: unsupported value True"),
        ({"min_duration": 10**400}, "too long"),
        ({"max_duration": -5}, "max_duration_ms: -5.0"),
        ({"attempt": 1.5}, "attempt: unsupported value 1.5"),
        ({"attempt": ["!", 1]}, "attempt:"),
        ({"task_id": ""}, "task_id: empty value"),
        ({"since": "1d", "until": "7d"}, "later than"),
    ],
)
def test_from_dict_rejects(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(FilterError) as info:
        TaskFilter.from_dict(data, now=NOW)
    assert fragment in str(info.value)


def test_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(FilterError):
        TaskFilter.from_dict(["status"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# robustness: only FilterError, always one line
# ---------------------------------------------------------------------------

junk = st.sampled_from(
    [
        "",
        '"',
        "\\",
        ",",
        ":",
        "7d",
        "0s",
        "99999999999d",
        "999999w",
        "9" * 5000,
        "1e999",
        ">",
        ">=",
        "-1",
        "2026-11-01",
        "2026-11-01T12:00:00+02:00",
        "0001-01-01T00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "failed",
        "lost,",
        "*",
        "%_",
        "\n",
    ]
) | st.text(max_size=6)
fragments = st.builds(
    lambda key, sep, value: f"{key}{sep}{value}",
    st.sampled_from(KEYS) | st.text(alphabet="abcSTAUS_-.:", max_size=6),
    st.sampled_from([":", "", ":" + '"']),
    junk,
)


def check_parse(text: str) -> None:
    try:
        f = parse(text, now=NOW)
    except FilterError as exc:
        assert str(exc) and len(str(exc).splitlines()) == 1
    else:  # whatever parses also survives the round trip
        assert parse(f.to_query(), now=NOW) == f


@given(st.text())
def test_parse_arbitrary_text_only_raises_filter_error(text: str) -> None:
    check_parse(text)


@settings(max_examples=300)
@given(st.lists(fragments | junk, max_size=6).map(" ".join))
def test_parse_key_value_junk_only_raises_filter_error(text: str) -> None:
    check_parse(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | junk,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=6,
)


@given(st.dictionaries(st.sampled_from((*KEYS, "words")) | st.text(max_size=4), json_values))
def test_from_dict_only_raises_filter_error(data: dict[str, Any]) -> None:
    try:
        TaskFilter.from_dict(data, now=NOW)
    except FilterError as exc:
        assert len(str(exc).splitlines()) == 1


@given(filters(), st.dictionaries(st.text(max_size=12), json_values))
def test_matches_never_raises(f: TaskFilter, junk_event: dict[str, Any]) -> None:
    f.matches(junk_event, now=NOW)
    f.matches({**junk_event, "data": junk_event}, now=NOW)


# ---------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------

EVIL = "'; DROP TABLE x; --"


def placeholders(sql: str) -> set[int]:
    return {int(n) for n in re.findall(r"\$(\d+)", sql)}


def test_sql_values_only_in_params() -> None:
    f = TaskFilter(
        tasks=(EVIL, "100%_\\*"),
        workers=(EVIL,),
        errors=(EVIL,),
        words=(EVIL, "%"),
        task_id=EVIL,
    )
    params: list[object] = []
    sql = filter_sql(f, params)
    for bad in ("DROP", "--", ";", "%", "100", "x"):
        assert bad not in sql
    assert sql.count("'") == sql.count("ESCAPE '\\'") * 2  # the only quoted literal
    assert f"%{EVIL}%" in params
    assert "100\\%\\_\\\\%" in params  # the glob's literal part is LIKE-escaped
    assert "%:100\\%\\_\\\\%" in params
    assert EVIL in params  # task_id: exact, unescaped


def test_sql_placeholders_follow_prefilled_params() -> None:
    params: list[object] = ["caller", 42]
    sql = filter_sql(p("status:failed task:a worker:w error:e since:1d attempt:>=1 boom"), params)
    assert placeholders(sql) == set(range(3, len(params) + 1))
    assert params[:2] == ["caller", 42]
    assert "$1" not in sql and "$2 " not in sql


@given(filters(), st.lists(st.integers(), max_size=3))
def test_sql_placeholders_property(f: TaskFilter, prefilled: list[object]) -> None:
    params = list(prefilled)
    sql = filter_sql(f, params)
    assert params[: len(prefilled)] == prefilled
    assert placeholders(sql) == set(range(len(prefilled) + 1, len(params) + 1))


def shape_twin(f: TaskFilter) -> TaskFilter:
    """The same filter with every value replaced by a bland one of the same kind."""

    def bland(items: tuple[str, ...], glob: bool = False) -> tuple[str, ...]:
        return tuple(
            f"x{i}" + ("*" if glob and ("*" in v or "?" in v) else "") for i, v in enumerate(items)
        )

    return TaskFilter(
        statuses=f.statuses,
        tasks=bland(f.tasks, glob=True),
        workers=bland(f.workers),
        errors=bland(f.errors),
        words=bland(f.words),
        task_id=None if f.task_id is None else "x",
        since=None if f.since is None else NOW,
        until=None if f.until is None else NOW,
        min_duration_ms=None if f.min_duration_ms is None else 1.0,
        max_duration_ms=None if f.max_duration_ms is None else 1.0,
        attempt=None if f.attempt is None else (f.attempt[0], 1),
        queues=bland(f.queues),
        params=tuple((f"x{i}", None if v is None else "x") for i, (_, v) in enumerate(f.params)),
        labels=tuple((f"x{i}", None if v is None else "x") for i, (_, v) in enumerate(f.labels)),
    )


@given(filters())
def test_sql_text_depends_only_on_the_filter_shape(f: TaskFilter) -> None:
    params: list[object] = []
    twin_params: list[object] = []
    assert filter_sql(f, params) == filter_sql(shape_twin(f), twin_params)
    assert len(params) == len(twin_params)


def test_sql_alias_and_shapes() -> None:
    params: list[object] = []
    sql = filter_sql(
        p("status:failed,lost task:x worker:w error:e min_duration:1 max_duration:2"),
        params,
        alias="t",
        lost_after_s=60,
    )
    cutoff = lost_cutoff_sql("$2::double precision", alias="t")
    assert sql == (
        "(t.status = ANY($1::text[]) OR (t.status = 'running' "
        f"AND coalesce(t.started_at, t.created_at) < {cutoff})) "
        "AND (t.task_name LIKE $3 ESCAPE '\\') AND (t.worker LIKE $4 ESCAPE '\\') "
        "AND (t.error_message ILIKE $5 ESCAPE '\\' OR t.error_type ILIKE $5 ESCAPE '\\') "
        "AND t.duration_ms >= $6 AND t.duration_ms <= $7"
    )
    assert params == [["failed", "lost"], 60.0, "%x%", "%w%", "%e%", 1.0, 2.0]
    with pytest.raises(ValueError):
        filter_sql(p("boom"), [], alias="t; DROP")


def test_sql_running_excludes_lost_and_both_need_no_rule() -> None:
    params: list[object] = []
    cutoff = lost_cutoff_sql("$1::double precision", alias="")
    assert filter_sql(p("status:running"), params) == (
        f"((status = 'running' AND coalesce(started_at, created_at) >= {cutoff}))"
    )
    assert params == [3600.0]
    params = []
    assert filter_sql(p("status:lost,running"), params) == "(status = ANY($1::text[]))"
    assert params == [["running", "lost"]]


@pytest.mark.parametrize(
    ("task", "likes"),
    [
        ("extract", ["%extract%"]),
        ("extract*", ["extract%", "%:extract%"]),
        ("*:a?c", ["%:a_c", "%:%:a_c"]),
        ("50%_off\\*", ["50\\%\\_off\\\\%", "%:50\\%\\_off\\\\%"]),
    ],
)
def test_task_like_patterns(task: str, likes: list[str]) -> None:
    params: list[object] = []
    filter_sql(TaskFilter(tasks=(task,)), params)
    assert params == likes


# ---------------------------------------------------------------------------
# matching live events
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", True),
        ("status:failed", True),
        ("status:success,running", False),
        ("task:extract", True),
        ("task:extract*", True),  # the part after the colon
        ("task:app.*", True),
        ("task:Extract", False),  # task names are case-sensitive
        ("task:extract?", False),
        ("task:load task:extract", True),
        ("worker:host-1", True),
        ("worker:host-2", False),
        ("error:TIMED", True),
        ("error:timeouterror error:after", True),
        ("error:timed error:nope", False),
        ("EXTRACT", True),
        ("timeout", True),  # error_type
        ("extract nope", False),
        ("task_id:3f2c", True),
        ("task_id:3f", False),
        ("since:1h", True),
        ("since:59m", False),
        ("until:59m", True),
        ("until:1h", False),  # until is exclusive
        ("since:2026-11-28T11:00:00.123456", True),
        ("min_duration:812.4", True),
        ("min_duration:1s", False),
        ("max_duration:812.4ms", True),
        ("max_duration:800", False),
        ("attempt:0", True),
        ("attempt:>0", False),
        ("attempt:<=0", True),
    ],
)
def test_matches(query: str, expected: bool) -> None:
    ev = event(timestamp="2026-11-28T11:00:00.123456+00:00")
    assert p(query).matches(ev, now=NOW) is expected


@pytest.mark.parametrize(
    "query",
    [
        "task:*",
        "worker:h",
        "error:x",
        "x",
        "task_id:1",
        "since:1d",
        "until:1d",
        "min_duration:0",
        "max_duration:10",
        "attempt:>=0",
        "status:failed",
    ],
)
def test_filter_on_missing_field_does_not_match(query: str) -> None:
    assert not p(query).matches({}, now=NOW)
    assert not p(query).matches({"timestamp": "garbage", "data": "garbage"}, now=NOW)
    assert p("").matches({}, now=NOW)


def test_matches_lost_rule() -> None:
    started = NOW - timedelta(seconds=30)
    running = event(status="running", timestamp=started.isoformat(), timeout_s=None)
    assert p("status:running").matches(running, now=NOW)
    assert not p("status:running").matches(running, now=NOW, lost_after_s=20)
    assert p("status:lost").matches(running, now=NOW, lost_after_s=20)
    with_timeout = event(status="running", timestamp=started.isoformat(), timeout_s=10)
    assert p("status:lost").matches(with_timeout, now=NOW)  # 30s > 2 x 10s
    assert p("status:running,lost").matches(with_timeout, now=NOW)
    assert p("status:lost").matches(event(status="lost"), now=NOW)
    assert not p("status:lost").matches(event(status="failed"), now=NOW)


# ---------------------------------------------------------------------------
# against PostgreSQL
# ---------------------------------------------------------------------------

DSN = os.environ.get("TASKMON_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")

# task_id, task_name, status, worker, error_type, error_message, timeout_s, age, ms, attempt
ROWS: list[tuple[Any, ...]] = [
    ("s1", "app.tasks:extract", "success", "host-1:4242", None, None, None, "10m", 500, 0),
    ("f1", "app.tasks:extract_all", "failed", "host-2:1", "TimeoutError", "timed out after 5s",
     None, "25h", 5000, 1),
    ("r1", "app.tasks:load", "retrying", "host-1:4243", "ConnectionError",
     "Connection reset by peer", None, "2d", 20, 0),
    ("pct", "app.tasks:100%_done", "failed", "host-2:1", "OSError", "disk 100% full", None,
     "73h", 1, 2),
    ("p1000", "app.tasks:1000x", "success", "host-3", None, None, None, "5m", 10, 0),
    ("und", "app.tasks:a_b", "success", "host-3", None, None, None, "20m", 30, 0),
    ("axb", "app.tasks:aXb", "success", "host-3", None, None, None, "20m", 30, 0),
    ("bs", "app.tasks:back\\slash", "success", "host-3", None, None, None, "3h", 30, 0),
    ("lost2h", "app.tasks:load", "running", "host-1:4242", None, None, None, "2h", None, 0),
    ("run30", "app.tasks:slow", "running", "host-2:1", None, None, 10.0, "30s", None, 0),
    ("run5", "app.tasks:slow", "running", "host-2:1", None, None, 10.0, "5s", None, 0),
    ("lostx", "app.tasks:extract", "lost", "host-2:1", None, None, None, "8d", None, 3),
    ("pend", "app.tasks:queue", "pending", None, None, None, None, "1m", None, 0),
]  # fmt: skip

DB_CASES: dict[str, set[str]] = {
    "": {row[0] for row in ROWS},
    "status:lost": {"lost2h", "run30", "lostx"},
    "status:running": {"run5"},
    "status:running,lost": {"lost2h", "run30", "run5", "lostx"},
    "status:failed,retrying": {"f1", "r1", "pct"},
    "status:pending,lost": {"pend", "lost2h", "run30", "lostx"},
    "task:extract": {"s1", "f1", "lostx"},
    "task:extract*": {"s1", "f1", "lostx"},
    "task:app.tasks:extract": {"s1", "f1", "lostx"},
    "task:*load": {"r1", "lost2h"},
    "task:100%": {"pct"},
    "task:a_b": {"und"},
    "task:a?b": {"und", "axb"},
    "task:back\\slash": {"bs"},
    "task:load task:slow": {"r1", "lost2h", "run30", "run5"},
    'error:"timed out"': {"f1"},
    "error:TIMEOUTERROR": {"f1"},
    "error:100%": {"pct"},
    "error:100% error:full": {"pct"},
    '"connection reset"': {"r1"},
    "extract timed": {"f1"},
    "worker:host-1": {"s1", "r1", "lost2h"},
    "task_id:s1": {"s1"},
    "since:1h": {"s1", "p1000", "und", "axb", "run30", "run5", "pend"},
    "until:1d": {"f1", "r1", "pct", "lostx"},
    "since:3d until:1d": {"f1", "r1"},
    "min_duration:1s": {"f1"},
    "max_duration:15ms": {"pct", "p1000"},
    "attempt:>0": {"f1", "pct", "lostx"},
    "attempt:<3": {row[0] for row in ROWS} - {"lostx"},
    "status:failed task:extract*": {"f1"},
    f'error:"{EVIL}" {EVIL.replace(" ", "")}': set(),
}


async def test_sql_against_postgres() -> None:
    asyncpg = pytest.importorskip("asyncpg")
    try:
        conn = await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at {DSN}: {exc}")
    try:
        await conn.execute(
            """
            CREATE TEMP TABLE task_execution_logs (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                task_id text NOT NULL, attempt integer NOT NULL DEFAULT 0,
                task_name text NOT NULL, status text NOT NULL, worker text, queue text,
                labels jsonb NOT NULL DEFAULT '{}'::jsonb, params jsonb,
                error_type text, error_message text, traceback text,
                timeout_s double precision, enqueued_at timestamptz, started_at timestamptz,
                finished_at timestamptz, duration_ms double precision,
                queue_wait_ms double precision, created_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        await conn.execute(
            "CREATE TEMP TABLE taskmon_workers (name text PRIMARY KEY, stopped_at timestamptz,"
            " last_seen timestamptz NOT NULL, heartbeat_s double precision NOT NULL)"
        )
        db_now: datetime = await conn.fetchval("SELECT now()")
        events: dict[str, dict[str, Any]] = {}
        for task_id, name, status, worker, etype, emsg, timeout, age, ms, attempt in ROWS:
            created = db_now - parse_window(age)
            await conn.execute(
                "INSERT INTO task_execution_logs (task_id, task_name, status, worker,"
                " error_type, error_message, timeout_s, created_at, duration_ms, attempt)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                task_id, name, status, worker, etype, emsg, timeout, created, ms, attempt,
            )  # fmt: skip
            events[task_id] = event(
                task_name=name,
                status=status,
                timestamp=created.isoformat(),
                task_id=task_id,
                worker=worker,
                error_type=etype,
                error_message=emsg,
                timeout_s=timeout,
                duration_ms=ms,
                attempt=attempt,
            )
        for query, expected in DB_CASES.items():
            f = parse(query, now=db_now)
            params: list[object] = [0]  # the caller's own parameter comes first
            sql = (
                "SELECT t.task_id FROM task_execution_logs t"
                f" WHERE t.id > $1 AND {filter_sql(f, params, alias='t')}"
            )
            got = {row["task_id"] for row in await conn.fetch(sql, *params)}
            assert got == expected, query
            matched = {tid for tid, ev in events.items() if f.matches(ev, now=db_now)}
            assert matched == expected, query
        assert await conn.fetchval("SELECT count(*) FROM task_execution_logs") == len(ROWS)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("wanted", "stored", "running"),
    [
        ({"running"}, (), "fresh"),
        ({"lost"}, ("lost",), "stale"),
        ({"running", "lost"}, ("running", "lost"), None),
        ({"failed", "running"}, ("failed",), "fresh"),
        ({"success", "failed"}, ("success", "failed"), None),
        (set(), (), None),
    ],
)
def test_the_lost_rule_splits_a_status_filter_in_one_place(
    wanted: set[str], stored: tuple[str, ...], running: str | None
) -> None:
    from taskmon.domain.statuses import split_by_lost_rule

    assert split_by_lost_rule(wanted) == (stored, running)
