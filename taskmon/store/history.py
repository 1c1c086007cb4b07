"""History: pages of attempts newest first, the attempts of a task, counts by status.

A page is a keyset scan on ``(created_at, id)`` newest first, so any page
costs the same as the first; with status or task filters a page is merged
from one ordered index scan per status (and task name), so a rare status
costs no more than a common one. Rows are :class:`~taskmon.store.schema.AttemptRow`.

No textual, typer or rich here: the TUI and the CLI both call this module.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg

from taskmon.domain.filters import TaskFilter
from taskmon.domain.statuses import split_by_lost_rule
from taskmon.store.filter_sql import filter_sql, resolve_task_names, resolve_word_task_names
from taskmon.store.schema import (
    DEFAULT_LOST_AFTER_S,
    STATUSES,
    AttemptRow,
    lost_cutoff_sql,
    select_list_sql,
    started_sql,
)

__all__ = [
    "CursorError",
    "HistoryPage",
    "count_by_status",
    "decode_cursor",
    "encode_cursor",
    "fetch_attempts",
    "fetch_attempts_by_key",
    "fetch_history",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# $1 is lost_after_s in every statement reading these columns
_COLUMNS = select_list_sql("$1::double precision")


class CursorError(ValueError):
    """An ``--after`` value that is not a cursor printed by ``taskmon history``."""


def _rows(records: Sequence[asyncpg.Record]) -> list[AttemptRow]:
    # the select list is COLUMNS, the keys of AttemptRow
    return [cast(AttemptRow, dict(r)) for r in records]


@dataclass(frozen=True)
class HistoryPage:
    """One page of attempts, newest first.

    Attributes:
        rows: the attempts (``status`` is ``lost`` for attempts running too long).
        next_cursor: pass as ``after`` for the next page; None on the last page.
    """

    rows: list[AttemptRow]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: int) -> str:
    """An opaque, URL-safe cursor for the position just after this row."""
    delta = created_at - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raw = f"{micros}.{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The ``(created_at, id)`` a cursor stands for.

    Raises:
        CursorError: when `cursor` is not one :func:`encode_cursor` made.
    """
    bad = CursorError(
        f"--after: {cursor[:40]!r} is not a cursor "
        "(use the value printed after 'next page: --after' by a previous page)"
    )
    if not cursor or len(cursor) > 64 or cursor.strip(_CURSOR_ALPHABET):
        raise bad
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        micros_text, id_text = text.split(".")
        if not (micros_text.lstrip("-").isdigit() and id_text.isdigit()):
            raise bad
        micros, row_id = int(micros_text), int(id_text)
        created_at = _EPOCH + timedelta(microseconds=micros)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise bad from None
    if row_id > 2**63 - 1:
        raise bad
    return created_at, row_id


# A page with status or task filters is a UNION ALL of one branch per status
# (x per task name when there are few), each an ordered index scan that stops
# after one page. Each branch costs some 0.1-0.3 ms to plan and start, so
# beyond this many the task names are one `= ANY` condition in each status branch.
_MAX_BRANCHES = 12
# A page filtered by a status or task is looked for in the newest day first,
# then the newest week, then everywhere (None): the first window that yields a
# whole page holds exactly the page, since every row older than the window
# ranks below it. On a partitioned table a window spans a few
# partitions, and planning the branches over every partition (10 ms at 35
# day partitions) was most of a page's time.
_WINDOWS: tuple[timedelta | None, ...] = (timedelta(days=1), timedelta(days=7), None)
# A queue, param or label term alone: the newest day, then everywhere. A common
# value fills its page from the newest partition; a rare one (a user id, an
# order id) is answered by its index over all of them, and a week's window
# between the two would only be a third statement for it (bench/search_terms.py).
_TERM_WINDOWS: tuple[timedelta | None, ...] = (timedelta(days=1), None)
# When a 'running' row started before this, it counts as lost ($1 is lost_after_s in
# every history statement).
_CUTOFF = lost_cutoff_sql("$1::double precision")
_STARTED = started_sql()


