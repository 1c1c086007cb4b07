"""The core runs inside users' workers: it must not drag in the UI stack."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "taskmon",
    "taskmon.events",
    "taskmon.params",
    "taskmon.config",
    "taskmon.middleware",
    "taskmon.recorder",
    "taskmon.store.db",
    "taskmon.store.migrations",
    "taskmon.bus.postgres",
    "taskmon.bus.redis",
    "taskmon.retention",
]
OPTIONAL_CORE = [
    "taskmon.filters",
    "taskmon.store.queries",
    "taskmon.hub",
    "taskmon.client",
    "taskmon.retry",
    "taskmon.store.retry",
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
