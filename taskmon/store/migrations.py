"""Forward-only schema migrations from the ``sql/`` files shipped in the package.

Each file ``NNNN_name.sql`` is applied once, in order, and recorded in
``taskmon_schema_migrations`` with the SHA-256 of its text. An applied file is
never edited: a change goes into a new file. The runner refuses a file whose
text no longer matches what was applied, naming it. Rows recorded before
checksums existed get theirs from the shipped file on the next upgrade (what
was applied then is trusted as it is).

Markers: comment lines at the top of a file, before its first statement::

    -- taskmon: manual
    -- taskmon: no-transaction

* ``manual``: workers never apply it (nor anything after it): a worker's
  upgrade stops there and says, once, to run ``taskmon db upgrade``, and the
  worker goes on recording into the schema it has. For anything that may run
  longer than a worker's statement timeout (30 s): rewriting or partitioning a
  large table, building an index on one.
* ``no-transaction``: the file is split into statements, run one at a time
  outside a transaction, as ``CREATE INDEX CONCURRENTLY`` requires. Splitting
  knows quotes, dollar quotes and comments; keep to plain statements (no
  ``BEGIN ATOMIC`` bodies). If such a migration fails halfway, the next upgrade
  runs it again from its first statement, so write each statement to be safe
  to repeat (``IF NOT EXISTS``); an index that an interrupted ``CREATE INDEX
  CONCURRENTLY`` left INVALID is dropped by the runner before it is built
  again.

Both may be given, on one line separated by a comma or on two lines. An
unknown marker is an error, so a misspelt ``manual`` cannot let workers run a
long migration.

Applying takes a session advisory lock, so any number of processes may upgrade
at once and each migration is applied exactly once; each transactional
migration commits on its own, together with its row in the migrations table.
A worker whose schema is already as far as a worker may take it does not wait
for the lock at all (an operator's long ``taskmon db upgrade`` holds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from taskmon.store.db import CONNECTION_ERRORS

__all__ = [
    "NOT_PARTITIONED",
    "UPGRADE_COMMAND",
    "UPGRADE_HINT",
    "ChecksumMismatch",
    "Migration",
    "MigrationError",
    "MigrationFailed",
    "MigrationStatus",
    "Progress",
    "Upgrade",
    "available",
    "load",
    "parse",
    "split_statements",
    "status",
    "upgrade",
]

UPGRADE_COMMAND = "taskmon db upgrade"
"""The command that brings a database's schema up to date; every message naming it uses this."""
UPGRADE_HINT = f"run `{UPGRADE_COMMAND}`"
NOT_PARTITIONED = f"task_execution_logs is not partitioned yet: {UPGRADE_HINT}"

# advisory lock key: "taskmon" in ASCII, so it won't collide by chance
LOCK_KEY = 0x7461736B6D6F6E
_NAME = re.compile(r"^(\d{4})_([\w-]+)\.sql$")
_MARKER = re.compile(r"^--\s*taskmon\s*:(.*)$", re.IGNORECASE)
MARKERS = frozenset({"manual", "no-transaction"})


class MigrationError(Exception):
    """A migration cannot be applied; the message is one line naming the file."""


class ChecksumMismatch(MigrationError):
    """An applied migration's file was edited afterwards."""


