"""Feature config into validated specs: which indicator each window of
``config.features.windows`` is, its extent and output names (:class:`WindowSpec`), and the
feature plugins of ``config.features.plugins`` loaded and checked (:class:`PluginSpec`).

A window's indicator is its ``feature`` or inferred from the name's prefix (see
:data:`NAME_PREFIXES`); its extent a time ``horizon`` or a ``periods`` count. Multi-output
indicators add suffixed names: MACD ``<name>`` (line), ``<name>_signal``, ``<name>_hist``;
Bollinger ``<name>`` (mid), ``<name>_upper``, ``<name>_lower``. Every problem is a
``ConfigError`` naming the window or plugin.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, get_args

from market_data_core.config import FeatureKind, FeaturePluginConfig, FeatureWindowConfig
from market_data_core.errors import ConfigError
from market_data_core.plugins import FEATURES_GROUP, FeaturePlugin

__all__ = [
    "BASE_FEATURES",
    "FEATURE_KINDS",
    "NAME_PREFIXES",
    "QUOTE_KINDS",
    "VOLUME_KINDS",
    "PluginSpec",
    "WindowSpec",
    "resolve_plugins",
    "resolve_windows",
]

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
QUOTE_KINDS: Final = frozenset({"spread_bps", "imbalance"})
VOLUME_KINDS: Final = frozenset({"vwap", "session_vwap"})


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
