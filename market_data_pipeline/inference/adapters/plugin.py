"""The strategy-plugin adapter: a user's :class:`~market_data_core.plugins.StrategyPlugin` as an
inference adapter, beside ``rules`` and ``sklearn``.

One plugin instance per (provider, symbol), made by the factory with the configured params on
the series' first snapshot. Like the rules, in event time: a snapshot whose ``ts`` is not after
the series' previous one is ignored; warm-up (``observe``) calls the plugin and discards what
it emits, so its edge and cooldown state advances exactly as when scoring. Each
:class:`~market_data_core.plugins.Emit` becomes a :class:`~market_data_core.contracts.Signal`
with ``adapter`` = the configured name, ``ts`` = the snapshot's, ``meta`` = the emit's plus
``price`` (the close) and ``plugin`` (the reference), so a replay re-emits the same ids.

Errors: a plugin that raises, or emits something that is not a valid signal, raises
``InferenceError`` naming the plugin, series and time (see :mod:`market_data_core.plugins`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from market_data_core.config import PluginAdapterConfig
from market_data_core.contracts import Signal
from market_data_core.errors import ConfigError, InferenceError
from market_data_core.plugins import ADAPTERS_GROUP, Emit, StrategyPlugin
from market_data_core.protocols import FeatureSnapshot
from market_data_core.timeutil import to_epoch_us
from market_data_pipeline.plugins import load_plugin

__all__ = ["PluginAdapter"]

_KEY = "inference.adapters.plugin"


class PluginAdapter:
    """See the module docstring. Raises ``ConfigError`` at construction when the plugin is
    not found, its factory raises, or it requires features that are not configured."""

    def __init__(self, config: PluginAdapterConfig, known_features: Sequence[str]) -> None:
        self.config = config
        self._loaded = load_plugin(config.plugin, ADAPTERS_GROUP, key_path=f"{_KEY}.plugin")
        try:
            probe: StrategyPlugin = self._loaded.factory(**config.params)
            requires = [str(r) for r in probe.requires]
        except Exception as exc:  # user code: whatever it raises is a config problem here
            raise ConfigError(
                f"strategy plugin {config.plugin!r}: making it failed "
                f"({type(exc).__name__}: {exc})",
                key_path=f"{_KEY}.params",
            ) from None
        unknown = sorted(set(requires) - set(known_features))
        if unknown:
            raise ConfigError(
                f"strategy plugin {config.plugin!r} requires unknown features "
                f"{', '.join(unknown)} (known: {', '.join(known_features)})",
                key_path=f"{_KEY}.params",
            )
        self.requires = tuple(requires)
        self._series: dict[tuple[str, str], StrategyPlugin] = {}
        self._last_ts: dict[tuple[str, str], int] = {}

    @property
    def name(self) -> str:
        return self.config.name

    def _instance(self, key: tuple[str, str]) -> StrategyPlugin:
        plugin = self._series.get(key)
        if plugin is None:
            plugin = self._series[key] = self._loaded.factory(**self.config.params)
        return plugin

    def _failed(self, key: tuple[str, str], what: str, exc: Exception) -> InferenceError:
        return InferenceError(
            f"strategy plugin {self.config.plugin!r} failed in {what} of {key[0]}|{key[1]} "
            f"({type(exc).__name__}: {exc})"
        )

    def evaluate_sync(self, snapshot: FeatureSnapshot) -> list[Signal]:
        key = (snapshot.provider, snapshot.symbol)
        ts_us = to_epoch_us(snapshot.ts)
        last = self._last_ts.get(key)
        if last is not None and ts_us <= last:
            return []
        self._last_ts[key] = ts_us
        plugin = self._instance(key)
        try:
            emits = list(plugin.on_features(snapshot))
        except Exception as exc:  # user code
            raise self._failed(key, f"on_features at {snapshot.ts}", exc) from exc
        return [self._signal(snapshot, e) for e in emits]

    def _signal(self, snapshot: FeatureSnapshot, emit: Emit) -> Signal:
        meta: dict[str, Any] = {**dict(emit.meta), "plugin": self.config.plugin}
        if snapshot.price is not None:
            meta["price"] = snapshot.price
        try:
            return Signal(
                provider=snapshot.provider,
                symbol=snapshot.symbol,
                ts=snapshot.ts,
                name=emit.name,
                value=emit.value,
                score=emit.score,
                meta=meta,
                adapter=self.config.name,
            )
        except (ValidationError, AttributeError, TypeError) as exc:
            raise self._failed(
                (snapshot.provider, snapshot.symbol), f"a signal at {snapshot.ts}", exc
            ) from exc

    async def evaluate(self, snapshot: FeatureSnapshot) -> list[Signal]:
        return self.evaluate_sync(snapshot)

    def observe(self, snapshot: FeatureSnapshot) -> None:
        """Advance the plugin's state without emitting (warm-up)."""
        self.evaluate_sync(snapshot)

    def identity(self) -> list[Any]:
        """What the signals depend on besides the snapshots: the plugin's code, its params
        and the adapter's name."""
        return [self.config.name, self.config.params, *self._loaded.identity]

    def export_state(self, key: tuple[str, str]) -> list[Any]:
        """The series' last time and the plugin's own state (``[]``: none yet)."""
        last = self._last_ts.get(key)
        plugin = self._series.get(key)
        if last is None and plugin is None:
            return []
        if plugin is None:
            return [last, None]
        try:
            return [last, list(plugin.export_state())]
        except Exception as exc:  # user code
            raise self._failed(key, "export_state", exc) from exc

    def import_state(self, key: tuple[str, str], state: Sequence[Any]) -> None:
        """Replace the series' state with one from :meth:`export_state`. Raises
        ``ValueError`` when the plugin refuses it."""
        self.forget(key)
        if not state:
            return
        last, own = state
        if last is not None:
            self._last_ts[key] = int(last)
        if own is None:
            return
        plugin = self._instance(key)
        try:
            plugin.import_state(own)
        except Exception as exc:  # user code: a state that does not fit
            raise ValueError(f"strategy plugin {self.config.plugin!r}: {exc}") from exc

    def forget(self, key: tuple[str, str]) -> None:
        self._series.pop(key, None)
        self._last_ts.pop(key, None)

    async def aclose(self) -> None:
        return None
