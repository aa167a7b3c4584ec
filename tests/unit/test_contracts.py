from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from market_data_core.codec import decode_events
from market_data_core.contracts import Signal, StreamEvent, make_event_id

SEED_EVENT = {
    "ver": 1,
    "provider": "ibkr_primary",
    "symbol": "SPY",
    "kind": "tick",
    "interval": "1s",
    "src_ts": "2025-10-24T14:02:01.234567Z",
    "ingest_ts": "2025-10-24T14:02:01.300000Z",
    "o": 425.1,
    "h": 425.2,
    "l": 425.0,
    "c": 425.15,
    "v": 1200,
    "seq": 183,
    "event_id": "ibkr_primary|SPY|2025-10-24T14:02:01.234567Z|183",
}


def tick(**over: Any) -> dict[str, Any]:
    d = dict(SEED_EVENT)
    d.update(over)
    if "event_id" not in over:
        d["event_id"] = f"{d['provider']}|{d['symbol']}|{d['src_ts']}|{d['seq']}"
    return d


def reason(data: dict[str, Any]) -> str:
    batch = decode_events(json.dumps(data).encode())
    assert not batch.events, "expected a rejection"
    assert len(batch.errors) == 1
    return batch.errors[0].detail


def test_seed_example_decodes_as_is() -> None:
    batch = decode_events(json.dumps(SEED_EVENT).encode())
    assert batch.errors == []
    ev = batch.events[0]
    assert ev.src_ts == datetime(2025, 10, 24, 14, 2, 1, 234567, tzinfo=UTC)
    assert ev.event_id == make_event_id("ibkr_primary", "SPY", ev.src_ts, 183)


def test_event_id_is_deterministic_and_normalised_to_utc() -> None:
    ts = datetime(2025, 10, 24, 16, 2, 1, 234567, tzinfo=timezone(timedelta(hours=2)))
    a = StreamEvent.create(provider="p", symbol="X", kind="tick", src_ts=ts, c=1.0, v=1.0, seq=7)
    b = StreamEvent.create(provider="p", symbol="X", kind="tick", src_ts=ts, c=1.0, v=1.0, seq=7)
    assert a.event_id == b.event_id == "p|X|2025-10-24T14:02:01.234567Z|7"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"c": float("nan")}, "c is not finite (nan)"),
        ({"c": float("inf"), "h": float("inf")}, "is not finite (inf)"),
        ({"c": -1.0, "o": None, "h": None, "l": None}, "c must be > 0, got -1.0"),
        ({"o": 0.0}, "o must be > 0, got 0.0"),
        ({"h": 425.12}, "h (425.12) < max(o, c) (425.15)"),
        ({"l": 425.12}, "l (425.12) > min(o, c) (425.1)"),
        ({"v": -5}, "v must be >= 0, got -5.0"),
        ({"ver": 2}, "unknown ver 2 (supported: 1)"),
        ({"symbol": "SP|Y"}, "malformed symbol 'SP|Y'"),
        ({"symbol": ""}, "malformed symbol ''"),
        ({"symbol": "SPY\n"}, "malformed symbol 'SPY\\n'"),
        ({"provider": "ibkr\n"}, "malformed provider 'ibkr\\n'"),
        ({"interval": "1s\n"}, "malformed interval '1s\\n'"),
        ({"interval": "\u0661s"}, "malformed interval"),
        ({"provider": "bad provider"}, "malformed provider 'bad provider'"),
        ({"interval": "two seconds"}, "malformed interval 'two seconds'"),
        ({"seq": -1}, "seq must be >= 0, got -1"),
        ({"kind": "candle"}, "kind: Input should be 'tick', 'bar' or 'quote'"),
        ({"c": None, "o": None, "h": None, "l": None}, "a tick needs its trade price in c"),
        ({"v": None}, "a tick needs its trade size in v"),
        ({"extra_field": 1}, "extra_field: Extra inputs are not permitted"),
    ],
)
def test_rejections_name_the_reason(override: dict[str, Any], expected: str) -> None:
    assert expected in reason(tick(**override))


