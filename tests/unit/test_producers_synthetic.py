"""Synthetic GBM producer: determinism, shapes of ticks/quotes/bars, pacing."""

from __future__ import annotations

import itertools
import time
from datetime import timedelta

import pytest

from market_data_core.codec import decode_events, encode_event
from market_data_core.config import SyntheticProducerConfig
from market_data_pipeline.producers.synthetic import SEEDED_START, SyntheticProvider

CFG = SyntheticProducerConfig(symbols=["SPY", "AAPL", "MSFT"], tick_rate=2.0, price_volatility=0.3)


@pytest.mark.parametrize("kind", ["tick", "quote", "bar"])
def test_same_seed_same_events(kind: str) -> None:
    a = list(SyntheticProvider(CFG, seed=42, kind=kind, count=300).generate())  # type: ignore[arg-type]
    b = list(SyntheticProvider(CFG, seed=42, kind=kind, count=300).generate())  # type: ignore[arg-type]
    assert a == b
    assert [encode_event(e) for e in a] == [encode_event(e) for e in b]
    c = list(SyntheticProvider(CFG, seed=43, kind=kind, count=300).generate())  # type: ignore[arg-type]
    assert [e.event_id for e in a] == [e.event_id for e in c]  # same clock, same ids
    assert a != c  # different prices


def test_ticks_round_robin_with_event_time_from_rate() -> None:
    evs = list(SyntheticProvider(CFG, seed=1, rate_per_s=1000, count=9).generate())
    assert [e.symbol for e in evs] == ["SPY", "AAPL", "MSFT"] * 3
    assert evs[0].src_ts == SEEDED_START
    assert evs[5].src_ts - evs[0].src_ts == timedelta(milliseconds=5)
    assert [e.seq for e in evs if e.symbol == "SPY"] == [0, 1, 2]
    assert all(e.kind == "tick" and e.c and e.v and e.side in ("buy", "sell") for e in evs)
    assert all(e.ingest_ts is None for e in evs)
    assert len({e.event_id for e in evs}) == 9


def test_quotes_are_never_crossed() -> None:
    evs = list(SyntheticProvider(CFG, seed=5, kind="quote", count=3000).generate())
    assert all(e.bid is not None and e.ask is not None and e.bid < e.ask for e in evs)


def test_bars_are_one_second_and_consistent() -> None:
    evs = list(SyntheticProvider(CFG, seed=9, kind="bar", count=30).generate())
    spy = [e for e in evs if e.symbol == "SPY"]
    assert len(spy) == 10
    assert all(e.interval == "1s" and e.src_ts.microsecond == 0 for e in evs)
    assert [(b.src_ts - spy[0].src_ts).total_seconds() for b in spy] == list(range(10))
    for prev, cur in itertools.pairwise(spy):
        assert cur.o == prev.c  # GBM path continues across bars
    for e in evs:
        assert e.l <= min(e.o, e.c) <= max(e.o, e.c) <= e.h  # type: ignore[operator]


def test_prices_follow_the_volatility() -> None:
    flat = SyntheticProducerConfig(symbols=["X"], price_volatility=0.0, start_price=50.0)
    evs = list(SyntheticProvider(flat, seed=1, count=100).generate())
    assert {e.c for e in evs} == {50.0}
    wild = SyntheticProducerConfig(symbols=["X"], price_volatility=5.0, tick_rate=0.01)
    prices = {e.c for e in SyntheticProvider(wild, seed=1, count=100).generate()}
    assert len(prices) > 50


def test_unseeded_uses_wall_clock_and_stamps_ingest() -> None:
    ev = next(SyntheticProvider(CFG, count=1).generate())
    assert ev.ingest_ts is not None
    assert abs((ev.ingest_ts - ev.src_ts).total_seconds()) < 5


def test_events_round_trip_the_codec() -> None:
    for kind in ("tick", "quote", "bar"):
        for ev in SyntheticProvider(CFG, seed=2, kind=kind, count=20).generate():  # type: ignore[arg-type]
            assert decode_events(encode_event(ev)).events == [ev]


async def test_events_are_paced_at_the_requested_rate() -> None:
    provider = SyntheticProvider(CFG, seed=3, rate_per_s=2000, count=1000)
    started = time.monotonic()
    got = [e async for e in provider.events()]
    elapsed = time.monotonic() - started
    assert len(got) == 1000
    assert 0.4 <= elapsed < 1.5  # 1000 events at 2000/s


async def test_aclose_ends_the_stream() -> None:
    provider = SyntheticProvider(CFG, seed=3, rate_per_s=100_000)
    n = 0
    async for _ in provider.events():
        n += 1
        if n == 10:
            await provider.aclose()
    assert 10 <= n < 1000


def test_rejects_empty_symbols() -> None:
    with pytest.raises(ValueError, match="symbols"):
        SyntheticProvider(SyntheticProducerConfig(symbols=[]))


@pytest.mark.parametrize("kind", ["tick", "quote", "bar"])
def test_events_built_without_validation_pass_validation(kind: str) -> None:
    """The generator skips per-event validation (StreamEvent.trusted); what it makes must be
    exactly what validation would have accepted."""
    from market_data_core.config import SyntheticProducerConfig
    from market_data_core.contracts import StreamEvent
    from market_data_pipeline.producers.synthetic import SyntheticProvider

    cfg = SyntheticProducerConfig(symbols=["SPY", "BRK.B", "EUR/USD"], price_volatility=0.5)
    gen = SyntheticProvider(cfg, seed=3, kind=kind, rate_per_s=1000.0, count=3000).generate()  # type: ignore[arg-type]
    for ev in gen:
        assert StreamEvent.model_validate(ev.model_dump()) == ev


def test_bad_symbol_in_config_is_refused_up_front() -> None:
    from market_data_core.config import SyntheticProducerConfig
    from market_data_pipeline.producers.synthetic import SyntheticProvider

    with pytest.raises(ValueError, match="malformed symbol"):
        SyntheticProvider(SyntheticProducerConfig(symbols=["SP|Y"]), seed=1)
