"""The bar indicators, one class per kind, each checked against TA-Lib or pandas on real bars
in ``tests/unit``:

- ``vwap``: sum(p*v)/sum(v) over the window, p = the bar's own vwap or (h+l+c)/3; ``nan``
  while the window holds a bar without volume (see :attr:`FeatureEngine.volume_features`).
- ``returns``: log return ln(c_t / c_ref), c_ref = the close ``horizon`` ago (as of t - horizon)
  or ``periods`` bars ago.
- ``momentum``: rate of change c_t / c_ref - 1 (TA-Lib ROCP), c_ref as for returns.
- ``volatility``: sample stdev (ddof=1) of bar-to-bar log returns in the window.
- ``skewness``/``kurtosis``: bias-corrected sample skewness / excess kurtosis of those returns
  (pandas' definitions).
- ``realized_vol``: sqrt(sum r^2) of those returns.
- ``sma``; ``bollinger``: mid = SMA, bands = mid ± num_std * population stdev (TA-Lib BBANDS).
- ``ema`` (TA-Lib: seeded with the SMA of the first ``periods``), ``rsi`` (Wilder, TA-Lib),
  ``macd`` (TA-Lib ``MACD``: both EMAs start at bar ``periods`` - 1, the slow one seeded with
  the SMA of the first ``periods`` closes and the fast one with the SMA of the ``fast_periods``
  closes ending there; signal = EMA(``signal_periods``) of the line; no value before bar
  ``periods + signal_periods - 2``, TA-Lib's lookback): recursive, so they need ``periods``
  and depend on the whole series from its first bar.
- ``session_vwap``: sum(p*v)/sum(v) of the bars since the open of the trading session that
  holds the bar (the symbol's calendar, ``micro_batch.rollups.calendars``; 24/7 symbols: the
  UTC day), p as for ``vwap``; reset at each session's first bar, ``nan`` outside a session.

The window sums are exact (:mod:`market_data_pipeline.features.exact`); the quote features
are in :mod:`market_data_pipeline.features.quotes`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from market_data_core.contracts import Bar
from market_data_pipeline.features.base import Feature
from market_data_pipeline.features.exact import NAN, Moments, add_exact
from market_data_pipeline.features.spec import WindowSpec

__all__ = [
    "AsOfChange",
    "Ema",
    "EmaFeature",
    "Macd",
    "ReturnMoments",
    "Rsi",
    "SessionOf",
    "SessionVwap",
    "Sma",
    "Vwap",
    "utc_day",
]


class Ema:
    """TA-Lib's EMA: the SMA of the first ``periods`` values, then ``k = 2 / (periods + 1)``."""

    __slots__ = ("count", "k", "periods", "seed_sum", "value")

    def __init__(self, periods: int) -> None:
        self.periods = periods
        self.k = 2.0 / (periods + 1)
        self.count = 0
        self.seed_sum = 0.0
        self.value = NAN

    def push(self, x: float) -> float:
        self.count += 1
        if self.count < self.periods:
            self.seed_sum += x
        elif self.count == self.periods:
            self.seed_sum += x
            self.value = self.seed_sum / self.periods
        else:
            self.value = (x - self.value) * self.k + self.value
        return self.value

    def state(self) -> list[Any]:
        return [self.count, self.seed_sum, self.value]

    def load(self, state: Sequence[Any]) -> None:
        self.count, self.seed_sum, self.value = int(state[0]), float(state[1]), float(state[2])


