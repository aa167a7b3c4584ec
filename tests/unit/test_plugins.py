"""Plugins by ``module:attribute`` (the plugins of this module), no server: the determinism
rules hold (an engine restored from an exported state mid-series continues bit for bit, as an
uninterrupted one), the state key follows the plugin's params and code, and every way a plugin
can be wrong is one ``ConfigError`` at start-up or an ``InferenceError`` naming it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from market_data_core.config import AppConfig, override_config
from market_data_core.contracts import Bar
from market_data_core.errors import ConfigError, InferenceError
from market_data_core.plugins import Emit, FeaturePlugin, StrategyPlugin
from market_data_core.protocols import FeatureSnapshot
from market_data_pipeline.api import default_config
from market_data_pipeline.inference.engine import InferenceEngine, build_engine
from market_data_pipeline.inference.reference import clean_pass, signal_rows
from tests.support.trades import trade_events

HERE = __name__


class RangeMean:
    """Mean of (high - low) over the last ``periods`` bars: ``<name>`` (a price)."""

    def __init__(self, name: str, *, periods: int = 5) -> None:
        self.outputs = (name,)
        self.periods = periods
        self._ranges: list[float] = []

    def on_bar(self, bar: Bar) -> None:
        self._ranges = [*self._ranges, bar.h - bar.l][-self.periods :]

    def values(self) -> tuple[float]:
        if len(self._ranges) < self.periods:
            return (math.nan,)
        return (math.fsum(self._ranges) / self.periods,)

    def export_state(self) -> list[Any]:
        return [self._ranges[:]]

    def import_state(self, state: Sequence[Any]) -> None:
        self._ranges = [float(x) for x in state[0]]


class WideRange:
    """``wide`` (+1) each time the bar range exceeds ``k`` x its mean, at most once every
    ``cooldown`` snapshots (state: the countdown)."""

    def __init__(self, *, feature: str = "rng5", k: float = 2.0, cooldown: int = 3) -> None:
        self.requires = ("close", feature)
        self.feature = feature
        self.k = k
        self.cooldown = cooldown
        self._wait = 0
        self._prev_close = math.nan

    def on_features(self, snapshot: FeatureSnapshot) -> list[Emit]:
        close, mean = snapshot.values["close"], snapshot.values[self.feature]
        move = abs(close - self._prev_close) if self._prev_close == self._prev_close else 0.0
        self._prev_close = close
        if self._wait > 0:
            self._wait -= 1
            return []
        if mean == mean and mean > 0 and move > self.k * mean:
            self._wait = self.cooldown
            return [Emit("wide", 1.0, min(1.0, move / (10 * mean)), {"move": move})]
        return []

    def export_state(self) -> list[Any]:
        return [self._wait, self._prev_close]

    def import_state(self, state: Sequence[Any]) -> None:
        self._wait, self._prev_close = int(state[0]), float(state[1])


class Broken:
    outputs = ("broken",)

    def __init__(self, name: str) -> None:
        pass

    def on_bar(self, bar: Bar) -> None:
        raise ZeroDivisionError("by design")

    def values(self) -> tuple[float]:
        return (0.0,)

    def export_state(self) -> list[Any]:
        return []

    def import_state(self, state: Sequence[Any]) -> None:
        return None


def config(**plugin: Any) -> AppConfig:
    return override_config(
        AppConfig(),
        {
            "features.plugins": [
                {"name": "rng5", "plugin": f"{HERE}:RangeMean", "params": {"periods": 5}}
            ],
            "inference.adapters.plugin": {
                "enabled": True,
                "name": "wide",
                "plugin": f"{HERE}:WideRange",
                "params": plugin or {"k": 1.5},
            },
        },
    )


def bars(n: int = 600) -> list[Bar]:
    """2 s bars of the shipped trades (the engine needs bars, not their stored form)."""
    out: dict[int, list[Any]] = {}
    for ev in trade_events("p"):
        key = int(ev.src_ts.timestamp()) // 2
        out.setdefault(key, []).append(ev)
    result = []
    for key in sorted(out)[:n]:
        evs = out[key]
        prices = [e.c for e in evs]
        result.append(
            Bar(
                provider="p",
                symbol="BTCUSDT",
                interval="2s",
                ts=evs[0].src_ts.replace(microsecond=0, second=evs[0].src_ts.second // 2 * 2),
                o=prices[0],
                h=max(prices),
                l=min(prices),
                c=prices[-1],
                v=sum(e.v or 0 for e in evs),
            )
        )
    return result


def test_the_plugins_fit_their_protocols() -> None:
    assert isinstance(RangeMean("x"), FeaturePlugin)
    assert isinstance(WideRange(), StrategyPlugin)


async def test_an_engine_restored_mid_series_continues_exactly() -> None:
    cfg = config()
    series = bars()
    whole = await clean_pass(build_engine(cfg, "plugin", interval="2s"), series)
    assert len({s.signal_id for s in whole.signals}) >= 5
    assert {s.adapter for s in whole.signals} == {"wide"}
    assert all(s.meta["plugin"] == f"{HERE}:WideRange" for s in whole.signals)

    for cut in (7, 123, 400):
        first = build_engine(cfg, "plugin", interval="2s")
        head = await clean_pass(first, series[:cut])
        state = first.export_state("p", "BTCUSDT")
        second = build_engine(cfg, "plugin", interval="2s")
        second.import_state("p", "BTCUSDT", state)
        tail = await clean_pass(second, series[cut:])
        assert signal_rows(head.signals + tail.signals) == signal_rows(whole.signals)
        got = [dict(s.values) for s in head.snapshots + tail.snapshots]
        want = [dict(s.values) for s in whole.snapshots]
        assert repr(got) == repr(want)  # bit for bit, nan in the same places


def test_the_state_key_follows_params_and_code() -> None:
    key = build_engine(config(), "plugin", interval="2s").state_key
    assert key == build_engine(config(), "plugin", interval="2s").state_key
    assert key != build_engine(config(k=3.0), "plugin", interval="2s").state_key
    assert key.startswith("wide:2s:")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"features.plugins": [{"name": "x", "plugin": "no_such_plugin"}]},
            "no plugin 'no_such_plugin' in the entry points of mdp.features",
        ),
        (
            {"features.plugins": [{"name": "x", "plugin": "no.such.module:Thing"}]},
            "cannot import 'no.such.module'",
        ),
        (
            {"features.plugins": [{"name": "x", "plugin": f"{HERE}:Missing"}]},
            "has no 'Missing'",
        ),
        (
            {"features.plugins": [{"name": "other", "plugin": f"{HERE}:Broken"}]},
            "outputs must be 'other' or other_<suffix>",
        ),
        (
            {
                "features.plugins": [
                    {"name": "x", "plugin": f"{HERE}:RangeMean", "params": {"nope": 1}}
                ]
            },
            "making it failed (TypeError",
        ),
        (
            {"inference.adapters.plugin": {"enabled": True, "plugin": f"{HERE}:WideRange"}},
            "requires unknown features rng5",
        ),
    ],
)
def test_a_plugin_that_does_not_fit_is_a_config_error(
    overrides: dict[str, Any], message: str
) -> None:
    cfg = override_config(AppConfig(), overrides)
    with pytest.raises(ConfigError) as err:
        build_engine(
            cfg, "plugin" if "inference.adapters.plugin" in overrides else "rules", interval="2s"
        )
    assert message in str(err.value)


def test_adapter_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="built-in adapter"):
        override_config(
            AppConfig(), {"inference.adapters.plugin": {"name": "rules", "plugin": "x"}}
        )
    with pytest.raises(ConfigError, match="plugin: give"):
        override_config(AppConfig(), {"inference.adapters.plugin": {"enabled": True}})


async def test_a_plugin_that_raises_is_an_inference_error_naming_it() -> None:
    cfg = override_config(
        default_config(), {"features.plugins": [{"name": "broken", "plugin": f"{HERE}:Broken"}]}
    )
    engine: InferenceEngine = build_engine(cfg, "rules", interval="2s")
    with pytest.raises(InferenceError, match=r"feature plugin 'broken' .* on_bar of p\|BTCUSDT"):
        await engine.on_bar(bars(1)[0])
