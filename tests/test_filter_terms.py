"""param:, label: and queue: terms: one meaning in the parser, the SQL and on live events."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import unconfigured_env

from taskmon.domain.filters import FilterError, TaskFilter, parse, term_for, term_values
from taskmon.domain.params import REDACTED, ParamsPolicy
from taskmon.service.reader import Reader
from taskmon.store import history, maintenance, partitions
from taskmon.store.filter_sql import filter_sql

ROOT = Path(__file__).resolve().parent.parent

# given: the stored form of calls, as the recorder makes it (secrets redacted)
POLICY = ParamsPolicy()
CALLS: dict[str, dict[str, Any]] = {
    "a": {"kwargs": {"user": {"id": 42}, "tenant": "acme", "password": "hunter2"},
          "labels": {"tenant": "acme", "priority": 5}, "queue": "emails"},
    "b": {"kwargs": {"user": {"id": "42"}, "tenant": "globex", "flag": True},
          "labels": {"tenant": "globex"}, "queue": "billing"},
    "c": {"kwargs": {"user": {"id": 7}, "city": "Zürich", "note": 'say "hi"', "ratio": 0.5,
                     "tags": ["x", "y"], "nothing": None},
          "labels": {}, "queue": None},
    "d": {"kwargs": {"user": [{"id": 42}], "name": "Ada Lovelace"},
          "labels": {"api_token": "s3cret"}, "queue": "emails"},
}  # fmt: skip


def _params(task: str) -> dict[str, Any]:
    return POLICY.snapshot([], CALLS[task]["kwargs"])


def _labels(task: str) -> dict[str, Any]:
    labels: dict[str, Any] = json.loads(POLICY.encode(dict(CALLS[task]["labels"])))
    return labels


async def _insert(db: asyncpg.Connection[Any]) -> None:
    now = datetime.now(UTC)
    for i, task in enumerate(CALLS):
        await db.execute(
            "INSERT INTO task_execution_logs (task_id, attempt, task_name, status, queue,"
            " params, labels, created_at) VALUES ($1, 0, 'tests:call', 'success', $2, $3, $4, $5)",
            task, CALLS[task]["queue"], _params(task), _labels(task),
            now - timedelta(seconds=i),
        )  # fmt: skip


def _event(task: str) -> dict[str, Any]:
    return {
        "task_name": "tests:call",
        "status": "success",
        "timestamp": datetime.now(UTC).isoformat(),
        "data": {"task_id": task, "attempt": 0, "params": _params(task),
                 "labels": _labels(task), "queue": CALLS[task]["queue"]},
    }  # fmt: skip


QUERIES: list[tuple[str, set[str]]] = [
    ("param:user.id=42", {"a", "b"}),  # the number and the text 42 alike, not inside a list
    ("param:user.id=7", {"c"}),
    ("param:user.id", {"a", "b", "c"}),  # presence; d's user is a list
    ("param:tenant=acme", {"a"}),
    ("param:flag=true", {"b"}),
    ("param:ratio=0.5", {"c"}),
    ("param:nothing=null", {"c"}),
    ("param:city=Zürich", {"c"}),
    ('param:"note=say \\"hi\\""', {"c"}),
    ('param:"name=Ada Lovelace"', {"d"}),
    ("param:tags=x", set()),  # a list is not a value
    ("param:missing", set()),
    ("param:tenant=acme param:user.id=42", {"a"}),
    ("label:tenant=acme", {"a"}),
    ("label:tenant", {"a", "b"}),
    ("label:priority=5", {"a"}),
    ("queue:emails", {"a", "d"}),
    ("queue:emails queue:billing", {"a", "b", "d"}),
    ("queue:emails param:tenant=acme", {"a"}),
    # a secret: its value was never stored, and its marker matches nothing either
    ("param:password=hunter2", set()),
    (f"param:password={REDACTED}", set()),
    ("param:password", set()),
    ("label:api_token=s3cret", set()),
    (f"label:api_token={REDACTED}", set()),
    ("label:api_token", set()),
]


@pytest.mark.parametrize(("query", "expected"), QUERIES)
async def test_a_term_means_the_same_in_sql_and_on_live_events(
    dsn: str, db: asyncpg.Connection[Any], query: str, expected: set[str]
) -> None:
    await _insert(db)
    flt = parse(query)
    # when the history is read through the application layer
    async with Reader(dsn, pool_size=1) as reader:
        page = await reader.history(flt, limit=100)
    # then it holds exactly the expected attempts, as the live matcher says
    assert {r["task_id"] for r in page.rows} == expected
    assert {t for t in CALLS if flt.matches(_event(t))} == expected


def test_terms_parse_and_round_trip() -> None:
    flt = parse('param:user.id=42 param:flag label:tenant=acme queue:emails param:"n=a b"')
    assert flt.params == (("user.id", "42"), ("flag", None), ("n", "a b"))
    assert flt.labels == (("tenant", "acme"),)
    assert flt.queues == ("emails",)
    assert parse(flt.to_query()) == flt
    assert TaskFilter.from_dict(json.loads(json.dumps(flt.to_dict()))) == flt
    # a value may hold '=': the key ends at the first one
    assert parse("param:expr=a=b").params == (("expr", "a=b"),)


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("param:=42", "param: no key before '='"),
        ("param:a..b=1", "param: 'a..b' has an empty part between dots"),
        ("label:", "label: empty value (e.g. label:tenant=acme)"),
        ("queue:", "queue: empty value (e.g. queue:emails)"),
        ("param:", "param: empty value (e.g. param:user.id=42)"),
    ],
)
def test_a_bad_term_is_one_line(query: str, said: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse(query)
    assert str(caught.value).startswith(said), caught.value
    assert "\n" not in str(caught.value)


def test_the_cli_refuses_a_bad_term_with_status_2() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "taskmon", "history", "--query", "param:=1"],
        cwd=ROOT, env=unconfigured_env(TASKMON_DSN="postgresql://127.0.0.1:1/none"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "taskmon: error: --query: param: no key before '=' (e.g. param:user.id=42)"
    ]


def test_the_filters_secret_marker_is_the_redaction_marker() -> None:
    from taskmon.domain import filters

    assert filters._SECRET == REDACTED


async def test_history_cli_finds_a_task_by_param(dsn: str, db: asyncpg.Connection[Any]) -> None:
    await _insert(db)
    import asyncio

    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskmon", "history", "--query", "param:tenant=acme",
         "--format", "json"],
        cwd=ROOT, env=unconfigured_env(TASKMON_DSN=dsn), capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    assert [r["task_id"] for r in json.loads(out.stdout)] == ["a"]


async def test_the_term_indexes_serve_the_terms(dsn: str, db: asyncpg.Connection[Any]) -> None:
    # given the opt-in indexes, built concurrently on a partitioned table
    assert await partitions.is_partitioned(db) is True
    await _insert(db)
    built: list[tuple[str, str]] = []
    await maintenance.build_search_indexes(db, lambda n, s: built.append((n, s)), params=True)
    assert {n for n, s in built if s == "built"} >= set(maintenance.PARAM_INDEXES)
    # when a param term's SQL is planned without the sequential and ordered scans
    await db.execute("SET enable_seqscan = off")
    await db.execute("SET enable_indexscan = off")
    for query, index in (
        ("param:user.id=42", "params_gin"),
        ("label:tenant=acme", "labels_gin"),
        ("queue:emails", "queue_created"),
    ):
        args: list[object] = []
        where = filter_sql(parse(query), args)
        plan = "\n".join(
            r[0]
            for r in await db.fetch(
                f"EXPLAIN SELECT id FROM task_execution_logs WHERE {where}", *args
            )
        )
        # then a bitmap scan of the term's index answers it
        assert index in plan, plan
    # and the rows it finds are the same
    args = []
    where = filter_sql(parse("param:user.id=42"), args)
    found = await db.fetch(f"SELECT task_id FROM task_execution_logs WHERE {where}", *args)
    assert {r["task_id"] for r in found} == {"a", "b"}


@pytest.mark.parametrize("query", ["param:tenant=acme", "label:tenant=acme", "queue:emails"])
async def test_pages_by_a_term_walk_back_past_the_newest_day_and_week(
    db: asyncpg.Connection[Any], query: str
) -> None:
    # given matching attempts today, three days ago and twenty days ago, with
    # others between them (pages look in the newest day, then week, then all)
    now = datetime.now(UTC)
    await partitions.ensure(db, since=now - timedelta(days=21))
    ages = [timedelta(hours=h) for h in (1, 2)] + [timedelta(days=3, hours=h) for h in (1, 2, 3)]
    ages += [timedelta(days=20, hours=h) for h in (1, 2)]
    for i, age in enumerate(ages):
        for task, tenant, queue in ((f"m{i}", "acme", "emails"), (f"o{i}", "globex", "billing")):
            await db.execute(
                "INSERT INTO task_execution_logs (task_id, attempt, task_name, status, queue,"
                " params, labels, created_at) VALUES ($1, 0, 'tests:call', 'success', $2, $3,"
                " $4, $5)",
                task, queue, {"args": [], "kwargs": {"tenant": tenant}}, {"tenant": tenant},
                now - age,
            )  # fmt: skip
    # when the history is read by the term, two rows a page
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await history.fetch_history(db, parse(query), limit=2, after=cursor)
        seen += [r["task_id"] for r in page.rows]
        cursor = page.next_cursor
        if cursor is None:
            break
    # then every match comes, once, newest first, and nothing else
    assert seen == [f"m{i}" for i in range(len(ages))]


def test_the_writer_and_the_dict_form_of_an_event_have_the_same_keys() -> None:
    import orjson

    from taskmon.domain.events import AttemptRecord, Status, event_from_record
    from taskmon.worker.encode import encode_event

    record = AttemptRecord(
        task_id="t", attempt=0, task_name="tests:call", status=Status.SUCCESS,
        worker="w:1", queue="emails", labels={"tenant": "acme"},
        started_at=datetime.now(UTC), finished_at=datetime.now(UTC),
    )  # fmt: skip
    wire = orjson.loads(encode_event(record, Status.SUCCESS, 1, b"{}", '{"tenant":"acme"}'))
    as_dict = event_from_record(record, 1)
    assert list(wire) == list(as_dict)
    assert list(wire["data"]) == list(as_dict["data"])
    assert wire["data"]["labels"] == as_dict["data"]["labels"] == {"tenant": "acme"}
    assert wire["data"]["queue"] == as_dict["data"]["queue"] == "emails"


async def test_the_hub_filters_live_events_by_param_label_and_queue(dsn: str) -> None:
    # given a hub on the database's NOTIFY, a real writer, and a subscription by terms
    import asyncio
    import dataclasses

    from helpers import publish, record, wait_for

    from taskmon.bus.postgres import PgNotifyPublisher
    from taskmon.server.client import EventReceived, subscribe
    from taskmon.server.hub import Hub
    from taskmon.worker.recorder import Recorder

    hub = Hub(dsn=dsn)
    url = await hub.start("127.0.0.1", 0)
    rec = Recorder(dsn, publisher=PgNotifyPublisher(), flush_interval=0.01)
    await rec.start(wait_connected=10)
    got: list[str] = []
    flt = parse("label:tenant=acme queue:emails param:user.id=42")

    async def follow() -> None:
        async for message in subscribe(url, filters=flt):
            if isinstance(message, EventReceived):
                got.append(str(message.event["data"]["task_id"]))

    follower = asyncio.create_task(follow())
    try:
        base = record(1)
        call = {"args": [], "kwargs": {"user": {"id": 42}}}
        hit = dataclasses.replace(base, queue="emails", labels={"tenant": "acme"}, params=call)
        others = [
            dataclasses.replace(record(2), queue="billing", labels={"tenant": "acme"}, params=call),
            dataclasses.replace(record(3), queue="emails", labels={"tenant": "x"}, params=call),
            dataclasses.replace(record(4), queue="emails", labels={"tenant": "acme"}),
        ]
        # retried until the subscription is in place: the first events may precede it
        tries = 0

        async def published_and_got() -> bool:
            nonlocal tries
            tries += 1
            await publish(rec, [*others, dataclasses.replace(hit, task_id=f"hit-{tries}")])
            return bool(got)

        await wait_for(published_and_got, interval=0.2, what="a matching live event")
    finally:
        follower.cancel()
        await rec.stop()
        await hub.stop()
    # then only the attempt matching every term arrived
    assert got and all(task_id.startswith("hit-") for task_id in got), got


@pytest.mark.parametrize(
    ("kind", "key", "value", "text"),
    [
        ("param", "user.id", "42", "param:user.id=42"),
        ("param", "name", "Ada Lovelace", 'param:"name=Ada Lovelace"'),
        ("param", "note", 'say "hi"', 'param:"note=say \\"hi\\""'),
        ("param", "expr", "a=b", "param:expr=a=b"),
        ("param", "flag", None, "param:flag"),
        ("label", "tenant", "acme", "label:tenant=acme"),
        ("label", "api.version", "2", "label:api.version=2"),
        ("queue", "emails", None, "queue:emails"),
        ("queue", "low priority", None, 'queue:"low priority"'),
    ],
)
def test_term_for_quotes_as_to_query_and_parses_back(
    kind: str, key: str, value: str | None, text: str
) -> None:
    term = term_for(kind, key, value)
    assert term == text
    flt = parse(term)
    if kind == "queue":
        assert flt.queues == (key,)
    else:
        assert getattr(flt, kind + "s") == ((key, value),)


@pytest.mark.parametrize(
    ("kind", "key", "value", "said"),
    [
        ("param", "a=b", "1", "param: 'a=b' holds '='"),
        ("param", "", "1", "param: no key before '='"),
        ("param", "a..b", "1", "param: 'a..b' has an empty part between dots"),
        ("label", "x", "a\x00b", "label: 'x' contains a NUL character"),
        ("queue", "emails", "x", "queue: 'emails' takes no value"),
        ("worker", "host", None, "'worker' is not a term kind"),
    ],
)
def test_term_for_refuses_what_a_term_cannot_carry(
    kind: str, key: str, value: str | None, said: str
) -> None:
    with pytest.raises(FilterError) as caught:
        term_for(kind, key, value)
    assert str(caught.value).startswith(said), caught.value


def test_term_values_are_the_terms_each_call_matches() -> None:
    # given the stored calls (secrets redacted); c's values as terms spell them
    assert term_values(_params("c")["kwargs"]) == [
        ("user.id", "7"), ("city", "Zürich"), ("note", 'say "hi"'), ("ratio", "0.5"),
        ("nothing", "null"),
    ]  # fmt: skip
    assert term_values(_params("b")["kwargs"]) == [
        ("user.id", "42"), ("tenant", "globex"), ("flag", "true"),
    ]  # fmt: skip
    # a secret and a list are never offered; labels do not nest
    assert ("password", REDACTED) not in term_values(_params("a")["kwargs"])
    assert term_values(_params("d")["kwargs"]) == [("name", "Ada Lovelace")]
    assert term_values(_labels("d"), nested=False) == []
    assert term_values({"api.v": 2, "meta": {"x": 1}}, nested=False) == [("api.v", "2")]
    # a key a term cannot name is left out
    assert term_values({"a.b": 1, "x=y": 2, " ": 3, "big": 1e20}) == [("big", "1e+20")]
    for task in CALLS:
        params = term_values(_params(task)["kwargs"])
        labels = term_values(_labels(task), nested=False)
        # when each is made a term, then it matches its own call, live and parsed back
        for kind, pairs in (("param", params), ("label", labels)):
            for key, value in pairs:
                flt = parse(term_for(kind, key, value))
                assert flt.matches(_event(task)), (task, kind, key, value)
