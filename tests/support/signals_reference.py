"""The signals reference (issue 14): mdp's own fault-free pass over the final bars on a fresh
database, its features checked against TA-Lib on the same bar sequence.

:func:`assert_signals_equal_reference` is what every fault scenario ends with:

1. the final ``bars_ohlcv`` rows of the scenario's series are copied into a new, empty
   database (``upsert_bars``) and read back from it (with the scenario's quote bars: the
   final windows, ``StoreClient.windows_range``);
2. a fresh engine of the scenario's config runs once over them, in order
   (:func:`market_data_pipeline.inference.reference.clean_pass`), and its signals are written
   to that database's ``signals`` table and read back (the same jsonb round trip as the
   scenario's rows);
3. the scenario's *active* signal rows must equal those rows field for field, ``meta`` (the
   features behind each signal) compared as canonical JSON, so bit for bit;
4. every feature of the pass that TA-Lib has (SMA, EMA, RSI, MACD, BBANDS, ROCP) equals
   TA-Lib's function on the same closes within 1e-9 relative, ``nan`` exactly where TA-Lib
   gives no value;
5. ``mdp.signals`` carries every row: the last event per ``signal_id`` equals the row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import talib

from market_data_core.codec import decode_signal
from market_data_core.config import AppConfig
from market_data_core.contracts import Bar, Signal, WindowBar
from market_data_core.protocols import Bus, FeatureSnapshot
from market_data_pipeline.features import FeatureEngine
from market_data_pipeline.inference.engine import InferenceEngine, build_adapter, feature_engine
from market_data_pipeline.inference.reference import clean_pass, signal_rows
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.wiring import open_signals_store, open_store, upgrade_schema
from tests.integration._store_db import fresh_database
from tests.support.pipeline import urls

T_MIN = datetime(1970, 1, 2, tzinfo=UTC)
T_MAX = datetime(2100, 1, 1, tzinfo=UTC)


def urls_of(cfg: AppConfig, database_url: str | None = None) -> ServerUrls:
    """The config's servers, or another database on the same server."""
    named = urls(cfg)
    return ServerUrls(named.redis_url, database_url or named.database_url, None)


async def final_bars(
    cfg: AppConfig, series: Sequence[tuple[str, str]], interval: str
) -> list[WindowBar]:
    """The series' final windows: trade bars with their quote bars, quote bars alone."""
    store = await open_store(cfg, urls_of(cfg))
    try:
        out: list[WindowBar] = []
        for provider, symbol in series:
            out += await store.windows_range(provider, symbol, interval, T_MIN, T_MAX)
        return out
    finally:
        await store.aclose()


async def table_signals(cfg: AppConfig, series: Sequence[tuple[str, str]]) -> list[Signal]:
    """Every row (any state) of the scenario's series."""
    store = await open_signals_store(cfg, urls_of(cfg))
    try:
        rows = await store.signals_range(T_MIN, T_MAX)
    finally:
        await store.aclose()
    wanted = set(series)
    return [s for s in rows if (s.provider, s.symbol) in wanted]


def fresh_engine(cfg: AppConfig, interval: str) -> InferenceEngine:
    features = feature_engine(cfg, timed=False)
    adapter = build_adapter(cfg, "rules", features.feature_names, base_dir=Path.cwd())
    suffix = f"@{interval}" if interval in cfg.micro_batch.rollups.intervals else ""
    return InferenceEngine(features, adapter, interval=interval, name_suffix=suffix)


async def reference_signals(
    cfg: AppConfig, server_url: str, windows: list[WindowBar], interval: str
) -> tuple[list[Signal], list[FeatureSnapshot], list[WindowBar]]:
    """Steps 1-2 of the module docstring: the reference rows, the pass's feature snapshots
    and the windows it ran over (trade bars as the fresh database gave them back, with the
    scenario's quote bars attached; quote bars alone as the scenario stored them)."""
    bars = [b for b in windows if isinstance(b, Bar)]
    async with fresh_database(server_url, prefix="mdp_reference") as url:
        upgrade_schema(url)
        store = await open_store(cfg, urls_of(cfg, url))
        signals_store = await open_signals_store(cfg, urls_of(cfg, url))
        try:
            if bars:
                await store.upsert_bars(bars)
            series = sorted({(b.provider, b.symbol) for b in bars})
            copied: list[Bar] = []
            for provider, symbol in series:
                copied += await store.bars_range(provider, symbol, interval, T_MIN, T_MAX)
            assert [(b.key, b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count) for b in copied] == [
                (b.key, b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count)
                for b in sorted(bars, key=lambda b: (b.provider, b.symbol, b.ts))
            ]
            quotes = {b.key: b.quote for b in bars}
            back = {b.key: replace(b, quote=quotes[b.key]) for b in copied}
            stored = [back[w.key] if isinstance(w, Bar) else w for w in windows]
            result = await clean_pass(fresh_engine(cfg, interval), stored)
            if result.signals:
                await signals_store.upsert_signals(result.signals)
            rows = await signals_store.signals_range(T_MIN, T_MAX)
        finally:
            await signals_store.aclose()
            await store.aclose()
    return rows, result.snapshots, stored


