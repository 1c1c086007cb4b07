"""The core runs inside users' workers: it must not drag in the UI stack.

Two proofs: importing the core in a fresh interpreter loads none of textual,
typer or rich (below), and the import-linter contract in ``pyproject.toml``
(``lint-imports``, run by ``.ci/run``) finds no import of them, direct or
indirect, in any core module, whichever code path runs.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# everything else is the core
UI = {"taskmon.cli", "taskmon.__main__", "taskmon.commands", "taskmon.tui"}

CORE = [
    "taskmon",
    "taskmon.domain.events",
    "taskmon.domain.params",
    "taskmon.domain.statuses",
    "taskmon.config",
    "taskmon.worker.middleware",
    "taskmon.worker.recorder",
    "taskmon.store.db",
    "taskmon.store.migrations",
    "taskmon.bus.postgres",
    "taskmon.bus.redis",
    "taskmon.worker.cleanup",
    "taskmon.server.alerts",
    "taskmon.store.alerts",
    "taskmon.store.metrics",
    "taskmon.server.exporter",
    "taskmon.domain.display",
    "taskmon.demo",
    "taskmon.worker.queues",
    "taskmon.store.workers",
]
OPTIONAL_CORE = [
    "taskmon.domain.filters",
    "taskmon.store.schema",
    "taskmon.store.filter_sql",
    "taskmon.store.history",
    "taskmon.store.stats",
    "taskmon.store.purge",
    "taskmon.store.maintenance",
    "taskmon.server.hub",
    "taskmon.server.client",
    "taskmon.service.resend",
    "taskmon.store.retry_links",
]


def test_core_modules_do_not_import_textual_typer_or_rich() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {CORE!r}: importlib.import_module(m)\n"
        f"for m in {OPTIONAL_CORE!r}:\n"
        "    try: importlib.import_module(m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name != m: raise\n"
        "bad = sorted(n for n in ('textual', 'typer', 'rich') if n in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_history_cli_does_not_import_textual() -> None:
    code = "import sys\nfrom taskmon import cli\nprint('textual' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_cli_starts_without_loading_the_database_layers() -> None:
    # `taskmon --help` and a bad flag answer at once: commands import the
    # service, store and driver only when they run
    code = (
        "import sys\nfrom taskmon import cli\n"
        "heavy = ('asyncpg', 'taskmon.store', 'taskmon.service.maintenance', 'taskmon.worker')\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_import_contract_covers_every_core_module() -> None:
    # given the contract of pyproject.toml
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["name"].startswith("The core never")]
    assert set(contract["forbidden_modules"]) == {"textual", "typer", "rich"}
    # then each top-level module and package of taskmon is either UI or in the contract
    found = {
        f"taskmon.{p.stem}"
        for p in (ROOT / "taskmon").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert found - UI == set(contract["source_modules"])


def test_the_import_contract_is_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([lint], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert f"{len(contracts['contracts'])} kept, 0 broken" in out.stdout


def test_the_front_ends_reach_the_store_only_through_the_service_layer() -> None:
    # given the contracts of pyproject.toml
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    by_name = {c["name"]: c for c in config["contracts"]}
    # then one forbids the front ends the store and the buses, directly
    (front,) = [c for n, c in by_name.items() if n.startswith("The CLI and the TUI")]
    assert set(front["source_modules"]) == {"taskmon.cli", "taskmon.commands", "taskmon.tui"}
    assert set(front["forbidden_modules"]) == {
        "taskmon.store",
        "taskmon.bus",
        "taskmon.server",
        "taskmon.worker",
    }
    # and the layers put every top-level package of taskmon in one place
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    named = {m.strip() for layer in layers["layers"] for m in layer.split("|")}
    packages = {
        f"taskmon.{p.stem}"
        for p in (ROOT / "taskmon").iterdir()
        if (p.suffix == ".py" and p.stem not in {"__init__", "__main__"})
        or (p / "__init__.py").exists()
    }
    assert packages == named
