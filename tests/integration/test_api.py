"""The Python API (``import market_data_pipeline as mdp``) on real embedded servers.

- research and live agree: :func:`mdp.run_offline` of a DataFrame of the shipped trades gives
  the bars of the pandas decimal reference, features that match TA-Lib, and exactly the bars and
  signals a :class:`mdp.Pipeline` makes of the same trades replayed from the dataset registry;
- quotes offline: the shipped EUR/USD quotes with trades of the same symbol between them give
  the quote bars of the pandas reference (trade windows with the carried book), one feature
  snapshot per window, spread features from the quote bars, and the wide-spread rule's signals;
- bad records are dead-lettered with their reason, good ones still make bars;
- a live run stops on request, and a second live process under the same consumer name is
  refused with nothing left open.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

import market_data_pipeline as mdp
from market_data_core.errors import ConfigError
from market_data_pipeline.inference.reference import signal_rows
from tests.support.quotes import (
    assert_quote_bars_equal_reference,
    quote_events,
    reference_quote_bars,
)
from tests.support.signals_reference import assert_features_match_talib
from tests.support.trades import DATA, SYMBOL, TRADES_CSV, assert_bars_equal_reference

PROVIDER = "binance-futures"


def shipped_trades() -> pd.DataFrame:
    """The shipped BTCUSDT trades as a researcher would load them: ``ts``, ``price``,
    ``size``, ``seq`` (the exchange's trade id, as the dataset registry maps it)."""
    raw = pd.read_csv(TRADES_CSV)
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(raw["timestamp"], unit="us", utc=True),
            "price": raw["price"],
            "size": raw["amount"],
            "seq": raw["id"],
            "trade_id": raw["id"].astype(str),
            "side": raw["side"],
        }
    )


def shipped_quotes() -> pd.DataFrame:
    """The shipped EUR/USD quotes as a researcher would load them (the file: no header,
    ``YYYYMMDD HHMMSSmmm,bid,ask,0``); ``seq`` is the line number, as the registry's replay
    numbers them."""
    raw = pd.read_csv(
        DATA / "eurusd-quotes-2020-01-01.csv", header=None, names=["time", "bid", "ask", "x"]
    )
    return pd.DataFrame(
        {
            "ts": pd.to_datetime(raw["time"], format="%Y%m%d %H%M%S%f", utc=True),
            "bid": raw["bid"],
            "ask": raw["ask"],
            "seq": raw.index + 1,
        }
    )


def test_the_package_exports_what_it_lists() -> None:
    for name in mdp.__all__:
        assert getattr(mdp, name) is not None, name
    with pytest.raises(AttributeError):
        _ = mdp.no_such_name  # type: ignore[attr-defined]


async def test_offline_bars_features_and_signals_are_the_live_ones() -> None:
    config = mdp.default_config()
    research = await mdp.run_offline_async(
        shipped_trades(), config=config, provider=PROVIDER, symbol=SYMBOL
    )
    assert research.summary.microbatch.events_in == 9_999
    assert research.dead_letters == []
    # bars: computed by the store in SQL, equal to the exact pandas/Decimal resample
    assert_bars_equal_reference(research.bars, config.micro_batch.window_ms)
    # features: one snapshot per bar, the recursive indicators equal to TA-Lib's
    assert len(research.features) == len(research.bars)
    assert [f.ts for f in research.features] == [b.ts for b in research.bars]
    assert assert_features_match_talib(config, research.features, research.bars) >= 1
    assert len(research.signals) > 10

    # live: the same trades replayed from the registry by a Pipeline, on servers of its own
    async with mdp.Pipeline(
        config, sources=[mdp.Dataset("binance_btcusdt_trades")], consumer="live-test"
    ) as live:
        summary = await live.run()
        assert live.status == "success"
        assert summary.microbatch.events_in == 9_999
        live_bars = await live.bars(PROVIDER, SYMBOL)
        live_signals = await live.signals()
    assert [(b.key, b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count) for b in live_bars] == [
        (b.key, b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count) for b in research.bars
    ]
    assert signal_rows(live_signals) == signal_rows(research.signals)

    frames = research.frames()
    assert list(frames["bars"]["close"]) == [b.c for b in research.bars]
    assert len(frames["signals"]) == len(research.signals)
    assert research.startup_s > 0