def _status_branches(statuses: frozenset[str], arg: Callable[[object], str]) -> list[str]:
    """One condition per branch, together selecting exactly the rows `statuses` selects.

    A condition is an equality on ``status`` (so the branch can read the
    ``(status, created_at, id)`` or ``(task_name, status, created_at, id)``
    index in order), narrowed for ``running`` rows by the lost rule: ``lost``
    is ``status = 'lost'`` plus the stale running rows, ``running`` only the
    others (:func:`taskmon.domain.statuses.split_by_lost_rule`, as the filter's
    own SQL). The 'running' literal is a schema constant, inline so the planner
    may use the partial index on running rows.
    """
    stored, running = split_by_lost_rule(statuses or STATUSES)
    branches = [
        "r.status = 'running'" if status == "running" else f"r.status = {arg(status)}"
        for status in stored
    ]
    if running is not None:
        op = "<" if running == "stale" else ">="
        branches.append(f"r.status = 'running' AND {_STARTED} {op} {_CUTOFF}")
    return branches


def _history_sql(
    flt: TaskFilter,
    names: list[str] | None,
    params: list[object],
    keyset: tuple[str, ...],
    limit: int,
    lost_after_s: float,
    word_names: Mapping[str, Sequence[str]] | None = None,
    window: tuple[str, ...] = (),
    fenced: bool = False,
) -> str:
    """The page statement for `flt`, its task patterns already resolved to `names`.

    Without status or task filters one scan of the ``(created_at, id)`` index
    serves any page. With them, a single scan of that index would read past
    every non-matching row (most of the table for a rare status), so the page
    is merged from branches that each read one index range in order and stop
    after ``LIMIT`` rows: PostgreSQL merges them (Merge Append), reading about
    one page plus one row per branch whatever the depth or the selectivity.
    `keyset` holds the cursor condition, if any; `limit` is the row count to fetch;
    `word_names` are the words' task names (:func:`resolve_word_task_names`);
    `window` a lower bound on ``created_at`` (see :data:`_WINDOWS`); `fenced`
    makes an unbranched statement find every match before ordering them (see
    :func:`fetch_history`).
    """

    def arg(value: object) -> str:
        params.append(value)
        return f"${len(params)}"

    if not flt.statuses and names is None:  # the created_at index alone
        cond = filter_sql(
            flt, params, lost_after_s=lost_after_s, alias="r", word_task_names=word_names
        )
        where = " AND ".join((cond, *keyset, *window))
        if fenced:
            # OFFSET 0 keeps the LIMIT out of the scan: the planner reads the
            # matches from the terms' GIN indexes, not every row by created_at
            return (
                f"SELECT * FROM (SELECT {_COLUMNS} FROM task_execution_logs r WHERE {where} "
                f"OFFSET 0) AS page ORDER BY created_at DESC, id DESC LIMIT {arg(limit)}"
            )
        return (
            f"SELECT {_COLUMNS} FROM task_execution_logs r WHERE {where} "
            f"ORDER BY r.created_at DESC, r.id DESC LIMIT {arg(limit)}"
        )
    rest = filter_sql(
        dataclasses.replace(flt, statuses=frozenset(), tasks=()),
        params,
        lost_after_s=lost_after_s,
        alias="r",
        word_task_names=word_names,
    )
    status_conds = _status_branches(flt.statuses, arg)
    if names is not None and len(names) * len(status_conds) <= _MAX_BRANCHES:
        name_conds = [f"r.task_name = {arg(name)}" for name in names]
    elif names is not None:
        name_conds = [f"r.task_name = ANY({arg(names)}::text[])"]
    else:
        name_conds = ["TRUE"]
    n = arg(limit)
    branches = [
        f"(SELECT {_COLUMNS} FROM task_execution_logs r "
        f"WHERE {' AND '.join((name, status, rest, *keyset, *window))} "
        f"ORDER BY r.created_at DESC, r.id DESC LIMIT {n})"
        for name in name_conds
        for status in status_conds
    ]
    return (
        f"SELECT * FROM ({' UNION ALL '.join(branches)}) AS page "
        f"ORDER BY created_at DESC, id DESC LIMIT {n}"
    )


