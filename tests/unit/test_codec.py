from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market_data_core.codec import (
    decode_events,
    decode_signal,
    encode_event,
    encode_events,
    encode_signal,
)
from market_data_core.contracts import Signal, StreamEvent
from market_data_core.errors import ContractError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
prices = st.floats(min_value=1e-8, max_value=1e9, allow_nan=False, allow_infinity=False)
sizes = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)
stamps = st.integers(min_value=0, max_value=4_102_444_800_000_000).map(
    lambda us: EPOCH + timedelta(microseconds=us)
)
symbols = st.from_regex(r"\A[A-Z0-9][A-Z0-9._/\-]{0,10}\Z")
providers = st.from_regex(r"\A[a-z0-9][a-z0-9_\-]{0,10}\Z")


@st.composite
def events(draw: st.DrawFn) -> StreamEvent:
    kind = draw(st.sampled_from(["tick", "bar", "quote"]))
    common = {
        "provider": draw(providers),
        "symbol": draw(symbols),
        "src_ts": draw(stamps),
        "ingest_ts": draw(st.none() | stamps),
        "seq": draw(st.integers(0, 2**62)),
    }
    if kind == "tick":
        return StreamEvent.create(
            kind="tick",
            c=draw(prices),
            v=draw(sizes),
            trade_id=draw(st.none() | st.text(max_size=8)),
            side=draw(st.none() | st.sampled_from(["buy", "sell"])),
            **common,
        )
    if kind == "bar":
        ps = sorted(draw(st.lists(prices, min_size=4, max_size=4)))
        o, c = draw(st.permutations([ps[1], ps[2]]))
        return StreamEvent.create(
            kind="bar", interval="1m", o=o, h=ps[3], l=ps[0], c=c, v=draw(sizes), **common
        )
    bid, ask = sorted(draw(st.lists(prices, min_size=2, max_size=2)))
    return StreamEvent.create(
        kind="quote", bid=bid, ask=ask, bid_size=draw(sizes), ask_size=draw(sizes), **common
    )


@settings(max_examples=300, deadline=None)
@given(events(), st.sampled_from(["msgpack", "json"]))
def test_every_event_round_trips_exactly(ev: StreamEvent, codec: str) -> None:
    batch = decode_events(encode_event(ev, codec))  # type: ignore[arg-type]
    assert batch.errors == []
    assert batch.events == [ev]
    for name, value in ev:
        assert getattr(batch.events[0], name) == value


@settings(max_examples=100, deadline=None)
@given(st.lists(events(), min_size=1, max_size=20), st.sampled_from(["msgpack", "json"]))
def test_packed_entries_round_trip_in_order(evs: list[StreamEvent], codec: str) -> None:
    batch = decode_events(encode_events(evs, codec))  # type: ignore[arg-type]
    assert batch.events == evs


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(payload: bytes) -> None:
    batch = decode_events(payload)
    for err in batch.errors:
        assert isinstance(err, ContractError)
        assert err.reason in ("decode", "validation")
    with pytest.raises(ContractError):
        decode_signal(payload + b"\xc1")  # 0xc1 is never valid msgpack


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=6), children, max_size=4)
        ),
        max_leaves=12,
    )
)
def test_arbitrary_structures_become_contract_errors(obj: object) -> None:
    for payload in (msgpack.packb(obj), json.dumps(obj).encode()):
        batch = decode_events(payload)
        assert all(isinstance(e, ContractError) for e in batch.errors)


def test_one_bad_item_in_a_packed_entry_spares_the_others() -> None:
    good = StreamEvent.create(
        provider="p", symbol="S", kind="tick", src_ts=EPOCH, c=1.0, v=1.0, seq=1
    )
    items = [json.loads(encode_event(good, "json")), {"ver": 9}]
    batch = decode_events(json.dumps(items).encode())
    assert batch.events == [good]
    assert len(batch.errors) == 1
    assert "unknown ver 9" in batch.errors[0].detail
    assert b'"ver": 9' in (batch.errors[0].payload or b"")


