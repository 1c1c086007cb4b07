"""The `taskmon` command line. Heavy modules (textual, asyncpg, taskiq) load lazily."""

from __future__ import annotations

import typer

from taskmon import __version__
from taskmon.commands import cleanup, db, demo, history, live, tui

app = typer.Typer(
    name="taskmon",
    help="A terminal monitor for TaskIQ background tasks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(db.app, name="db")
app.command("demo")(demo.demo)
app.command("cleanup")(cleanup.cleanup)
app.command("serve")(live.serve)
app.command("tail")(live.tail)
app.command("tui")(tui.tui)
app.command("history")(history.history)
app.command("stats")(history.stats)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"taskmon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """A terminal monitor for TaskIQ background tasks."""


def main() -> None:
    """Console-script entry point."""
    app()
