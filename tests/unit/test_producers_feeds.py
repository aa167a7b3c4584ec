"""Live-feed mapping without a network: Coinbase messages and IBKR tick-by-tick records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest

from market_data_core.config import CoinbaseProducerConfig, IbkrProducerConfig
from market_data_core.errors import ConfigError
from market_data_pipeline import telemetry
from market_data_pipeline.cli.app import main
from market_data_pipeline.producers import ibkr
from market_data_pipeline.producers.coinbase import CoinbaseProvider
from market_data_pipeline.producers.ibkr import INSTALL_HINT, IbkrProvider, TickMapper


def match(trade_id: int, side: str = "buy", time: str = "2026-01-02T14:30:00.123456Z") -> str:
    return json.dumps(
        {
            "type": "match",
            "trade_id": trade_id,
            "sequence": 1000 + trade_id,
            "maker_order_id": "m",
            "taker_order_id": "t",
            "time": time,
            "product_id": "BTC-USD",
            "size": "0.01",
            "price": "43000.50",
            "side": side,
        }
    )


def gap_count() -> float:
    return telemetry.ERRORS.labels(component="coinbase", reason="sequence_gap")._value.get()


def test_match_becomes_a_trade_tick_with_the_taker_side() -> None:
    cb = CoinbaseProvider(CoinbaseProducerConfig(product_ids=["BTC-USD"]))
    [ev] = cb.handle(match(10, side="buy"))
    assert (ev.provider, ev.symbol, ev.kind, ev.c, ev.v) == (
        "coinbase",
        "BTC-USD",
        "tick",
        43000.5,
        0.01,
    )
    assert (ev.seq, ev.trade_id, ev.side) == (10, "10", "sell")  # maker bought: taker sold
    assert ev.src_ts == datetime(2026, 1, 2, 14, 30, 0, 123456, tzinfo=UTC)


def test_ticker_becomes_a_quote() -> None:
    cb = CoinbaseProvider(CoinbaseProducerConfig())
    msg = {
        "type": "ticker",
        "sequence": 77,
        "product_id": "ETH-USD",
        "price": "2500.1",
        "best_bid": "2500.00",
        "best_bid_size": "1.5",
        "best_ask": "2500.20",
        "best_ask_size": "0.7",
        "time": "2026-01-02T14:30:00.000001Z",
    }
    [q] = cb.handle(json.dumps(msg))
    assert (q.kind, q.bid, q.ask, q.bid_size, q.ask_size, q.seq) == (
        "quote",
        2500.0,
        2500.2,
        1.5,
        0.7,
        77,
    )
    assert cb.handle(json.dumps(msg)) == []  # same sequence again: a duplicate
    assert cb.duplicates == 1


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def provider(grace_s: float = 2.0, window: int = 10_000) -> tuple[CoinbaseProvider, Clock]:
    clock = Clock()
    cb = CoinbaseProvider(
        CoinbaseProducerConfig(), gap_grace_s=grace_s, dedupe_window=window, clock=clock
    )
    return cb, clock


def test_trade_ids_out_of_order_are_all_emitted_without_a_gap() -> None:
    """issue 16: 660, 663, 662, 661, 664 emitted 660, 663, 664 only, and counted 661 and 662
    as duplicates AND as two missed trades."""
    cb, clock = provider()
    before = gap_count()
    emitted = []
    for trade_id in (660, 663, 662, 661, 664):
        emitted += [e.seq for e in cb.handle(match(trade_id))]
        clock.now += 0.1
    clock.now += 10  # long after the grace period: nothing is pending
    cb.handle(json.dumps({"type": "heartbeat", "product_id": "BTC-USD", "last_trade_id": 664}))
    assert emitted == [660, 663, 662, 661, 664]
    assert (cb.gaps, cb.missed_trades, cb.duplicates, cb.late_trades) == (0, 0, 0, 0)
    assert gap_count() - before == 0


def test_a_real_repeat_is_still_dropped() -> None:
    cb, _clock = provider()
    assert len(cb.handle(match(660))) == 1
    assert len(cb.handle(match(663))) == 1
    assert len(cb.handle(match(662))) == 1
    assert cb.handle(match(662)) == []  # delivered twice
    last_match = json.loads(match(663))
    last_match["type"] = "last_match"  # replayed by the feed after a reconnect
    assert cb.handle(json.dumps(last_match)) == []
    assert cb.duplicates == 2


def test_a_gap_counts_once_after_the_grace_period() -> None:
    cb, clock = provider(grace_s=2.0)
    before = gap_count()
    for trade_id in (1, 2, 5):
        assert len(cb.handle(match(trade_id))) == 1
    clock.now = 1.9
    cb.handle(match(6))
    assert (cb.gaps, cb.missed_trades) == (0, 0)  # 3 and 4 may still come
    clock.now = 2.1
    cb.handle(match(7))
    assert (cb.gaps, cb.missed_trades) == (1, 2)
    assert gap_count() - before == 1
    # one of them turns up after all: it is a real trade, emitted, and counted as late
    assert [e.seq for e in cb.handle(match(4))] == [4]
    assert (cb.gaps, cb.missed_trades, cb.late_trades) == (1, 2, 1)
    assert cb.handle(match(4)) == [] and cb.duplicates == 1


def test_heartbeat_reveals_trades_that_never_came() -> None:
    cb, clock = provider(grace_s=1.0)
    before = gap_count()
    assert len(cb.handle(match(1))) == 1
    assert len(cb.handle(match(2))) == 1
    heartbeat = {"type": "heartbeat", "product_id": "BTC-USD", "last_trade_id": 9, "sequence": 1}
    cb.handle(json.dumps(heartbeat))  # 3..9 happened; they may still be on their way
    assert [e.seq for e in cb.handle(match(4))] == [4]
    clock.now = 5.0
    cb.handle(json.dumps(heartbeat))
    assert (cb.gaps, cb.missed_trades) == (1, 6)  # 3, 5, 6, 7, 8, 9
    assert len(cb.handle(match(10))) == 1  # contiguous after the heartbeat: no new gap
    clock.now = 10.0
    cb.handle(json.dumps({**heartbeat, "last_trade_id": 10}))
    assert cb.gaps == 1
    assert gap_count() - before == 1


def test_ids_older_than_the_window_are_emitted_and_memory_stays_bounded() -> None:
    cb, _clock = provider(window=100)
    for trade_id in range(1, 1001):
        assert len(cb.handle(match(trade_id))) == 1
    assert len(cb._trades["BTC-USD"].seen.ids) <= 200
    assert cb.handle(match(990)) == []  # within the window: a repeat
    # far older than the window: it cannot be told from a repeat; the store keeps one copy
    assert [e.seq for e in cb.handle(match(5))] == [5]


def test_tickers_out_of_sequence_are_quotes_at_their_own_time() -> None:
    cb, _ = provider()

    def ticker(sequence: int) -> str:
        return json.dumps(
            {
                "type": "ticker",
                "sequence": sequence,
                "product_id": "BTC-USD",
                "best_bid": "43000.00",
                "best_ask": "43000.20",
                "time": f"2026-01-02T14:30:0{sequence % 10}.000000Z",
            }
        )

    got = [q.seq for s in (50100, 50108, 50104, 50108, 50112) for q in cb.handle(ticker(s))]
    assert got == [
        50100,
        50108,
        50104,
        50112,
    ]  # the older 50104 is a real quote; 50108 twice is not
    assert cb.duplicates == 1 and cb.gaps == 0


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        json.dumps({"type": "match", "product_id": "BTC-USD"}),
        match(1).replace('"43000.50"', '"-5"'),
        match(1).replace("2026-01-02T14:30:00.123456Z", "yesterday"),
    ],
)
def test_bad_messages_are_counted_and_skipped(raw: str) -> None:
    cb = CoinbaseProvider(CoinbaseProducerConfig())
    assert cb.handle(raw) == []
    assert cb.bad_messages == 1


def test_subscribe_message_includes_heartbeat() -> None:
    cb = CoinbaseProvider(CoinbaseProducerConfig(product_ids=["BTC-USD"], channels=["matches"]))
    assert cb.subscribe_message() == {
        "type": "subscribe",
        "product_ids": ["BTC-USD"],
        "channels": ["matches", "heartbeat"],
    }


class TickByTickAllLast(NamedTuple):  # the shape of ib_async.objects.TickByTickAllLast
    tickType: int
    time: datetime
    price: float
    size: float
    tickAttribLast: Any
    exchange: str
    specialConditions: str


class TickByTickBidAsk(NamedTuple):  # the shape of ib_async.objects.TickByTickBidAsk
    time: datetime
    bidPrice: float
    askPrice: float
    bidSize: float
    askSize: float
    tickAttribBidAsk: Any


def test_ibkr_records_map_to_ticks_and_quotes() -> None:
    t = datetime(2026, 1, 2, 14, 30, 1, tzinfo=UTC)
    records = [
        TickByTickAllLast(2, t, 580.25, 100.0, None, "ARCA", ""),
        TickByTickAllLast(2, t, 580.26, 50.0, None, "NSDQ", ""),
        TickByTickBidAsk(t, 580.24, 580.27, 300.0, 200.0, None),
        TickByTickBidAsk(t, 580.30, 580.27, 300.0, 200.0, None),  # crossed: skipped
        TickByTickAllLast(2, t.replace(tzinfo=None), 580.3, 10.0, None, "ARCA", ""),
    ]
    evs = TickMapper("ibkr_primary").map_many("SPY", records)
    assert [(e.kind, e.seq) for e in evs] == [("tick", 0), ("tick", 2), ("quote", 1), ("tick", 4)]
    assert len({e.event_id for e in evs}) == 4
    assert (evs[0].c, evs[0].v, evs[2].bid, evs[2].ask, evs[2].bid_size) == (
        580.25,
        100.0,
        580.24,
        580.27,
        300.0,
    )
    assert evs[3].src_ts == t  # naive IB time is UTC


def test_ibkr_without_the_extra_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_import = ibkr.importlib.import_module

    def no_ib_async(name: str, *args: Any) -> Any:
        if name == "ib_async":
            raise ImportError("No module named 'ib_async'")
        return real_import(name, *args)

    monkeypatch.setattr(ibkr.importlib, "import_module", no_ib_async)
    with pytest.raises(ConfigError, match=r"pip install 'mdp-streaming\[ibkr\]'"):
        IbkrProvider(IbkrProducerConfig())
    assert main(["stream", "produce", "--provider", "ibkr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert INSTALL_HINT in err[0]