class Vwap(Feature):
    """sum(p*v)/sum(v) over the window; ``nan`` while the window holds a bar without volume
    (a provider bar that carries none, e.g. FX bid bars): a vwap of part of a window would be
    wrong, not merely approximate."""

    __slots__ = ("pv", "unknown", "v", "xs")

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        self.xs: deque[tuple[int, float, float | None]] = deque()
        self.pv: list[float] = []
        self.v: list[float] = []
        self.unknown = 0  # bars without volume in the window

    def _evict(self) -> None:
        _, old_pv, old_v = self.xs.popleft()
        if old_v is None:
            self.unknown -= 1
        else:
            add_exact(self.pv, -old_pv)
            add_exact(self.v, -old_v)

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        xs = self.xs
        if bar.v is None:
            xs.append((ts_us, 0.0, None))
            self.unknown += 1
        else:
            price = bar.vwap if bar.vwap is not None else (bar.h + bar.l + bar.c) / 3.0
            pv = price * bar.v
            xs.append((ts_us, pv, bar.v))
            add_exact(self.pv, pv)
            add_exact(self.v, bar.v)
        spec = self.spec
        if spec.periods is not None:
            while len(xs) > spec.periods:
                self._evict()
        else:
            assert spec.horizon_us is not None
            cutoff = ts_us - spec.horizon_us
            while xs[0][0] <= cutoff:
                self._evict()

    def values(self) -> tuple[float, ...]:
        full = self.spec.periods is None or len(self.xs) >= self.spec.periods
        if not full or self.unknown:
            return (NAN,)
        v = math.fsum(self.v)
        if v <= 0.0:
            return (NAN,)
        return (math.fsum(self.pv) / v,)

    def state(self) -> list[Any]:
        xs = self.xs
        return [
            [e[0] for e in xs],
            [e[1] for e in xs],
            [e[2] for e in xs],  # None: a bar without volume
            self.pv[:],
            self.v[:],
            self.unknown,
        ]

    def load(self, state: Sequence[Any]) -> None:
        ts, pvs, vs, pv, v, unknown = state
        self.xs = deque(zip(ts, pvs, vs, strict=True))
        self.pv, self.v, self.unknown = list(pv), list(v), int(unknown)


SessionOf = Callable[[str, datetime], date | None]
"""(symbol, bar start) -> the label of the trading session holding it, ``None`` outside."""


def utc_day(symbol: str, ts: datetime) -> date | None:
    return ts.astimezone(UTC).date()


class SessionVwap(Feature):
    """sum(p*v)/sum(v) of the bars since the session's open (p as for ``vwap``): the sums
    reset at the first bar of each session; ``nan`` for a bar outside every session (pre- and
    after-market bars of a calendar) and while the session holds a bar without volume."""

    __slots__ = ("pv", "session", "session_of", "unknown", "v")

    def __init__(self, spec: WindowSpec, session_of: SessionOf = utc_day) -> None:
        super().__init__(spec)
        self.session_of = session_of
        self.session: str | None = None  # ISO date of the current session
        self.pv: list[float] = []
        self.v: list[float] = []
        self.unknown = 0

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        label = self.session_of(bar.symbol, bar.ts)
        session = None if label is None else label.isoformat()
        if session != self.session:
            self.session, self.pv, self.v, self.unknown = session, [], [], 0
        if session is None:
            return
        if bar.v is None:
            self.unknown += 1
            return
        price = bar.vwap if bar.vwap is not None else (bar.h + bar.l + bar.c) / 3.0
        add_exact(self.pv, price * bar.v)
        add_exact(self.v, bar.v)

    def values(self) -> tuple[float, ...]:
        if self.session is None or self.unknown:
            return (NAN,)
        v = math.fsum(self.v)
        return (math.fsum(self.pv) / v,) if v > 0.0 else (NAN,)

    def state(self) -> list[Any]:
        return [self.session, self.pv[:], self.v[:], self.unknown]

    def load(self, state: Sequence[Any]) -> None:
        session, pv, v, unknown = state
        self.session, self.pv, self.v, self.unknown = session, list(pv), list(v), int(unknown)


