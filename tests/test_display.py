"""The CLI and the TUI say a status and a duration the same way (taskmon.domain.display)."""

from __future__ import annotations

import pytest

from taskmon.commands.render import STATUS_STYLES, status_text
from taskmon.domain.display import STATUS_SYMBOLS, duration, status_label
from taskmon.domain.events import Status
from taskmon.store.schema import STATUSES


def test_every_status_has_its_own_symbol_and_a_cli_colour() -> None:
    assert set(STATUS_SYMBOLS) == set(STATUSES) == set(STATUS_STYLES)
    assert len(set(STATUS_SYMBOLS.values())) == len(Status)


@pytest.mark.parametrize("status", [*STATUSES, "from-a-newer-version"])
def test_cli_status_reads_like_the_tui(status: str) -> None:
    assert status_text(status).plain == status_label(status)
    assert status_label(status).endswith(f" {status}")


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (None, "-"),
        (0.0, "0ms"),
        (0.42, "0.42ms"),
        (812.4, "812ms"),
        (4_200.0, "4.2s"),
        (185_000.0, "3m05s"),
        (3_720_000.0, "1h02m"),
    ],
)
def test_durations(ms: float | None, text: str) -> None:
    assert duration(ms) == text
