"""The feature engine: per (provider, symbol) state of every window and plugin, updated by
closed bars (:meth:`FeatureEngine.update_bar`) and raw quotes
(:meth:`FeatureEngine.update_quote`), exported and imported exactly for checkpoints.

Event time only moves forward per symbol: a window whose ``ts`` is not after the symbol's last
one (a redelivery, a late correction) leaves the state alone and
:meth:`FeatureEngine.update_bar` returns ``None``. Re-scoring a corrected bar is the caller's
business: it restores the state from before that bar (:meth:`FeatureEngine.export_state` /
:meth:`FeatureEngine.import_state`, plain lists of ints and floats, exact: a float survives
msgpack bit for bit) and feeds the bars from there again, which gives exactly what an
uninterrupted engine gives.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

from market_data_core.config import FeaturePluginConfig, FeatureWindowConfig
from market_data_core.contracts import QuoteBar, WindowBar
from market_data_core.protocols import FeatureSnapshot
from market_data_core.timeutil import to_epoch_us
from market_data_pipeline import telemetry
from market_data_pipeline.features.base import Feature, PluginFeature
from market_data_pipeline.features.exact import NAN
from market_data_pipeline.features.indicators import (
    AsOfChange,
    EmaFeature,
    Macd,
    ReturnMoments,
    Rsi,
    SessionOf,
    SessionVwap,
    Sma,
    Vwap,
    utc_day,
)
from market_data_pipeline.features.quotes import QuoteMean
from market_data_pipeline.features.spec import (
    BASE_FEATURES,
    QUOTE_KINDS,
    VOLUME_KINDS,
    PluginSpec,
    WindowSpec,
    resolve_plugins,
    resolve_windows,
)

__all__ = ["FeatureEngine"]

log = logging.getLogger(__name__)


_FACTORIES: Final[dict[str, type[Feature]]] = {
    "vwap": Vwap,
    "returns": AsOfChange,
    "momentum": AsOfChange,
    "volatility": ReturnMoments,
    "skewness": ReturnMoments,
    "kurtosis": ReturnMoments,
    "realized_vol": ReturnMoments,
    "sma": Sma,
    "bollinger": Sma,
    "ema": EmaFeature,
    "macd": Macd,
    "rsi": Rsi,
    "spread_bps": QuoteMean,
    "imbalance": QuoteMean,
    "session_vwap": SessionVwap,
}


class _SymbolState:
    __slots__ = (
        "close",
        "features",
        "last_bar_us",
        "last_quote_us",
        "quote_features",
        "timers",
        "volume",
        "warned_no_volume",
    )

    def __init__(
        self,
        specs: Sequence[WindowSpec],
        plugins: Sequence[PluginSpec],
        symbol: str,
        timed: bool,
        session_of: SessionOf,
    ) -> None:
        built_in = [
            SessionVwap(s, session_of) if s.kind == "session_vwap" else _FACTORIES[s.kind](s)
            for s in specs
        ]
        self.quote_features = [f for f in built_in if f.spec.kind in QUOTE_KINDS]
        self.features: list[Feature | PluginFeature] = [*built_in]
        self.features += [PluginFeature(p) for p in plugins]
        # the histogram children, looked up once (a labels() call costs about a microsecond)
        self.timers = (
            [
                (f, telemetry.FEATURES_UPDATE_DURATION.labels(symbol, f.spec.name))
                for f in self.features
                if f.spec.kind not in QUOTE_KINDS
            ]
            if timed
            else []
        )
        self.last_bar_us: int | None = None
        self.last_quote_us: int | None = None
        self.close = NAN
        self.volume = NAN
        self.warned_no_volume = False


class FeatureEngine:
    """Rolling features per (provider, symbol).

    ``plugins``: user features (:mod:`market_data_core.plugins`), after the windows, updated by
    every bar like them. ``timed=True`` records ``features_update_duration_seconds{symbol,
    window}`` per window and update (about a microsecond each); benchmarks switch it off to
    see the bare cost. Raises ``ConfigError`` for a bad window or plugin.
    """

    def __init__(
        self,
        windows: Iterable[FeatureWindowConfig],
        *,
        plugins: Iterable[FeaturePluginConfig] = (),
        timed: bool = True,
        session_of: SessionOf | None = None,
        sessions_identity: Sequence[Any] = (),
    ) -> None:
        self.specs = resolve_windows(windows)
        # session_vwap: which session a bar is in (default: UTC days, 24/7); what it is
        # (the symbols' calendars) is part of an engine's identity
        self._session_of: SessionOf = session_of or utc_day
        self.sessions_identity = list(sessions_identity)
        window_names = BASE_FEATURES + tuple(name for s in self.specs for name in s.outputs)
        self.plugins = resolve_plugins(plugins, window_names)
        self.feature_names: tuple[str, ...] = window_names + tuple(
            name for p in self.plugins for name in p.outputs
        )
        self._state: dict[tuple[str, str], _SymbolState] = {}
        self._timed = timed
        self.volume_features: tuple[str, ...] = (
            "volume",
            *(name for s in self.specs if s.kind in VOLUME_KINDS for name in s.outputs),
        )
        """Features that need bar volume: ``nan`` for a series whose bars carry none."""
        log.info(
            "features %s need bar volume; they stay empty (nan) for series whose bars carry "
            "none (provider bars without volume)",
            ", ".join(self.volume_features),
        )

    @property
    def symbols(self) -> list[tuple[str, str]]:
        return list(self._state)

    @property
    def active_windows(self) -> int:
        return len(self._state) * (len(self.specs) + len(self.plugins))

    def last_bar_ts_us(self, provider: str, symbol: str) -> int | None:
        state = self._state.get((provider, symbol))
        return None if state is None else state.last_bar_us

    def _symbol(self, provider: str, symbol: str) -> _SymbolState:
        state = self._state.get((provider, symbol))
        if state is None:
            state = self._state[(provider, symbol)] = _SymbolState(
                self.specs, self.plugins, symbol, self._timed, self._session_of
            )
            telemetry.FEATURES_ACTIVE_WINDOWS.set(self.active_windows)
        return state

    def export_state(self, provider: str, symbol: str) -> list[Any]:
        """The symbol's whole state as plain lists, ints and floats (a copy; ``[]`` for a
        symbol never seen). Floats are kept as they are, so :meth:`import_state` of it, even
        after a msgpack round trip, continues exactly as this engine would."""
        state = self._state.get((provider, symbol))
        if state is None:
            return []
        return [
            state.last_bar_us,
            state.last_quote_us,
            state.close,
            state.volume,
            [f.state() for f in state.features],
        ]

    def import_state(self, provider: str, symbol: str, exported: Sequence[Any]) -> None:
        """Replace the symbol's state with one from :meth:`export_state` of an engine with
        the same windows (``[]``: a symbol with no bar yet). Raises ``ValueError`` when the
        state does not fit these windows."""
        if not exported:
            self.forget(provider, symbol)
            return
        last_bar_us, last_quote_us, close, volume, features = exported
        state = self._symbol(provider, symbol)
        if len(features) != len(state.features):
            raise ValueError(
                f"a feature state of {len(features)} windows does not fit {len(state.features)}"
            )
        state.last_bar_us = None if last_bar_us is None else int(last_bar_us)
        state.last_quote_us = None if last_quote_us is None else int(last_quote_us)
        state.close, state.volume = float(close), float(volume)
        for f, s in zip(state.features, features, strict=True):
            f.load(s)

    def forget(self, provider: str, symbol: str) -> None:
        """Drop the symbol's state (its next bar starts a new series)."""
        if self._state.pop((provider, symbol), None) is not None:
            telemetry.FEATURES_ACTIVE_WINDOWS.set(self.active_windows)

    def update_bar(self, bar: WindowBar) -> FeatureSnapshot | None:
        """Apply a closed window: a trade bar (with its window's quote bar, ``bar.quote``, if
        any) or, for a window without trades, its quote bar alone; the snapshot after it, or
        ``None`` if it is not newer than the symbol's last window (the state is then
        unchanged). Bar features move with trade bars only (a quote bar alone leaves them,
        ``close`` and ``volume`` as they were); ``spread_bps``/``imbalance`` features take
        the window's time-weighted spread/imbalance (see :class:`QuoteMean`)."""
        ts_us = to_epoch_us(bar.ts)
        state = self._symbol(bar.provider, bar.symbol)
        if state.last_bar_us is not None and ts_us <= state.last_bar_us:
            return None
        state.last_bar_us = ts_us
        if isinstance(bar, QuoteBar):
            for q in state.quote_features:
                q.on_quote_bar(ts_us, bar)
            return self._snapshot(bar.provider, bar.symbol, bar.ts, state)
        for q in state.quote_features:
            q.on_quote_bar(ts_us, bar.quote)
        prev = state.close
        log_ret = math.log(bar.c / prev) if prev == prev else None
        state.close = bar.c
        if bar.v is None:
            state.volume = NAN
            if not state.warned_no_volume and self.volume_features:
                state.warned_no_volume = True
                log.warning(
                    "%s|%s: bars without volume; %s stay empty (nan) for this series",
                    bar.provider,
                    bar.symbol,
                    ", ".join(self.volume_features),
                )
        else:
            state.volume = bar.v
        if self._timed:
            clock = time.perf_counter
            for f, timer in state.timers:
                t0 = clock()
                f.on_bar(ts_us, bar, log_ret)
                timer.observe(clock() - t0)
        else:
            for f in state.features:
                f.on_bar(ts_us, bar, log_ret)
        return self._snapshot(bar.provider, bar.symbol, bar.ts, state)

    def update_quote(
        self,
        provider: str,
        symbol: str,
        ts: datetime,
        *,
        bid: float,
        ask: float,
        bid_size: float | None = None,
        ask_size: float | None = None,
    ) -> FeatureSnapshot | None:
        """Apply a top-of-book quote (spread_bps, imbalance features), in (src_ts, seq)
        order. A quote at the same instant as the previous one replaces it: the book at an
        instant is its last quote, so the state after two quotes at one timestamp is that of
        the second alone. ``None`` (state unchanged) for a quote older than the previous."""
        ts_us = to_epoch_us(ts)
        state = self._symbol(provider, symbol)
        last = state.last_quote_us
        if last is not None and ts_us < last:
            return None
        state.last_quote_us = ts_us
        same_instant = ts_us == last
        for f in state.quote_features:
            f.on_quote(ts_us, bid, ask, bid_size, ask_size, same_instant)
        return self._snapshot(provider, symbol, ts, state)

    def _snapshot(
        self, provider: str, symbol: str, ts: datetime, state: _SymbolState
    ) -> FeatureSnapshot:
        values: dict[str, float] = {"close": state.close, "volume": state.volume}
        for f in state.features:
            for name, value in zip(f.outputs, f.values(), strict=True):
                values[name] = value
        return FeatureSnapshot(
            provider=provider,
            symbol=symbol,
            ts=ts,
            values=values,
            price=None if state.close != state.close else state.close,
        )
