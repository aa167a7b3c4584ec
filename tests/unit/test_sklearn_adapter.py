"""The sklearn adapter: hash pinning, feature order, the timeout breaker and its rules fallback."""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from market_data_core.config import SklearnAdapterConfig, load_config
from market_data_core.errors import ConfigError
from market_data_core.protocols import FeatureSnapshot
from market_data_pipeline import telemetry
from market_data_pipeline.features import FeatureEngine
from market_data_pipeline.inference.adapters.rules import RulesAdapter, parse_rules
from market_data_pipeline.inference.adapters.sklearn import CircuitBreaker, SklearnAdapter
from tests.conftest import ROOT, SHIPPED_CONFIG

KNOWN = ["close", "volume", "rsi", "momentum"]
T0 = datetime(2024, 5, 1, tzinfo=UTC)


class SlowModel:
    """A picklable stand-in model whose predictions take ``delay_s`` (switchable)."""

    feature_names_in_ = np.array(["rsi", "momentum"], dtype=object)

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls = 0

    def predict_proba(self, x: Any) -> np.ndarray:
        self.calls += 1
        time.sleep(self.delay_s)
        assert list(x.columns) == ["rsi", "momentum"]
        p = 0.9 if float(x.iloc[0]["rsi"]) > 50 else 0.1
        return np.array([[1 - p, p]])


def _write(tmp_path: Path, model: object) -> tuple[Path, str]:
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _fallback() -> RulesAdapter:
    rules = [{"name": "rsi_hot", "condition": "rsi > 70", "signal": -1, "score": 0.7}]
    return RulesAdapter(parse_rules(rules, KNOWN))


def _snap(i: int, rsi: float) -> FeatureSnapshot:
    return FeatureSnapshot(
        "p", "S", T0 + timedelta(seconds=i), {"rsi": rsi, "momentum": 0.0, "close": 1.0}, 1.0
    )


def test_hash_mismatch_is_refused_before_loading(tmp_path: Path) -> None:
    path, digest = _write(tmp_path, SlowModel(0))
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
    cfg = SklearnAdapterConfig(enabled=True, model_path=str(path), sha256=wrong)
    with pytest.raises(ConfigError) as info:
        SklearnAdapter(cfg, _fallback(), KNOWN)
    text = str(info.value)
    assert "inference.adapters.sklearn.sha256" in text
    assert f"has SHA-256 {digest}, config pins {wrong}: refusing to load it" in text
    with pytest.raises(ConfigError, match="sha256 is empty: pin the model file"):
        SklearnAdapter(SklearnAdapterConfig(model_path=str(path)), _fallback(), KNOWN)
    with pytest.raises(ConfigError, match="cannot read model file"):
        SklearnAdapter(
            SklearnAdapterConfig(model_path=str(tmp_path / "nope"), sha256=digest),
            _fallback(),
            KNOWN,
        )


def test_unknown_model_features_are_refused(tmp_path: Path) -> None:
    path, digest = _write(tmp_path, SlowModel(0))
    with pytest.raises(ConfigError, match=r"unknown feature\(s\) momentum \(known: close, rsi"):
        SklearnAdapter(
            SklearnAdapterConfig(model_path=str(path), sha256=digest),
            _fallback(),
            ["close", "rsi"],
        )


async def test_model_signals_follow_feature_order_and_edges(tmp_path: Path) -> None:
    path, digest = _write(tmp_path, SlowModel(0))
    # a generous timeout: these tests are about signals, not about a loaded machine
    cfg = SklearnAdapterConfig(
        model_path=str(path), sha256=digest, threshold=0.6, timeout_ms=10_000
    )
    adapter = SklearnAdapter(cfg, _fallback(), KNOWN)
    try:
        out = [await adapter.evaluate(_snap(i, r)) for i, r in enumerate([60, 65, 40, 80])]
    finally:
        await adapter.aclose()
    assert [[(s.value, s.adapter) for s in o] for o in out] == [
        [(1.0, "sklearn")],
        [],
        [(-1.0, "sklearn")],
        [(1.0, "sklearn")],
    ]
    assert out[0][0].score == pytest.approx(0.9)
    assert out[0][0].name == "model_signal"


