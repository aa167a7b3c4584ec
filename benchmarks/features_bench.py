"""Feature-engine throughput: 100 symbols x 10 features, beside a bare deque-and-running-sum
loop (one feature) on the same machine: once over a flat list of closes (count window), once
per symbol with time eviction (what a horizon window has to do).

    .venv/bin/python benchmarks/features_bench.py [--symbols 100] [--bars 1000] [--rounds 3]

"Feature updates" = bar updates x features. Measured three ways: the engine without metrics
(``timed=False``), with the per-window ``features_update_duration_seconds`` histogram
(``timed=True``, what ``mdp stream infer`` runs), and engine + rules adapter (the shipped
rules) per bar. Prints a table and writes ``benchmarks/results/features-<UTC timestamp>.json``.
Keep it short (well under 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from market_data_core.config import FeatureWindowConfig
from market_data_core.contracts import Bar
from market_data_pipeline.features import FeatureEngine
from market_data_pipeline.inference.adapters.rules import RulesAdapter, load_rules
from market_data_pipeline.project import DEFAULT_RULES_FILE

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
T0 = datetime(2024, 1, 2, tzinfo=UTC)

WINDOWS = [
    FeatureWindowConfig(name="vwap_1m", horizon="60s"),
    FeatureWindowConfig(name="ret_30s", horizon="30s"),
    FeatureWindowConfig(name="vol_5m", horizon="300s"),
    FeatureWindowConfig(name="momentum", feature="momentum", periods=10),
    FeatureWindowConfig(name="volatility", feature="volatility", periods=30),
    FeatureWindowConfig(name="rsi", feature="rsi", periods=14),
    FeatureWindowConfig(name="sma_fast", feature="sma", periods=10),
    FeatureWindowConfig(name="sma_slow", feature="sma", periods=30),
    FeatureWindowConfig(name="skew_30", periods=30),
    FeatureWindowConfig(name="macd", periods=26),
]


def make_bars(symbols: int, bars: int) -> list[Bar]:
    """Geometric random walks, 1 s bars, interleaved across symbols (as a bus delivers them)."""
    rng = random.Random(42)
    prices = [100.0 + i for i in range(symbols)]
    out: list[Bar] = []
    for t in range(bars):
        ts = T0 + timedelta(seconds=t)
        for s in range(symbols):
            o = prices[s]
            c = o * math.exp(rng.gauss(0, 1e-3))
            prices[s] = c
            h, lo = max(o, c) * 1.0002, min(o, c) * 0.9998
            out.append(Bar("bench", f"S{s:03d}", "1s", ts, o, h, lo, c, rng.uniform(1, 100)))
    return out


def bare_loop(closes: list[float], window: int) -> float:
    """The floor: one SMA with a deque and a running sum; returns updates/s."""
    q: deque[float] = deque()
    total = 0.0
    value = 0.0
    t0 = time.perf_counter()
    for x in closes:
        q.append(x)
        total += x
        if len(q) > window:
            total -= q.popleft()
        value = total / len(q)
    elapsed = time.perf_counter() - t0
    assert value > 0
    return len(closes) / elapsed


def bare_time_loop(bars: list[Bar], horizon_us: int) -> float:
    """The floor with time eviction: per symbol a deque of (ts_us, close) and a running sum
    (an SMA over a horizon), as the engine's windows do; returns updates/s."""
    state: dict[str, tuple[deque[tuple[int, float]], list[float]]] = {}
    ts_us = [int(b.ts.timestamp() * 1_000_000) for b in bars]
    value = 0.0
    t0 = time.perf_counter()
    for bar, t in zip(bars, ts_us, strict=True):
        st = state.get(bar.symbol)
        if st is None:
            st = state[bar.symbol] = (deque(), [0.0])
        q, total = st
        q.append((t, bar.c))
        total[0] += bar.c
        cutoff = t - horizon_us
        while q[0][0] <= cutoff:
            total[0] -= q.popleft()[1]
        value = total[0] / len(q)
    elapsed = time.perf_counter() - t0
    assert value > 0
    return len(bars) / elapsed


def best_of(rounds: int, run: Callable[[], float]) -> tuple[float, list[float]]:
    rates = [run() for _ in range(rounds)]
    return max(rates), rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--bars", type=int, default=1000, help="bars per symbol")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    bars = make_bars(args.symbols, args.bars)
    n_features = len(WINDOWS)

    def engine_rate(timed: bool) -> float:
        engine = FeatureEngine(WINDOWS, timed=timed)
        t0 = time.perf_counter()
        for bar in bars:
            engine.update_bar(bar)
        return len(bars) * n_features / (time.perf_counter() - t0)

    def with_rules() -> float:
        engine = FeatureEngine(WINDOWS, timed=True)
        rules = RulesAdapter(load_rules(DEFAULT_RULES_FILE, engine.feature_names))

        async def run() -> float:
            t0 = time.perf_counter()
            for bar in bars:
                snap = engine.update_bar(bar)
                assert snap is not None
                await rules.evaluate(snap)
            return len(bars) / (time.perf_counter() - t0)

        return asyncio.run(run())

    closes = [b.c for b in bars]
    bare, bare_all = best_of(args.rounds, lambda: bare_loop(closes, 30))
    bare_time, bare_time_all = best_of(args.rounds, lambda: bare_time_loop(bars, 30_000_000))
    untimed, untimed_all = best_of(args.rounds, lambda: engine_rate(False))
    timed, timed_all = best_of(args.rounds, lambda: engine_rate(True))
    scored, scored_all = best_of(args.rounds, with_rules)

    result: dict[str, Any] = {
        "bench": "features",
        "at": datetime.now(UTC).isoformat(),
        "host": platform.node(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "symbols": args.symbols,
        "bars_per_symbol": args.bars,
        "features": [w.name for w in WINDOWS],
        "bare_deque_sum_updates_per_s": bare,
        "bare_per_symbol_time_evicted_updates_per_s": bare_time,
        "engine_feature_updates_per_s": untimed,
        "engine_timed_feature_updates_per_s": timed,
        "engine_plus_rules_bars_per_s": scored,
        "engine_bar_updates_per_s": untimed / n_features,
        "ratio_engine_to_bare": untimed / bare,
        "ratio_engine_to_bare_time": untimed / bare_time,
        "rounds": {
            "bare": bare_all,
            "bare_time": bare_time_all,
            "engine": untimed_all,
            "engine_timed": timed_all,
            "engine_plus_rules": scored_all,
        },
    }
    print(
        f"{args.symbols} symbols x {n_features} features, {len(bars):,} bars "
        f"(best of {args.rounds})"
    )
    print(f"  bare deque + running sum (1 feature)   {bare:>14,.0f} updates/s")
    print(f"  same, per symbol, evicted by time      {bare_time:>14,.0f} updates/s")
    print(
        f"  engine, no metrics                     {untimed:>14,.0f} feature updates/s  "
        f"({untimed / n_features:,.0f} bars/s, {untimed / bare:.2f}x bare, "
        f"{untimed / bare_time:.2f}x time-evicted bare)"
    )
    print(f"  engine + per-window duration histogram {timed:>14,.0f} feature updates/s")
    print(f"  engine + shipped rules, per bar        {scored:>14,.0f} bars/s")
    print(
        f"  median rounds: bare {statistics.median(bare_all):,.0f}, engine "
        f"{statistics.median(untimed_all):,.0f}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"features-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  -> {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