class AsOfChange(Feature):
    """``returns`` (log) and ``momentum`` (rate of change) against the close horizon/periods ago."""

    __slots__ = ("closes", "log")

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        self.closes: deque[tuple[int, float]] = deque()
        self.log = spec.kind == "returns"

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        closes = self.closes
        closes.append((ts_us, bar.c))
        spec = self.spec
        if spec.periods is not None:
            while len(closes) > spec.periods + 1:
                closes.popleft()
        else:
            assert spec.horizon_us is not None
            cutoff = ts_us - spec.horizon_us
            # keep the latest close at or before the cutoff: it is the reference
            while len(closes) >= 2 and closes[1][0] <= cutoff:
                closes.popleft()

    def values(self) -> tuple[float, ...]:
        closes = self.closes
        spec = self.spec
        if not closes:
            return (NAN,)
        if spec.periods is not None:
            if len(closes) <= spec.periods:
                return (NAN,)
        else:
            assert spec.horizon_us is not None
            if closes[0][0] > closes[-1][0] - spec.horizon_us:
                return (NAN,)
        ref = closes[0][1]
        now = closes[-1][1]
        return (math.log(now / ref),) if self.log else (now / ref - 1.0,)

    def state(self) -> list[Any]:
        return [[t for t, _ in self.closes], [c for _, c in self.closes]]

    def load(self, state: Sequence[Any]) -> None:
        self.closes = deque(zip(state[0], state[1], strict=True))


class ReturnMoments(Feature):
    """volatility / skewness / kurtosis / realized_vol of bar-to-bar log returns."""

    __slots__ = ("m",)

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        order = {"volatility": 2, "skewness": 3, "kurtosis": 4, "realized_vol": 1}[spec.kind]
        self.m = Moments(order, spec.horizon_us, spec.periods)

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        if log_ret is None:
            return
        self.m.push(ts_us, log_ret * log_ret if self.spec.kind == "realized_vol" else log_ret)

    def values(self) -> tuple[float, ...]:
        m = self.m
        kind = self.spec.kind
        if kind == "volatility":
            return (math.sqrt(m.var(1)),) if m.ready(2) else (NAN,)
        if kind == "skewness":
            return (m.skew(),) if m.ready(3) else (NAN,)
        if kind == "kurtosis":
            return (m.kurt(),) if m.ready(4) else (NAN,)
        return (math.sqrt(max(m.total(), 0.0)),) if m.ready(1) else (NAN,)

    def state(self) -> list[Any]:
        return self.m.state()

    def load(self, state: Sequence[Any]) -> None:
        self.m.load(state)


class Sma(Feature):
    """``sma`` and ``bollinger`` (mid, upper, lower) over closes."""

    __slots__ = ("m",)

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        self.m = Moments(2 if spec.kind == "bollinger" else 1, spec.horizon_us, spec.periods)

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        self.m.push(ts_us, bar.c)

    def values(self) -> tuple[float, ...]:
        m = self.m
        if self.spec.kind == "sma":
            return (m.mean(),) if m.ready(1) else (NAN,)
        if not m.ready(1):
            return (NAN, NAN, NAN)
        mid = m.mean()
        band = self.spec.num_std * math.sqrt(m.var(0))
        return (mid, mid + band, mid - band)

    def state(self) -> list[Any]:
        return self.m.state()

    def load(self, state: Sequence[Any]) -> None:
        self.m.load(state)


class EmaFeature(Feature):
    __slots__ = ("ema",)

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        assert spec.periods is not None
        self.ema = Ema(spec.periods)

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        self.ema.push(bar.c)

    def values(self) -> tuple[float, ...]:
        return (self.ema.value,)

    def state(self) -> list[Any]:
        return self.ema.state()

    def load(self, state: Sequence[Any]) -> None:
        self.ema.load(state)