def _check(ours: np.ndarray, ref: np.ndarray, what: str, atol: float = 0.0) -> None:
    assert np.array_equal(np.isnan(ours), np.isnan(ref)), (
        f"{what}: no value at {np.flatnonzero(np.isnan(ours) != np.isnan(ref))[:5]}"
    )
    ok = ~np.isnan(ref)
    err = np.abs(ours[ok] - ref[ok])
    bound = 1e-9 * np.abs(ref[ok]) + atol
    assert (err <= bound).all(), f"{what}: worst {np.max(err - bound)}"


def assert_features_match_talib(
    cfg: AppConfig, snapshots: Sequence[FeatureSnapshot], windows: Sequence[WindowBar]
) -> int:
    """Step 4, over each series' trade bars (a window with quotes only leaves bar features
    alone); returns how many (feature, series) pairs were checked."""
    engine = FeatureEngine(cfg.features.windows, timed=False)
    checked = 0
    bars = windows
    for key in sorted({(b.provider, b.symbol) for b in windows if isinstance(b, Bar)}):
        idx = [
            i for i, b in enumerate(windows) if (b.provider, b.symbol) == key and isinstance(b, Bar)
        ]
        close = np.array([cast(Bar, bars[i]).c for i in idx], dtype=float)
        snaps = [snapshots[i] for i in idx]

        def col(name: str, snaps: Sequence[FeatureSnapshot] = snaps) -> np.ndarray:
            return np.array([s.values[name] for s in snaps], dtype=float)

        scale = 1e-9 * float(np.max(close))
        for spec in engine.specs:
            n = spec.periods
            if n is None:
                continue  # time horizons: pandas references in tests/unit
            what = f"{key} {spec.name}"
            if spec.kind == "sma":
                _check(col(spec.name), talib.SMA(close, n), what)
            elif spec.kind == "ema":
                _check(col(spec.name), talib.EMA(close, n), what)
            elif spec.kind == "rsi":
                _check(col(spec.name), talib.RSI(close, n), what)
            elif spec.kind == "momentum":
                _check(col(spec.name), talib.ROCP(close, n), what, atol=1e-15)
            elif spec.kind == "macd":
                line, signal, hist = talib.MACD(close, spec.fast_periods, n, spec.signal_periods)
                _check(col(spec.name), line, what, atol=scale)
                _check(col(f"{spec.name}_signal"), signal, what, atol=scale)
                _check(col(f"{spec.name}_hist"), hist, what, atol=scale)
            elif spec.kind == "bollinger":
                upper, mid, lower = talib.BBANDS(close, n, spec.num_std, spec.num_std, 0)
                _check(col(spec.name), mid, what)
                _check(col(f"{spec.name}_upper"), upper, what)
                _check(col(f"{spec.name}_lower"), lower, what)
            else:
                continue
            checked += 1
    return checked


async def stream_last_states(bus: Bus, cfg: AppConfig) -> dict[str, Signal]:
    last: dict[str, Signal] = {}
    for rec in await bus.tail(cfg.bus.signals_topic, 10**6):
        s = decode_signal(rec.payload)
        last[s.signal_id] = s
    return last


async def assert_signals_equal_reference(
    cfg: AppConfig,
    bus: Bus,
    series: Sequence[tuple[str, str]],
    *,
    server_url: str,
    interval: str,
    min_signals: int = 1,
    only_interval: bool = False,
) -> dict[str, int]:
    """The whole check of the module docstring; returns counts for the test's own asserts.
    ``only_interval``: the table's rows of this interval only (``meta.interval``), when the
    series is scored at several."""
    bars = await final_bars(cfg, series, interval)
    assert bars, "the scenario stored no bars"
    ref_rows, snapshots, stored = await reference_signals(cfg, server_url, bars, interval)
    rows = await table_signals(cfg, series)
    if only_interval:
        rows = [s for s in rows if s.meta.get("interval") == interval]
    active = [s for s in rows if s.state == "active"]
    assert len(ref_rows) >= min_signals
    got, want = signal_rows(active), signal_rows(ref_rows)
    if got != want:
        missing = sorted({r[0] for r in want} - {r[0] for r in got})[:5]
        extra = sorted({r[0] for r in got} - {r[0] for r in want})[:5]
        differ = [g[0] for g, w in zip(got, want, strict=False) if g != w][:5]
        raise AssertionError(
            f"signals differ from the reference: {len(got)} vs {len(want)} rows; missing "
            f"{missing}, extra {extra}, first differing {differ}"
        )
    checked = assert_features_match_talib(cfg, snapshots, stored)
    on_stream = await stream_last_states(bus, cfg)
    for row in rows:
        event = on_stream.get(row.signal_id)
        assert event is not None, f"{row.signal_id} is in the table but not on the stream"
        assert (event.state, event.value, json.dumps(event.meta, sort_keys=True)) == (
            row.state,
            row.value,
            json.dumps(row.meta, sort_keys=True),
        ), row.signal_id
    return {
        "bars": len(bars),
        "signals": len(active),
        "retracted": len(rows) - len(active),
        "talib_checked": checked,
    }
