"""The `taskmon` command line. Heavy modules (textual, asyncpg, taskiq) load lazily."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from taskmon import __version__
from taskmon.commands import (
    alerts,
    cleanup,
    db,
    demo,
    history,
    live,
    retry,
    schedules,
    tui,
    workers,
)
from taskmon.commands.common import usage_error_line

# the order a user meets them in: watch, look back, follow, share the feed,
# maintain, try it out
COMMAND_ORDER = (
    "tui", "history", "stats", "workers", "queues", "schedules", "tail", "retry", "serve", "alerts",
    "cleanup", "db", "demo",
)  # fmt: skip

HELP = f"""A terminal monitor for TaskIQ background tasks.

Commands are listed in the order you would use them: watch ({COMMAND_ORDER[0]}),
look back (history, stats), see who works and what waits (workers, queues),
check that scheduled tasks ran (schedules),
follow live events (tail), send a task again (retry), share them (serve),
be told when something goes wrong (alerts), maintain (cleanup, db), try it
all out (demo).
"""


class _Group(TyperGroup):
    """The root group: commands in :data:`COMMAND_ORDER`, usage errors in one line."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        # click's own reporting prints a usage block and a framed message: a
        # user mistake gets one line, like every other error of ours
        from typer._click.exceptions import Abort, ClickException, NoArgsIsHelpError

        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()  # `taskmon` alone prints the help, as before
            sys.exit(exc.exit_code)
        except ClickException as exc:
            sys.stderr.write(usage_error_line(exc) + "\n")
            sys.exit(exc.exit_code)
        except Abort:
            sys.stderr.write("taskmon: aborted\n")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="taskmon",
    cls=_Group,
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("tui")(tui.tui)
app.command("history")(history.history)
app.command("stats")(history.stats)
app.command("workers")(workers.workers)
app.command("queues")(workers.queues)
app.command("schedules")(schedules.schedules)
app.command("tail")(live.tail)
app.command("retry")(retry.retry)
app.command("serve")(live.serve)
app.add_typer(alerts.app, name="alerts")
app.command("cleanup")(cleanup.cleanup)
app.add_typer(db.app, name="db")
app.command("demo")(demo.demo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"taskmon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The config file (TOML). Default: $TASKMON_CONFIG, "
            "then ~/.config/taskmon/config.toml.",
            show_default=False,
        ),
    ] = None,
) -> None:
    if config is not None:
        # the environment carries it to every reader of the config, in this process
        os.environ["TASKMON_CONFIG"] = str(config)


def main() -> None:
    """Console-script entry point."""
    app()
