"""The inference engine: closed bars -> rolling features -> an adapter -> signals, with metrics.

:class:`InferenceEngine` is pure computation over event time (no I/O): the consumer stage
(``consumers/inference_consumer.py``) feeds it bars and writes what it returns. Fed the same
bars it returns the same signals, with the same ids. Its whole state for a series (features
and the adapter's edges, cooldowns, crosses, directions) can be exported and imported exactly
(:meth:`InferenceEngine.export_state`), which is how a corrected bar is re-scored from the
state before it and how a restarted engine continues from a checkpoint bit for bit;
:attr:`InferenceEngine.state_key` names what such a state is valid for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import msgpack

from market_data_core.config import AppConfig
from market_data_core.contracts import Signal, WindowBar
from market_data_core.errors import ConfigError
from market_data_core.protocols import FeatureSnapshot, InferenceAdapter
from market_data_core.timeutil import parse_duration_ms
from market_data_pipeline import telemetry
from market_data_pipeline.features import FeatureEngine, resolve_windows
from market_data_pipeline.inference.adapters.rules import RulesAdapter, load_rules
from market_data_pipeline.project import rules_file
from market_data_pipeline.sessions import SessionCalendar, session_calendars

__all__ = [
    "STATE_FORMAT",
    "AdapterKind",
    "InferenceEngine",
    "WarmableAdapter",
    "build_adapter",
    "build_engine",
    "feature_engine",
]

AdapterKind = Literal["rules", "sklearn", "plugin"]


# Bumped whenever the layout of an exported state changes: older checkpoints then no longer
# match any engine's state_key and are ignored.
STATE_FORMAT = 2  # 2: quote features keep their last sample's undo (issue 15)


class WarmableAdapter(InferenceAdapter, Protocol):
    """An adapter whose per-symbol state can advance without emitting (``observe``) and be
    exported and imported exactly (plain lists, ints, floats)."""

    def observe(self, snapshot: FeatureSnapshot) -> None: ...

    def identity(self) -> list[Any]: ...

    def export_state(self, key: tuple[str, str]) -> list[Any]: ...

    def import_state(self, key: tuple[str, str], state: Sequence[Any]) -> None: ...

    def forget(self, key: tuple[str, str]) -> None: ...


def build_adapter(
    config: AppConfig,
    kind: AdapterKind,
    known_features: Sequence[str],
    *,
    base_dir: Path | None = None,
) -> WarmableAdapter:
    """The configured adapter. For rules and sklearn the rules file
    (:func:`~market_data_pipeline.project.rules_file`: the configured one, or the shipped
    rules) is loaded: it is the sklearn adapter's fallback. ``base_dir``: where relative paths
    of a config built in code (not loaded from a file, whose paths are absolute) resolve;
    default the working directory. ``plugin``: the strategy plugin of
    ``inference.adapters.plugin``. Raises ``ConfigError`` (bad rules, model
    hash mismatch, unknown features, a plugin not found)."""
    if kind == "plugin":
        from market_data_pipeline.inference.adapters.plugin import PluginAdapter

        return PluginAdapter(config.inference.adapters.plugin, known_features)
    root = base_dir or Path.cwd()
    rules = RulesAdapter(load_rules(rules_file(config, root), known_features))
    if kind == "rules":
        return rules
    if kind == "sklearn":
        from market_data_pipeline.inference.adapters.sklearn import SklearnAdapter

        return SklearnAdapter(
            config.inference.adapters.sklearn, rules, known_features, base_dir=root
        )
    raise ConfigError(
        f"unknown adapter {kind!r} (expected rules, sklearn or plugin)", source="--adapter"
    )


class InferenceEngine:
    """Features plus one adapter, for bars of one ``interval``."""

    def __init__(
        self,
        features: FeatureEngine,
        adapter: WarmableAdapter,
        *,
        interval: str,
        name_suffix: str = "",
    ) -> None:
        self.features = features
        # signals of a rollup level are named <rule>@<interval>: their ids (provider, symbol,
        # ts, name, adapter) never meet those of another level scored at the same instant
        self.name_suffix = name_suffix
        self.adapter = adapter
        self.interval = interval
        self.interval_us = parse_duration_ms(interval) * 1000
        self._eval_hist = telemetry.INFERENCE_EVAL_DURATION.labels(adapter=adapter.name)
        identity = {
            "format": STATE_FORMAT,
            "interval": interval,
            "windows": [dataclasses.astuple(s) for s in features.specs],
            "plugins": [list(p.identity) for p in features.plugins],
            "adapter": [adapter.name, adapter.identity()],
        }
        if name_suffix:
            identity["name_suffix"] = name_suffix
        if features.sessions_identity:
            identity["sessions"] = features.sessions_identity
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        #: what an exported state is valid for: the same features, adapter, rules or model,
        #: and interval (a checkpoint of another engine is never loaded)
        self.state_key = f"{adapter.name}:{interval}:{digest[:24]}"

    def export_state(self, provider: str, symbol: str) -> bytes:
        """The series' whole state (features and adapter) as msgpack bytes."""
        key = (provider, symbol)
        return bytes(
            msgpack.packb(
                [self.features.export_state(provider, symbol), self.adapter.export_state(key)]
            )
        )

    def import_state(self, provider: str, symbol: str, state: bytes | None) -> None:
        """Replace the series' state with one from :meth:`export_state` (``None``: a series
        with no bar yet). Raises ``ValueError`` when it does not fit this engine."""
        if state is None:
            self.forget(provider, symbol)
            return
        try:
            features, adapter = msgpack.unpackb(state)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ValueError(f"not an engine state: {exc}") from exc
        self.features.import_state(provider, symbol, features)
        self.adapter.import_state((provider, symbol), adapter)

    def forget(self, provider: str, symbol: str) -> None:
        self.features.forget(provider, symbol)
        self.adapter.forget((provider, symbol))

    def warm(self, bar: WindowBar) -> None:
        """Advance features and the adapter's state without emitting (store warm-up)."""
        snapshot = self.features.update_bar(bar)
        if snapshot is not None:
            self.adapter.observe(snapshot)

    async def on_bar(self, bar: WindowBar) -> list[Signal] | None:
        """Signals for a closed window (a trade bar with its quote bar, or a quote bar
        alone); ``None`` if it is not newer than the symbol's last one (the state is then
        unchanged)."""
        scored = await self.score_bar(bar)
        return None if scored is None else scored[1]

    async def score_bar(self, bar: WindowBar) -> tuple[FeatureSnapshot, list[Signal]] | None:
        """The features after a closed bar and its signals (``meta.interval`` added);
        ``None`` if the bar is not newer than the symbol's last one."""
        snapshot = self.features.update_bar(bar)
        if snapshot is None:
            return None
        t0 = time.perf_counter()
        signals = await self.adapter.evaluate(snapshot)
        self._eval_hist.observe(time.perf_counter() - t0)
        if self.name_suffix:
            return snapshot, [
                Signal.model_validate(
                    {
                        **s.model_dump(),
                        "name": s.name + self.name_suffix,
                        "signal_id": "",
                        "meta": {**s.meta, "interval": bar.interval},
                    }
                )
                for s in signals
            ]
        return snapshot, [
            s.model_copy(update={"meta": {**s.meta, "interval": bar.interval}}) for s in signals
        ]

    def bar_end(self, bar: WindowBar) -> float:
        """Epoch seconds at which ``bar`` closed (event time)."""
        return (bar.ts + timedelta(microseconds=self.interval_us)).timestamp()

    async def aclose(self) -> None:
        await self.adapter.aclose()


