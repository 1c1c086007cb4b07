"""`taskmon demo`: a private database, a task load, the hub and the TUI, in one command."""

from __future__ import annotations

from typing import Annotated

import typer

from taskmon.commands.common import fail, run

__all__ = ["demo"]


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
    if headless:
        from taskmon.demo import run_headless

        summary = run(run_headless(duration or 10.0, rate=rate, seed=seed))
        for line in summary.lines():
            typer.echo(line)
        return

    async def with_tui() -> None:
        import asyncio
        import contextlib

        from taskmon.demo import demo_environment, end_on_hangup
        from taskmon.tui.app import make_app
        from taskmon.tui.sources import HubLiveSource, PgDataSource

        typer.echo("starting a private PostgreSQL and the demo tasks…", err=True)
        async with demo_environment(rate=rate, seed=seed) as env:
            app = make_app(PgDataSource(env.dsn), HubLiveSource(env.hub_url), window="1h")
            end_on_hangup(app.exit)
            if duration is None:
                await app.run_async()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(app.run_async(), duration)

    run(with_tui())
