"""`taskmon tui`: the terminal UI. Textual is imported only when the command runs."""

from __future__ import annotations

from typing import Annotated

import typer

from taskmon.commands.common import (
    REPLICA_ONLY,
    DsnOption,
    ReadDsnOption,
    SchedulerOption,
    TokenOption,
    check_scheduler,
    fail,
    primary_dsn,
    resolve_settings,
)
from taskmon.commands.history import LostAfterOption

__all__ = ["tui"]


def tui(
    dsn: DsnOption = None,
    hub_url: Annotated[
        str | None,
        typer.Option(
            "--hub-url",
            help="Websocket URL of a running `taskmon serve`. Default: $TASKMON_HUB_URL, "
            "else a hub started inside the TUI for the same database.",
            show_default=False,
        ),
    ] = None,
    token: TokenOption = None,
    # the spelling of earlier versions, kept working but out of the help
    old_token: Annotated[str | None, typer.Option("--hub-token", hidden=True)] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            help="The in-process hub relays this Redis stream instead of PostgreSQL NOTIFY. "
            "Default: $TASKMON_REDIS_URL.",
            show_default=False,
        ),
    ] = None,
    since: Annotated[
        str, typer.Option("--since", help="Initial metrics window: 15m, 1h, 24h, 7d or 30d.")
    ] = "1h",
    query: Annotated[
        str,
        typer.Option("--query", "-q", help='Initial filter, e.g. "status:failed task:extract*".'),
    ] = "",
    lost_after: LostAfterOption = None,
    read_dsn: ReadDsnOption = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            help="Your broker as module:variable, for R (send a task again). "
            "Default: $TASKMON_BROKER, then `broker` in the config file.",
            show_default=False,
        ),
    ] = None,
    scheduler: SchedulerOption = None,
) -> None:
    """Watch metrics, history and live events in a terminal UI (keys: press ?)."""
    from taskmon.config import ConfigError
    from taskmon.domain.filters import FilterError
    from taskmon.tui.view_state import ViewState

    # bad input is said before anything is started (the embedded server, say)
    settings = resolve_settings(
        dsn=dsn,
        read_dsn=read_dsn,
        redis_url=redis_url,
        hub_url=hub_url,
        hub_token=token or old_token,
        broker=broker,
        lost_after=lost_after,
        scheduler=scheduler,
    )
    check_scheduler(settings)
    try:
        ViewState.initial(window=since, query=query)
    except FilterError as exc:
        fail(f"--query: {exc}")
    except ValueError as exc:
        fail(f"--since: {str(exc).removeprefix('window: ')}")
    from taskmon.service.alerts import AlertReader, load_alert_config

    try:
        alert_config = load_alert_config()
    except ConfigError as exc:
        fail(str(exc))
    hub, redis = settings.hub_url, settings.redis_url
    if hub and not hub.startswith(("ws://", "wss://")):
        fail(f"--hub-url: {hub!r} is not a ws:// or wss:// URL")
    # the in-process hub LISTENs on the primary, unless it relays Redis
    listens = not hub and not redis
    if settings.reads_from_replica and listens and not settings.configured_dsn:
        fail(REPLICA_ONLY)
    reads = settings.read_dsn if settings.reads_from_replica else None
    url = primary_dsn(settings) if listens or not reads else reads

    from taskmon.tui.app import make_app
    from taskmon.tui.sources import HubLiveSource, InProcessHubSource, LiveSource, PgDataSource

    live: LiveSource = (
        HubLiveSource(hub, token=settings.hub_token)
        if hub
        else InProcessHubSource(url, redis_url=redis, lost_after_s=settings.lost_after_s)
    )
    # the broker module is imported at the first R, not before the UI starts
    from taskmon.service.resend import Retrier

    retrier = Retrier(settings.broker, url) if settings.broker else None
    from taskmon.service.schedules import ScheduleWatch

    try:
        data = PgDataSource(
            reads or url, lost_after_s=settings.lost_after_s, replica=reads is not None
        )
        app = make_app(
            data,
            live,
            window=since,
            query=query,
            # alert states are written by the evaluator on the primary
            alerts=AlertReader(url, alert_config) if alert_config.rules else None,
            retrier=retrier,
            # the same reader: its pool serves the workers screen too
            workers=data,
            schedules=ScheduleWatch(settings.scheduler, data) if settings.scheduler else None,
        )
    except (FilterError, ValueError) as exc:  # a relative time that went out of range since
        fail(str(exc))
    app.run()
