"""Entries of one event each: :func:`decode_maps` agrees with the reference, payload for payload.

The reference for a payload is ``codec.decode_events`` (the typed first stage, the plain-Python
fast path and pydantic behind them), its events then turned into columns as the micro-batcher
does (``columns_from_events``; a ``seq`` beyond bigint is dead-lettered there). ``decode_maps``
must vouch only for payloads the reference accepts, with the very same values, and leave every
other payload to the reference (``others``), which then gives it its reason. The payloads are
drawn: valid maps of random events, the same with a rule or a wire type broken (a field dropped,
added, nil, of another type, out of range; an event_id of other fields; duplicate keys), and
payloads that are not one map (arrays, JSON, truncated bytes, two maps in one).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_data_core.codec import decode_events, encode_event, event_to_dict
from market_data_core.columnar import (
    FLOAT_FIELDS,
    EventColumns,
    _event_ids_match,
    columns_from_events,
    decode_maps,
)
from market_data_core.contracts import StreamEvent, make_event_id
from market_data_core.timeutil import MAX_EPOCH_US, MIN_EPOCH_US, from_epoch_us
from tests.unit.test_columnar import same_values

from .test_codec import events as any_events

MAX_SEQ = 2**63 - 1


def reference(payloads: list[bytes]) -> list[tuple[int, StreamEvent]]:
    """Each payload's events as the reference path gives them (a seq beyond bigint is the
    micro-batcher's dead letter), with the payload's index."""
    out = []
    for i, p in enumerate(payloads):
        for ev in decode_events(p).events:
            if ev.seq <= MAX_SEQ:
                out.append((i, ev))
    return out


def through_maps(payloads: list[bytes]) -> tuple[list[tuple[int, StreamEvent]], list[int]]:
    """What the micro-batcher makes of the payloads: decode_maps, and the reference for the
    payloads it leaves out; rows in payload order. Also the payloads it left out."""
    decoded = decode_maps(payloads)
    rows = list(zip(decoded.row_payload.tolist(), _events(decoded.columns), strict=True))
    for i in decoded.others:
        rows += [(i, ev) for ev in decode_events(payloads[i]).events if ev.seq <= MAX_SEQ]
    rows.sort(key=lambda r: r[0])
    return rows, decoded.others


def _events(cols: EventColumns) -> list[StreamEvent]:
    return cols.to_events()


def agree(payloads: list[bytes]) -> list[int]:
    """Assert both paths give the same rows (as columns, as the micro-batcher keeps them);
    returns the payloads decode_maps left to the reference."""
    want = reference(payloads)
    got, others = through_maps(payloads)
    assert [i for i, _ in got] == [i for i, _ in want]
    # both as columns, back to events: the values the store would be given
    want_cols = columns_from_events([ev for _, ev in want]).to_events()
    got_cols = columns_from_events([ev for _, ev in got]).to_events()
    for a, b in zip(got_cols, want_cols, strict=True):
        assert same_values(a, b), (a, b)
    return others


def _map_bytes(pairs: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map of these key/value pairs, in order (duplicate keys allowed)."""
    out = bytearray()
    n = len(pairs)
    out += bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
    for k, v in pairs:
        out += msgpack.packb(k, use_bin_type=True) + msgpack.packb(v, use_bin_type=True)
    return bytes(out)


