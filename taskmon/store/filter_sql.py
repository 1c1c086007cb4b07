"""A :class:`~taskmon.domain.filters.TaskFilter` compiled to a parameterised SQL condition.

The filter language (:mod:`taskmon.domain.filters`) parses queries and matches live
events; this module gives the same filter its meaning over
``task_execution_logs``. Patterns come from the filter module
(:func:`~taskmon.domain.filters.task_like_patterns`,
:func:`~taskmon.domain.filters.contains_pattern`), so a task glob or an error text
means the same in SQL as on a live event.

Error texts and words are ``ILIKE`` substrings, which the trigram indexes of
``sql/0003_error_search.sql`` serve on the error columns. A word's
``task_name`` part has no such index: it is resolved first to the recorded task
names it matches (:func:`resolve_word_task_names`, through ``task_names``),
which the ``(task_name, ...)`` index serves, so a rare word is found through
indexes instead of by reading the whole table.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg

from taskmon.domain.filters import (
    ERROR_COLUMNS,
    WORD_COLUMNS,
    TaskFilter,
    contains_pattern,
    task_like_patterns,
    term_candidates,
)
from taskmon.domain.params import REDACTED
from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S, split_by_lost_rule
from taskmon.store.schema import lost_cutoff_sql, started_sql

__all__ = [
    "filter_sql",
    "resolve_task_names",
    "resolve_word_task_names",
    "resolved_filter_sql",
    "word_task_names_sql",
]


def filter_sql(
    flt: TaskFilter,
    params: list[object],
    *,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
    alias: str = "",
    word_task_names: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Compile `flt` to a boolean SQL expression over ``task_execution_logs``.

    Every value is appended to ``params`` and referenced as ``$N`` (its 1-based
    position), so ``params`` may already hold the caller's own parameters.

    Args:
        flt: the filter.
        params: the query's parameter list, extended in place.
        lost_after_s: how long a ``running`` row without ``timeout_s`` may run
            before it counts as ``lost`` (with a timeout: twice the timeout).
        alias: table alias to prefix the columns with.
        word_task_names: for some of the filter's words, every recorded task
            name that the word matches (case-insensitive substring, from
            :func:`word_task_names_sql`). A word missing from it is matched
            against ``task_name`` with ``ILIKE``.

    Returns:
        The expression, ``TRUE`` for an empty filter.
    """
    if alias and not alias.isidentifier():
        raise ValueError(f"alias {alias!r} is not an identifier")
    prefix = f"{alias}." if alias else ""

    def col(name: str) -> str:
        return prefix + name

    def arg(value: object) -> str:
        params.append(value)
        return f"${len(params)}"

    def like(column: str, placeholder: str, op: str = "LIKE") -> str:
        return f"{col(column)} {op} {placeholder} ESCAPE '\\'"

    clauses: list[str] = []
    if flt.statuses:
        clauses.append(_status_sql(flt.statuses, col, arg, lost_after_s, alias))
    if flt.tasks:
        likes = (arg(p) for task in flt.tasks for p in task_like_patterns(task))
        clauses.append(_any(like("task_name", n) for n in likes))
    if flt.workers:
        likes = (arg(contains_pattern(worker)) for worker in flt.workers)
        clauses.append(_any(like("worker", n) for n in likes))
    for text in flt.errors:  # each must match (AND), in either column
        n = arg(contains_pattern(text))  # one parameter, referenced once per column
        clauses.append(_any(like(c, n, "ILIKE") for c in ERROR_COLUMNS))
    resolved = word_task_names or {}
    for word in flt.words:  # likewise, in the task name or either error column
        n = arg(contains_pattern(word))
        arms = [like(c, n, "ILIKE") for c in WORD_COLUMNS]
        names = resolved.get(word)
        if isinstance(names, str):  # a str is a Sequence[str] too, of its letters
            raise TypeError(f"word_task_names[{word!r}] must be a list of names, not a str")
        if names is not None:
            # `list` also copies a tuple or another sequence into what asyncpg takes
            arms[0] = f"{col('task_name')} = ANY({arg(list(names))}::text[])"
        clauses.append(_any(arms))
    if flt.task_id is not None:
        clauses.append(f"{col('task_id')} = {arg(flt.task_id)}")
    if flt.since is not None:
        clauses.append(f"{col('created_at')} >= {arg(flt.since)}")
    if flt.until is not None:
        clauses.append(f"{col('created_at')} < {arg(flt.until)}")
    if flt.min_duration_ms is not None:
        clauses.append(f"{col('duration_ms')} >= {arg(flt.min_duration_ms)}")
    if flt.max_duration_ms is not None:
        clauses.append(f"{col('duration_ms')} <= {arg(flt.max_duration_ms)}")
    if flt.attempt is not None:
        op, count = flt.attempt  # one of the comparison operators, checked on construction
        clauses.append(f"{col('attempt')} {op} {arg(count)}")
    if len(flt.queues) == 1:
        # an equality, so the (queue, created_at, id) index reads a page in order
        clauses.append(f"{col('queue')} = {arg(flt.queues[0])}")
    elif flt.queues:
        clauses.append(f"{col('queue')} = ANY({arg(list(flt.queues))}::text[])")
    for name, value in flt.params:
        clauses.append(_json_term(col("params"), ("kwargs", *name.split(".")), value, arg))
    for name, value in flt.labels:
        clauses.append(_json_term(col("labels"), (name,), value, arg))
    return " AND ".join(clauses) or "TRUE"


