"""Quote features (issue 15): ``spread_bps`` and ``imbalance`` from raw quotes (the last quote
of an instant is the book: pandas ``drop_duplicates(keep="last")``) and from quote bars (one
time-weighted sample per window: pandas ``rolling``), restart-exact through an exported state.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import msgpack
import numpy as np
import pandas as pd
import pytest

from market_data_core.config import FeatureWindowConfig
from market_data_core.contracts import Bar, QuoteBar, WindowBar
from market_data_pipeline.features import FeatureEngine
from tests.support.quotes import quote_events, reference_quote_bars

T0 = datetime(2024, 1, 2, 15, tzinfo=UTC)


def _engine(*windows: FeatureWindowConfig) -> FeatureEngine:
    return FeatureEngine(list(windows), timed=False)


def test_two_quotes_at_one_instant_the_second_is_the_book() -> None:
    """The issue's smallest case: spreads 9.995 and 29.955 bps at one timestamp. The engine
    kept the first and dropped the second (whose timestamp was "not later"); the state after
    the instant is the second quote's."""
    windows = [
        FeatureWindowConfig(name="spread_1m", feature="spread_bps", horizon="60s"),
        FeatureWindowConfig(name="spread_last", feature="spread_bps", periods=1),
        FeatureWindowConfig(name="imbalance", periods=1),
    ]
    engine = _engine(*windows)
    first = engine.update_quote("p", "S", T0, bid=100.0, ask=100.1, bid_size=3.0, ask_size=1.0)
    assert first is not None
    assert first.values["spread_last"] == pytest.approx(9.995, abs=5e-4)
    second = engine.update_quote("p", "S", T0, bid=100.0, ask=100.3, bid_size=1.0, ask_size=3.0)
    assert second is not None
    spread = (100.3 - 100.0) / ((100.3 + 100.0) / 2.0) * 1e4
    assert spread == pytest.approx(29.955, abs=5e-4)
    assert second.values["spread_last"] == spread
    assert second.values["spread_1m"] == spread  # one instant: one sample, the second quote
    assert second.values["imbalance"] == -0.5
    # the values of an engine that only ever saw the second quote
    alone = _engine(*windows)
    only = alone.update_quote("p", "S", T0, bid=100.0, ask=100.3, bid_size=1.0, ask_size=3.0)
    assert only is not None and repr(dict(only.values)) == repr(dict(second.values))
    # an older quote still changes nothing
    assert engine.update_quote("p", "S", T0 - timedelta(seconds=1), bid=1.0, ask=2.0) is None


def test_a_replaced_quote_gives_back_what_it_evicted() -> None:
    """A full ``periods`` window: the first quote of an instant evicts the oldest sample; the
    second quote of that instant (no sizes: no imbalance) replaces it, so the evicted sample
    is back, as if the first quote had never been."""
    imb = FeatureWindowConfig(name="imb_2", feature="imbalance", periods=2)
    engine, clean = _engine(imb), _engine(imb)
    for k, (b, a) in enumerate([(1.0, 3.0), (2.0, 2.0)]):
        for e in (engine, clean):
            e.update_quote(
                "p", "S", T0 + timedelta(seconds=k), bid=1, ask=2, bid_size=b, ask_size=a
            )
    t = T0 + timedelta(seconds=5)
    evicting = engine.update_quote("p", "S", t, bid=1, ask=2, bid_size=4.0, ask_size=0.0)
    assert evicting is not None and evicting.values["imb_2"] == 0.5  # mean(0, 1)
    after = engine.update_quote("p", "S", t, bid=1, ask=2)
    again = clean.update_quote("p", "S", t, bid=1, ask=2)
    assert after is not None and again is not None
    assert after.values["imb_2"] == again.values["imb_2"] == -0.25  # mean(-0.5, 0)