async def test_offline_quotes_give_the_reference_quote_bars_and_spread_signals() -> None:
    """Quotes and trades of one symbol, given as two DataFrames: both are stored (none is late
    behind the other), every quote bar equals the pandas reference (the book carried into
    trade windows without a quote), the features are one snapshot per window with the
    window's time-weighted spread, and the shipped wide_spread rule fires."""
    config = mdp.default_config()
    window_ms = config.micro_batch.window_ms
    quotes = shipped_quotes()
    events = quote_events("fx")
    assert [e.src_ts for e in events] == list(quotes["ts"].dt.to_pydatetime())
    # a trade every 7.3 s of the quotes' six hours, at the then mid
    times = pd.date_range(quotes["ts"].iloc[0], quotes["ts"].iloc[-1], freq="7300ms")
    mids = pd.merge_asof(pd.DataFrame({"ts": times}), quotes, on="ts")
    trades = pd.DataFrame(
        {"ts": times, "price": ((mids["bid"] + mids["ask"]) / 2).round(6), "size": 1.0}
    )
    result = await mdp.run_offline_async(
        trades, quotes=quotes, config=config, provider="fx", symbol="EUR/USD"
    )
    mb = result.summary.microbatch
    assert result.dead_letters == []
    assert (mb.ticks_inserted, mb.quotes_inserted) == (len(trades), len(quotes))
    reference = reference_quote_bars(
        events, window_ms, config.micro_batch.quote_carry_ms, list(times.to_pydatetime())
    )
    assert_quote_bars_equal_reference(result.quote_bars, reference)
    assert sum(q.quote_count for q in result.quote_bars) == len(quotes)
    # trade bars carry their window's quote bar (the carried book where it has no quote)
    by_ts = {q.ts: q for q in result.quote_bars}
    assert len(result.bars) == len(set(times.floor(f"{window_ms}ms")))
    assert all(b.quote == by_ts.get(b.ts) for b in result.bars)
    assert sum(b.quote is not None and b.quote.quote_count == 0 for b in result.bars) > 100
    # one snapshot per window (trade bars and quote bars alone), in event time
    windows = sorted({b.ts for b in result.bars} | set(by_ts))
    assert [f.ts for f in result.features] == windows
    with_book = [f for f in result.features if f.ts in by_ts]
    assert all(f.values["spread_bps"] == by_ts[f.ts].spread_bps for f in with_book)
    wide = [s for s in result.signals if s.name == "wide_spread"]
    assert wide and all(s.ts in by_ts for s in wide)
    frames = result.frames()
    assert list(frames["quote_bars"]["spread_bps"]) == [q.spread_bps for q in result.quote_bars]


async def test_bad_records_are_dead_lettered_with_a_reason() -> None:
    t0 = datetime(2024, 1, 2, 9, 30, tzinfo=UTC)
    rows = [
        {"ts": t0, "price": 100.0, "size": 1.0},
        {"ts": t0 + timedelta(seconds=1), "price": -5.0, "size": 1.0},  # not a price
        {"ts": "not a time", "price": 101.0, "size": 1.0},
        {"ts": t0 + timedelta(seconds=2), "price": 101.0, "size": 2.0, "venue": "X"},
        {"ts": (t0 + timedelta(seconds=3)).isoformat(), "price": 102.0, "size": 3.0},
    ]
    result = await mdp.run_offline_async(rows, symbol="ACME")
    reasons = sorted((d.reason, d.detail.split(":")[0]) for d in result.dead_letters)
    assert reasons == [("parse", "row 2"), ("parse", "row 3"), ("validation", "row 1")]
    assert all(d.component == "replay" for d in result.dead_letters)
    assert "unknown column 'venue'" in next(
        d.detail for d in result.dead_letters if "row 3" in d.detail
    )
    assert result.summary.producer_dead_letters == {"parse": 2, "validation": 1}
    # the two good trades: one 2 s bar [09:30:00, 09:30:02), one [09:30:02, 09:30:04)
    assert [(b.ts, b.o, b.c, b.v, b.trade_count) for b in result.bars] == [
        (t0, 100.0, 100.0, 1.0, 1),
        (t0 + timedelta(seconds=2), 102.0, 102.0, 3.0, 1),
    ]


async def test_nothing_to_compute_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nothing to compute"):
        await mdp.run_offline_async()


async def test_a_live_run_stops_and_one_consumer_name_is_one_process() -> None:
    config = mdp.default_config({"micro_batch.window_ms": 500})
    async with mdp.Pipeline(
        config, sources=[mdp.Synthetic(rate_per_s=500)], consumer="api-live"
    ) as pipe:
        same_servers = {
            "REDIS_URI": pipe.urls.redis_url or "",
            "DATABASE_URL": pipe.urls.database_url or "",
        }
        second = mdp.Pipeline(config, consumer="api-live", env=same_servers)
        with pytest.raises(ConfigError, match="api-live"):
            async with second:
                pass
        assert second._clients is None  # nothing opened, nothing left

        seen: list[mdp.Progress] = []
        run = asyncio.create_task(
            pipe.run(until="stopped", on_progress=seen.append, progress_every_s=0.2)
        )
        while not seen or seen[-1].bars_written == 0:
            await asyncio.sleep(0.1)
        pipe.stop()
        summary = await asyncio.wait_for(run, 60)
    assert pipe.status == "stopped"
    assert summary.published > 0 and summary.microbatch.bars_written > 0
