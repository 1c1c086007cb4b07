"""The rollups' histograms: log-scale bins and their packing in lanes.

One home for the arithmetic that ``taskmon_bin()``, ``taskmon_bin_value()`` and
``taskmon_hist_unit()`` do in SQL (``sql/0002_rollups.sql``): the stats and the
``/metrics`` reader both unpack the rollups through :func:`unpack`.
"""

from __future__ import annotations

import math

__all__ = [
    "LANES",
    "LANE_SQL",
    "RELATIVE_ERROR",
    "ZERO_BIN",
    "bin_of",
    "bin_value",
    "lane_bin",
    "unpack",
]

RELATIVE_ERROR = 0.02
"""The histograms' bound: a reported percentile is within 2 % of the value of that rank."""
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
ZERO_BIN = -32768


# ---------------------------------------------------------------------------
# histogram bins (the same arithmetic as taskmon_bin()/taskmon_bin_value() in SQL)
# ---------------------------------------------------------------------------


def bin_of(value: float) -> int | None:
    """The histogram bin of `value` (None for NaN and infinities)."""
    if not math.isfinite(value):
        return None
    if value <= 0:
        return ZERO_BIN
    return math.ceil(math.log(value) / math.log(_GAMMA))


def bin_value(index: int) -> float:
    """The value reported for bin `index`: within RELATIVE_ERROR of anything in it."""
    if index == ZERO_BIN:
        return 0.0
    return 2 * _GAMMA**index / (_GAMMA + 1)


_LANE_DIGITS = 12
_LANE_MIN_BIN, _LANE_MAX_BIN, _LANE_OFFSET = -179, 520, 180
LANES = _LANE_MAX_BIN + _LANE_OFFSET + 1
# The lane of a packed histogram that keeps bin {0} (bins beyond its lanes go to the end ones)
LANE_SQL = (
    f"CASE WHEN {{0}} = {ZERO_BIN} THEN 0 "
    f"ELSE least(greatest({{0}}, {_LANE_MIN_BIN}), {_LANE_MAX_BIN}) + {_LANE_OFFSET} END"
)


def lane_bin(lane: int) -> int:
    """The bin whose count lane `lane` keeps (the end lanes also keep the bins beyond them)."""
    return ZERO_BIN if lane == 0 else lane - _LANE_OFFSET


def unpack(packed: str) -> list[int]:
    """The counts per lane (lane 0 first, all :data:`LANES` of them) of a packed histogram.

    See taskmon_hist_unit in SQL. A histogram arrives as text of up to 8 400
    digits, some 400 lanes for a typical task: this runs for every task and
    metric of every call, so it stays a slice and an ``int`` per lane.
    """
    digits = packed.partition(".")[0].lstrip("+")
    if not digits or digits.startswith("-"):  # cannot happen unless the rollups were edited by hand
        return [0] * LANES
    digits = "0" * (-len(digits) % _LANE_DIGITS) + digits
    lanes = list(
        map(int, [digits[i : i + _LANE_DIGITS] for i in range(0, len(digits), _LANE_DIGITS)])
    )
    lanes.reverse()
    if len(lanes) > LANES:  # likewise: lanes end at LANES
        lanes[LANES - 1] += sum(lanes[LANES:])
        del lanes[LANES:]
    return lanes + [0] * (LANES - len(lanes))
