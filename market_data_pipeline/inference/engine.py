"""The inference engine: closed bars -> rolling features -> an adapter -> signals, with metrics.

:class:`InferenceEngine` is pure computation over event time (no I/O): the consumer stage
(``consumers/inference_consumer.py``) feeds it bars and writes what it returns. Fed the same
bars it returns the same signals, with the same ids.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Literal, Protocol

from market_data_core.config import AppConfig
from market_data_core.contracts import Bar, Signal
from market_data_core.errors import ConfigError
from market_data_core.protocols import FeatureSnapshot, InferenceAdapter
from market_data_core.timeutil import parse_duration_ms
from market_data_pipeline import telemetry
from market_data_pipeline.features import FeatureEngine
from market_data_pipeline.inference.adapters.rules import RulesAdapter, load_rules
from market_data_pipeline.project import rules_file

__all__ = ["AdapterKind", "InferenceEngine", "WarmableAdapter", "build_adapter"]

AdapterKind = Literal["rules", "sklearn"]


class WarmableAdapter(InferenceAdapter, Protocol):
    """An adapter that can advance its state on a snapshot without emitting (warm-up)."""

    def observe(self, snapshot: FeatureSnapshot) -> None: ...


def build_adapter(
    config: AppConfig,
    kind: AdapterKind,
    known_features: Sequence[str],
    *,
    base_dir: Path | None = None,
) -> WarmableAdapter:
    """The configured adapter. The rules file (:func:`~market_data_pipeline.project.rules_file`:
    the configured one, or the shipped rules) is always loaded: it is the sklearn adapter's
    fallback. ``base_dir``: where relative paths of a config built in code (not loaded from a
    file, whose paths are absolute) resolve; default the working directory. Raises
    ``ConfigError`` (bad rules, model hash mismatch, unknown features)."""
    root = base_dir or Path.cwd()
    rules = RulesAdapter(load_rules(rules_file(config, root), known_features))
    if kind == "rules":
        return rules
    if kind == "sklearn":
        from market_data_pipeline.inference.adapters.sklearn import SklearnAdapter

        return SklearnAdapter(
            config.inference.adapters.sklearn, rules, known_features, base_dir=root
        )
    raise ConfigError(f"unknown adapter {kind!r} (expected rules or sklearn)", source="--adapter")


class InferenceEngine:
    """Features plus one adapter, for bars of one ``interval``."""

    def __init__(self, features: FeatureEngine, adapter: WarmableAdapter, *, interval: str) -> None:
        self.features = features
        self.adapter = adapter
        self.interval = interval
        self.interval_us = parse_duration_ms(interval) * 1000
        self._eval_hist = telemetry.INFERENCE_EVAL_DURATION.labels(adapter=adapter.name)

    def warm(self, bar: Bar) -> None:
        """Advance features and the adapter's state without emitting (store warm-up)."""
        snapshot = self.features.update_bar(bar)
        if snapshot is not None:
            self.adapter.observe(snapshot)

    async def on_bar(self, bar: Bar) -> list[Signal] | None:
        """Signals for a closed bar; ``None`` if the bar is not newer than the symbol's last
        one (a redelivery, a replay, a late correction): nothing changes then."""
        snapshot = self.features.update_bar(bar)
        if snapshot is None:
            return None
        t0 = time.perf_counter()
        signals = await self.adapter.evaluate(snapshot)
        self._eval_hist.observe(time.perf_counter() - t0)
        return [
            s.model_copy(update={"meta": {**s.meta, "interval": bar.interval}}) for s in signals
        ]

    def bar_end(self, bar: Bar) -> float:
        """Epoch seconds at which ``bar`` closed (event time)."""
        return (bar.ts + timedelta(microseconds=self.interval_us)).timestamp()

    async def aclose(self) -> None:
        await self.adapter.aclose()