async def fetch_history(
    conn: asyncpg.Connection[Any],
    flt: TaskFilter,
    *,
    limit: int = 50,
    after: str | None = None,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
) -> HistoryPage:
    """One page of attempts matching `flt`, newest first by ``(created_at, id)``.

    Every page, filtered or deep, reads about one page of index entries (see
    :func:`_history_sql`); only filters that no index serves (worker, error
    text, words, durations) read past the rows they reject.

    Args:
        conn: a connection from :func:`taskmon.store.db.connect`.
        flt: the filter.
        limit: rows per page (at least 1).
        after: the previous page's ``next_cursor``.
        lost_after_s: how long a ``running`` attempt without a timeout may run
            before it shows as ``lost``.

    Raises:
        CursorError: `after` is not a cursor.
        ValueError: `limit` is below 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    params: list[object] = [float(lost_after_s)]
    keyset: tuple[str, ...] = ()
    if after is not None:
        created_at, row_id = decode_cursor(after)
        params += [created_at, row_id]
        keyset = ("(r.created_at, r.id) < ($2, $3)",)
    names = await resolve_task_names(conn, flt.tasks) if flt.tasks else None
    if names == []:  # no recorded task name matches
        return HistoryPage(rows=[], next_cursor=None)
    word_names = await resolve_word_task_names(conn, flt.words)
    # one row more than the page tells whether there is a next page
    windows: tuple[timedelta | None, ...] = (None,)
    if flt.statuses or names is not None:
        windows = _WINDOWS
    elif flt.queues or flt.params or flt.labels:
        windows = _TERM_WINDOWS
    base = created_at if after is not None else datetime.now(UTC)
    if flt.until is not None:
        base = min(base, flt.until)
    for width in windows:
        page_params = list(params)
        window: tuple[str, ...] = ()
        if width is not None:
            page_params.append(base - width)
            window = (f"r.created_at >= ${len(page_params)}",)
        # past the newest day, a param or label value that did not fill a page
        # there is a rare one: its index finds every match sooner than a walk
        # by created_at that hopes for 50 (8 s at 10 M rows for a user id)
        fenced = width is None and windows is _TERM_WINDOWS and bool(flt.params or flt.labels)
        sql = _history_sql(
            flt, names, page_params, keyset, limit + 1, lost_after_s, word_names, window, fenced
        )
        records = await conn.fetch(sql, *page_params)
        if len(records) > limit:
            break  # a full page from the window: the rows before it all rank below
    rows = _rows(records[:limit])
    next_cursor = None
    if len(records) > limit:
        last = rows[-1]
        next_cursor = encode_cursor(last["created_at"], last["id"])
    return HistoryPage(rows=rows, next_cursor=next_cursor)


async def fetch_attempts(
    conn: asyncpg.Connection[Any], task_id: str, *, lost_after_s: float = DEFAULT_LOST_AFTER_S
) -> list[AttemptRow]:
    """Every attempt of one task, in attempt order, as :class:`AttemptRow`.

    `lost_after_s` as in :func:`fetch_history`: the same attempt shows the same status.
    """
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM task_execution_logs r WHERE r.task_id = $2 "
        "ORDER BY r.attempt, r.id",
        float(lost_after_s),
        task_id,
    )
    return _rows(records)


async def fetch_attempts_by_key(
    conn: asyncpg.Connection[Any],
    keys: Sequence[tuple[str, int]],
    *,
    lost_after_s: float = DEFAULT_LOST_AFTER_S,
) -> list[AttemptRow]:
    """The attempts `keys` names (``(task_id, attempt)``), as :class:`AttemptRow`.

    Unknown keys are left out; the order is that of ``created_at``. This reads
    the current state of attempts a live view saw start, once it has missed events.
    """
    if not keys:
        return []
    records = await conn.fetch(
        f"SELECT {_COLUMNS} FROM task_execution_logs r "
        "WHERE (r.task_id, r.attempt) IN (SELECT * FROM unnest($2::text[], $3::int[])) "
        "ORDER BY r.created_at, r.id",
        float(lost_after_s),
        [task_id for task_id, _ in keys],
        [attempt for _, attempt in keys],
    )
    return _rows(records)


async def count_by_status(
    conn: asyncpg.Connection[Any], *, task_id_not_like: str | None = None
) -> dict[str, int]:
    """Attempts per stored status, leaving out task ids ``LIKE`` `task_id_not_like`."""
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM task_execution_logs "
        "WHERE $1::text IS NULL OR task_id NOT LIKE $1 GROUP BY status",
        task_id_not_like,
    )
    return {r["status"]: r["n"] for r in rows}