def test_undecodable_payload_keeps_original_bytes() -> None:
    batch = decode_events(b"{not json")
    assert batch.errors[0].reason == "decode"
    assert batch.errors[0].payload == b"{not json"
    assert decode_events(b"").errors[0].detail == "empty payload"


def test_signal_round_trip() -> None:
    s = Signal(
        provider="p",
        symbol="S",
        ts=EPOCH + timedelta(seconds=1.5),
        name="n",
        value=-1.0,
        score=0.7,
        meta={"window": "1m", "price": 425.15},
        adapter="sklearn",
    )
    for codec in ("msgpack", "json"):
        assert decode_signal(encode_signal(s, codec)) == s  # type: ignore[arg-type]


def test_msgpack_timestamps_are_integer_microseconds() -> None:
    ev = StreamEvent.create(
        provider="p",
        symbol="S",
        kind="tick",
        src_ts=EPOCH + timedelta(microseconds=1),
        c=1.0,
        v=0.0,
        seq=0,
    )
    raw = msgpack.unpackb(encode_event(ev, "msgpack"))
    assert raw["src_ts"] == 1
    assert math.isclose(raw["c"], 1.0)


def test_bar_round_trip_and_rejection() -> None:
    from market_data_core.codec import decode_bar, encode_bar
    from market_data_core.contracts import Bar

    bar = Bar("p", "S", "2s", EPOCH + timedelta(seconds=2), 1.0, 2.0, 0.5, 1.5, 10.25, 1.2, 7, 1)
    for codec in ("msgpack", "json"):
        assert decode_bar(encode_bar(bar, codec)) == bar  # type: ignore[arg-type]
    with pytest.raises(ContractError, match="expected a bar map"):
        decode_bar(b'{"ver": 1}')
    with pytest.raises(ContractError, match="bad bar"):
        decode_bar(b'{"type": "bar", "ts": 0, "o": "x"}')


def test_quote_bars_on_the_bar_stream_round_trip() -> None:
    """A window's trade bar carries its quote bar (and the seed's ``spread_bps`` and
    ``imbalance`` at the top level); a window with quotes only is a ``quote_bar``."""
    from dataclasses import replace

    from market_data_core.codec import decode_bar, decode_window, encode_bar
    from market_data_core.contracts import Bar, QuoteBar

    ts = EPOCH + timedelta(seconds=2)
    quote = QuoteBar("p", "S", "2s", ts, 1.0, 1.5, None, None, 1.25, 0, 40.0, None, None, None,
                     None, None, 2, 9)  # fmt: skip
    sized = replace(quote, bid_size=3.0, ask_size=1.0, imbalance=0.5, imbalance_close=0.5,
                    quote_count=4, spread_bps_min=38.0, spread_bps_max=41.0,
                    spread_bps_mean=39.5, change_seq=None)  # fmt: skip
    bar = Bar("p", "S", "2s", ts, 1.0, 2.0, 0.5, 1.5, 10.25, 1.2, 7, 1, 5, quote=sized)
    for codec in ("msgpack", "json"):
        assert decode_window(encode_bar(quote, codec)) == quote  # type: ignore[arg-type]
        assert decode_window(encode_bar(bar, codec)) == bar  # type: ignore[arg-type]
        assert decode_bar(encode_bar(bar, codec)) == bar  # type: ignore[arg-type]
        wire = json.loads(encode_bar(bar, "json"))
        assert (wire["spread_bps"], wire["imbalance"]) == (40.0, 0.5)
        plain = json.loads(encode_bar(replace(bar, quote=None), "json"))
        assert (plain["spread_bps"], plain["imbalance"], plain["quote"]) == (None, None, None)
        with pytest.raises(ContractError, match="expected a bar map"):
            decode_bar(encode_bar(quote, codec))  # type: ignore[arg-type]
    bad = json.loads(encode_bar(quote, "json"))
    bad["bid"] = float("nan")
    with pytest.raises(ContractError, match="bid must be a finite number"):
        decode_window(json.dumps(bad).encode())
    bad = json.loads(encode_bar(quote, "json"))
    bad["quote_count"] = -1
    with pytest.raises(ContractError, match="quote_count"):
        decode_window(json.dumps(bad).encode())
