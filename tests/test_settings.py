"""One set of settings for every front end: the lost rule agrees everywhere.

`taskmon serve --lost-after X` used to hand X to the hub but not to its alert
runner, so `serve` and `alerts check` disagreed on what is lost; each command
typed the one-hour default out again. Now the settings are resolved once
(:class:`taskmon.service.settings.Settings`) and every part reads them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import unconfigured_env, wait_for
from test_rollups import insert

from taskmon.config import ConfigError
from taskmon.domain.statuses import DEFAULT_LOST_AFTER_S
from taskmon.service.alerts import list_statuses, load_alert_config
from taskmon.service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_lost_after_comes_from_the_flag_then_the_environment_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a config file that says 2 hours
    monkeypatch.setenv("TASKMON_CONFIG", str(_config(tmp_path, 'lost_after = "2h"\n')))
    monkeypatch.delenv("TASKMON_LOST_AFTER", raising=False)
    # then the file decides when nothing else does
    assert Settings.resolve().lost_after_s == 7200
    # and the environment overrides the file, the flag both
    monkeypatch.setenv("TASKMON_LOST_AFTER", "90m")
    assert Settings.resolve().lost_after_s == 5400
    assert Settings.resolve(lost_after="30s").lost_after_s == 30
    # and plain seconds are a duration too
    assert Settings.resolve(lost_after="45").lost_after_s == 45


def test_lost_after_defaults_to_the_one_constant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKMON_CONFIG", str(_config(tmp_path, "")))
    monkeypatch.delenv("TASKMON_LOST_AFTER", raising=False)
    assert Settings.resolve().lost_after_s == DEFAULT_LOST_AFTER_S == 3600


@pytest.mark.parametrize(
    ("flag", "env", "file", "said"),
    [
        ("soon", None, "", "--lost-after:"),
        ("0s", None, "", "--lost-after: '0s' is not a positive duration"),
        (None, "-5", "", "TASKMON_LOST_AFTER: '-5' is not a duration above zero"),
        (None, None, 'lost_after = "later"\n', "lost_after in the config file:"),
    ],
)
def test_a_bad_lost_after_is_one_line_naming_where_it_came_from(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flag: str | None,
    env: str | None,
    file: str,
    said: str,
) -> None:
    monkeypatch.setenv("TASKMON_CONFIG", str(_config(tmp_path, file)))
    if env is None:
        monkeypatch.delenv("TASKMON_LOST_AFTER", raising=False)
    else:
        monkeypatch.setenv("TASKMON_LOST_AFTER", env)
    with pytest.raises(ConfigError) as caught:
        Settings.resolve(lost_after=flag)
    assert str(caught.value).startswith(said), caught.value
    assert "\n" not in str(caught.value)


def test_a_config_file_lost_after_of_the_wrong_type_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKMON_CONFIG", str(_config(tmp_path, "lost_after = true\n")))
    with pytest.raises(ConfigError, match="lost_after must be"):
        Settings.resolve()


def test_the_cli_says_a_bad_lost_after_in_one_line_with_status_2() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "taskmon", "history", "--lost-after", "0s"],
        cwd=ROOT, env=unconfigured_env(TASKMON_DSN="postgresql://127.0.0.1:1/none"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "taskmon: error: --lost-after: '0s' is not a positive duration"
    ]


async def _a_running_attempt(db: asyncpg.Connection[Any], age: timedelta) -> None:
    when = datetime.now(UTC) - age
    await insert(db, [{"task_id": "t-stuck", "task_name": "tests:stuck", "status": "running",
                       "created_at": when}])  # fmt: skip


async def test_history_reads_lost_after_from_the_environment(
    dsn: str, db: asyncpg.Connection[Any]
) -> None:
    # given an attempt running for two minutes, without a timeout
    await _a_running_attempt(db, timedelta(minutes=2))

    def status(**env: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "taskmon", "history", "--format", "json"],
            cwd=ROOT, env=unconfigured_env(TASKMON_DSN=dsn, **env),
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        (row,) = json.loads(out.stdout)
        return str(row["status"])

    # then it is running by the default rule, and lost after one minute
    assert await asyncio.to_thread(status) == "running"
    assert await asyncio.to_thread(status, TASKMON_LOST_AFTER="1m") == "lost"


async def test_serve_lost_after_rules_its_alerts_too(
    dsn: str, db: asyncpg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an attempt running for two minutes, and a rule on lost attempts
    await _a_running_attempt(db, timedelta(minutes=2))
    config = _config(
        tmp_path,
        '[[alerts]]\nname = "stuck work"\nwhen = "lost > 0"\nover = "1h"\n',
    )
    env = unconfigured_env(TASKMON_DSN=dsn, TASKMON_CONFIG=str(config))
    # when `taskmon serve` checks it with --lost-after 1m
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "taskmon", "serve", "--port", "0", "--lost-after", "1m",
        "--alert-interval", "1",
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        monkeypatch.setenv("TASKMON_CONFIG", str(config))
        rules = load_alert_config()

        async def firing() -> bool:
            statuses = await list_statuses(Settings(configured_dsn=dsn), rules)
            return any(s.firing for s in statuses)

        # then the rule fires: the runner counts the attempt lost by the same minute
        assert await wait_for(firing, timeout=60, interval=0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        _, raw_err = await asyncio.wait_for(proc.communicate(), 30)
    err = raw_err.decode()
    assert "checking 1 alert rule(s)" in err, err