class MigrationFailed(MigrationError):
    """PostgreSQL refused a statement of a migration (it was rolled back, if transactional)."""

    def __init__(self, migration: Migration, cause: asyncpg.PostgresError) -> None:
        detail = " ".join(str(cause).split())
        super().__init__(f"migration {migration.filename} failed: {detail}")
        self.migration = migration
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Migration:
    """One ``NNNN_name.sql`` file and its markers.

    Attributes:
        version: the file's number.
        name: the rest of the file name, without ``.sql``.
        sql: the file's text.
        manual: run only by ``taskmon db upgrade``, never by a worker.
        transactional: False for a ``no-transaction`` file, run a statement at a time.
    """

    version: int
    name: str
    sql: str
    manual: bool = False
    transactional: bool = True
    checksum: str = field(init=False)

    def __post_init__(self) -> None:
        # CRLF from a checkout on Windows is the same file, not an edit
        text = self.sql.replace("\r\n", "\n")
        object.__setattr__(self, "checksum", hashlib.sha256(text.encode("utf-8")).hexdigest())

    @property
    def filename(self) -> str:
        """``NNNN_name.sql``, as in ``sql/``."""
        return f"{self.version:04d}_{self.name}.sql"

    def statements(self) -> list[str]:
        """The file's statements, one string each (how a no-transaction file is run)."""
        return split_statements(self.sql)


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """A known migration and whether (and how) the database has it.

    Attributes:
        version: the file's number.
        name: the rest of the file name.
        applied_at: when it was applied; None while pending.
        manual: it waits for ``taskmon db upgrade``.
        edited: applied, but the file no longer matches the recorded checksum.
    """

    version: int
    name: str
    applied_at: datetime | None
    manual: bool = False
    edited: bool = False


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What an upgrade did and what it left for an operator.

    Iterating over it (or ``len``) gives the migrations applied now, as the
    list this used to return.

    Attributes:
        applied: applied by this call, in order.
        waiting: pending and left alone by a worker: the first manual
            migration and everything after it (or every pending one, when
            ``refused``). Always empty for ``worker=False``.
        refused: for a worker, the one-line reason it migrated nothing
            (an applied file was edited); None otherwise.
        filled: applied before checksums were recorded; their checksums
            were recorded now, from the files.
    """

    applied: tuple[Migration, ...] = ()
    waiting: tuple[Migration, ...] = ()
    refused: str | None = None
    filled: tuple[Migration, ...] = ()

    def __iter__(self) -> Iterator[Migration]:
        return iter(self.applied)

    def __len__(self) -> int:
        return len(self.applied)

    @property
    def notice(self) -> str | None:
        """One line for a worker to log once, or None when the schema is current."""
        if self.refused is not None:
            return f"not migrating: {self.refused}; recording goes on into the current schema"
        if not self.waiting:
            return None
        first = self.waiting[0].filename
        more = f" and {len(self.waiting) - 1} more" if len(self.waiting) > 1 else ""
        return (
            f"migration {first}{more} is not run by workers: {UPGRADE_HINT}; "
            "recording goes on into the current schema"
        )


class Progress(Protocol):
    """Told about each step of an upgrade (``taskmon db upgrade`` prints them)."""

    def waiting(self) -> None:
        """Another process holds the migration lock; this one waits for it."""

    def started(self, migration: Migration) -> None:
        """`migration` is about to be applied."""

    def finished(self, migration: Migration, seconds: float) -> None:
        """`migration` was applied and recorded, in `seconds`."""


# -- files ----------------------------------------------------------------------


def parse(filename: str, text: str) -> Migration:
    """A migration from its file name and text.

    Raises:
        ValueError: the name is not ``NNNN_name.sql``, or a marker is unknown.
    """
    m = _NAME.match(filename)
    if not m:
        raise ValueError(f"{filename}: a migration file is named NNNN_name.sql")
    markers = _markers(filename, text)
    return Migration(
        int(m.group(1)),
        m.group(2),
        text,
        manual="manual" in markers,
        transactional="no-transaction" not in markers,
    )


def _markers(filename: str, text: str) -> set[str]:
    found: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if not line.startswith("--"):
            break  # the header ends at the first statement
        m = _MARKER.match(line)
        if m is None:
            continue
        for word in m.group(1).split(","):
            word = word.strip().lower()
            if word not in MARKERS:
                known = ", ".join(sorted(MARKERS))
                raise ValueError(f"{filename}: unknown marker 'taskmon: {word}' (known: {known})")
            found.add(word)
    return found


def load(directory: Traversable | Path) -> list[Migration]:
    """Every ``NNNN_name.sql`` file of `directory`, in order; other files are ignored.

    Raises:
        ValueError: two files share a number, or a marker is unknown.
    """
    found = [
        parse(entry.name, entry.read_text("utf-8"))
        for entry in directory.iterdir()
        if _NAME.match(entry.name)
    ]
    return _ordered(found)


def _ordered(migrations: Iterable[Migration]) -> list[Migration]:
    ordered = sorted(migrations, key=lambda mig: (mig.version, mig.name))
    for a, b in itertools.pairwise(ordered):
        if a.version == b.version:
            raise ValueError(f"{a.filename} and {b.filename} have the same number")
    return ordered


def available() -> list[Migration]:
    """Every migration shipped with this version of taskmon, in order."""
    return load(resources.files("taskmon").joinpath("sql"))


_DOLLAR = re.compile(r"\$([^\W\d]\w*)?\$")


def split_statements(sql: str) -> list[str]:
    """Split SQL text at its top-level semicolons.

    Semicolons inside quotes (``'...'``, ``E'...'``, ``"..."``), dollar
    quotes (``$$...$$``, ``$tag$...$tag$``) and comments (``--``, nested
    ``/* */``) do not split. Pieces holding nothing but comments are dropped.
    """
    out: list[str] = []
    n = len(sql)
    start = i = 0
    code = False  # the current piece has something besides comments
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            nl = sql.find("\n", i)
            i = n if nl < 0 else nl + 1
            continue
        if sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        if c == ";":
            if code:
                out.append(sql[start:i].strip())
            start, code = i + 1, False
            i += 1
            continue
        if not c.isspace():
            code = True
        if c == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _word_char(sql[i - 2]))
            i += 1
            while i < n:
                if escapes and sql[i] == "\\":
                    i += 2
                elif sql[i] == "'":
                    if sql.startswith("''", i):
                        i += 2
                    else:
                        break
                else:
                    i += 1
            i += 1
            continue
        if c == '"':
            i += 1
            while i < n:
                if sql.startswith('""', i):
                    i += 2
                elif sql[i] == '"':
                    break
                else:
                    i += 1
            i += 1
            continue
        if c == "$" and (i == 0 or not _word_char(sql[i - 1])):
            m = _DOLLAR.match(sql, i)
            if m:
                end = sql.find(m.group(0), m.end())
                i = n if end < 0 else end + len(m.group(0))
                continue
        i += 1
    if code:
        out.append(sql[start:].strip())
    return out


def _word_char(c: str) -> bool:
    return c.isalnum() or c in "_$"


# -- the database ------------------------------------------------------------------

_CREATE = """
CREATE TABLE taskmon_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    checksum   text
)
"""
# Tables made before checksums existed get the column here, nullable: their
# rows are filled from the shipped files on the next upgrade (trusted as
# applied). Both statements run under the migration lock, so never twice.
_ADD_CHECKSUM = "ALTER TABLE taskmon_schema_migrations ADD COLUMN checksum text"

_LAYOUT = """
SELECT to_regclass('taskmon_schema_migrations') IS NOT NULL AS has_table,
       EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = to_regclass('taskmon_schema_migrations')
                 AND attname = 'checksum' AND NOT attisdropped) AS has_checksum
