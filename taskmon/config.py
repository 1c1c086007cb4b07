"""Where taskmon finds its database and bus.

Precedence: command-line flag > environment (``TASKMON_DSN``,
``TASKMON_READ_DSN``, ``TASKMON_REDIS_URL``, ``TASKMON_HUB_URL``, ``TASKMON_HUB_TOKEN``,
``TASKMON_BROKER``, ``TASKMON_LOST_AFTER``,
``TASK_LOG_RETENTION_DAYS``) > config file (``$XDG_CONFIG_HOME/taskmon/config.toml``
or ``TASKMON_CONFIG``, which ``taskmon --config`` sets) > the embedded
PostgreSQL under the user's data directory.

The config file is checked whole each time it is read, whichever setting is
asked for: a file that ``TASKMON_CONFIG`` names but does not exist, an
unknown key or a value of the wrong type is a :class:`ConfigError`, never
ignored.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_KEYS",
    "ConfigError",
    "cache_dir",
    "config_path",
    "config_table",
    "embedded_data_dir",
    "embedded_default_dsn",
    "resolve_dsn",
    "resolve_read_dsn",
    "resolve_setting",
]


class ConfigError(Exception):
    """A configuration value is unusable; the message is one line for the user."""


# key: (what it must be, a check); alerts and notifiers belong to the alert
# rules, which read them themselves: here only their shape is checked
CONFIG_KEYS: dict[str, str] = {
    "dsn": "a string",
    "read_dsn": "a string",
    "redis_url": "a string",
    "hub_url": "a string",
    "hub_token": "a string",
    "broker": "a string (module:variable)",
    "scheduler": "a string (module:variable)",
    "retention_days": "a number of days",
    "lost_after": 'a duration ("1h", "90m") or a number of seconds',
    "alerts": "an array of tables ([[alerts]])",
    "notifiers": "a table of tables ([notifiers.NAME])",
    "alert_interval": "a number of seconds",
}


def _type_ok(key: str, value: object) -> bool:
    if key in ("dsn", "read_dsn", "redis_url", "hub_url", "hub_token", "broker", "scheduler"):
        return isinstance(value, str)
    if key == "lost_after":
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    if key in ("retention_days", "alert_interval"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if key == "alerts":
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    return isinstance(value, dict) and all(isinstance(v, dict) for v in value.values())


def config_path() -> Path:
    """The config file: ``TASKMON_CONFIG`` if set, else the user's config directory's."""
    explicit = os.environ.get("TASKMON_CONFIG")
    if explicit:
        return Path(explicit)
    import platformdirs  # only when no explicit path: keeps `taskmon history` quick to start

    return Path(platformdirs.user_config_dir("taskmon")) / "config.toml"


def _config_file() -> dict[str, Any]:
    path = config_path()
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if os.environ.get("TASKMON_CONFIG"):
            raise ConfigError(
                f"config file {path} does not exist (named by --config or TASKMON_CONFIG)"
            ) from None
        return {}  # the default place: having none is normal
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise ConfigError(
                f"config file {path}: unknown key {key!r} (known: {', '.join(CONFIG_KEYS)})"
            )
        if not _type_ok(key, value):
            raise ConfigError(
                f"config file {path}: {key} must be {CONFIG_KEYS[key]}, "
                f"not {_toml_type(value)} {_short(value)}"
            )
    return data


def config_table() -> dict[str, Any]:
    """The whole config file, checked as :func:`resolve_setting` checks it ({} when absent).

    Raises:
        ConfigError: the file is named but missing, unreadable or wrong.
    """
    return _config_file()


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _short(value: object) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:59] + "…"


def resolve_setting(flag: str | None, env: str, key: str) -> str | None:
    """A flag if given, else the environment variable `env`, else `key` in the config file.

    Raises:
        ConfigError: the config file is named but missing, unreadable or wrong;
            checked even when a flag or the environment decides, so a broken
            file is never silently passed over.
    """
    config = _config_file()
    if flag:
        return flag
    value = os.environ.get(env)
    if value:
        return value
    found = config.get(key)
    # 0 is a value (a bad one for retention_days, said by its reader), not "unset"
    return None if found is None or found == "" else str(found)


def embedded_data_dir() -> Path:
    """The user's shared embedded PostgreSQL cluster (``TASKMON_DATA_DIR`` overrides)."""
    explicit = os.environ.get("TASKMON_DATA_DIR")
    if explicit:
        return Path(explicit) / "pg"
    import platformdirs

    base = Path(platformdirs.user_data_dir("taskmon"))
    return base / "pg"


def cache_dir() -> Path:
    """Where taskmon keeps what it can read again (``TASKMON_CACHE_DIR`` overrides)."""
    explicit = os.environ.get("TASKMON_CACHE_DIR")
    if explicit:
        return Path(explicit)
    import platformdirs

    return Path(platformdirs.user_cache_dir("taskmon"))


def resolve_dsn(flag: str | None = None) -> str:
    """The DSN to use; starts (or reuses) the embedded server when nothing is configured."""
    return resolve_setting(flag, "TASKMON_DSN", "dsn") or embedded_default_dsn()


def resolve_read_dsn(read_flag: str | None = None, dsn_flag: str | None = None) -> str:
    """The DSN reads go to: a replica if one is set (``--read-dsn``, ``TASKMON_READ_DSN``,
    ``read_dsn``), else the primary's (:func:`resolve_dsn`)."""
    return resolve_setting(read_flag, "TASKMON_READ_DSN", "read_dsn") or resolve_dsn(dsn_flag)


def embedded_default_dsn() -> str:
    """The DSN of the user's embedded server, started if it is not running (may take seconds)."""
    from taskmon.store.embedded import embedded_dsn

    return embedded_dsn(embedded_data_dir())
