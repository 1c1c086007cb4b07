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
    from taskmon.config import embedded_data_dir
    from taskmon.store.embedded import stop_embedded

    path = embedded_data_dir()
    typer.echo("stopped" if stop_embedded(path) else f"not running ({path})")