def test_naive_timestamp_rejected() -> None:
    d = tick(src_ts="2025-10-24T14:02:01.234567")
    assert "src_ts is naive; timestamps must be timezone-aware UTC" in reason(d)


def test_naive_ingest_ts_rejected() -> None:
    assert "ingest_ts is naive" in reason(tick(ingest_ts="2025-10-24T14:02:01"))


def test_event_id_mismatch_rejected() -> None:
    d = tick(event_id="ibkr_primary|SPY|2025-10-24T14:02:01.234567Z|184")
    assert (
        "does not match its fields (expected 'ibkr_primary|SPY|2025-10-24T14:02:01.234567Z|183')"
        in reason(d)
    )


def test_crossed_quote_rejected() -> None:
    d = tick(kind="quote", bid=10.5, ask=10.4, o=None, h=None, l=None, c=None, v=None)
    assert "crossed quote: bid (10.5) > ask (10.4)" in reason(d)


def test_quote_needs_bid_and_ask() -> None:
    d = tick(kind="quote", bid=10.5, o=None, h=None, l=None, c=None, v=None)
    assert "a quote needs bid and ask" in reason(d)


def test_quote_negative_size_rejected() -> None:
    d = tick(kind="quote", bid=1.0, ask=1.1, bid_size=-2, o=None, h=None, l=None, c=None, v=None)
    assert "bid_size must be >= 0" in reason(d)


def test_bar_needs_ohlcv_and_interval() -> None:
    assert "a bar needs o, h, l and c; missing o" in reason(tick(kind="bar", o=None))
    assert "a bar needs its interval" in reason(tick(kind="bar", interval=None))


def test_h_below_l_rejected() -> None:
    d = tick(kind="bar", o=None, c=None, h=1.0, l=2.0)
    assert "h (1.0) < l (2.0)" in reason(d) or "needs" in reason(d)


def test_valid_quote_and_bar_accepted() -> None:
    q = StreamEvent.create(
        provider="fx",
        symbol="EUR/USD",
        kind="quote",
        src_ts=datetime(2020, 1, 1, tzinfo=UTC),
        bid=1.1212,
        ask=1.12172,
        seq=0,
    )
    assert q.price == pytest.approx((1.1212 + 1.12172) / 2)
    b = StreamEvent.create(
        provider="ftx",
        symbol="BTC-PERP",
        kind="bar",
        interval="1m",
        src_ts=datetime(2022, 1, 1, tzinfo=UTC),
        o=1.0,
        h=2.0,
        l=0.5,
        c=1.5,
        v=10.0,
        seq=0,
    )
    assert b.price == 1.5


def test_events_are_frozen() -> None:
    ev = decode_events(json.dumps(SEED_EVENT).encode()).events[0]
    with pytest.raises(ValidationError):
        ev.c = 1.0  # type: ignore[misc]


def test_signal_id_is_computed_and_checked() -> None:
    ts = datetime(2025, 10, 24, 14, 2, 2, tzinfo=UTC)
    s = Signal(
        provider="ibkr_primary",
        symbol="SPY",
        ts=ts,
        name="vwap_cross_up",
        value=1.0,
        score=0.82,
        meta={"window": "1m", "price": 425.15},
    )
    assert s.signal_id == "ibkr_primary|SPY|2025-10-24T14:02:02.000000Z|vwap_cross_up|rules"
    with pytest.raises(ValidationError, match="does not match its fields"):
        Signal(provider="p", symbol="S", ts=ts, name="n", value=1, score=1, signal_id="x")
    with pytest.raises(ValidationError, match="ts is naive"):
        Signal(provider="p", symbol="S", ts=datetime(2025, 1, 1), name="n", value=1, score=1)
    with pytest.raises(ValidationError, match="value is not finite"):
        Signal(provider="p", symbol="S", ts=ts, name="n", value=float("nan"), score=1)
