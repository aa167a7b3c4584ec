"""Per-symbol rolling features over closed bars (and quotes), O(1) amortised per update.

Every window of ``config.features.windows`` is one feature: its ``name`` is the name rules and
models use, its indicator is ``feature`` (or inferred from the name's prefix, see
:data:`NAME_PREFIXES`), its extent a time ``horizon`` or a ``periods`` count. Multi-output
indicators add suffixed names: MACD ``<name>`` (line), ``<name>_signal``, ``<name>_hist``;
Bollinger ``<name>`` (mid), ``<name>_upper``, ``<name>_lower``. Two base features are always
there: ``close`` and ``volume`` of the latest bar (``nan`` for a bar without volume).
:attr:`FeatureEngine.feature_names` lists them all; a value that is not ready yet (too few
bars) is ``nan``.

Definitions (each checked against TA-Lib or pandas on real bars in ``tests/unit``):

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
- ``spread_bps`` ((ask-bid)/mid * 10^4) and ``imbalance`` ((bid_size-ask_size)/(sum)): window
  means of one sample per window, the window's time-weighted value from its quote bar (the
  live path, :meth:`FeatureEngine.update_bar`), or of one sample per instant from raw quotes
  (:meth:`FeatureEngine.update_quote`: of quotes sharing a timestamp the last one is the book,
  as pandas' ``drop_duplicates(keep="last")``).

Windows: a ``horizon`` window at event time t holds the samples with ts in (t - horizon, t]
(pandas' ``rolling("60s")``); a ``periods`` window the last ``periods`` samples, and is ``nan``
until full. Running sums (of p*v, v, and powers 1..4 of the samples) are kept *exactly* as
float partials (Shewchuk, as ``math.fsum``) and evicted exactly: O(1) per update, no drift,
and every value is a pure function of the window's contents, so a restarted engine warmed up
from the store reproduces the same features bit for bit (and therefore the same signals, even
where a condition is an exact tie such as close == vwap). Variance is E[x^2] - E[x]^2 of those
exact sums: for prices its relative error is about 1e-16 * mean^2 / variance.

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
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, get_args

from market_data_core.config import FeatureKind, FeaturePluginConfig, FeatureWindowConfig
from market_data_core.contracts import Bar, QuoteBar, WindowBar
from market_data_core.errors import ConfigError, InferenceError
from market_data_core.plugins import FEATURES_GROUP, FeaturePlugin
from market_data_core.protocols import FeatureSnapshot
from market_data_core.timeutil import to_epoch_us
from market_data_pipeline import telemetry

__all__ = [
    "BASE_FEATURES",
    "FEATURE_KINDS",
    "NAME_PREFIXES",
    "FeatureEngine",
    "PluginSpec",
    "WindowSpec",
    "resolve_plugins",
    "resolve_windows",
]

log = logging.getLogger(__name__)

NAN: Final = math.nan
FEATURE_KINDS: Final[tuple[str, ...]] = get_args(FeatureKind)
BASE_FEATURES: Final[tuple[str, ...]] = ("close", "volume")

# Name prefix (text before the first '_', or the whole name) -> indicator.
NAME_PREFIXES: Final[dict[str, FeatureKind]] = {
    "vwap": "vwap",
    "ret": "returns",
    "return": "returns",
    "returns": "returns",
    "vol": "volatility",
    "volatility": "volatility",
    "rsi": "rsi",
    "mom": "momentum",
    "momentum": "momentum",
    "skew": "skewness",
    "skewness": "skewness",
    "kurt": "kurtosis",
    "kurtosis": "kurtosis",
    "sma": "sma",
    "ema": "ema",
    "macd": "macd",
    "bb": "bollinger",
    "boll": "bollinger",
    "bollinger": "bollinger",
    "rv": "realized_vol",
    "realized": "realized_vol",
    "spread": "spread_bps",
    "imbalance": "imbalance",
    "imb": "imbalance",
    "session": "session_vwap",
    "svwap": "session_vwap",
}
_RECURSIVE: Final = frozenset({"rsi", "ema", "macd"})
_QUOTE_KINDS: Final = frozenset({"spread_bps", "imbalance"})
_RETURN_KINDS: Final = frozenset({"volatility", "skewness", "kurtosis", "realized_vol"})
_VOLUME_KINDS: Final = frozenset({"vwap", "session_vwap"})


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A validated window: its indicator, extent and output names."""

    name: str
    kind: FeatureKind
    horizon_us: int | None
    periods: int | None
    num_std: float
    fast_periods: int
    signal_periods: int

    @property
    def outputs(self) -> tuple[str, ...]:
        if self.kind == "macd":
            return (self.name, f"{self.name}_signal", f"{self.name}_hist")
        if self.kind == "bollinger":
            return (self.name, f"{self.name}_upper", f"{self.name}_lower")
        return (self.name,)