def test_raw_quotes_sharing_timestamps_equal_pandas_last_per_instant() -> None:
    """The real EUR/USD quotes with timestamps floored to 100 ms (300+ instants with several
    quotes) and sizes: after the last quote of each instant, the 60 s mean spread and the
    20-instant mean imbalance equal pandas over the last quote per instant."""
    events = quote_events("fx", sizes=True, floor_ms=100)
    engine = _engine(
        FeatureWindowConfig(name="spread_bps", horizon="60s"),
        FeatureWindowConfig(name="imbalance", periods=20),
    )
    after: dict[datetime, dict[str, float]] = {}
    for e in events:
        assert e.bid is not None and e.ask is not None
        snap = engine.update_quote(
            e.provider, e.symbol, e.src_ts, bid=e.bid, ask=e.ask,
            bid_size=e.bid_size, ask_size=e.ask_size,
        )  # fmt: skip
        assert snap is not None
        after[e.src_ts] = dict(snap.values)
    df = pd.DataFrame(
        {
            "ts": [e.src_ts for e in events],
            "seq": [e.seq for e in events],
            "bid": [e.bid for e in events],
            "ask": [e.ask for e in events],
            "bs": [e.bid_size for e in events],
            "az": [e.ask_size for e in events],
        }
    ).sort_values(["ts", "seq"])
    assert df.ts.duplicated().sum() > 250
    last = df.drop_duplicates("ts", keep="last").set_index("ts")
    spread = ((last.ask - last.bid) / ((last.ask + last.bid) / 2) * 1e4).rolling("60s").mean()
    total = last.bs + last.az
    imb = ((last.bs - last.az) / total).where(total > 0).dropna().rolling(20).mean()
    ours_spread = np.array([after[t]["spread_bps"] for t in spread.index])
    np.testing.assert_allclose(ours_spread, spread.to_numpy(), rtol=1e-12, atol=0)
    ours_imb = np.array([after[t]["imbalance"] for t in imb.index])
    np.testing.assert_array_equal(np.isnan(ours_imb), np.isnan(imb.to_numpy()))
    ok = ~np.isnan(ours_imb)
    np.testing.assert_allclose(ours_imb[ok], imb.to_numpy()[ok], rtol=1e-12, atol=1e-15)


def _quote_bars(window_ms: int) -> list[QuoteBar]:
    events = quote_events("fx", sizes=True)
    ref = reference_quote_bars(events, window_ms, 60_000)
    return [
        QuoteBar("fx", "EUR/USD", f"{window_ms}ms", ts.to_pydatetime(), **values)  # type: ignore[arg-type]
        for ts, values in ref.items()
    ]


@pytest.mark.parametrize("window_ms", [1000, 5000])
def test_quote_bars_feed_window_means_equal_to_pandas_rolling(window_ms: int) -> None:
    """One sample per window, its time-weighted spread/imbalance: a 5-minute spread mean and a
    10-window imbalance mean equal pandas' rolling means of those series."""
    qbars = _quote_bars(window_ms)
    engine = _engine(
        FeatureWindowConfig(name="spread_5m", feature="spread_bps", horizon="300s"),
        FeatureWindowConfig(name="spread_bps", periods=1),
        FeatureWindowConfig(name="imb_10", feature="imbalance", periods=10),
    )
    rows = []
    for qb in qbars:
        snap = engine.update_bar(qb)
        assert snap is not None
        rows.append(dict(snap.values))
        assert math.isnan(snap.values["close"])  # no trade yet: bar features stay empty
    ours = pd.DataFrame(rows, index=pd.DatetimeIndex([q.ts for q in qbars]))
    series = pd.Series([q.spread_bps for q in qbars], index=ours.index)
    np.testing.assert_allclose(ours["spread_5m"], series.rolling("300s").mean(), rtol=1e-12, atol=0)
    assert (ours["spread_bps"] == series).all()
    imb = pd.Series([q.imbalance for q in qbars], index=ours.index, dtype=float)
    assert imb.notna().all()
    np.testing.assert_allclose(ours["imb_10"], imb.rolling(10).mean(), rtol=1e-12, atol=1e-15)


