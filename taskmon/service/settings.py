"""Settings: every value a command or the TUI needs, resolved once.

Each value comes from its command-line flag, else its environment variable,
else the config file (:mod:`taskmon.config`), else a default: the embedded
PostgreSQL for the database, one hour for ``lost_after``. The config file is
checked whole when the settings are resolved, so a broken file is said once,
up front, whichever value would have come from it.

The DSNs are resolved on first use: resolving the default one starts the
embedded server, which a command that fails on its other input never needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

from taskmon.config import ConfigError, resolve_dsn, resolve_setting
from taskmon.domain.filters import FilterError, parse_window
from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S
from taskmon.store.db import DsnError, check_dsn, redact_dsn

__all__ = ["Settings", "parse_lost_after"]


def parse_lost_after(value: str, *, what: str = "--lost-after") -> float:
    """A lost-after duration (``90s``, ``15m``, ``1h``, ``7d``, or plain seconds) in seconds.

    Raises:
        ConfigError: the value is not a positive duration; the message names `what`.
    """
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parse_window(text).total_seconds()
        except FilterError as exc:
            raise ConfigError(f"{what}: {exc}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{what}: {value!r} is not a duration above zero (e.g. 1h)")
    return seconds


@dataclass(frozen=True)
class Settings:
    """What taskmon connects to and the rules it reads by, for one command or TUI session.

    Build one with :meth:`resolve`; the fields hold what the user gave on the
    command line (``None``: not given), the properties what is in force.
    """

    dsn_flag: str | None = None
    read_dsn_flag: str | None = None
    redis_url: str | None = None
    """The Redis event stream (``--redis-url``, ``TASKMON_REDIS_URL``, ``redis_url``)."""
    hub_url: str | None = None
    """A running hub to subscribe to (``--hub``, ``TASKMON_HUB_URL``, ``hub_url``)."""
    hub_token: str | None = None
    """The hub's shared secret (``--token``, ``TASKMON_HUB_TOKEN``, ``hub_token``)."""
    broker: str | None = None
    """The user's broker as ``module:variable`` (``--broker``, ``TASKMON_BROKER``, ``broker``)."""
    scheduler: str | None = None
    """The user's scheduler as ``module:variable``, the form ``taskiq scheduler`` takes
    (``--scheduler``, ``TASKMON_SCHEDULER``, ``scheduler``)."""
    lost_after_s: float = DEFAULT_LOST_AFTER_S
    """Seconds a running attempt without a timeout may run before it counts as lost."""
    configured_dsn: str | None = field(default=None, repr=False)
    """The primary's DSN when the flag, environment or config file names one (no embedded)."""
    configured_read_dsn: str | None = field(default=None, repr=False)
    """A read replica's DSN when one is named."""

    @classmethod
    def resolve(
        cls,
        *,
        dsn: str | None = None,
        read_dsn: str | None = None,
        redis_url: str | None = None,
        hub_url: str | None = None,
        hub_token: str | None = None,
        broker: str | None = None,
        scheduler: str | None = None,
        lost_after: str | None = None,
    ) -> Settings:
        """Each value from its flag, environment variable or config-file key.

        ``lost_after`` also reads ``TASKMON_LOST_AFTER`` and the config file's
        ``lost_after`` (a duration such as ``"1h"``, or seconds).

        Raises:
            ConfigError: the config file is named but missing or wrong, or a
                value is unusable (the message is one line, naming the value).
        """
        lost = resolve_setting(lost_after, "TASKMON_LOST_AFTER", "lost_after")
        lost_what = (
            "--lost-after"
            if lost_after
            else "TASKMON_LOST_AFTER"
            if os.environ.get("TASKMON_LOST_AFTER")
            else "lost_after in the config file"
        )
        configured = resolve_setting(dsn, "TASKMON_DSN", "dsn")
        replica = resolve_setting(read_dsn, "TASKMON_READ_DSN", "read_dsn")
        try:
            for name in (configured, replica):
                if name:
                    check_dsn(name)
        except DsnError as exc:
            raise ConfigError(str(exc)) from None
        return cls(
            dsn_flag=dsn,
            read_dsn_flag=read_dsn,
            redis_url=resolve_setting(redis_url, "TASKMON_REDIS_URL", "redis_url"),
            hub_url=resolve_setting(hub_url, "TASKMON_HUB_URL", "hub_url"),
            hub_token=resolve_setting(hub_token, "TASKMON_HUB_TOKEN", "hub_token"),
            broker=resolve_setting(broker, "TASKMON_BROKER", "broker"),
            scheduler=resolve_setting(scheduler, "TASKMON_SCHEDULER", "scheduler"),
            lost_after_s=(parse_lost_after(lost, what=lost_what) if lost else DEFAULT_LOST_AFTER_S),
            configured_dsn=configured,
            configured_read_dsn=replica,
        )

    @cached_property
    def dsn(self) -> str:
        """The primary's DSN: the configured one, else the embedded server's (started now)."""
        try:
            return check_dsn(self.configured_dsn or resolve_dsn(None))
        except DsnError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def read_dsn(self) -> str:
        """Where reads go: the replica when one is named, else the primary."""
        return self.configured_read_dsn or self.dsn

    @property
    def reads_from_replica(self) -> bool:
        """Whether reads go to a replica named apart from the primary."""
        return self.configured_read_dsn is not None

    def describe(self, dsn: str) -> str:
        """`dsn` as it may be shown: without its password."""
        return redact_dsn(dsn)
