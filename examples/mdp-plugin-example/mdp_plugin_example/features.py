"""The Donchian channel as an mdp feature plugin (``market_data_core.plugins.FeaturePlugin``)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any

from market_data_core.contracts import Bar

__all__ = ["Donchian"]


class Donchian:
    """Highest high and lowest low of the ``periods`` bars before the current one.

    Outputs ``<name>_upper`` and ``<name>_lower`` (prices); ``nan`` until ``periods`` bars have
    passed. Excluding the current bar is what makes a close above the upper band a breakout.
    One instance per series; its state is the last ``periods`` highs and lows. Raises
    ``ValueError`` for ``periods < 1``.
    """

    def __init__(self, name: str, *, periods: int = 20) -> None:
        if int(periods) < 1:
            raise ValueError(f"periods must be >= 1, got {periods}")
        self.periods = int(periods)
        self.outputs = (f"{name}_upper", f"{name}_lower")
        self._highs: deque[float] = deque(maxlen=self.periods)
        self._lows: deque[float] = deque(maxlen=self.periods)
        self._upper = math.nan
        self._lower = math.nan

    def on_bar(self, bar: Bar) -> None:
        full = len(self._highs) == self.periods
        self._upper = max(self._highs) if full else math.nan
        self._lower = min(self._lows) if full else math.nan
        self._highs.append(bar.h)
        self._lows.append(bar.l)

    def values(self) -> tuple[float, float]:
        return (self._upper, self._lower)

    def export_state(self) -> list[Any]:
        return [list(self._highs), list(self._lows), self._upper, self._lower]

    def import_state(self, state: Sequence[Any]) -> None:
        highs, lows, upper, lower = state
        self._highs = deque((float(x) for x in highs), maxlen=self.periods)
        self._lows = deque((float(x) for x in lows), maxlen=self.periods)
        self._upper, self._lower = float(upper), float(lower)
