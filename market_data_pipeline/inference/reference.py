"""The reference for the signals guarantee: one clean pass of an engine over final bars.

"Features and signals are a pure function of the final bars": whatever happened on the way
(crashes, outages, takeovers, corrections, restarts, replays), the active rows of the
``signals`` table must equal what :func:`clean_pass` of a fresh engine over the store's final
windows gives (``bars_ohlcv`` rows with their ``quote_bars``, and quote bars alone:
``StoreClient.windows_range``). ``mdp bench`` checks it after its run; the integration tests check
it after each fault (``tests/support/signals_reference.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from market_data_core.contracts import Signal, WindowBar
from market_data_core.protocols import FeatureSnapshot
from market_data_pipeline.inference.engine import InferenceEngine

__all__ = ["CleanPass", "clean_pass", "signal_rows"]


@dataclass(frozen=True, slots=True)
class CleanPass:
    """Every signal of the pass (oldest first) and the feature snapshot after each bar."""

    signals: list[Signal]
    snapshots: list[FeatureSnapshot]


async def clean_pass(engine: InferenceEngine, bars: Iterable[WindowBar]) -> CleanPass:
    """Feed ``bars`` (any series, each in event-time order) to ``engine`` from an empty
    state, as an uninterrupted run would, and collect what it emits. ``engine`` must be
    fresh (no state for these series)."""
    signals: list[Signal] = []
    snapshots: list[FeatureSnapshot] = []
    for bar in bars:
        scored = await engine.score_bar(bar)
        if scored is None:
            raise ValueError(f"{bar.provider}|{bar.symbol}: {bar.ts} is not after the bar before")
        snapshots.append(scored[0])
        signals.extend(scored[1])
    return CleanPass(signals, snapshots)


def signal_rows(signals: Sequence[Signal]) -> list[tuple[object, ...]]:
    """Signals as comparable rows, sorted by id: every field, ``meta`` as canonical JSON
    (sorted keys; floats as their shortest round-trip text, so equal means bit for bit)."""
    return sorted(
        (
            s.signal_id,
            s.ts,
            s.provider,
            s.symbol,
            s.name,
            s.value,
            s.score,
            s.adapter,
            s.ver,
            s.state,
            json.dumps(s.meta, sort_keys=True),
        )
        for s in signals
    )