BAD_VALUES = [
    None,
    True,
    "x",
    b"\x01",
    -1,
    0,
    2**53,
    2**63 + 5,
    1.5,
    -2.5,
    0.0,
    math.nan,
    math.inf,
    "é",
    [1],
    {"a": 1},
]
FIELDS = [
    "ver",
    "provider",
    "symbol",
    "kind",
    "interval",
    "src_ts",
    "ingest_ts",
    "o",
    "h",
    "l",
    "c",
    "v",
    "seq",
    "event_id",
    "bid",
    "ask",
    "bid_size",
    "ask_size",
    "trade_id",
    "side",
]


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """One entry's payload: mostly a valid map, sometimes broken in one way or another."""
    ev = draw(any_events())
    d = event_to_dict(ev, codec="msgpack")
    action = draw(
        st.sampled_from(
            ["valid"] * 6
            + ["drop", "set", "set", "int_float", "event_id", "dup", "key", "range", "shape"]
        )
    )
    if action == "valid":
        return encode_event(ev)
    if action == "drop":
        d.pop(draw(st.sampled_from(sorted(d))))
    elif action == "set":
        d[draw(st.sampled_from(FIELDS))] = draw(st.sampled_from(BAD_VALUES))
    elif action == "int_float":  # an int price: exact (converted) or too big to be exact
        name = draw(st.sampled_from(["c", "v", "bid", "ask", "o", "h", "l", "bid_size"]))
        if name in d:
            d[name] = draw(st.sampled_from([1, 7, 2**53 - 1, 2**53, 2**60]))
    elif action == "event_id":
        d["event_id"] = draw(
            st.sampled_from([d["event_id"] + "x", d["event_id"][:-1], "é|x", "", "a|b|c|1"])
        )
    elif action == "dup":  # a duplicate key: the last one wins, as in msgpack.unpackb
        name = draw(st.sampled_from(sorted(d)))
        pairs = list(d.items())
        pairs.insert(draw(st.integers(0, len(pairs))), (name, draw(st.sampled_from(BAD_VALUES))))
        return _map_bytes(pairs)
    elif action == "key":  # an unknown key, or a key that is not a string
        d[draw(st.sampled_from(["extra", "Kind", ""]))] = 1
        if draw(st.booleans()):
            return _map_bytes([*d.items(), (7, 1)])
    elif action == "range":
        name = draw(st.sampled_from(["src_ts", "ingest_ts", "seq", "ver"]))
        d[name] = draw(st.sampled_from([-1, 2**63 - 1, 2**63, 2**64 - 1, 253_402_300_800_000_000]))
    elif action == "shape":
        shape = draw(st.sampled_from(["array1", "array2", "json", "cut", "twice", "empty"]))
        body = encode_event(ev)
        if shape == "array1":
            return b"\x91" + body
        if shape == "array2":
            return b"\x92" + body + body
        if shape == "json":
            return json.dumps(event_to_dict(ev)).encode()
        if shape == "cut":
            return body[: draw(st.integers(1, len(body) - 1))]
        if shape == "twice":
            return body + body
        return b""
    return msgpack.packb(d, use_bin_type=True)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads(), min_size=1, max_size=12))
def test_decode_maps_agrees_with_the_reference(ps: list[bytes]) -> None:
    agree(ps)


@settings(max_examples=300, deadline=None)
@given(st.lists(any_events(), min_size=1, max_size=40))
def test_valid_maps_are_all_vouched_for_and_equal_the_reference(evs: list[StreamEvent]) -> None:
    ps = [encode_event(e) for e in evs]
    decoded = decode_maps(ps)
    big = [i for i, e in enumerate(evs) if e.seq > MAX_SEQ]
    assert decoded.others == big  # only a seq beyond bigint goes the reference's way
    assert agree(ps) == big
    assert decoded.row_payload.tolist() == [i for i in range(len(evs)) if i not in big]


T0 = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)


def _tick(i: int, **extra: Any) -> StreamEvent:
    return StreamEvent.create(
        provider="p",
        symbol=f"S{i % 3}",
        kind="tick",
        src_ts=T0 + timedelta(microseconds=37 * i),
        c=100.0 + i / 100,
        v=1.0 + i,
        seq=i,
        **extra,
    )


def test_a_payload_cut_short_cannot_borrow_from_the_next() -> None:
    """Joined as one array, a map missing its last value and a payload holding that value
    plus a whole map would parse as two items: the items' lengths must be the payloads'."""
    valid = encode_event(_tick(1))
    head = _map_bytes([("ver", 1)])[:-1]  # "ver" without its value
    tail = b"\x01" + valid  # the value, then a whole map
    decoded = decode_maps([head, tail, valid])
    assert decoded.others == [0, 1]
    assert decoded.row_payload.tolist() == [2]
    agree([head, tail, valid])


