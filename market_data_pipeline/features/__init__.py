"""Per-symbol rolling features over closed bars (and quotes), O(1) amortised per update.

Every window of ``config.features.windows`` is one feature: its ``name`` is the name rules and
models use, its indicator is ``feature`` (or inferred from the name's prefix, see
:data:`NAME_PREFIXES`), its extent a time ``horizon`` or a ``periods`` count. Multi-output
indicators add suffixed names: MACD ``<name>`` (line), ``<name>_signal``, ``<name>_hist``;
Bollinger ``<name>`` (mid), ``<name>_upper``, ``<name>_lower``. Two base features are always
there: ``close`` and ``volume`` of the latest bar (``nan`` for a bar without volume).
:attr:`FeatureEngine.feature_names` lists them all; a value that is not ready yet (too few
bars) is ``nan``.

One module per concern:

- :mod:`~market_data_pipeline.features.spec`: the config's windows and plugins into validated
  specs (``ConfigError`` for a bad one);
- :mod:`~market_data_pipeline.features.exact`: exact rolling sums over time or count windows;
- :mod:`~market_data_pipeline.features.base`: the interface a feature implements, and a
  plugin behind it;
- :mod:`~market_data_pipeline.features.indicators`: the bar indicators (TA-Lib and pandas
  definitions, ``session_vwap``);
- :mod:`~market_data_pipeline.features.quotes`: ``spread_bps`` and ``imbalance``;
- :mod:`~market_data_pipeline.features.engine`: :class:`FeatureEngine`, the per-symbol state,
  its updates and its exact export/import for checkpoints.
"""

from market_data_pipeline.features.engine import FeatureEngine
from market_data_pipeline.features.indicators import SessionOf
from market_data_pipeline.features.spec import (
    BASE_FEATURES,
    FEATURE_KINDS,
    NAME_PREFIXES,
    PluginSpec,
    WindowSpec,
    resolve_plugins,
    resolve_windows,
)

__all__ = [
    "BASE_FEATURES",
    "FEATURE_KINDS",
    "NAME_PREFIXES",
    "FeatureEngine",
    "PluginSpec",
    "SessionOf",
    "WindowSpec",
    "resolve_plugins",
    "resolve_windows",
]
