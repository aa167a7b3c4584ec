"""The plugin protocols: user features and strategies as Python callables.

A plugin is found by a reference in the config: the name of an entry point in the group
``mdp.features`` (features) or ``mdp.adapters`` (strategies) of an installed distribution, or
``module:attribute`` of an importable module. The reference names a *factory* (usually the
class itself); mdp calls it once per series (provider, symbol) to make that series' instance,
so an instance only ever sees one series, in event-time order.

Config::

    features:
      plugins:
        - name: don20                     # the feature's name; every output is it or name_*
          plugin: donchian                # entry point (mdp.features) or module:attribute
          params: {periods: 20}           # keyword arguments of the factory
    inference:
      adapters:
        plugin:
          enabled: true                   # the default adapter of mdp run / infer then
          name: breakout                  # Signal.adapter of its signals
          plugin: breakout                # entry point (mdp.adapters) or module:attribute
          params: {channel: don20}

Determinism rules (the same as the built-in features and rules obey, and what makes a plugin's
signals restart-exact and replay-exact):

- **Event time only.** An instance's outputs are a pure function of the bars (features) or
  snapshots (strategies) it was given, in order, and of its params: no wall clock, no
  unseeded randomness, no I/O, no global state shared between instances.
- **Exportable state.** ``export_state()`` returns everything the next outputs depend on as
  plain data -- lists, ints, floats, strings, bools, ``None`` (what msgpack keeps exactly; a
  tuple comes back as a list) -- and ``import_state(s)`` on a fresh instance of the same params
  continues exactly as the exporting instance would. mdp checkpoints it with the built-in state
  (``feature_checkpoints``), restores it to re-score a corrected bar, and resumes from it after a
  restart; the checkpoint is tied to the plugin's code (its distribution's version, or the
  module file's SHA-256), so a changed plugin rebuilds its series from the first bar instead of
  loading a state it may not understand.
- **Errors.** A plugin that raises stops the inference stage with ``InferenceError`` naming the
  plugin and the bar (nothing is acknowledged past it): fix the plugin and restart, the stage
  resumes from its last checkpoint. A factory that raises, or outputs/required features that do
  not fit the config, are a ``ConfigError`` at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from market_data_core.contracts import Bar
from market_data_core.protocols import FeatureSnapshot

__all__ = [
    "ADAPTERS_GROUP",
    "FEATURES_GROUP",
    "Emit",
    "FeatureFactory",
    "FeaturePlugin",
    "StrategyFactory",
    "StrategyPlugin",
]

FEATURES_GROUP = "mdp.features"
"""The entry-point group of feature plugins."""
ADAPTERS_GROUP = "mdp.adapters"
"""The entry-point group of strategy plugins (inference adapters)."""


@runtime_checkable
class FeaturePlugin(Protocol):
    """One user feature of one series: updated by each closed bar, read after it.

    ``outputs``: the names it defines (fixed for the instance): the configured ``name`` or
    ``name_<suffix>``, letters, digits and ``_``. Rules, strategies and models read them like
    built-in features.
    """

    @property
    def outputs(self) -> Sequence[str]: ...

    def on_bar(self, bar: Bar) -> None:
        """Apply the series' next closed bar (``bar.ts`` strictly after the previous one;
        ``o/h/l/c`` prices, ``v`` size or ``None`` for provider bars without volume,
        ``vwap``, ``trade_count``: see :class:`~market_data_core.contracts.Bar`)."""
        ...

    def values(self) -> Sequence[float]:
        """The outputs after the last bar, in ``outputs`` order; ``nan`` where not ready."""
        ...

    def export_state(self) -> list[Any]:
        """Everything the next outputs depend on, as plain data (see the module docstring)."""
        ...

    def import_state(self, state: Sequence[Any]) -> None:
        """Continue from a state of :meth:`export_state` (after a msgpack round trip)."""
        ...


class FeatureFactory(Protocol):
    """Makes a series' :class:`FeaturePlugin`: ``factory(name, **params)``."""

    def __call__(self, name: str, **params: Any) -> FeaturePlugin: ...


@dataclass(frozen=True, slots=True)
class Emit:
    """A signal a strategy emits for the snapshot it was given: ``name`` (letters, digits,
    ``_ . -``), ``value`` (e.g. +1 long / -1 short) and ``score`` (confidence), both finite;
    ``meta`` plain JSON data. mdp adds provider, symbol, ts (the snapshot's event time), the
    adapter's name and a deterministic ``signal_id``."""

    name: str
    value: float
    score: float
    meta: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class StrategyPlugin(Protocol):
    """One user strategy of one series: feature snapshots in, signals out.

    ``requires``: the feature names it reads (checked against the configured features at
    start-up; a snapshot's ``values`` holds every feature, ``nan`` where not ready).
    """

    @property
    def requires(self) -> Sequence[str]: ...

    def on_features(self, snapshot: FeatureSnapshot) -> Sequence[Emit]:
        """The signals at this snapshot (event time ``snapshot.ts``, strictly after the
        previous one); ``[]`` for none. Called for warm-up too, its result then discarded, so
        edge and cooldown state must advance here."""
        ...

    def export_state(self) -> list[Any]:
        """Everything the next signals depend on, as plain data (see the module docstring)."""
        ...

    def import_state(self, state: Sequence[Any]) -> None:
        """Continue from a state of :meth:`export_state` (after a msgpack round trip)."""
        ...


class StrategyFactory(Protocol):
    """Makes a series' :class:`StrategyPlugin`: ``factory(**params)``."""

    def __call__(self, **params: Any) -> StrategyPlugin: ...