class Macd(Feature):
    """TA-Lib's ``MACD``: the slow EMA is seeded at bar ``periods - 1`` with the SMA of the
    first ``periods`` closes and the fast one *at the same bar* with the SMA of the last
    ``fast_periods`` closes (TA-Lib aligns both EMAs' starts), then both run with
    ``k = 2 / (n + 1)``; the signal EMA over the line is seeded with the SMA of its first
    ``signal_periods`` values. All three outputs are ``nan`` before the signal exists (bar
    ``periods + signal_periods - 2``, TA-Lib's lookback: 33 for 12/26/9)."""

    __slots__ = ("count", "fast", "kf", "ks", "line", "recent", "signal", "slow", "slow_sum")

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        assert spec.periods is not None
        self.count = 0
        self.slow_sum = 0.0
        self.recent: deque[float] = deque(maxlen=spec.fast_periods)
        self.fast = NAN
        self.slow = NAN
        self.kf = 2.0 / (spec.fast_periods + 1)
        self.ks = 2.0 / (spec.periods + 1)
        self.signal = Ema(spec.signal_periods)
        self.line = NAN

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        c = bar.c
        self.count += 1
        slow_periods = self.spec.periods
        assert slow_periods is not None
        if self.count < slow_periods:
            self.slow_sum += c
            self.recent.append(c)
            return
        if self.count == slow_periods:
            self.slow_sum += c
            self.recent.append(c)
            seed = 0.0
            for x in self.recent:  # summed in order, as TA-Lib does
                seed += x
            self.fast = seed / self.spec.fast_periods
            self.slow = self.slow_sum / slow_periods
            self.recent.clear()
        else:
            self.fast = (c - self.fast) * self.kf + self.fast
            self.slow = (c - self.slow) * self.ks + self.slow
        self.line = self.fast - self.slow
        self.signal.push(self.line)

    def values(self) -> tuple[float, ...]:
        sig = self.signal.value
        if sig != sig:
            return (NAN, NAN, NAN)
        return (self.line, sig, self.line - sig)

    def state(self) -> list[Any]:
        return [
            self.count,
            self.slow_sum,
            list(self.recent),
            self.fast,
            self.slow,
            self.line,
            self.signal.state(),
        ]

    def load(self, state: Sequence[Any]) -> None:
        count, slow_sum, recent, fast, slow, line, signal = state
        self.count, self.slow_sum = int(count), float(slow_sum)
        self.recent = deque(recent, maxlen=self.spec.fast_periods)
        self.fast, self.slow, self.line = float(fast), float(slow), float(line)
        self.signal.load(signal)


class Rsi(Feature):
    """Wilder's RSI exactly as TA-Lib computes it (seed: simple means of the first changes)."""

    __slots__ = ("avg_gain", "avg_loss", "count", "prev", "value")

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        self.prev = NAN
        self.count = 0
        self.avg_gain = 0.0
        self.avg_loss = 0.0
        self.value = NAN

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        c = bar.c
        prev = self.prev
        self.prev = c
        if prev != prev:  # first bar: nothing to compare with
            return
        n = self.spec.periods
        assert n is not None
        diff = c - prev
        gain = diff if diff > 0 else 0.0
        loss = -diff if diff < 0 else 0.0
        self.count += 1
        if self.count <= n:
            self.avg_gain += gain
            self.avg_loss += loss
            if self.count < n:
                return
            self.avg_gain /= n
            self.avg_loss /= n
        else:
            self.avg_gain = (self.avg_gain * (n - 1) + gain) / n
            self.avg_loss = (self.avg_loss * (n - 1) + loss) / n
        total = self.avg_gain + self.avg_loss
        self.value = 100.0 * self.avg_gain / total if total != 0.0 else 0.0

    def values(self) -> tuple[float, ...]:
        return (self.value,)

    def state(self) -> list[Any]:
        return [self.prev, self.count, self.avg_gain, self.avg_loss, self.value]

    def load(self, state: Sequence[Any]) -> None:
        prev, count, gain, loss, value = state
        self.prev, self.count = float(prev), int(count)
        self.avg_gain, self.avg_loss, self.value = float(gain), float(loss), float(value)
