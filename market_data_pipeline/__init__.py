"""mdp's Python API: ``import market_data_pipeline as mdp``.

Everything a program builds with is importable from here (``__all__``); each name lives in
the module that defines it and is imported on first use, so ``mdp --help`` does not pay for
the API, nor the API for the CLI.

- Run the pipeline in code: :class:`Pipeline` with sources (:class:`Dataset`,
  :class:`Synthetic`, :class:`Trades`, :class:`Quotes`, :class:`Live`) -- the guarantees of
  ``mdp run`` (:mod:`market_data_pipeline.api`).
- Research: :func:`run_offline` turns a DataFrame or iterable of trades into the exact bars,
  features and signals of the live path, through the live path
  (:mod:`market_data_pipeline.offline`).
- Config: :func:`default_config`, :func:`load_config`, :func:`override_config`,
  :class:`AppConfig`.
- The engines, for custom loops: :class:`FeatureEngine`, :class:`InferenceEngine`,
  :func:`build_engine`.
- Messages: :class:`StreamEvent`, :class:`Bar`, :class:`Signal`, :class:`FeatureSnapshot`;
  errors: :class:`MDPError` and its tree (:mod:`market_data_core.errors`).

The import package keeps its name; the distribution is ``mdp-streaming`` and a top-level
``mdp`` package is not used because ``import mdp`` belongs to another project on PyPI
(``MDP``, the Modular toolkit for Data Processing).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from market_data_core.config import AppConfig, load_config, override_config
    from market_data_core.contracts import Bar, QuoteBar, Signal, StreamEvent, WindowBar
    from market_data_core.errors import (
        BackpressureError,
        BusError,
        ConfigError,
        ContractError,
        InferenceError,
        MDPError,
        StoreError,
        StoreUnavailableError,
    )
    from market_data_core.protocols import FeatureSnapshot
    from market_data_pipeline.api import (
        Dataset,
        Live,
        Pipeline,
        Quotes,
        SourceSpec,
        Synthetic,
        Trades,
        default_adapter,
        default_config,
    )
    from market_data_pipeline.features import FeatureEngine
    from market_data_pipeline.inference.engine import InferenceEngine, build_engine
    from market_data_pipeline.offline import OfflineResult, run_offline, run_offline_async
    from market_data_pipeline.runner import Progress, RunSummary, Source

__all__ = [
    "AppConfig",
    "BackpressureError",
    "Bar",
    "BusError",
    "ConfigError",
    "ContractError",
    "Dataset",
    "FeatureEngine",
    "FeatureSnapshot",
    "InferenceEngine",
    "InferenceError",
    "Live",
    "MDPError",
    "OfflineResult",
    "Pipeline",
    "Progress",
    "QuoteBar",
    "Quotes",
    "RunSummary",
    "Signal",
    "Source",
    "SourceSpec",
    "StoreError",
    "StoreUnavailableError",
    "StreamEvent",
    "Synthetic",
    "Trades",
    "WindowBar",
    "build_engine",
    "default_adapter",
    "default_config",
    "load_config",
    "override_config",
    "run_offline",
    "run_offline_async",
]

_WHERE: dict[str, str] = {
    **dict.fromkeys(("AppConfig", "load_config", "override_config"), "market_data_core.config"),
    **dict.fromkeys(
        ("Bar", "QuoteBar", "Signal", "StreamEvent", "WindowBar"), "market_data_core.contracts"
    ),
    **dict.fromkeys(
        (
            "BackpressureError",
            "BusError",
            "ConfigError",
            "ContractError",
            "InferenceError",
            "MDPError",
            "StoreError",
            "StoreUnavailableError",
        ),
        "market_data_core.errors",
    ),
    "FeatureSnapshot": "market_data_core.protocols",
    **dict.fromkeys(
        (
            "Dataset",
            "Live",
            "Pipeline",
            "Quotes",
            "SourceSpec",
            "Synthetic",
            "Trades",
            "default_adapter",
            "default_config",
        ),
        "market_data_pipeline.api",
    ),
    "FeatureEngine": "market_data_pipeline.features",
    **dict.fromkeys(("InferenceEngine", "build_engine"), "market_data_pipeline.inference.engine"),
    **dict.fromkeys(
        ("OfflineResult", "run_offline", "run_offline_async"), "market_data_pipeline.offline"
    ),
    **dict.fromkeys(("Progress", "RunSummary", "Source"), "market_data_pipeline.runner"),
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
