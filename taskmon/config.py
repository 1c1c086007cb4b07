"""Where taskmon finds its database and bus.

Precedence: command-line flag > environment (``TASKMON_DSN``,
``TASKMON_REDIS_URL``, ``TASKMON_HUB_URL``, ``TASKMON_HUB_TOKEN``,
``TASK_LOG_RETENTION_DAYS``) > config file (``$XDG_CONFIG_HOME/taskmon/config.toml``
or ``TASKMON_CONFIG``) > the embedded PostgreSQL under the user's data directory.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "config_path",
    "embedded_data_dir",
    "embedded_default_dsn",
    "resolve_dsn",
    "resolve_setting",
]


class ConfigError(Exception):
    """A configuration value is unusable; the message is one line for the user."""


def config_path() -> Path:
    explicit = os.environ.get("TASKMON_CONFIG")
    if explicit:
        return Path(explicit)
    import platformdirs  # only when no explicit path: keeps `taskmon history` quick to start

    return Path(platformdirs.user_config_dir("taskmon")) / "config.toml"


def _config_file() -> dict[str, Any]:
    path = config_path()
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc


def resolve_setting(flag: str | None, env: str, key: str) -> str | None:
    """A flag if given, else the environment variable `env`, else `key` in the config file."""
    if flag:
        return flag
    value = os.environ.get(env)
    if value:
        return value
    found = _config_file().get(key)
    return str(found) if found else None


def embedded_data_dir() -> Path:
    """The user's shared embedded PostgreSQL cluster (``TASKMON_DATA_DIR`` overrides)."""
    explicit = os.environ.get("TASKMON_DATA_DIR")
    if explicit:
        return Path(explicit) / "pg"
    import platformdirs

    base = Path(platformdirs.user_data_dir("taskmon"))
    return base / "pg"


def resolve_dsn(flag: str | None = None) -> str:
    """The DSN to use; starts (or reuses) the embedded server when nothing is configured."""
    return resolve_setting(flag, "TASKMON_DSN", "dsn") or embedded_default_dsn()


def embedded_default_dsn() -> str:
    """The DSN of the user's embedded server, started if it is not running (may take seconds)."""
    from taskmon.store.embedded import embedded_dsn

    return embedded_dsn(embedded_data_dir())