def test_non_ascii_trade_ids_mixed_kinds_and_sides_in_one_poll() -> None:
    evs: list[StreamEvent] = []
    for i in range(40):
        if i % 5 == 4:
            evs.append(
                StreamEvent.create(
                    provider="q",
                    symbol="EUR/USD",
                    kind="quote",
                    src_ts=T0 + timedelta(microseconds=i),
                    bid=1.1,
                    ask=1.2,
                    bid_size=None if i % 2 else 5.0,
                    seq=i,
                )
            )
        else:
            evs.append(
                _tick(
                    i,
                    trade_id=["é€", None, "x", ""][i % 4],
                    side=[None, "buy", "sell"][i % 3],
                    ingest_ts=None if i % 3 else T0,
                )
            )
    ps = [encode_event(e) for e in evs]
    assert agree(ps) == []
    cols = decode_maps(ps).columns
    want = columns_from_events(evs)
    assert cols.trade_id == want.trade_id
    assert np.array_equal(cols.trade_id_end, want.trade_id_end)
    assert np.array_equal(cols.present, want.present)
    assert cols.series == want.series


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([("p", "AAPL"), ("coinbase", "BTC-USD"), ("x.y-z", "^GSPC:=")]),
            st.integers(MIN_EPOCH_US, MAX_EPOCH_US)
            | st.sampled_from([MIN_EPOCH_US, MAX_EPOCH_US, 0, -1]),
            st.integers(0, 2**63 - 1) | st.sampled_from([0, 9, 10, 99, 10**18, 2**63 - 1]),
            st.sampled_from(["same", "same", "same", "x", "cut", "é", "nul", "other_seq"]),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_event_ids_match_is_make_event_id_of_every_row(
    rows: list[tuple[tuple[str, str], int, int, str]],
) -> None:
    """The byte-matrix comparison says exactly where the wire id is ``make_event_id`` of the
    row's fields (series of different prefix lengths, any year, seqs of any width)."""
    series = sorted({s for s, *_ in rows})
    wire: list[str] = []
    want: list[bool] = []
    for (p, s), ts, seq, how in rows:
        implied = make_event_id(p, s, from_epoch_us(ts), seq)
        other = {
            "same": implied,
            "x": implied + "x",
            "cut": implied[:-1],
            "é": implied[:-1] + "é",
            "nul": implied[:-1] + "\x00",
            "other_seq": make_event_id(p, s, from_epoch_us(ts), seq + 1 if seq < 2**62 else 1),
        }[how]
        wire.append(other)
        want.append(other == implied)
    n = len(rows)
    cols = EventColumns(
        series=tuple(series),
        series_idx=np.array([series.index(s) for s, *_ in rows], np.int32),
        intervals=(None,),
        interval_idx=np.zeros(n, np.int32),
        ver=np.ones(n, np.int64),
        kind=np.zeros(n, np.uint8),
        src_ts=np.array([ts for _s, ts, _q, _h in rows], np.int64),
        seq=np.array([q for _s, _t, q, _h in rows], np.int64),
        present=np.zeros(n, np.uint16),
        floats={k: np.zeros(n) for k in FLOAT_FIELDS},
        ingest_ts=np.zeros(n, np.int64),
        side=np.zeros(n, np.uint8),
        trade_id=b"",
        trade_id_end=np.zeros(n, np.int64),
    )
    assert _event_ids_match(cols, wire).tolist() == want


@pytest.mark.parametrize("symbols", [["S0", "S1", "S2"], ["S0", "EUR/USD", "BTC-USDT"]])
def test_an_event_id_wrong_after_its_prefix_is_refused_whatever_the_prefix_lengths(
    symbols: list[str],
) -> None:
    """The text after ``provider|symbol|`` (time, seq) is compared at each row's own offset:
    a slice when every prefix has one length, a gather when they differ; a wrong digit in the
    time or the seq of one row sends that row (only) to the reference."""
    evs = [
        StreamEvent.create(
            provider="p",
            symbol=symbols[i % len(symbols)],
            kind="tick",
            src_ts=T0 + timedelta(microseconds=37 * i),
            c=100.0,
            v=1.0,
            seq=i,
        )
        for i in range(12)
    ]
    ds = [event_to_dict(e, codec="msgpack") for e in evs]
    eid = ds[4]["event_id"]
    z = eid.index("Z")
    ds[4]["event_id"] = eid[: z - 1] + str((int(eid[z - 1]) + 1) % 10) + eid[z:]  # µs off
    ds[7]["event_id"] = ds[7]["event_id"][:-1] + "8"  # seq 7 claimed as 8
    ps = [msgpack.packb(d) for d in ds]
    decoded = decode_maps(ps)
    assert decoded.others == [4, 7]
    assert agree(ps) == [4, 7]