def _kind_of(window: FeatureWindowConfig) -> FeatureKind:
    if window.feature is not None:
        return window.feature
    name = window.name.lower()
    for candidate in (name, name.split("_", 1)[0]):
        if candidate in NAME_PREFIXES:
            return NAME_PREFIXES[candidate]
    raise ConfigError(
        f"cannot tell which indicator window {window.name!r} is: set 'feature:' to one of "
        f"{', '.join(FEATURE_KINDS)} (or start the name with one of "
        f"{', '.join(sorted(NAME_PREFIXES))}_)",
        key_path="features.windows",
    )


def resolve_windows(windows: Iterable[FeatureWindowConfig]) -> list[WindowSpec]:
    """Validate windows into specs; ``ConfigError`` names the window and what is wrong."""
    specs: list[WindowSpec] = []
    seen: set[str] = set(BASE_FEATURES)
    for w in windows:
        kind = _kind_of(w)
        if kind in _RECURSIVE and w.periods is None:
            raise ConfigError(
                f"window {w.name!r} ({kind}) is recursive: give 'periods' (a bar count), "
                "not 'horizon'",
                key_path="features.windows",
            )
        if kind == "session_vwap" and (w.periods is not None or w.horizon is not None):
            raise ConfigError(
                f"window {w.name!r} (session_vwap) runs from the session's open: give neither "
                "'horizon' nor 'periods'",
                key_path="features.windows",
            )
        if kind == "macd" and w.fast_periods >= (w.periods or 0):
            raise ConfigError(
                f"window {w.name!r} (macd): fast_periods ({w.fast_periods}) must be < "
                f"periods ({w.periods}, the slow EMA)",
                key_path="features.windows",
            )
        spec = WindowSpec(
            name=w.name,
            kind=kind,
            horizon_us=None if w.horizon_ms is None else w.horizon_ms * 1000,
            periods=w.periods,
            num_std=w.num_std,
            fast_periods=w.fast_periods,
            signal_periods=w.signal_periods,
        )
        clash = seen.intersection(spec.outputs)
        if clash:
            raise ConfigError(
                f"window {w.name!r} would define {', '.join(sorted(clash))} twice",
                key_path="features.windows",
            )
        seen.update(spec.outputs)
        specs.append(spec)
    return specs


_OUTPUT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}\Z")


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """A validated feature plugin (:mod:`market_data_core.plugins`): its config name, output
    names (``name`` or ``name_<suffix>``), factory and what identifies it in checkpoints."""

    name: str
    ref: str
    params: dict[str, Any]
    outputs: tuple[str, ...]
    factory: Any
    identity: tuple[Any, ...]
    kind: str = "plugin"

    def new(self) -> FeaturePlugin:
        """A fresh instance for one series."""
        instance: FeaturePlugin = self.factory(self.name, **self.params)
        return instance


def resolve_plugins(
    plugins: Iterable[FeaturePluginConfig], taken: Iterable[str] = BASE_FEATURES
) -> list[PluginSpec]:
    """Load feature plugins and check their outputs; ``ConfigError`` names the plugin and
    what is wrong (not found, the factory raised, an output name that does not fit)."""
    from market_data_pipeline.plugins import load_plugin

    seen = set(taken)
    specs: list[PluginSpec] = []
    for i, cfg in enumerate(plugins):
        key = f"features.plugins[{i}]"
        loaded = load_plugin(cfg.plugin, FEATURES_GROUP, key_path=f"{key}.plugin")
        try:
            probe = loaded.factory(cfg.name, **cfg.params)
            outputs = tuple(str(o) for o in probe.outputs)
        except Exception as exc:  # user code: whatever it raises is a config problem here
            raise ConfigError(
                f"feature plugin {cfg.name!r} ({cfg.plugin}): making it failed "
                f"({type(exc).__name__}: {exc})",
                key_path=f"{key}.params",
            ) from None
        bad = [
            o
            for o in outputs
            if not _OUTPUT_NAME.match(o) or (o != cfg.name and not o.startswith(f"{cfg.name}_"))
        ]
        if not outputs or bad:
            raise ConfigError(
                f"feature plugin {cfg.name!r} ({cfg.plugin}): outputs must be {cfg.name!r} or "
                f"{cfg.name}_<suffix> (letters, digits, '_'), got {list(outputs)}",
                key_path=key,
            )
        clash = seen.intersection(outputs)
        if clash:
            raise ConfigError(
                f"feature plugin {cfg.name!r} would define {', '.join(sorted(clash))} twice",
                key_path=key,
            )
        seen.update(outputs)
        identity = (cfg.name, list(outputs), cfg.params, *loaded.identity)
        specs.append(
            PluginSpec(cfg.name, cfg.plugin, dict(cfg.params), outputs, loaded.factory, identity)
        )
    return specs


