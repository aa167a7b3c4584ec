"""A channel breakout as an mdp strategy plugin (``market_data_core.plugins.StrategyPlugin``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from market_data_core.plugins import Emit
from market_data_core.protocols import FeatureSnapshot

__all__ = ["Breakout"]


class Breakout:
    """``breakout_up`` (value +1) when the close moves above ``<channel>_upper``,
    ``breakout_down`` (-1) when it moves below ``<channel>_lower``: once per move, when the
    close's side of the channel changes to above or below (inside: no signal). ``score`` is
    the signals' score. Needs the features ``close``, ``<channel>_upper``, ``<channel>_lower``
    (e.g. a ``donchian`` feature named ``channel``); a snapshot where one is not ready emits
    nothing and leaves the side as it was."""

    def __init__(self, *, channel: str = "don20", score: float = 1.0) -> None:
        self.channel = channel
        self.score = float(score)
        self.requires = ("close", f"{channel}_upper", f"{channel}_lower")
        self._side = 0  # -1 below, 0 inside, +1 above the channel at the last ready snapshot

    def on_features(self, snapshot: FeatureSnapshot) -> list[Emit]:
        close, upper, lower = (snapshot.values[n] for n in self.requires)
        if math.isnan(close) or math.isnan(upper) or math.isnan(lower):
            return []
        side = 1 if close > upper else -1 if close < lower else 0
        moved, self._side = side != self._side, side
        if not moved or side == 0:
            return []
        name = "breakout_up" if side > 0 else "breakout_down"
        meta = {"close": close, "upper": upper, "lower": lower}
        return [Emit(name, float(side), self.score, meta)]

    def export_state(self) -> list[Any]:
        return [self._side]

    def import_state(self, state: Sequence[Any]) -> None:
        (self._side,) = (int(x) for x in state)
