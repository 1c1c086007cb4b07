"""`taskmon db`: schema migrations and the embedded server."""

from __future__ import annotations

import typer

from taskmon.commands.common import DsnOption, run

app = typer.Typer(help="Database schema and the embedded PostgreSQL.", no_args_is_help=True)


@app.command()
def upgrade(dsn: DsnOption = None) -> None:
    """Apply pending schema migrations (safe to run from many processes at once)."""

    async def go() -> None:
        from taskmon.config import resolve_dsn
        from taskmon.store import migrations
        from taskmon.store.db import connect

        conn = await connect(resolve_dsn(dsn))
        try:
            applied = await migrations.upgrade(conn)
        finally:
            await conn.close()
        if applied:
            for mig in applied:
                typer.echo(f"applied {mig.version:04d}_{mig.name}")
        else:
            typer.echo("schema is up to date")

    run(go())


@app.command()
def status(dsn: DsnOption = None) -> None:
    """Show each migration and whether it is applied."""

    async def go() -> int:
        from taskmon.config import resolve_dsn
        from taskmon.store import migrations
        from taskmon.store.db import connect, redact_dsn

        url = resolve_dsn(dsn)
        conn = await connect(url)
        try:
            rows = await migrations.status(conn)
        finally:
            await conn.close()
        typer.echo(f"database: {redact_dsn(url)}")
        for row in rows:
            when = row.applied_at.isoformat(timespec="seconds") if row.applied_at else "pending"
            typer.echo(f"{row.version:04d}_{row.name:<32} {when}")
        return sum(1 for r in rows if r.applied_at is None)

    pending = run(go())
    if pending:
        typer.echo(f"{pending} pending; run `taskmon db upgrade`")


@app.command()
def stop() -> None:
    """Stop the embedded PostgreSQL server, if it runs."""
    from taskmon.commands.common import fail
    from taskmon.config import embedded_data_dir
    from taskmon.store.embedded import EmbeddedError, stop_embedded

    path = embedded_data_dir()
    try:
        stopped = stop_embedded(path)
    except EmbeddedError as exc:
        fail(str(exc), code=1)
    typer.echo("stopped" if stopped else f"not running ({path})")


_SEARCH_INDEXES = {
    "idx_task_logs_errors_status": "ON task_execution_logs (status, created_at DESC, id DESC) "
    "WHERE error_message IS NOT NULL OR error_type IS NOT NULL",
    "idx_task_logs_error_message_trgm": "ON task_execution_logs "
    "USING gin (error_message gin_trgm_ops) WHERE error_message IS NOT NULL",
    "idx_task_logs_error_type_trgm": "ON task_execution_logs "
    "USING gin (error_type gin_trgm_ops) WHERE error_type IS NOT NULL",
}


@app.command("search-indexes")
def search_indexes(dsn: DsnOption = None) -> None:
    """Build the error-search indexes without blocking writers (CREATE INDEX CONCURRENTLY).

    Migration 0003 skips them on a table that is already large, since inside a
    migration they would lock out inserts for the whole build. Safe to re-run:
    an index left invalid by an interrupted build is dropped and built again.
    """

    async def go() -> None:
        from taskmon.config import resolve_dsn
        from taskmon.store.db import connect

        conn = await connect(resolve_dsn(dsn), command_timeout=None)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            for name, definition in _SEARCH_INDEXES.items():
                valid = await conn.fetchval(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = $1",
                    name,
                )
                if valid:
                    typer.echo(f"{name}: present")
                    continue
                if valid is not None:  # left INVALID by an interrupted build
                    await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
                typer.echo(f"{name}: building…")
                await conn.execute(f'CREATE INDEX CONCURRENTLY "{name}" {definition}')
                typer.echo(f"{name}: built")
        finally:
            await conn.close()

    run(go())