def test_trade_windows_carry_their_quote_bar_and_horizons_evict_by_window_time() -> None:
    engine = _engine(
        FeatureWindowConfig(name="spread_2s", feature="spread_bps", horizon="2s"),
        FeatureWindowConfig(name="sma_2", periods=2),
    )
    q = QuoteBar("p", "S", "1s", T0, 10.0, 10.02, 1.0, 1.0, 10.01, 3, 20.0, 19.0, 21.0, 20.0,
                 0.0, 0.0)  # fmt: skip
    bar = Bar("p", "S", "1s", T0 + timedelta(seconds=1), 10, 11, 9, 10.5, 2.0, quote=replace(
        q, ts=T0 + timedelta(seconds=1), spread_bps=10.0))  # fmt: skip
    s0 = engine.update_bar(q)
    s1 = engine.update_bar(bar)
    assert s0 is not None and s1 is not None
    assert (s0.values["spread_2s"], s1.values["spread_2s"]) == (20.0, 15.0)
    assert s1.values["close"] == 10.5 and s1.price == 10.5
    # a trade window without a book: no sample, but the 2 s horizon moves on (the 20 bps
    # window at T0 leaves it)
    bare = Bar("p", "S", "1s", T0 + timedelta(seconds=2), 10, 11, 9, 10.0, 2.0)
    s2 = engine.update_bar(bare)
    assert s2 is not None and s2.values["spread_2s"] == 10.0 and s2.values["sma_2"] == 10.25
    s4 = engine.update_bar(replace(bare, ts=T0 + timedelta(seconds=4)))
    assert s4 is not None and math.isnan(s4.values["spread_2s"])


@pytest.mark.parametrize("cut", [1, 7, 100, 1501])
def test_restart_from_an_exported_state_is_exact_with_quotes(cut: int) -> None:
    """Raw quotes (shared instants: a cut may fall between two quotes of one instant) and
    quote bars with trade bars: an engine restored from a msgpack round trip of the state
    continues bit for bit."""
    windows = [
        FeatureWindowConfig(name="spread_bps", horizon="60s"),
        FeatureWindowConfig(name="imb_5", feature="imbalance", periods=5),
        FeatureWindowConfig(name="sma_3", periods=3),
    ]
    events = quote_events("fx", sizes=True, floor_ms=250)[:3000]
    full, first = _engine(*windows), _engine(*windows)

    def feed(engine: FeatureEngine, e: object) -> dict[str, float] | None:
        assert hasattr(e, "bid")
        snap = engine.update_quote(
            "fx", "EUR/USD", e.src_ts, bid=e.bid, ask=e.ask,  # type: ignore[attr-defined]
            bid_size=e.bid_size, ask_size=e.ask_size,  # type: ignore[attr-defined]
        )  # fmt: skip
        return None if snap is None else dict(snap.values)

    for e in events[:cut]:
        feed(full, e)
        feed(first, e)
    state = msgpack.unpackb(msgpack.packb(first.export_state("fx", "EUR/USD")))
    restored = _engine(*windows)
    restored.import_state("fx", "EUR/USD", state)
    for e in events[cut:]:
        assert repr(feed(full, e)) == repr(feed(restored, e))
    # windows: quote bars and trade bars with their quote bars
    windows_seq: list[WindowBar] = []
    for qb in _quote_bars(1000)[:400]:
        later = replace(qb, ts=qb.ts + timedelta(days=1))
        if later.quote_count % 2:
            windows_seq.append(later)
        else:
            b, a, m = later.bid, later.ask, later.mid
            windows_seq.append(Bar("fx", "EUR/USD", "1s", later.ts, b, a, b, m, 1.0, quote=later))
    k = min(cut, len(windows_seq) - 1)
    for w in windows_seq[:k]:
        full.update_bar(w)
        restored.update_bar(w)
    state = msgpack.unpackb(msgpack.packb(restored.export_state("fx", "EUR/USD")))
    again = _engine(*windows)
    again.import_state("fx", "EUR/USD", state)
    for w in windows_seq[k:]:
        a, b = full.update_bar(w), again.update_bar(w)
        assert a is not None and b is not None
        assert repr(dict(a.values)) == repr(dict(b.values))
