"""The example plugin package (``examples/mdp-plugin-example``) as a user installs and runs it.

pip installs a copy of it (a real build with the dev venv's locked setuptools, no build
isolation, into a folder of its own with ``--target``: the test venv stays as ``make install``
left it; ``--no-deps``: its one dependency, mdp-streaming, is the package under test) and the
folder goes on ``sys.path``, where ``importlib.metadata`` finds its entry points as it would in
site-packages. Then, on real servers:

- the plugin is found by its entry-point names (``donchian`` in ``mdp.features``, ``breakout``
  in ``mdp.adapters``) and its feature equals an independent pandas reference;
- a pipeline that stops after 60 % of the shipped trades and restarts for the rest (resuming
  the series from its checkpoint, which holds the plugins' state) ends with exactly the signals
  of one uninterrupted offline run over all the trades, and a replay of all the trades changes
  no bar and no signal.
"""

from __future__ import annotations

import importlib.metadata
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import market_data_pipeline as mdp
from market_data_core.config import AppConfig, override_config
from market_data_pipeline.inference.reference import signal_rows
from tests.conftest import ROOT
from tests.integration.test_api import PROVIDER, shipped_trades
from tests.support.pipeline import make_config
from tests.support.trades import SYMBOL

EXAMPLE = ROOT / "examples" / "mdp-plugin-example"
PLUGINS = {
    "features.plugins": [{"name": "don20", "plugin": "donchian", "params": {"periods": 20}}],
    "inference.adapters.plugin": {
        "enabled": True,
        "name": "breakout",
        "plugin": "breakout",
        "params": {"channel": "don20"},
    },
}


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the example package was pip-installed into."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(EXAMPLE, source)  # the build writes build/ and *.egg-info beside it
    target = work / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


@pytest.fixture
def installed(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(plugin_site))
    return plugin_site


def test_the_package_registers_its_entry_points(installed: Path) -> None:
    features = {ep.name: ep for ep in importlib.metadata.entry_points(group="mdp.features")}
    adapters = {ep.name: ep for ep in importlib.metadata.entry_points(group="mdp.adapters")}
    assert features["donchian"].value == "mdp_plugin_example.features:Donchian"
    assert adapters["breakout"].value == "mdp_plugin_example.strategies:Breakout"
    assert features["donchian"].dist is not None
    assert features["donchian"].dist.metadata["Name"] == "mdp-plugin-example"
    assert features["donchian"].load().__name__ == "Donchian"
    assert Path(sys.modules["mdp_plugin_example"].__file__ or "").is_relative_to(installed)


async def test_the_plugins_run_and_a_restart_reproduces_their_signals(
    installed: Path, redis_url: str, database_url: str, unique: str
) -> None:
    from tests.integration._store_db import fresh_database

    trades = shipped_trades()
    cut = int(len(trades) * 0.6)
    async with fresh_database(database_url, prefix="mdp_plugin") as db_url:
        # a 60 s correction horizon: bars older than that behind the newest are final, so the
        # first run leaves checkpoints well before its end
        base = make_config(redis_url, db_url, unique, 2000, correction_horizon_ms=60_000)
        config: AppConfig = override_config(base, PLUGINS)
        assert mdp.default_adapter(config) == "plugin"
        for part in (trades.iloc[:cut], trades.iloc[cut:]):
            async with mdp.Pipeline(
                config,
                sources=[mdp.Trades(part, provider=PROVIDER, symbol=SYMBOL)],
                consumer="plugin-test",
            ) as pipe:
                summary = await pipe.run()
                assert pipe.status == "success"
                live_signals = await pipe.signals()
                live_bars = await pipe.bars(PROVIDER, SYMBOL)
        # the second run resumed the series from a checkpoint of the first (plugins' state
        # included), not from its first bar
        assert summary.inference.resumes >= 1
        assert 0 < summary.inference.bars_loaded < 600
        # replay-exact: all the trades again change no bar and no signal
        async with mdp.Pipeline(
            config,
            sources=[mdp.Trades(trades, provider=PROVIDER, symbol=SYMBOL)],
            consumer="plugin-test",
        ) as pipe:
            replay = await pipe.run()
            assert replay.microbatch.duplicates == len(trades)
            assert replay.microbatch.bars_written == 0 and replay.inference.signals == 0
            assert signal_rows(await pipe.signals()) == signal_rows(live_signals)

    research = await mdp.run_offline_async(trades, config=config, provider=PROVIDER, symbol=SYMBOL)
    assert research.signals and {s.adapter for s in research.signals} == {"breakout"}
    assert {s.name for s in research.signals} == {"breakout_up", "breakout_down"}
    assert signal_rows(live_signals) == signal_rows(research.signals)
    assert [(b.key, b.c) for b in live_bars] == [(b.key, b.c) for b in research.bars]

    # the feature against pandas: highest high / lowest low of the 20 bars before each bar
    highs = pd.Series([b.h for b in research.bars])
    lows = pd.Series([b.l for b in research.bars])
    want_upper = highs.rolling(20).max().shift(1).to_numpy()
    want_lower = lows.rolling(20).min().shift(1).to_numpy()
    got_upper = np.array([f.values["don20_upper"] for f in research.features])
    got_lower = np.array([f.values["don20_lower"] for f in research.features])
    np.testing.assert_array_equal(got_upper, want_upper)
    np.testing.assert_array_equal(got_lower, want_lower)
    # and each signal where the close left the channel the bar before it was inside it
    by_ts = {f.ts: f.values for f in research.features}
    for s in research.signals:
        v = by_ts[s.ts]
        if s.name == "breakout_up":
            assert v["close"] > v["don20_upper"]
        else:
            assert v["close"] < v["don20_lower"]
        assert not math.isnan(v["don20_upper"])
