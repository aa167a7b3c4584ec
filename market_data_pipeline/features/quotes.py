"""The quote features: ``spread_bps`` ((ask-bid)/mid * 10^4) and ``imbalance``
((bid_size-ask_size)/(sum)), window means of one sample per window, the window's time-weighted
value from its quote bar (the live path, :meth:`FeatureEngine.update_bar`), or of one sample
per instant from raw quotes (:meth:`FeatureEngine.update_quote`: of quotes sharing a timestamp
the last one is the book, as pandas' ``drop_duplicates(keep="last")``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from market_data_core.contracts import QuoteBar
from market_data_pipeline.features.base import Feature
from market_data_pipeline.features.exact import NAN, Moments
from market_data_pipeline.features.spec import WindowSpec

__all__ = ["QuoteMean"]


class QuoteMean(Feature):
    """``spread_bps`` / ``imbalance``: window means of the book's spread (bps) or top-of-book
    imbalance, one sample per instant.

    Fed two ways. Live (:meth:`FeatureEngine.update_bar`), one sample per window from its
    quote bar: the window's time-weighted spread / imbalance (none when the window has no
    book, or an undefined imbalance); a horizon window evicts by the window's time whether
    or not it brings a sample. From raw quotes (:meth:`FeatureEngine.update_quote`), one
    sample per instant: the book at that instant, i.e. of several quotes at one timestamp
    the last one (a later quote at the same instant *replaces* the instant's sample, and
    whatever that sample's push evicted from a ``periods`` window comes back).
    """

    __slots__ = ("evicted", "m", "pushed")

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        self.m = Moments(1, spec.horizon_us, spec.periods)
        # what the last raw quote's sample did, to undo it for a quote at the same instant
        self.pushed = False
        self.evicted: list[tuple[int, float]] = []

    def _sample(self, ts_us: int, x: float | None) -> None:
        if x is None:
            self.pushed, self.evicted = False, []
            self.m.advance(ts_us)
        else:
            self.pushed, self.evicted = True, self.m.push(ts_us, x)

    def on_quote(
        self,
        ts_us: int,
        bid: float,
        ask: float,
        bid_size: float | None,
        ask_size: float | None,
        same_instant: bool,
    ) -> None:
        if same_instant and self.pushed:
            self.m.pop_last()
            self.m.restore(self.evicted)
        if self.spec.kind == "spread_bps":
            x: float | None = (ask - bid) / ((ask + bid) / 2.0) * 1e4
        elif bid_size is not None and ask_size is not None and bid_size + ask_size > 0:
            x = (bid_size - ask_size) / (bid_size + ask_size)
        else:
            x = None
        self._sample(ts_us, x)

    def on_quote_bar(self, ts_us: int, quote: QuoteBar | None) -> None:
        if quote is None:
            x = None
        else:
            x = quote.spread_bps if self.spec.kind == "spread_bps" else quote.imbalance
        self._sample(ts_us, x)

    def values(self) -> tuple[float, ...]:
        return (self.m.mean(),) if self.m.ready(1) else (NAN,)

    def state(self) -> list[Any]:
        return [
            self.m.state(),
            self.pushed,
            [t for t, _ in self.evicted],
            [x for _, x in self.evicted],
        ]

    def load(self, state: Sequence[Any]) -> None:
        moments, pushed, ev_ts, ev_x = state
        self.m.load(moments)
        self.pushed = bool(pushed)
        self.evicted = list(zip(ev_ts, ev_x, strict=True))
