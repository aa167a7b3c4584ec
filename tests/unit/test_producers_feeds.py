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


def test_trade_id_gaps_and_duplicates() -> None:
    cb = CoinbaseProvider(CoinbaseProducerConfig())
    before = gap_count()
    assert len(cb.handle(match(1))) == 1
    assert len(cb.handle(match(2))) == 1
    assert len(cb.handle(match(5))) == 1  # 3 and 4 missed
    assert cb.handle(match(5)) == []  # replayed last_match
    assert (cb.gaps, cb.missed_trades, cb.duplicates) == (1, 2, 1)
    heartbeat = {"type": "heartbeat", "product_id": "BTC-USD", "last_trade_id": 9, "sequence": 1}
    cb.handle(json.dumps(heartbeat))  # 6..9 happened but never reached us
    assert (cb.gaps, cb.missed_trades) == (2, 6)
    assert len(cb.handle(match(10))) == 1  # contiguous after the heartbeat: no new gap
    assert cb.gaps == 2
    assert gap_count() - before == 2


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
    with pytest.raises(ConfigError, match=r"pip install 'mdp\[ibkr\]'"):
        IbkrProvider(IbkrProducerConfig())
    assert main(["stream", "produce", "--provider", "ibkr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert INSTALL_HINT in err[0]
