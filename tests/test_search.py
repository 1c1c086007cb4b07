"""Error-text and free-word search: the indexes of sql/0003 and the SQL that uses them.

Free words may be resolved to task names through ``task_names``
(:func:`word_task_names_sql`) so that ``filter_sql`` needs no ``ILIKE`` on
``task_name``; the result must be exactly the same rows as without.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from test_rollups import insert

from taskmon.domain.filters import TaskFilter, parse
from taskmon.store import migrations
from taskmon.store.db import connect
from taskmon.store.filter_sql import filter_sql, word_task_names_sql

NOW = datetime.now(UTC).replace(microsecond=0)
TRGM_INDEXES = {"idx_task_logs_error_message_trgm", "idx_task_logs_error_type_trgm"}
ERRORS_INDEX = "idx_task_logs_errors_status"

# (task_id, task_name, status, error_type, error_message)
ROWS = [
    ("e1", "app.tasks:extract", "failed", "TimeoutError", "timed out after 30s"),
    ("e2", "app.tasks:extract", "success", None, None),
    ("l1", "app.tasks:load", "retrying", "ConnectionError", "connection reset by peer"),
    ("l2", "app.tasks:load", "success", None, None),
    ("b1", "app.boom:detonate", "success", None, None),
    ("p1", "app.pct:100%_off", "failed", "ValueError", "50% of a_b\\c"),
    ("u1", "app.UPPER:Shout", "failed", "KeyError", "'customer_id'"),
    ("t1", "app.tasks:transform", "failed", None, "boom: extract failed"),
]

# word queries whose task-name part resolves to some, all or none of the names
WORD_CASES: dict[str, set[str]] = {
    "boom": {"b1", "t1"},  # a task name and an error message
    "BOOM": {"b1", "t1"},  # case-insensitive, like ILIKE
    "extract": {"e1", "e2", "t1"},
    "tasks": {"e1", "e2", "l1", "l2", "t1"},
    "shout": {"u1"},
    "timeout": {"e1"},  # error_type only
    "reset peer": {"l1"},
    '"reset by"': {"l1"},
    "extract timed": {"e1"},
    "%": {"p1"},  # LIKE metacharacters are literal
    "_": {"p1", "u1"},
    "\\": {"p1"},
    "nothing-matches": set(),
    "boom extract": {"t1"},
    "status:failed boom": {"t1"},
    "task:load reset": {"l1"},
    'error:"timed out"': {"e1"},
    "error:reset tasks": {"l1"},
}


async def seed(conn: asyncpg.Connection[Any]) -> None:
    await insert(
        conn,
        [
            {"task_id": tid, "task_name": name, "status": status, "error_type": etype,
             "error_message": emsg, "created_at": NOW - timedelta(minutes=i)}
            for i, (tid, name, status, etype, emsg) in enumerate(ROWS)
        ],
    )  # fmt: skip


async def resolve(conn: asyncpg.Connection[Any], words: tuple[str, ...]) -> dict[str, list[str]]:
    params: list[object] = []
    rows = await conn.fetch(word_task_names_sql(words, params), *params)
    return {r["word"]: list(r["task_names"]) for r in rows}


async def ids(conn: asyncpg.Connection[Any], cond: str, params: list[object]) -> set[str]:
    rows = await conn.fetch(f"SELECT r.task_id FROM task_execution_logs r WHERE {cond}", *params)
    return {r["task_id"] for r in rows}


async def index_names(conn: asyncpg.Connection[Any]) -> set[str]:
    rows = await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'task_execution_logs'"
    )
    return {r["indexname"] for r in rows}


async def has_pg_trgm(conn: asyncpg.Connection[Any]) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_trgm')"
        )
    )


# ---------------------------------------------------------------------------
# SQL text
# ---------------------------------------------------------------------------


def test_without_resolved_names_the_sql_is_unchanged() -> None:
    f = parse('status:failed error:"timed out" boom reset')
    plain: list[object] = []
    expected = filter_sql(f, plain, alias="r")
    for names in (None, {}, {"other": ["x"]}):
        params: list[object] = []
        assert filter_sql(f, params, alias="r", word_task_names=names) == expected
        assert params == plain
    assert "r.task_name ILIKE $3" in expected and "r.task_name ILIKE $4" in expected


def test_resolved_word_compares_task_name_with_the_names() -> None:
    f = parse("boom reset")
    params: list[object] = ["caller"]
    sql = filter_sql(
        f, params, alias="r", word_task_names={"boom": ("app.boom:go",), "nope": ["x"]}
    )
    assert sql == (
        "(r.task_name = ANY($3::text[]) OR r.error_message ILIKE $2 ESCAPE '\\' "
        "OR r.error_type ILIKE $2 ESCAPE '\\') AND "
        "(r.task_name ILIKE $4 ESCAPE '\\' OR r.error_message ILIKE $4 ESCAPE '\\' "
        "OR r.error_type ILIKE $4 ESCAPE '\\')"
    )
    assert params == ["caller", "%boom%", ["app.boom:go"], "%reset%"]
    # no name at all still compiles (and matches through the error columns only)
    params = []
    assert "task_name = ANY($2::text[])" in filter_sql(f, params, word_task_names={"boom": []})
    assert params[1] == []


def test_a_string_is_not_a_list_of_names() -> None:
    with pytest.raises(TypeError, match="list of names"):
        filter_sql(parse("boom"), [], word_task_names={"boom": "app.boom:go"})


def test_word_task_names_sql_takes_values_as_params_only() -> None:
    params: list[object] = [1]
    sql = word_task_names_sql(["a'; DROP TABLE x; --", "50%", "a'; DROP TABLE x; --"], params)
    assert "DROP" not in sql and "50" not in sql
    assert params == [1, ["a'; DROP TABLE x; --", "50%"], ["%a'; DROP TABLE x; --%", "%50\\%%"]]
    assert "$2::text[]" in sql and "$3::text[]" in sql


# ---------------------------------------------------------------------------
# against PostgreSQL
# ---------------------------------------------------------------------------


async def test_word_resolution_returns_every_word(db: asyncpg.Connection[Any]) -> None:
    await seed(db)
    got = await resolve(db, ("boom", "TASKS", "%", "zzz", "_"))
    assert got == {
        "boom": ["app.boom:detonate"],
        "TASKS": ["app.tasks:extract", "app.tasks:load", "app.tasks:transform"],
        "%": ["app.pct:100%_off"],
        "zzz": [],
        "_": ["app.pct:100%_off"],
    }
    assert await resolve(db, ()) == {}


@pytest.mark.parametrize("query", list(WORD_CASES))
async def test_resolved_words_select_the_same_rows(db: asyncpg.Connection[Any], query: str) -> None:
    await seed(db)
    f = parse(query)
    expected = WORD_CASES[query]
    plain: list[object] = []
    assert await ids(db, filter_sql(f, plain, alias="r"), plain) == expected
    params: list[object] = []
    names = await resolve(db, f.words)
    assert set(names) == set(f.words)
    assert (
        await ids(db, filter_sql(f, params, alias="r", word_task_names=names), params) == expected
    )
    db_now = await db.fetchval("SELECT now()")
    events: list[dict[str, Any]] = [
        {"task_name": name, "status": status, "timestamp": NOW.isoformat(),
         "data": {"task_id": tid, "error_type": etype, "error_message": emsg}}
        for tid, name, status, etype, emsg in ROWS
    ]  # fmt: skip
    assert {e["data"]["task_id"] for e in events if f.matches(e, now=db_now)} == expected


async def test_migration_builds_the_search_indexes(db: asyncpg.Connection[Any]) -> None:
    names = await index_names(db)
    assert ERRORS_INDEX in names
    if not await has_pg_trgm(db):
        pytest.skip("this PostgreSQL has no pg_trgm")
    assert names >= TRGM_INDEXES


async def test_error_and_word_filters_can_use_the_indexes(db: asyncpg.Connection[Any]) -> None:
    """The conditions filter_sql writes are ones the partial indexes can serve.

    With sequential scans (and the other orderings) disabled the planner still
    has a choice: if the expression did not imply the index predicate, or the
    operator were not the trigram one, the plan would not name the index.
    """
    if not await has_pg_trgm(db):
        pytest.skip("this PostgreSQL has no pg_trgm")
    await seed(db)
    await db.execute("ANALYZE task_execution_logs")

    async def plan(f: TaskFilter, names: dict[str, list[str]] | None = None) -> str:
        params: list[object] = []
        cond = filter_sql(f, params, alias="r", word_task_names=names)
        sql = f"SELECT r.id FROM task_execution_logs r WHERE {cond} ORDER BY r.created_at DESC"
        rows = await db.fetch(f"EXPLAIN {sql}", *params)
        text = "\n".join(r[0] for r in rows)
        # a plan names each partition's own index: name the partitioned index instead
        children = await db.fetch(
            "SELECT c.relname AS child, p.relname AS parent FROM pg_inherits AS i"
            " JOIN pg_class AS c ON c.oid = i.inhrelid JOIN pg_class AS p ON p.oid = i.inhparent"
            " WHERE c.relkind = 'i'"
        )
        parents = {r["child"]: r["parent"] for r in children}
        return re.sub(r"\b\w+\b", lambda m: parents.get(m.group(0), m.group(0)), text)

    tr = db.transaction()
    await tr.start()
    try:  # the trigram indexes alone (the b-tree of error rows is a rival on 8 rows)
        await db.execute(f"DROP INDEX {ERRORS_INDEX}")
        await db.execute("SET LOCAL enable_seqscan = off")
        await db.execute("SET LOCAL enable_indexscan = off")  # bitmap scans only
        error_plan = await plan(parse('error:"no such thing"'))
        assert set(error_plan.split()) >= TRGM_INDEXES, error_plan
        word = parse("boom")
        word_plan = await plan(word, await resolve(db, word.words))
        assert set(word_plan.split()) >= TRGM_INDEXES, word_plan
        assert "task_name = ANY" in word_plan and "BitmapOr" in word_plan, word_plan
        # only the error columns have an index: an unresolved word cannot be served
        assert "trgm" not in await plan(word)
    finally:
        await tr.rollback()

    # an error text within one status reads only that status's rows with an error,
    # not every row of the status (here a thousand successes without one)
    filler = [
        {"task_id": f"s{i}", "task_name": "app.tasks:load", "status": "success",
         "created_at": NOW - timedelta(seconds=i)}
        for i in range(1000)
    ]  # fmt: skip
    await insert(db, filler)
    await db.execute("ANALYZE task_execution_logs")
    async with db.transaction():
        await db.execute("SET LOCAL enable_bitmapscan = off")  # history pages read in order
        status_plan = await plan(parse('status:success error:"timed out"'))
        assert ERRORS_INDEX in status_plan, status_plan


# ---------------------------------------------------------------------------
# the migration where the indexes cannot or should not be built
# ---------------------------------------------------------------------------


def as_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def unprivileged_dsn(empty_dsn: str) -> AsyncIterator[str]:
    """`empty_dsn` for a new role that may create tables but not extensions.

    pg_trgm is a trusted extension: any role with CREATE on the database may
    create it, so the role gets CREATE on the schema only.
    """
    role = f"taskmon_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(empty_dsn)
    try:
        if not await admin.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            pytest.skip("the test server's role cannot create roles")
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO "{role}"')
        await admin.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"')
        try:
            probe = await asyncpg.connect(as_user(empty_dsn, role))
        except (OSError, asyncpg.PostgresError) as exc:
            pytest.skip(f"cannot log in as a new role on the test server: {exc}")
        await probe.close()
        yield as_user(empty_dsn, role)
    finally:
        await admin.execute(f'DROP OWNED BY "{role}"')  # what it created, and its grants
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_migrating_without_the_right_to_create_pg_trgm_still_succeeds(
    unprivileged_dsn: str,
) -> None:
    conn = await connect(unprivileged_dsn)
    notices: list[str] = []
    conn.add_log_listener(lambda _conn, msg: notices.append(msg.message))
    try:
        # given a role refused CREATE EXTENSION (the very error the block must absorb)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE EXTENSION pg_trgm")

        # when it applies every migration (as a worker does at start)
        applied = await migrations.upgrade(conn)

        # then all are recorded, the b-tree is built, the trigram indexes are skipped
        assert [m.version for m in applied] == [m.version for m in migrations.available()]
        names = await index_names(conn)
        assert ERRORS_INDEX in names and not TRGM_INDEXES & names
        assert any("trigram indexes skipped (42501" in n for n in notices), notices
        # and error and word filters still answer, without the indexes
        await seed(conn)
        for query in ('error:"timed out"', "boom", "status:failed boom"):
            params: list[object] = []
            f = parse(query)
            names_by_word = await resolve(conn, f.words)
            cond = filter_sql(f, params, alias="r", word_task_names=names_by_word)
            assert await ids(conn, cond, params) == WORD_CASES[query]
    finally:
        await conn.close()


async def test_a_large_table_or_a_bad_setting_skips_the_indexes(empty_dsn: str) -> None:
    conn = await connect(empty_dsn)
    notices: list[str] = []
    conn.add_log_listener(lambda _conn, msg: notices.append(msg.message))
    try:
        sql = {m.version: m.sql for m in migrations.available()}
        for version in (1, 2):
            await conn.execute(sql[version])
        await seed(conn)  # a heap of one page, "large" for a limit of 0 bytes

        await conn.execute("SET taskmon.search_index_max_bytes = 0")
        await conn.execute(sql[3])
        assert not (TRGM_INDEXES | {ERRORS_INDEX}) & await index_names(conn)
        assert any("were not built now" in n for n in notices), notices

        await conn.execute("SET taskmon.search_index_max_bytes = 'lots'")
        await conn.execute(sql[3])
        assert not (TRGM_INDEXES | {ERRORS_INDEX}) & await index_names(conn)
        assert any("invalid input syntax" in n for n in notices), notices

        await conn.execute("SET taskmon.search_index_max_bytes = -1")  # no limit
        await conn.execute(sql[3])
        assert ERRORS_INDEX in await index_names(conn)
    finally:
        await conn.close()