async def test_slow_model_trips_the_breaker_to_rules_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = SlowModel(0.3)
    path, digest = _write(tmp_path, model)
    now = [0.0]
    cfg = SklearnAdapterConfig(
        model_path=str(path),
        sha256=digest,
        timeout_ms=30,
        workers=4,
        breaker_failures=2,
        breaker_reset_s=5.0,
    )
    adapter = SklearnAdapter(cfg, _fallback(), KNOWN, clock=lambda: now[0])
    opened = telemetry.ERRORS.labels(component="inference", reason="breaker_open")
    timeouts = telemetry.ERRORS.labels(component="inference", reason="timeout")
    opened_before, timeouts_before = opened._value.get(), timeouts._value.get()
    try:
        with caplog.at_level(logging.WARNING):
            first = await adapter.evaluate(_snap(0, 75))  # timeout 1: rules answer
            assert [(s.name, s.adapter) for s in first] == [("rsi_hot", "rules")]
            assert adapter.breaker.state == "closed"
            await adapter.evaluate(_snap(1, 60))  # timeout 2: the breaker opens
            assert adapter.breaker.state == "open"
        assert "circuit breaker OPEN" in caplog.text and "falling back to rules" in caplog.text
        assert opened._value.get() == opened_before + 1
        assert timeouts._value.get() == timeouts_before + 2
        # open: no prediction is tried at all (fast), rules keep their edge semantics
        calls = adapter.model.calls
        third = await adapter.evaluate(_snap(2, 80))
        assert adapter.model.calls == calls
        assert [(s.name, s.adapter) for s in third] == [("rsi_hot", "rules")]
        # half-open after breaker_reset_s: a trial that fails re-opens at once
        now[0] = 5.0
        await adapter.evaluate(_snap(3, 60))
        assert adapter.breaker.state == "open"
        assert opened._value.get() == opened_before + 2
        # the model is healthy again: the next trial closes the breaker, model signals resume
        adapter.model.delay_s = 0.0
        now[0] = 10.0
        back = await adapter.evaluate(_snap(4, 90))
        assert adapter.breaker.state == "closed"
        assert [(s.value, s.adapter) for s in back] == [(1.0, "sklearn")]
    finally:
        await adapter.aclose()


def test_breaker_state_machine() -> None:
    now = [0.0]
    b = CircuitBreaker(3, 10.0, clock=lambda: now[0])
    assert b.allow()
    assert not b.failure() and not b.failure()
    b.success()  # consecutive count resets
    assert not b.failure() and not b.failure()
    assert b.failure() and b.state == "open"
    assert not b.allow()
    now[0] = 9.9
    assert not b.allow()
    now[0] = 10.0
    assert b.allow() and b.state == "half_open"
    b.success()
    assert b.state == "closed"


async def test_shipped_example_model_matches_its_pinned_hash() -> None:
    cfg = load_config(SHIPPED_CONFIG, env={})
    engine = FeatureEngine(cfg.features.windows)
    ml = cfg.inference.adapters.sklearn.model_copy(update={"timeout_ms": 10_000})
    adapter = SklearnAdapter(ml, _fallback(), engine.feature_names, base_dir=ROOT)
    try:
        assert adapter.feature_order == ("momentum", "volatility", "rsi", "ret_30s", "vol_5m")
        snap = FeatureSnapshot(
            "p",
            "S",
            T0,
            {"momentum": 0.02, "volatility": 0.001, "rsi": 80, "ret_30s": 0.001, "vol_5m": 0.001},
            1.0,
        )
        out = await adapter.evaluate(snap)
        assert adapter.breaker.state == "closed"
        assert all(s.adapter == "sklearn" for s in out)
    finally:
        await adapter.aclose()


async def test_a_warmed_up_adapter_emits_what_an_uninterrupted_one_would(tmp_path: Path) -> None:
    path, digest = _write(tmp_path, SlowModel(0))
    # a generous timeout: these tests are about signals, not about a loaded machine
    cfg = SklearnAdapterConfig(
        model_path=str(path), sha256=digest, threshold=0.6, timeout_ms=10_000
    )
    rsi = [60, 65, 40, 45, 80, 20, 30, 90, 95, 10]
    whole = SklearnAdapter(cfg, _fallback(), KNOWN)
    restarted = SklearnAdapter(cfg, _fallback(), KNOWN)
    try:
        expected = [await whole.evaluate(_snap(i, r)) for i, r in enumerate(rsi)]
        for i in range(4):
            restarted.observe(_snap(i, rsi[i]))
        got = [await restarted.evaluate(_snap(i, rsi[i])) for i in range(4, len(rsi))]
    finally:
        await whole.aclose()
        await restarted.aclose()
    assert [[s.signal_id for s in o] for o in got] == [
        [s.signal_id for s in o] for o in expected[4:]
    ]
    # i=3 (rsi 45) was "down" in the warm-up, so i=4 (rsi 80, "up") is an edge
    assert [s.value for s in got[0]] == [1.0]
