"""What the command line says when it is used wrongly: one line, the right exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import unconfigured_env

from taskmon.store.db import DsnError, check_dsn, connect

ROOT = Path(__file__).resolve().parent.parent


def taskmon(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user does, on a machine with nothing configured."""
    return subprocess.run(
        [sys.executable, "-m", "taskmon", *args],
        cwd=ROOT,
        env=unconfigured_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The single stderr line of a refused command, after checking the exit status."""
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("taskmon: error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


# -- DSNs -------------------------------------------------------------------------

BAD_DSNS = [
    ("postgresql://u:pw@127.0.0.1:99999/x", "port 99999"),
    ("postgresql://u:pw@127.0.0.1:abc/x", "port 'abc'"),
    ("postgresql://u:pw@[::1:5432/x", "no closing ']'"),
    ("postgresql://u@[::1]:0/x", "port 0"),
    ("postgresql://u@h/x?port=70000", "port 70000"),
    ("postgresql://u@h1:5432,h2:x/db", "port 'x'"),
    ("postgresql://u@h/x?sslmode=bogus", "sslmode 'bogus'"),
    ("mysql://u@h/x", "postgresql://"),
    ("host=127.0.0.1 port=5432", "postgresql://"),
]


@pytest.mark.parametrize(("dsn", "named"), BAD_DSNS)
def test_check_dsn_names_what_is_wrong_without_the_password(dsn: str, named: str) -> None:
    with pytest.raises(DsnError) as caught:
        check_dsn(dsn)
    message = str(caught.value)
    assert named in message
    assert "pw" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "postgres://u:p%40ss@[::1]:6543/db?sslmode=prefer",
        "postgresql://u@h1:5432,h2:5433/db",
        "postgresql://postgres@/postgres?host=/tmp/pg%20dir&port=5432",
        "postgresql:///db",
    ],
)
def test_check_dsn_accepts_what_asyncpg_accepts(dsn: str) -> None:
    assert check_dsn(dsn) == dsn


async def test_connect_refuses_a_bad_dsn_as_a_dsn_error() -> None:
    # asyncpg itself ends in an OverflowError deep in the socket layer for this one
    with pytest.raises(DsnError, match="port 99999"):
        await connect("postgresql://u:pw@127.0.0.1:99999/x")
    # and its own DSN complaints become the same class
    with pytest.raises(DsnError, match="bad DSN"):
        await connect("postgresql://u@127.0.0.1:5432/x?target_session_attrs=bogus")


@pytest.mark.parametrize(("dsn", "named"), BAD_DSNS[:3])
@pytest.mark.parametrize("command", ["history", "stats", "cleanup", "tail", "serve", "tui"])
def test_a_bad_dsn_is_one_line_and_exit_2(command: str, dsn: str, named: str) -> None:
    line = one_error_line(taskmon(command, "--dsn", dsn))
    assert named in line and "pw" not in line


def test_a_bad_dsn_from_the_environment_is_one_line_too() -> None:
    line = one_error_line(taskmon("history", TASKMON_DSN="postgresql://u@127.0.0.1:99999/x"))
    assert "port 99999" in line


# -- the parser's own errors ----------------------------------------------------

USAGE_ERRORS = [
    (["history", "--sinse", "1d"], "no such option: --sinse"),
    (["histroy"], "no such command 'histroy'"),
    (["serve", "--port", "abc"], "'--port'"),
    (["history", "--limit"], "'--limit' requires an argument"),
    (["tail", "-q"], "'-q' requires an argument"),
    (["db", "upgrad"], "no such command 'upgrad'"),
    (["db", "stop", "--dsn", "x"], "no such option: --dsn"),
    (["--bogus"], "no such option: --bogus"),
    (["stats", "extra"], "extra"),
    (["cleanup", "--batch-size", "x"], "'--batch-size'"),
    (["demo", "--rate", "fast"], "'--rate'"),
    (["tui", "--lost-after"], "'--lost-after' requires an argument"),
    (["serve", "--lost-after", "soon"], "--lost-after"),
]


@pytest.mark.parametrize(("args", "named"), USAGE_ERRORS)
def test_every_usage_error_is_one_line_naming_the_option(args: list[str], named: str) -> None:
    line = one_error_line(taskmon(*args))
    assert named in line
    assert "╭" not in line and "Usage:" not in line


def test_help_lists_the_commands_in_the_order_a_user_meets_them() -> None:
    result = taskmon("-h", COLUMNS="100")
    assert result.returncode == 0, result.stderr
    listed = [
        line.split()[1]
        for line in result.stdout.splitlines()
        if line.startswith("│ ") and len(line.split()) > 2 and line.split()[1].isalpha()
    ]
    commands = ["tui", "history", "stats", "tail", "serve", "cleanup", "db", "demo"]
    assert [name for name in listed if name in commands] == commands
    assert "in the order you would use them" in result.stdout


def test_tui_takes_token_like_tail_and_still_reads_the_old_spelling() -> None:
    for command in ("tui", "tail"):
        shown = taskmon(command, "-h", COLUMNS="120").stdout
        assert "--token" in shown and "--hub-token" not in shown, command
    # the old spelling parses (the window is what is refused)
    line = one_error_line(taskmon("tui", "--hub-token", "s3cret", "--since", "3y"))
    assert line == "taskmon: error: --since: '3y' is not one of 15m, 1h, 24h, 7d, 30d"


# -- the config file --------------------------------------------------------------

BAD_CONFIGS = [
    (None, "does not exist"),
    ('dns = "postgresql://x"\n', "unknown key 'dns'"),
    ("dsn = 5432\n", "dsn must be a string, not a number 5432"),
    ('retention_days = "30"\n', "retention_days must be a number of days"),
    ("hub_token = true\n", "hub_token must be a string, not a boolean"),
    ("alerts = 3\n", "alerts must be an array of tables"),
    ("[notifiers]\nwebhook = 1\n", "notifiers must be a table of tables"),
    ("dsn = \n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "named"), BAD_CONFIGS)
@pytest.mark.parametrize("how", ["env", "flag"])
def test_a_bad_config_file_is_one_line_and_exit_2(
    tmp_path: Path, text: str | None, named: str, how: str
) -> None:
    path = tmp_path / "config.toml"
    if text is not None:
        path.write_text(text)
    # a flag that decides the DSN does not make a broken file go unnoticed
    args = ["history", "--dsn", "postgresql://postgres@127.0.0.1:1/x"]
    if how == "env":
        result = taskmon(*args, TASKMON_CONFIG=str(path))
    else:
        result = taskmon("--config", str(path), *args)
    line = one_error_line(result)
    assert named in line and str(path) in line


@pytest.mark.parametrize("command", [["stats"], ["tail"], ["serve"], ["tui"], ["cleanup"]])
def test_every_command_that_reads_settings_checks_the_config(
    tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text('hub_url = "ws://127.0.0.1:9/"\ncolour = "always"\n')
    line = one_error_line(taskmon(*command, TASKMON_CONFIG=str(path)))
    assert "unknown key 'colour'" in line


def test_the_config_file_is_read_with_alert_tables_and_flag_precedence(
    tmp_path: Path, dsn: str
) -> None:
    # given a config that names the database and carries alert rules and notifiers
    path = tmp_path / "config.toml"
    path.write_text(
        f'dsn = "{dsn}"\nretention_days = 7\n'
        '[[alerts]]\nname = "failures"\n[notifiers.ops]\nurl = "https://example.invalid/"\n'
    )
    # when a command reads it
    result = taskmon("--config", str(path), "history")
    # then the DSN came from the file: its (empty) database answered
    assert result.returncode == 0, result.stderr
    assert "no attempts recorded yet" in result.stdout
    # and a flag still wins over it
    unreachable = taskmon(
        "--config", str(path), "history", "--dsn", "postgresql://postgres@127.0.0.1:1/x"
    )
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


# -- filters ------------------------------------------------------------------------

DSN_DOWN = "postgresql://postgres@127.0.0.1:1/x"  # never reached: input is checked first

FILTER_ERRORS = [
    (["history", "-q", "since:7d since:1d"], "--query: since: given twice"),
    (["stats", "-q", "attempt:1 attempt:2"], "--query: attempt: given twice"),
    (["history", "--since", "7d", "-q", "since:1d"], "--since and since: in --query"),
    (["stats", "--until", "1d", "-q", "until:2d"], "--until and until: in --query"),
    (["tail", "-q", "since:1h"], "--query: since: a live tail has no time window"),
    (["tail", "-q", "status:failed until:1h"], "--query: until: a live tail"),
    (["tui", "-q", "task_id:a task_id:b"], "--query: task_id: given twice"),
]


@pytest.mark.parametrize(("args", "named"), FILTER_ERRORS)
def test_repeated_and_unused_filter_keys_are_refused(args: list[str], named: str) -> None:
    line = one_error_line(taskmon(*args, "--dsn", DSN_DOWN))
    assert named in line


async def test_the_filter_bar_shows_a_repeated_key_inline() -> None:
    from textual.app import App, ComposeResult
    from textual.widgets import Static

    from taskmon.tui.widgets.filter_bar import FilterBar

    applied: list[str] = []

    class BarApp(App[None]):
        def compose(self) -> ComposeResult:
            yield FilterBar()

        def on_filter_bar_applied(self, message: FilterBar.Applied) -> None:
            applied.append(message.query)

    app = BarApp()
    async with app.run_test(size=(100, 10)) as pilot:
        app.query_one(FilterBar).open("")
        await pilot.press(*"since:7d since:1d", "enter")
        await pilot.pause()
        error = str(app.query_one("#filter-error", Static).render())
        assert error.startswith("✕ since: given twice")
        assert applied == []
        await pilot.press(*["backspace"] * len(" since:1d"), "enter")
        await pilot.pause()
        assert applied == ["since:7d"]


# -- the TUI's live side gives up on a hub it never had ------------------------------


@pytest.mark.parametrize("case", ["wrong token", "no hub"])
async def test_the_tui_goes_offline_saying_why_instead_of_retrying(dsn: str, case: str) -> None:
    from helpers import wait_for

    from taskmon.server.hub import Hub
    from taskmon.tui.app import make_app
    from taskmon.tui.sources import HubLiveSource, PgDataSource
    from taskmon.tui.widgets.live_feed import LiveFeed
    from taskmon.tui.widgets.status_bar import StatusBar

    hub = Hub(dsn=dsn, token="right")
    url = await hub.start()
    if case == "no hub":
        await hub.stop()  # the port is free again: nothing answers there
    live = HubLiveSource(url, token="wrong", max_backoff=0.1)
    app = make_app(PgDataSource(dsn), live)
    try:
        async with app.run_test(size=(120, 36)):
            bar = app.main.query_one(StatusBar)
            await wait_for(lambda: bar.connection == "offline")
            why = "hub refused the token" if case == "wrong token" else "no hub answers at"
            assert str(bar.connection_text()).startswith(f"✕ offline: {why}")
            feed = app.main.query_one(LiveFeed)
            await wait_for(lambda: f"live feed offline: {why}" in "\n".join(feed.plain_lines()))
            assert "retrying" not in "\n".join(feed.plain_lines())
    finally:
        await hub.stop()


# -- output -------------------------------------------------------------------------


def test_counts_read_as_english() -> None:
    from taskmon.commands.common import plural

    assert plural(1, "row") == "1 row"
    assert plural(0, "row") == "0 rows"
    assert plural(1, "batch", "batches") == "1 batch"
    assert plural(1204, "batch", "batches") == "1,204 batches"
    assert plural(1, "running attempt") == "1 running attempt"


def test_round_durations_rounds_only_durations() -> None:
    from taskmon.commands.common import round_durations

    event = {"seq": 3, "data": {"duration_ms": 30.226469039916992, "attempt": 1,
             "timeout_s": 2.50001, "params": {"kwargs": {"wait_ms": 0.123456789}}},
             "tasks": [{"p95_ms": 1.23456}], "failure_rate": 0.123456789}  # fmt: skip
    assert round_durations(event) == {
        "seq": 3,
        "data": {"duration_ms": 30.226, "attempt": 1, "timeout_s": 2.5,
                 "params": {"kwargs": {"wait_ms": 0.123456789}}},
        "tasks": [{"p95_ms": 1.235}],
        "failure_rate": 0.123456789,
    }  # fmt: skip


def test_serve_says_it_is_listening_once(redis_url: str) -> None:
    import signal
    import threading
    import urllib.error
    import urllib.request

    from helpers import wait_for_sync

    proc = subprocess.Popen(
        [sys.executable, "-m", "taskmon", "serve", "--port", "0", "--redis-url", redis_url],
        cwd=ROOT, env=unconfigured_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip

    def answers(port: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10):
                return True
        except urllib.error.HTTPError:
            return True  # a 503 (no bus yet) is an answer too
        except OSError:
            return False

    try:
        stderr = proc.stderr
        assert stderr is not None
        # the hub logs its start inside start(), before serve writes its own line:
        # a second report of it could only come first
        first: list[str] = []
        reader = threading.Thread(target=lambda: first.append(stderr.readline()), daemon=True)
        reader.start()
        wait_for_sync(
            lambda: first or proc.poll() is not None, timeout=60, what="serve's first line"
        )
        reader.join(timeout=10)
        assert first and first[0].startswith("taskmon: hub listening on ws://127.0.0.1:"), first
        # serve installs its Ctrl-C handler right after that line, before its loop
        # serves anything: once /healthz answers, SIGINT is a clean stop, not a race
        port = first[0].split("ws://127.0.0.1:", 1)[1].split("/", 1)[0]
        wait_for_sync(lambda: answers(port), timeout=60, interval=0.1, what="serve's /healthz")
    finally:
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    assert "listening" not in rest, rest