"""

_CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r'((?:"(?:[^"]|"")+"|[\w$]+)(?:\s*\.\s*(?:"(?:[^"]|"")+"|[\w$]+))?)',
    re.IGNORECASE,
)


async def _recorded(conn: asyncpg.Connection[Any]) -> dict[int, str | None] | None:
    """Applied versions and their checksums; None if the table or its checksum column is missing."""
    layout = await conn.fetchrow(_LAYOUT)
    assert layout is not None
    if not (layout["has_table"] and layout["has_checksum"]):
        return None
    rows = await conn.fetch("SELECT version, checksum FROM taskmon_schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


@dataclass(frozen=True, slots=True)
class _Plan:
    apply: list[Migration]
    waiting: list[Migration]
    unfilled: list[Migration]  # applied before checksums were recorded
    edited_message: str | None  # an applied file was edited: why nothing may be applied


def _plan(known: Sequence[Migration], done: Mapping[int, str | None], worker: bool) -> _Plan:
    edited = next(
        (m for m in known if done.get(m.version) not in (None, m.checksum)),
        None,
    )
    message = None
    if edited is not None:
        message = (
            f"{edited.filename} was edited after it was applied (recorded checksum "
            f"{str(done[edited.version])[:12]}, file {edited.checksum[:12]}); "
            "an applied migration never changes: restore it and put the change in a new file"
        )
    pending = [m for m in known if m.version not in done]
    unfilled = [m for m in known if m.version in done and done[m.version] is None]
    if not worker:
        return _Plan(pending, [], unfilled, message)
    if edited is not None:
        return _Plan([], pending, [], message)
    stop = next((i for i, m in enumerate(pending) if m.manual), len(pending))
    return _Plan(pending[:stop], pending[stop:], unfilled, None)


async def upgrade(
    conn: asyncpg.Connection[Any],
    *,
    worker: bool = True,
    source: Iterable[Migration] | None = None,
    progress: Progress | None = None,
) -> Upgrade:
    """Apply the pending migrations that this caller may apply.

    Args:
        conn: a connection not inside a transaction. Its statement timeout
            (asyncpg's ``command_timeout``, the server's ``statement_timeout``)
            applies to every statement.
        worker: True (the default, what a worker process at start-up may do):
            apply pending migrations up to the first ``manual`` one and report
            the rest as ``waiting``; an edited applied file is reported as
            ``refused`` and nothing is applied. False (``taskmon db upgrade``):
            apply every pending migration; an edited applied file raises.
        source: the migrations to apply; default: the shipped ``sql/`` files.
        progress: told when the lock is busy and about each migration.

    Returns:
        What was applied, and what a worker left for ``taskmon db upgrade``.

    Raises:
        ChecksumMismatch: an applied file was edited (``worker=False`` only).
        MigrationFailed: PostgreSQL refused a statement of a migration;
            earlier migrations stay applied.
    """
    known = _ordered(source) if source is not None else available()

    async def nothing_for_a_worker() -> Upgrade | None:
        done = await _recorded(conn)
        if done is None:
            return None
        plan = _plan(known, done, worker=True)
        if plan.apply or plan.unfilled:
            return None
        return Upgrade((), tuple(plan.waiting), plan.edited_message)

    # the common case at a worker's start: nothing to do, so no lock to wait for
    if worker and (result := await nothing_for_a_worker()) is not None:
        return result
    # Poll rather than block in pg_advisory_lock: a session waiting inside a
    # statement holds a snapshot, and the holder's CREATE INDEX CONCURRENTLY
    # waits for every older snapshot to end: a deadlock.
    delay = 0.02
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
        if progress is not None and delay == 0.02:
            progress.waiting()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
        # a worker stops waiting once the holder has applied what it would have
        if worker and (result := await nothing_for_a_worker()) is not None:
            return result
    try:
        applied = await _upgrade_locked(conn, known, worker, progress)
    except BaseException:
        # the connection may be broken; the server drops the lock with it then
        with contextlib.suppress(Exception):
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
        raise
    await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    return applied


async def _upgrade_locked(
    conn: asyncpg.Connection[Any],
    known: Sequence[Migration],
    worker: bool,
    progress: Progress | None,
) -> Upgrade:
    layout = await conn.fetchrow(_LAYOUT)
    assert layout is not None
    # only what is missing: IF NOT EXISTS alone would print a notice on every run
    if not layout["has_table"]:
        await conn.execute(_CREATE)
    elif not layout["has_checksum"]:
        await conn.execute(_ADD_CHECKSUM)
    done = await _recorded(conn)
    assert done is not None
    plan = _plan(known, done, worker)
    if plan.edited_message is not None:
        if worker:
            return Upgrade((), tuple(plan.waiting), plan.edited_message)
        raise ChecksumMismatch(plan.edited_message)
    if plan.unfilled:
        await conn.executemany(
            "UPDATE taskmon_schema_migrations SET checksum = $2 "
            "WHERE version = $1 AND checksum IS NULL",
            [(m.version, m.checksum) for m in plan.unfilled],
        )
    applied: list[Migration] = []
    for mig in plan.apply:
        if progress is not None:
            progress.started(mig)
        began = time.monotonic()
        try:
            if mig.transactional:
                async with conn.transaction():
                    await conn.execute(mig.sql)
                    await _record(conn, mig)
            else:
                for statement in mig.statements():
                    await _drop_invalid_index(conn, statement)
                    await conn.execute(statement)
                await _record(conn, mig)
        except CONNECTION_ERRORS:
            raise  # an outage, not a fault of the migration
        except asyncpg.PostgresError as exc:
            raise MigrationFailed(mig, exc) from exc
        applied.append(mig)
        if progress is not None:
            progress.finished(mig, time.monotonic() - began)
    return Upgrade(tuple(applied), tuple(plan.waiting), filled=tuple(plan.unfilled))


async def _record(conn: asyncpg.Connection[Any], mig: Migration) -> None:
    await conn.execute(
        "INSERT INTO taskmon_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        mig.version,
        mig.name,
        mig.checksum,
    )


async def _drop_invalid_index(conn: asyncpg.Connection[Any], statement: str) -> None:
    """Drop the INVALID leftover of an interrupted build of the index `statement` creates.

    ``CREATE INDEX CONCURRENTLY`` that fails or is cancelled leaves the index
    behind, INVALID: ``IF NOT EXISTS`` would then skip it and leave it useless,
    and without ``IF NOT EXISTS`` the build would fail as a duplicate.
    """
    m = _CONCURRENT_INDEX.match(_without_leading_comments(statement))
    if m is None:
        return
    name = m.group(1)  # as written in the shipped file, so quoted as SQL needs
    valid = await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", name
    )
    if valid is False:
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def _without_leading_comments(statement: str) -> str:
    text = statement.lstrip()
    while text.startswith("--") or text.startswith("/*"):
        if text.startswith("--"):
            nl = text.find("\n")
            text = "" if nl < 0 else text[nl + 1 :].lstrip()
        else:
            end = text.find("*/")
            text = "" if end < 0 else text[end + 2 :].lstrip()
    return text


async def status(
    conn: asyncpg.Connection[Any], *, source: Iterable[Migration] | None = None
) -> list[MigrationStatus]:
    """Every known migration with the time it was applied (None: pending).

    Args:
        conn: any connection; nothing is written.
        source: the migrations to describe; default: the shipped ``sql/`` files.
    """
    known = _ordered(source) if source is not None else available()
    layout = await conn.fetchrow(_LAYOUT)
    assert layout is not None
    rows: list[asyncpg.Record] = []
    if layout["has_table"]:
        checksum = "checksum" if layout["has_checksum"] else "NULL::text AS checksum"
        rows = await conn.fetch(
            f"SELECT version, applied_at, {checksum} FROM taskmon_schema_migrations"
        )
    applied = {r["version"]: r for r in rows}
    out = []
    for m in known:
        row = applied.get(m.version)
        out.append(
            MigrationStatus(
                m.version,
                m.name,
                row["applied_at"] if row else None,
                manual=m.manual,
                edited=bool(row and row["checksum"] not in (None, m.checksum)),
            )
        )
    return out
