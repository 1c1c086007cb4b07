"""What every command shares: options, the one-line error, running a coroutine."""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from taskmon.service.settings import Settings

__all__ = [
    "REPLICA_ONLY",
    "DsnOption",
    "ReadDsnOption",
    "SchedulerOption",
    "TokenOption",
    "UsageError",
    "check_scheduler",
    "database_url",
    "fail",
    "plural",
    "primary_dsn",
    "resolve_settings",
    "round_durations",
    "run",
    "usage_error_line",
]

T = TypeVar("T")

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        help="PostgreSQL DSN. Default: $TASKMON_DSN, then the config file, "
        "then the embedded PostgreSQL under your data directory.",
        show_default=False,
    ),
]

ReadDsnOption = Annotated[
    str | None,
    typer.Option(
        "--read-dsn",
        help="Send reads to this PostgreSQL (a streaming replica); writes and LISTEN stay "
        "on --dsn. Default: $TASKMON_READ_DSN, then the config file's read_dsn, then --dsn.",
        show_default=False,
    ),
]

REPLICA_ONLY = (
    "only a read replica is given (--read-dsn), and the live feed needs the primary: "
    "a standby cannot LISTEN, and PostgreSQL NOTIFY is the event bus; give the primary "
    "with --dsn or TASKMON_DSN (reads still go to the replica), or use the Redis bus "
    "(--redis-url)"
)
"""Said when the NOTIFY bus would have to LISTEN on a server and only a replica is named."""

SchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Your TaskiqScheduler as module:variable, the form `taskiq scheduler` takes "
        "(for schedules, the schedule_missed alert and the TUI's S). Default: "
        "$TASKMON_SCHEDULER, then "
        "the config file's scheduler.",
        show_default=False,
    ),
]


def check_scheduler(settings: Settings) -> None:
    """End the command (one line, exit 2) when the settings' scheduler cannot be imported."""
    if not settings.scheduler:
        return
    from taskmon.service import schedules

    try:
        schedules.load(settings.scheduler)
    except schedules.SpecError as exc:
        fail(str(exc))


TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="Shared secret of the hub. Default: $TASKMON_HUB_TOKEN, then the config file.",
        show_default=False,
    ),
]


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `message` as one line on stderr and exit (2: bad input)."""
    line = " ".join(str(message).split())
    sys.stderr.write(f"taskmon: error: {line}\n")
    raise typer.Exit(code)


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 row``, ``2 rows``, ``1,204 batches`` (`words` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else words or word + 's'}"


_USER_DATA = frozenset(("params", "labels"))


def round_durations(value: Any) -> Any:
    """`value` with every duration (a float under a key ending in ``_ms`` or ``_s``) rounded.

    Three decimals: a microsecond for ``_ms``, which is more than the clocks
    behind them measure. A task's own ``params`` and ``labels`` are the user's
    data and stay exact; the rest of the value is returned as it is.
    """
    if isinstance(value, dict):
        return {
            key: round(item, 3)
            if isinstance(item, float) and str(key).endswith(("_ms", "_s"))
            else item
            if key in _USER_DATA
            else round_durations(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [round_durations(item) for item in value]
    return value


def usage_error_line(exc: Exception) -> str:
    """One line for an error of the command-line parser (unknown option, bad type, …).

    Args:
        exc: a click ``ClickException`` (typer's parser).
    """
    format_message = getattr(exc, "format_message", None)
    text = format_message() if callable(format_message) else str(exc)
    message = " ".join(str(text).split()).rstrip(".")
    if message[:2].isalpha() and message[0].isupper() and message[1].islower():
        message = message[0].lower() + message[1:]  # "No such option" → "no such option"
    return f"taskmon: error: {message}"


def resolve_settings(**flags: str | None) -> Settings:
    """The command's :class:`~taskmon.service.settings.Settings`, from its flags.

    A broken config file or an unusable value (a malformed DSN, a bad
    ``--lost-after``) ends the command here, one line and exit status 2,
    before anything is started with it.
    """
    from taskmon.config import ConfigError
    from taskmon.service.settings import Settings

    try:
        return Settings.resolve(**flags)
    except ConfigError as exc:
        fail(str(exc))


def primary_dsn(settings: Settings) -> str:
    """The settings' primary DSN (the embedded server's is started here, when it is the one)."""
    from taskmon.config import ConfigError

    try:
        return settings.dsn
    except ConfigError as exc:
        fail(str(exc))


def database_url(flag: str | None) -> str:
    """The DSN to use (flag, environment, config file, embedded default), checked.

    A malformed DSN or config file ends the command here, exit status 2,
    before anything is started with it.
    """
    return primary_dsn(resolve_settings(dsn=flag))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro`; turn the errors a user can cause into one line instead of a traceback."""
    import asyncio  # here, not at the top: `--help` and bad flags need no event loop

    from taskmon.config import ConfigError

    try:
        return asyncio.run(coro)
    except (UsageError, ConfigError, ValueError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:
        raise  # `taskmon tail | head`: the reader left; the CLI exits 1 quietly, as on any EPIPE
    except OSError as exc:
        fail(f"cannot reach the database or service: {exc}", code=1)
    except Exception as exc:
        import asyncpg

        from taskmon.service.maintenance import UPGRADE_HINT

        if isinstance(exc, asyncpg.UndefinedTableError):
            fail(
                f"the database has no taskmon tables yet ({exc}): nothing was recorded there; "
                f"{UPGRADE_HINT}, or start a worker with MonitoringMiddleware",
                code=1,
            )
        if isinstance(exc, asyncpg.PostgresError):
            fail(f"database error: {exc}", code=1)
        raise
