"""`taskmon demo`: a private database, a task load, the hub and the TUI, in one command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from taskmon.commands.common import fail, run

if TYPE_CHECKING:
    from taskmon.demo import DemoStop, DemoStopped

__all__ = ["demo"]

APP_EXIT_SECONDS = 5.0
"""How long the TUI may take to leave once asked, before the demo is cleaned up anyway."""


def demo(
    headless: Annotated[
        bool, typer.Option("--headless", help="Run without the TUI and print a summary.")
    ] = False,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            help="Seconds to run (default: until you quit; 10 with --headless).",
            show_default=False,
        ),
    ] = None,
    rate: Annotated[float, typer.Option("--rate", help="Tasks kicked per second.")] = 15.0,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Random seed, for a repeatable run.")
    ] = None,
) -> None:
    """Show taskmon on live demo tasks: nothing to install or configure.

    Starts a private embedded PostgreSQL (deleted afterwards), runs a mix of
    tasks through the real middleware (successes, failures, retries, timeouts,
    bursts), the event hub, and the TUI. Quit with q.
    """
    if duration is not None and duration <= 0:
        fail(f"--duration must be positive, got {duration:g}")
    if rate <= 0 or rate > 2000:
        fail(f"--rate must be between 0 and 2000 tasks per second, got {rate:g}")
    from taskmon.demo import DemoStopped, until_stopped

    if headless:
        from taskmon.demo import run_headless

        summary = run(
            until_stopped(
                lambda stop: run_headless(duration or 10.0, rate=rate, seed=seed, stop=stop)
            )
        )
        if isinstance(summary, DemoStopped):
            _stopped_before_start(summary)
            return
        for line in summary.lines():
            typer.echo(line)
        return

    ended = run(
        until_stopped(lambda stop: _with_tui(stop, rate=rate, seed=seed, duration=duration))
    )
    if isinstance(ended, DemoStopped):
        _stopped_before_start(ended)


def _stopped_before_start(stopped: DemoStopped) -> None:
    # not an error: the user (or their terminal) asked the demo to end, and it did cleanly
    typer.echo(
        f"taskmon: demo ended by {stopped.signal_name} while starting; "
        "its private PostgreSQL is removed",
        err=True,
    )


async def _with_tui(
    stop: DemoStop, *, rate: float, seed: int | None, duration: float | None
) -> None:
    import asyncio

    from taskmon.demo import demo_environment
    from taskmon.tui.app import make_app
    from taskmon.tui.sources import HubLiveSource, PgDataSource

    async with demo_environment(rate=rate, seed=seed, stop=stop) as env:
        app = make_app(PgDataSource(env.dsn), HubLiveSource(env.hub_url), window="1h")
        shown = asyncio.create_task(app.run_async(), name="taskmon-demo-tui")
        ended = asyncio.create_task(stop.ended.wait())
        await asyncio.wait({shown, ended}, timeout=duration, return_when="FIRST_COMPLETED")
        ended.cancel()
        if not shown.done():
            # a signal or --duration: ask the app to leave, but never wait on it for
            # long: after a hang-up nothing it does on the terminal matters any more
            app.exit()
            await asyncio.wait({shown}, timeout=APP_EXIT_SECONDS)
        if not shown.done():
            shown.cancel()
            await asyncio.wait({shown}, timeout=APP_EXIT_SECONDS)
        failure = shown.exception() if shown.done() and not shown.cancelled() else None
        if failure is not None:
            raise failure
        typer.echo("stopping the demo tasks and removing the private PostgreSQL…", err=True)