def _json_term(
    column: str, path: tuple[str, ...], value: str | None, arg: Callable[[object], str]
) -> str:
    """A ``param:``/``label:`` term over a jsonb column, as :meth:`TaskFilter.matches` has it.

    A value is matched by containment (``@>``, which a ``jsonb_path_ops`` GIN
    index answers) of the text, or of the number, boolean or null it spells
    (``42``: the string and the number); presence by a strict JSON path. A
    secret's stored marker is neither equal to anything nor present. The SQL
    text depends only on the term's kind, never on its value.
    """
    if value is None:
        steps = "".join("." + _json_string(part) for part in path)
        # strict: no unwrapping of arrays on the way (lax mode would look inside them)
        check = f'@.type() != "string" || @ != {_json_string(REDACTED)}'
        return f"({column} @? {arg(f'strict ${steps} ? ({check})')}::text::jsonpath)"
    found = term_candidates(value)
    # two arms always: the text, and what else it spells (a NULL arm matches nothing)
    docs: list[str | None] = [_nested(path, found[0]) if found else None]
    docs.append(_nested(path, found[1]) if len(found) > 1 else None)
    return _any(f"{column} @> {arg(doc)}::text::jsonb" for doc in docs)


def _nested(path: tuple[str, ...], value: object) -> str:
    """``{"kwargs": {"user": {"id": 42}}}`` for the path ``kwargs.user.id`` and 42, as JSON."""
    doc: object = value
    for part in reversed(path):
        doc = {part: doc}
    return json.dumps(doc, ensure_ascii=False)


def _json_string(text: str) -> str:
    """`text` as a JSON string literal, which is also a JSON path string literal."""
    return json.dumps(text, ensure_ascii=True)


def _any(conditions: Iterable[str]) -> str:
    return "(" + " OR ".join(conditions) + ")"


def _status_sql(
    statuses: frozenset[str],
    col: Callable[[str], str],
    arg: Callable[[object], str],
    lost_after_s: float,
    alias: str,
) -> str:
    """``status`` condition, where a long-running ``running`` row counts as ``lost``."""
    stored, running = split_by_lost_rule(statuses)
    conditions: list[str] = []
    if stored:
        conditions.append(f"{col('status')} = ANY({arg(list(stored))}::text[])")
    if running is not None:
        cutoff = lost_cutoff_sql(f"{arg(float(lost_after_s))}::double precision", alias=alias)
        op = "<" if running == "stale" else ">="
        started = started_sql(alias)
        conditions.append(f"({col('status')} = 'running' AND {started} {op} {cutoff})")
    return _any(conditions)


def word_task_names_sql(words: Sequence[str], params: list[object]) -> str:
    """A statement resolving free words to the recorded task names each one matches.

    It reads the ``task_names`` table (every task name ever recorded, see
    ``sql/0002_rollups.sql``) with the very condition :func:`filter_sql` puts
    on ``task_name`` for a word, and returns one row per word: ``word`` (text)
    and ``task_names`` (text[], sorted, empty when none matches).
    ``{row["word"]: row["task_names"]}`` is what ``filter_sql(word_task_names=...)``
    takes.

    Args:
        words: the words, e.g. :attr:`TaskFilter.words`.
        params: the statement's parameter list, extended in place (``$N`` as in
            :func:`filter_sql`).

    Returns:
        The statement (a ``SELECT``).
    """
    words = list(dict.fromkeys(words))
    params.append(words)
    word_arg = f"${len(params)}"
    params.append([contains_pattern(word) for word in words])
    pattern_arg = f"${len(params)}"
    return (
        "SELECT w.word, coalesce(array_agg(n.task_name ORDER BY n.task_name)"
        " FILTER (WHERE n.task_name IS NOT NULL), '{}'::text[]) AS task_names"
        f" FROM unnest({word_arg}::text[], {pattern_arg}::text[]) AS w(word, pattern)"
        " LEFT JOIN task_names n ON n.task_name ILIKE w.pattern ESCAPE '\\'"
        " GROUP BY w.word"
    )


async def resolve_task_names(conn: asyncpg.Connection[Any], patterns: Sequence[str]) -> list[str]:
    """The recorded task names that any of `patterns` (filter-language task values) matches.

    Exact names let the planner use the ``(task_name, status, created_at)``
    index and the rollups' keys, where a substring ``LIKE`` can use neither.
    """
    params: list[object] = []
    cond = filter_sql(TaskFilter(tasks=tuple(patterns)), params, alias="r")
    rows = await conn.fetch(
        f"SELECT r.task_name FROM task_names r WHERE {cond} ORDER BY 1",
        *params,
    )
    return [r["task_name"] for r in rows]


async def resolve_word_task_names(
    conn: asyncpg.Connection[Any], words: Sequence[str]
) -> dict[str, list[str]]:
    """For each free word, the recorded task names it matches (a substring, any case).

    With them a word's ``task_name`` condition is an equality the
    ``(task_name, ...)`` index serves, and its error columns have trigram
    indexes (``sql/0003_error_search.sql``): a rare word is then found through
    indexes instead of by reading every row (see :func:`filter_sql`).
    """
    if not words:
        return {}
    params: list[object] = []
    rows = await conn.fetch(word_task_names_sql(words, params), *params)
    return {r["word"]: list(r["task_names"]) for r in rows}


async def resolved_filter_sql(
    conn: asyncpg.Connection[Any], flt: TaskFilter, params: list[object], lost_after_s: float
) -> str:
    """`flt` as SQL over alias ``r``, with task patterns and words resolved to exact names."""
    words = await resolve_word_task_names(conn, flt.words)
    if not flt.tasks:
        return filter_sql(flt, params, lost_after_s=lost_after_s, alias="r", word_task_names=words)
    names = await resolve_task_names(conn, flt.tasks)
    rest = dataclasses.replace(flt, tasks=())
    cond = filter_sql(rest, params, lost_after_s=lost_after_s, alias="r", word_task_names=words)
    params.append(names)
    return f"{cond} AND r.task_name = ANY(${len(params)}::text[])"