def _add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to an exact sum kept as non-overlapping float partials (Shewchuk's algorithm,
    as in ``math.fsum``): adding and later subtracting the same value leaves no trace."""
    i = 0
    for y in partials:
        hi = x + y  # Knuth's branch-free two-sum: hi + lo == x + y exactly
        yy = hi - x
        lo = (x - (hi - yy)) + (y - yy)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


class _Moments:
    """A window of samples with exact running power sums (order 1..4).

    ``horizon_us`` evicts by time ((t - horizon, t]); ``periods`` by count. Each sum is kept
    exactly (:func:`_add_exact`) and read correctly rounded (``math.fsum``), so a value is a
    pure function of the window's contents: no drift over any number of updates, and a
    restarted (warmed-up) engine computes bit-identical features, hence identical signals.
    """

    __slots__ = ("horizon_us", "order", "p1", "p2", "p3", "p4", "periods", "xs")

    def __init__(self, order: int, horizon_us: int | None, periods: int | None) -> None:
        self.order = order
        self.horizon_us = horizon_us
        self.periods = periods
        self.xs: deque[tuple[int, float]] = deque()
        self.p1: list[float] = []
        self.p2: list[float] = []
        self.p3: list[float] = []
        self.p4: list[float] = []

    def push(self, ts_us: int, x: float) -> list[tuple[int, float]]:
        """Add a sample; returns the samples a ``periods`` window evicted for it (a horizon
        window's evictions depend on the time alone: see :meth:`advance`)."""
        xs = self.xs
        xs.append((ts_us, x))
        self._add(x, False)
        evicted: list[tuple[int, float]] = []
        if self.periods is not None:
            while len(xs) > self.periods:
                old = xs.popleft()
                self._add(old[1], True)
                evicted.append(old)
        else:
            self.advance(ts_us)
        return evicted

    def advance(self, ts_us: int) -> None:
        """Evict, by time, the samples a horizon window no longer holds at ``ts_us`` (none
        for a ``periods`` window)."""
        if self.horizon_us is None:
            return
        xs = self.xs
        cutoff = ts_us - self.horizon_us
        while xs and xs[0][0] <= cutoff:
            self._add(xs.popleft()[1], True)

    def pop_last(self) -> None:
        """Remove the newest sample (exactly: the sums are as if it was never added)."""
        self._add(self.xs.pop()[1], True)

    def restore(self, evicted: Sequence[tuple[int, float]]) -> None:
        """Put back, oldest first, samples a push evicted (undoing that push's evictions)."""
        for item in reversed(evicted):
            self.xs.appendleft(item)
            self._add(item[1], False)

    def _add(self, x: float, evict: bool) -> None:
        order = self.order
        x2 = x * x
        if evict:
            _add_exact(self.p1, -x)
            if order >= 2:
                _add_exact(self.p2, -x2)
                if order >= 3:
                    _add_exact(self.p3, -x2 * x)
                    if order >= 4:
                        _add_exact(self.p4, -x2 * x2)
        else:
            _add_exact(self.p1, x)
            if order >= 2:
                _add_exact(self.p2, x2)
                if order >= 3:
                    _add_exact(self.p3, x2 * x)
                    if order >= 4:
                        _add_exact(self.p4, x2 * x2)

    def state(self) -> list[Any]:
        xs = self.xs
        return [
            [t for t, _ in xs],
            [x for _, x in xs],
            self.p1[:],
            self.p2[:],
            self.p3[:],
            self.p4[:],
        ]

    def load(self, state: Sequence[Any]) -> None:
        ts, xs, p1, p2, p3, p4 = state
        self.xs = deque(zip(ts, xs, strict=True))
        self.p1, self.p2, self.p3, self.p4 = list(p1), list(p2), list(p3), list(p4)

    @property
    def n(self) -> int:
        return len(self.xs)

    def ready(self, minimum: int) -> bool:
        n = len(self.xs)
        return n >= (self.periods if self.periods is not None else minimum) and n >= minimum

    def total(self) -> float:
        return math.fsum(self.p1)

    def mean(self) -> float:
        return math.fsum(self.p1) / len(self.xs)

    def _central(self) -> tuple[int, float, float]:
        """(n, mean, population variance); the variance is 0 for a constant window."""
        n = len(self.xs)
        mean = math.fsum(self.p1) / n
        ex2 = math.fsum(self.p2) / n
        m2 = ex2 - mean * mean
        return n, mean, 0.0 if m2 <= 1e-14 * ex2 else m2

    def var(self, ddof: int) -> float:
        n, _, m2 = self._central()
        return m2 * n / (n - ddof)

    def skew(self) -> float:
        n, d, m2 = self._central()
        if m2 == 0.0:
            return NAN
        ex2 = math.fsum(self.p2) / n
        ex3 = math.fsum(self.p3) / n
        m3 = ex3 - 3 * d * ex2 + 2 * d * d * d
        g1: float = m3 / (m2 * math.sqrt(m2))
        return g1 * math.sqrt(n * (n - 1)) / (n - 2)

    def kurt(self) -> float:
        n, d, m2 = self._central()
        if m2 == 0.0:
            return NAN
        ex2 = math.fsum(self.p2) / n
        ex3 = math.fsum(self.p3) / n
        ex4 = math.fsum(self.p4) / n
        m4 = ex4 - 4 * d * ex3 + 6 * d * d * ex2 - 3 * d * d * d * d
        g2 = m4 / (m2 * m2) - 3.0
        return ((n + 1) * g2 + 6.0) * (n - 1) / ((n - 2) * (n - 3))


class _Ema:
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


class _Feature:
    """One window's state. ``on_bar``/``on_quote``/``on_quote_bar`` update it; ``values``
    yields its outputs."""

    __slots__ = ("outputs", "spec")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self.outputs = spec.outputs

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        return

    def on_quote(
        self,
        ts_us: int,
        bid: float,
        ask: float,
        bid_size: float | None,
        ask_size: float | None,
        same_instant: bool,
    ) -> None:
        return

    def on_quote_bar(self, ts_us: int, quote: QuoteBar | None) -> None:
        return

    def values(self) -> tuple[float, ...]:
        raise NotImplementedError

    def state(self) -> list[Any]:
        """Everything the next outputs depend on, as plain lists, ints and floats (a copy)."""
        raise NotImplementedError

    def load(self, state: Sequence[Any]) -> None:
        """Replace the state with one from :meth:`state` of a feature of the same spec."""
        raise NotImplementedError


class _Vwap(_Feature):
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
            _add_exact(self.pv, -old_pv)
            _add_exact(self.v, -old_v)

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        xs = self.xs
        if bar.v is None:
            xs.append((ts_us, 0.0, None))
            self.unknown += 1
        else:
            price = bar.vwap if bar.vwap is not None else (bar.h + bar.l + bar.c) / 3.0
            pv = price * bar.v
            xs.append((ts_us, pv, bar.v))
            _add_exact(self.pv, pv)
            _add_exact(self.v, bar.v)
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


def _utc_day(symbol: str, ts: datetime) -> date | None:
    return ts.astimezone(UTC).date()


class _SessionVwap(_Feature):
    """sum(p*v)/sum(v) of the bars since the session's open (p as for ``vwap``): the sums
    reset at the first bar of each session; ``nan`` for a bar outside every session (pre- and
    after-market bars of a calendar) and while the session holds a bar without volume."""

    __slots__ = ("pv", "session", "session_of", "unknown", "v")

    def __init__(self, spec: WindowSpec, session_of: SessionOf = _utc_day) -> None:
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
        _add_exact(self.pv, price * bar.v)
        _add_exact(self.v, bar.v)

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


class _AsOfChange(_Feature):
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


class _ReturnMoments(_Feature):
    """volatility / skewness / kurtosis / realized_vol of bar-to-bar log returns."""

    __slots__ = ("m",)

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        order = {"volatility": 2, "skewness": 3, "kurtosis": 4, "realized_vol": 1}[spec.kind]
        self.m = _Moments(order, spec.horizon_us, spec.periods)

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


class _Sma(_Feature):
    """``sma`` and ``bollinger`` (mid, upper, lower) over closes."""

    __slots__ = ("m",)

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        self.m = _Moments(2 if spec.kind == "bollinger" else 1, spec.horizon_us, spec.periods)

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


class _EmaFeature(_Feature):
    __slots__ = ("ema",)

    def __init__(self, spec: WindowSpec) -> None:
        super().__init__(spec)
        assert spec.periods is not None
        self.ema = _Ema(spec.periods)

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        self.ema.push(bar.c)

    def values(self) -> tuple[float, ...]:
        return (self.ema.value,)

    def state(self) -> list[Any]:
        return self.ema.state()

    def load(self, state: Sequence[Any]) -> None:
        self.ema.load(state)


class _Macd(_Feature):
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
        self.signal = _Ema(spec.signal_periods)
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


class _Rsi(_Feature):
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


class _QuoteMean(_Feature):
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
        self.m = _Moments(1, spec.horizon_us, spec.periods)
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


class _PluginFeature:
    """A feature plugin's instance for one series, behind the same interface as the built-in
    features (its errors become ``InferenceError`` naming the plugin and the bar)."""

    __slots__ = ("outputs", "plugin", "spec")

    def __init__(self, spec: PluginSpec) -> None:
        self.spec = spec
        self.outputs = spec.outputs
        self.plugin = spec.new()

    def _failed(self, what: str, exc: Exception) -> InferenceError:
        return InferenceError(
            f"feature plugin {self.spec.name!r} ({self.spec.ref}) failed in {what} "
            f"({type(exc).__name__}: {exc})"
        )

    def on_bar(self, ts_us: int, bar: Bar, log_ret: float | None) -> None:
        try:
            self.plugin.on_bar(bar)
        except Exception as exc:  # user code
            raise self._failed(f"on_bar of {bar.provider}|{bar.symbol} {bar.ts}", exc) from exc

    def values(self) -> tuple[float, ...]:
        try:
            out = tuple(float(x) for x in self.plugin.values())
        except Exception as exc:  # user code
            raise self._failed("values", exc) from exc
        if len(out) != len(self.outputs):
            raise InferenceError(
                f"feature plugin {self.spec.name!r} ({self.spec.ref}): values() gave "
                f"{len(out)} numbers for {len(self.outputs)} outputs"
            )
        return out

    def state(self) -> list[Any]:
        try:
            return list(self.plugin.export_state())
        except Exception as exc:  # user code
            raise self._failed("export_state", exc) from exc

    def load(self, state: Sequence[Any]) -> None:
        try:
            self.plugin.import_state(state)
        except Exception as exc:  # user code: a state that does not fit is a ValueError
            raise ValueError(f"feature plugin {self.spec.name!r}: {exc}") from exc


_FACTORIES: Final[dict[str, type[_Feature]]] = {
    "vwap": _Vwap,
    "returns": _AsOfChange,
    "momentum": _AsOfChange,
    "volatility": _ReturnMoments,
    "skewness": _ReturnMoments,
    "kurtosis": _ReturnMoments,
    "realized_vol": _ReturnMoments,
    "sma": _Sma,
    "bollinger": _Sma,
    "ema": _EmaFeature,
    "macd": _Macd,
    "rsi": _Rsi,
    "spread_bps": _QuoteMean,
    "imbalance": _QuoteMean,
    "session_vwap": _SessionVwap,
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
            _SessionVwap(s, session_of) if s.kind == "session_vwap" else _FACTORIES[s.kind](s)
            for s in specs
        ]
        self.quote_features = [f for f in built_in if f.spec.kind in _QUOTE_KINDS]
        self.features: list[_Feature | _PluginFeature] = [*built_in]
        self.features += [_PluginFeature(p) for p in plugins]
        # the histogram children, looked up once (a labels() call costs about a microsecond)
        self.timers = (
            [
                (f, telemetry.FEATURES_UPDATE_DURATION.labels(symbol, f.spec.name))
                for f in self.features
                if f.spec.kind not in _QUOTE_KINDS
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
        self._session_of: SessionOf = session_of or _utc_day
        self.sessions_identity = list(sessions_identity)
        window_names = BASE_FEATURES + tuple(name for s in self.specs for name in s.outputs)
        self.plugins = resolve_plugins(plugins, window_names)
        self.feature_names: tuple[str, ...] = window_names + tuple(
            name for p in self.plugins for name in p.outputs
        )
        self._bar_specs = [s for s in self.specs if s.kind not in _QUOTE_KINDS]
        self._quote_specs = [s for s in self.specs if s.kind in _QUOTE_KINDS]
        self._state: dict[tuple[str, str], _SymbolState] = {}
        self._timed = timed
        self.volume_features: tuple[str, ...] = (
            "volume",
            *(name for s in self.specs if s.kind in _VOLUME_KINDS for name in s.outputs),
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
        the window's time-weighted spread/imbalance (see :class:`_QuoteMean`)."""
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