def feature_engine(config: AppConfig, *, timed: bool = True) -> FeatureEngine:
    """The feature engine of ``features.windows``; with a ``session_vwap`` window, its
    sessions are those of ``micro_batch.rollups.calendars`` (loaded here: a ``ConfigError``
    for an unknown calendar)."""
    windows = config.features.windows
    plugins = config.features.plugins
    if not any(s.kind == "session_vwap" for s in resolve_windows(windows)):
        return FeatureEngine(windows, plugins=plugins, timed=timed)
    calendars = config.micro_batch.rollups.calendars
    sessions = SessionCalendar(session_calendars(calendars))
    return FeatureEngine(
        windows,
        plugins=plugins,
        timed=timed,
        session_of=sessions.session_of,
        sessions_identity=sorted([name, sorted(symbols)] for name, symbols in calendars.items()),
    )


def build_engine(
    config: AppConfig, kind: AdapterKind, *, interval: str, base_dir: Path | None = None
) -> InferenceEngine:
    """The engine of ``features.windows`` and ``features.plugins`` and the ``kind`` adapter
    (:func:`build_adapter`) for bars of ``interval``
    (``consumers.inference_consumer.features_interval(config)``). Raises ``ConfigError`` before
    any server is needed (bad rules file, model hash, features, a plugin)."""
    features = feature_engine(config)
    adapter = build_adapter(config, kind, features.feature_names, base_dir=base_dir)
    rollup = interval in config.micro_batch.rollups.intervals
    return InferenceEngine(
        features, adapter, interval=interval, name_suffix=f"@{interval}" if rollup else ""
    )
