"""Summary statistics of a run's measurements (window latencies, lags)."""

from __future__ import annotations

import math

__all__ = ["percentile"]


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least ``pct`` % of the values at
    or below it); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
