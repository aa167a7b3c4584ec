"""Column blocks: the vectorised decode agrees with the pydantic reference, row for row.

The reference for every row of a block is ``codec._validated_event`` (pydantic) of the
StreamEvent dict the row stands for, built here by the test from the values it drew, not by
the module under test. The columnar path must accept exactly the rows the reference accepts,
with equal events (values, types, fields set), and give every other row the reference's reason.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market_data_core import codec
from market_data_core.codec import decode_events, encode_events
from market_data_core.columnar import (
    BLOCK_MAGIC,
    FLOAT_FIELDS,
    KIND_CODES,
    OPTIONAL_BITS,
    EventColumns,
    columns_from_events,
    decimal_strs,
    decode_blocks,
    encode_block,
    encode_blocks,
    encode_columns,
    event_id_strs,
    window_marks,
)
from market_data_core.contracts import StreamEvent, make_event_id
from market_data_core.errors import ContractError
from market_data_core.timeutil import MAX_EPOCH_US, MIN_EPOCH_US, from_epoch_us, isoformat_us

from .test_codec import events as any_events

KINDS = ("tick", "bar", "quote")
SIDES = (None, "buy", "sell")
T0 = 1_767_364_200_000_000  # 2026-01-02T14:30:00Z

good_prices = st.sampled_from([0.01, 1.1612, 100.0, 227.53, 1e-07, 65000.5]) | st.floats(
    min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False
)
bad_numbers = st.sampled_from([0.0, -0.0, -1.5, math.nan, math.inf, -math.inf, 5e-324])
sizes = st.sampled_from([0.0, -0.0, 1.0, 0.0005, 2e6]) | st.floats(
    min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False
)


@st.composite
def rows(draw: st.DrawFn, interval: str | None) -> dict[str, Any]:
    """One row's wire values: mostly a valid event, sometimes with a rule broken."""
    kind = draw(st.sampled_from([0, 0, 1, 2, 2, 3]))
    row: dict[str, Any] = {
        "kind": kind,
        "src_ts": draw(
            st.integers(T0, T0 + 10**9)
            | st.sampled_from([MIN_EPOCH_US, MAX_EPOCH_US, MIN_EPOCH_US - 1, MAX_EPOCH_US + 1])
        ),
        "seq": draw(st.integers(0, 2**63 - 1) | st.sampled_from([0, -1, -(2**63)])),
        "side": draw(st.sampled_from([0, 0, 1, 2, 7])),
    }
    floats: dict[str, float] = {}
    if kind == 0 or (kind == 3 and draw(st.booleans())):
        floats = {"c": draw(good_prices), "v": draw(sizes)}
    elif kind == 1:
        ps = sorted(draw(st.lists(good_prices, min_size=4, max_size=4)))
        o, c = draw(st.permutations([ps[1], ps[2]]))
        floats = {"o": o, "h": ps[3], "l": ps[0], "c": c}
        if draw(st.booleans()):
            floats["v"] = draw(sizes)
    elif kind == 2:
        bid, ask = sorted(draw(st.lists(good_prices, min_size=2, max_size=2)))
        floats = {"bid": bid, "ask": ask}
        for name in ("bid_size", "ask_size"):
            if draw(st.booleans()):
                floats[name] = draw(sizes)
    # break things now and then: drop a field, add one, change a value
    for _ in range(draw(st.integers(0, 2))):
        action = draw(st.sampled_from(["drop", "add", "bad", "swap", "high_low"]))
        if action == "drop" and floats:
            del floats[draw(st.sampled_from(sorted(floats)))]
        elif action == "add":
            floats[draw(st.sampled_from(FLOAT_FIELDS))] = draw(good_prices | bad_numbers)
        elif action == "bad" and floats:
            floats[draw(st.sampled_from(sorted(floats)))] = draw(bad_numbers)
        elif action == "swap" and "bid" in floats and "ask" in floats:
            floats["bid"], floats["ask"] = floats["ask"] * 1.5, floats["bid"]
        elif action == "high_low":  # h and l, maybe crossed, maybe without o or c
            floats.update(h=draw(good_prices), l=draw(good_prices))
            if draw(st.booleans()):
                floats.pop(draw(st.sampled_from(["o", "c"])), None)
    row["floats"] = floats
    if draw(st.booleans()):
        row["ingest_ts"] = draw(
            st.integers(T0, T0 + 10**9) | st.sampled_from([MAX_EPOCH_US + 5, MIN_EPOCH_US - 5])
        )
    trade_id = draw(
        st.none()
        | st.text(max_size=6)
        | st.binary(max_size=4)  # often not UTF-8
        | st.sampled_from(["é", "€x", "\x00"])
        # halves of "é": valid UTF-8 only when a row's id ends where the next one's starts
        | st.sampled_from([b"\xc3", b"\xa9", b"a\xc3", b"\xa9b"])
    )
    if isinstance(trade_id, str):
        trade_id = trade_id.encode("utf-8", "surrogatepass")
    row["trade_id"] = trade_id
    return row


@st.composite
def blocks(draw: st.DrawFn) -> dict[str, Any]:
    interval = draw(st.sampled_from([None, None, "1m", "2s", "1 m"]))
    return {
        "provider": draw(st.sampled_from(["bench", "coinbase", "bad|provider", ""])),
        "symbol": draw(st.sampled_from(["AAPL", "EUR/USD", "BTC-USD", "bad symbol", "S|X"])),
        "ver": draw(st.sampled_from([1, 1, 1, 2])),
        "interval": interval,
        "rows": draw(st.lists(rows(interval), min_size=1, max_size=8)),
        # version 2: optional columns compact (a cell per row with the field); else
        # version 1, a cell per row
        "compact": draw(st.booleans()),
    }


def wire(block: dict[str, Any]) -> bytes:
    """The block payload of drawn values, written field by field from the format's spec."""
    rs = block["rows"]
    n = len(rs)
    present = np.zeros(n, "<u2")
    fields: dict[str, Any] = {
        "n": n,
        "ver": block["ver"],
        "provider": block["provider"],
        "symbol": block["symbol"],
        "kind": np.array([r["kind"] for r in rs], "<u1").tobytes(),
        "src_ts": np.array([r["src_ts"] for r in rs], "<i8").tobytes(),
        "seq": np.array([r["seq"] for r in rs], "<i8").tobytes(),
    }
    if block["interval"] is not None:
        fields["interval"] = block["interval"]
    compact = block.get("compact", False)
    for name in FLOAT_FIELDS:
        if any(name in r["floats"] for r in rs):
            cells = [r["floats"].get(name, 0.0) for r in rs if not compact or name in r["floats"]]
            fields[name] = np.array(cells, "<f8").tobytes()
            present |= np.array(
                [OPTIONAL_BITS[name] if name in r["floats"] else 0 for r in rs], "<u2"
            )
    if any("ingest_ts" in r for r in rs):
        stamps = [r.get("ingest_ts", 0) for r in rs if not compact or "ingest_ts" in r]
        fields["ingest_ts"] = np.array(stamps, "<i8").tobytes()
        present |= np.array(
            [OPTIONAL_BITS["ingest_ts"] if "ingest_ts" in r else 0 for r in rs], "<u2"
        )
    if any(r["side"] for r in rs):
        fields["side"] = np.array([r["side"] for r in rs], "<u1").tobytes()
    if any(r["trade_id"] is not None for r in rs):
        ids = [r["trade_id"] or b"" for r in rs]
        fields["trade_id"] = b"".join(ids)
        fields["trade_id_end"] = np.cumsum([len(x) for x in ids]).astype("<u4").tobytes()
        present |= np.array(
            [OPTIONAL_BITS["trade_id"] if r["trade_id"] is not None else 0 for r in rs], "<u2"
        )
    fields["present"] = present.tobytes()
    return (COMPACT_MAGIC if compact else BLOCK_MAGIC) + msgspec.msgpack.encode(fields)


def reference_dict(block: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    """The StreamEvent dict a drawn row stands for (timestamps as epoch µs, as in msgpack)."""
    kinds = {0: "tick", 1: "bar", 2: "quote"}
    d: dict[str, Any] = {
        "ver": block["ver"],
        "provider": block["provider"],
        "symbol": block["symbol"],
        "kind": kinds.get(r["kind"], r["kind"]),
        "src_ts": r["src_ts"],
        "seq": r["seq"],
    }
    if block["interval"] is not None:
        d["interval"] = block["interval"]
    d.update(r["floats"])
    if "ingest_ts" in r:
        d["ingest_ts"] = r["ingest_ts"]
    if r["side"]:
        d["side"] = {1: "buy", 2: "sell"}.get(r["side"], r["side"])
    if r["trade_id"] is not None:
        try:
            d["trade_id"] = r["trade_id"].decode()
        except UnicodeDecodeError:
            d["trade_id"] = r["trade_id"]
    if MIN_EPOCH_US <= r["src_ts"] <= MAX_EPOCH_US:
        d["event_id"] = make_event_id(
            block["provider"], block["symbol"], from_epoch_us(r["src_ts"]), r["seq"]
        )
    else:
        d["event_id"] = ""
    return d


def reference(block: dict[str, Any]) -> list[StreamEvent | str]:
    out: list[StreamEvent | str] = []
    for r in block["rows"]:
        try:
            out.append(codec._validated_event(reference_dict(block, r), b""))
        except ContractError as exc:
            out.append(f"{exc.reason}: {exc.detail}")
    return out


def _same_value(x: Any, y: Any) -> bool:
    if type(x) is float and type(y) is float:
        return struct.pack("<d", x) == struct.pack("<d", y)  # NaN, -0.0: the very bits
    return type(x) is type(y) and bool(x == y)


def same_values(a: StreamEvent, b: StreamEvent) -> bool:
    return list(a.__dict__) == list(b.__dict__) and all(
        _same_value(a.__dict__[k], b.__dict__[k]) for k in a.__dict__
    )


def same_event(a: StreamEvent, b: StreamEvent) -> bool:
    """Equal in every way: field order, values (bit for bit), types, fields set."""
    return (
        list(a.__dict__) == list(b.__dict__)
        and all(_same_value(a.__dict__[k], b.__dict__[k]) for k in a.__dict__)
        and a.model_fields_set == b.model_fields_set
    )


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks())
def test_block_rows_agree_with_the_pydantic_reference(block: dict[str, Any]) -> None:
    expected = reference(block)
    decoded = decode_blocks([wire(block)])
    got_events = decoded.columns.to_events()
    want_events = [e for e in expected if isinstance(e, StreamEvent)]
    assert len(got_events) == len(want_events)
    for got, want in zip(got_events, want_events, strict=True):
        assert same_event(got, want), (got, want)
    assert [f"{e.reason}: {e.detail}" for _p, e in decoded.errors] == [
        e for e in expected if isinstance(e, str)
    ]
    assert all(p == 0 for p, _e in decoded.errors)
    assert decoded.row_payload.tolist() == [0] * len(want_events)
    # the row path of decode_events says the same
    batch = decode_events(wire(block))
    assert [f"{e.reason}: {e.detail}" for e in batch.errors] == [
        e for e in expected if isinstance(e, str)
    ]
    assert all(same_event(a, b) for a, b in zip(batch.events, want_events, strict=True))


@settings(max_examples=300, deadline=None)
@given(st.lists(blocks(), min_size=1, max_size=4))
def test_several_blocks_decode_in_payload_order(bs: list[dict[str, Any]]) -> None:
    decoded = decode_blocks([wire(b) for b in bs])
    want: list[StreamEvent] = []
    owners: list[int] = []
    reasons: list[tuple[int, str]] = []
    for p, b in enumerate(bs):
        for e in reference(b):
            if isinstance(e, StreamEvent):
                want.append(e)
                owners.append(p)
            else:
                reasons.append((p, e))
    got = decoded.columns.to_events()
    assert len(got) == len(want)
    assert all(same_event(a, b) for a, b in zip(got, want, strict=True))
    assert decoded.row_payload.tolist() == owners
    assert [(p, f"{e.reason}: {e.detail}") for p, e in decoded.errors] == reasons


@st.composite
def same_series_events(draw: st.DrawFn) -> list[StreamEvent]:
    evs = draw(st.lists(any_events(), min_size=1, max_size=20))
    first = evs[0]
    return [
        StreamEvent.create(
            **{
                **e.model_dump(exclude_unset=True, exclude={"event_id"}),
                "provider": first.provider,
                "symbol": first.symbol,
                "interval": first.interval,
            }
        )
        for e in evs
        if e.kind != "bar" or first.interval is not None
    ] or [first]


@settings(max_examples=500, deadline=None)
@given(same_series_events())
def test_a_block_decodes_to_the_events_of_the_packed_msgpack_entry(
    evs: list[StreamEvent],
) -> None:
    from_block = decode_events(encode_block(evs))
    from_rows = decode_events(encode_events(evs))
    assert not from_block.errors and not from_rows.errors
    assert len(from_block.events) == len(evs)
    for a, b, c in zip(from_block.events, from_rows.events, evs, strict=True):
        # the wire keeps no explicit None (neither does msgpack): the fields set are the wire's
        assert same_event(a, b) and a.__dict__ == c.__dict__


@st.composite
def series_runs(draw: st.DrawFn) -> tuple[EventColumns, list[tuple[int, int]]]:
    """Trades and quotes of up to three series, each series' rows together (as a publisher
    orders them), cut into runs of up to ``pack`` rows of one series; the float and
    ``ingest_ts`` cells of fields a row does not have hold garbage (a reader ignores them)."""
    evs = [
        StreamEvent.create(
            **{
                **e.model_dump(exclude_unset=True, exclude={"event_id"}),
                "provider": "p",
                "symbol": draw(st.sampled_from(["A", "B", "C"])),
            }
        )
        for e in draw(st.lists(any_events(), min_size=1, max_size=40))
        if e.kind != "bar"
    ]
    if not evs:
        evs = [
            StreamEvent.create(
                provider="p",
                symbol="A",
                kind="quote",
                src_ts=from_epoch_us(T0),
                bid=1.0,
                ask=1.5,
                seq=0,
            )
        ]
    cols = columns_from_events(evs)
    cols = cols.take(np.argsort(cols.series_idx, kind="stable"))
    noise = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    for name in FLOAT_FIELDS:
        cols.floats[name] = np.where(cols.has(name), cols.floats[name], noise.normal(size=cols.n))
    cols.ingest_ts = np.where(cols.has("ingest_ts"), cols.ingest_ts, noise.integers(1, 9, cols.n))
    pack = draw(st.integers(1, 12))
    bounds = []
    for s in range(len(cols.series)):
        rows = np.flatnonzero(cols.series_idx == s)
        for a in range(0, len(rows), pack):
            bounds.append((int(rows[a]), int(rows[min(a + pack, len(rows)) - 1]) + 1))
    return cols, bounds


@settings(max_examples=300, deadline=None)
@given(series_runs())
def test_encode_blocks_is_encode_columns_of_each_run(
    runs: tuple[EventColumns, list[tuple[int, int]]],
) -> None:
    cols, bounds = runs
    want = []
    for a, b in bounds:
        block = cols.slice(a, b)
        block.series = (cols.series[int(cols.series_idx[a])],)
        block.series_idx = np.zeros(block.n, np.int32)
        want.append(encode_columns(block))
    assert encode_blocks(cols, bounds) == want


def test_encode_blocks_refuses_runs_that_are_not_blocks() -> None:
    evs = [
        StreamEvent.create(
            provider="p", symbol=s, kind="tick", src_ts=from_epoch_us(T0 + i), c=1.0, v=1.0, seq=i
        )
        for i, s in enumerate("AABB")
    ]
    cols = columns_from_events(evs)
    assert len(encode_blocks(cols, [(0, 2), (2, 3), (3, 4)])) == 3
    # bounds read off NumPy arrays encode as the same blocks
    cuts = np.array([0, 2, 3, 4])
    assert encode_blocks(cols, list(pairwise(cuts))) == encode_blocks(
        cols, [(0, 2), (2, 3), (3, 4)]
    )
    for bounds in ([(0, 3), (3, 4)], [(0, 2), (3, 4)], [(0, 2), (2, 2), (2, 4)], [(0, 2)]):
        with pytest.raises(ValueError, match="consecutive runs"):
            encode_blocks(cols, bounds)


def test_columns_from_events_round_trip_through_take_and_concat() -> None:
    t0 = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)
    evs = [
        StreamEvent.create(
            provider="p",
            symbol=f"S{i % 3}",
            kind="tick",
            src_ts=t0 + timedelta(microseconds=i),
            c=1.5 + i,
            v=2.0,
            seq=i,
            trade_id="é" * (i % 3) if i % 4 else None,
            side=("buy", "sell", None)[i % 3],
        )
        for i in range(30)
    ]
    cols = columns_from_events(evs)  # (created with explicit Nones: compare the values)
    assert all(same_values(a, b) for a, b in zip(cols.to_events(), evs, strict=True))
    picked = cols.take(np.array([5, 1, 29, 1]))
    assert all(
        same_values(a, b)
        for a, b in zip(picked.to_events(), [evs[5], evs[1], evs[29], evs[1]], strict=True)
    )
    joined = EventColumns.concat([cols.take(np.arange(10, 30)), cols.take(np.arange(10))])
    assert all(
        same_values(a, b) for a, b in zip(joined.to_events(), evs[10:] + evs[:10], strict=True)
    )


def _good_block() -> dict[str, Any]:
    return {
        "provider": "p",
        "symbol": "S",
        "ver": 1,
        "interval": None,
        "rows": [
            {
                "kind": 0,
                "src_ts": T0 + i,
                "seq": i,
                "side": 1,
                "floats": {"c": 1.5, "v": 2.0},
                "trade_id": b"t%d" % i,
            }
            for i in range(3)
        ],
    }


COMPACT_MAGIC = b"\xc1\x02"  # a block of version 2: compact optional columns


def _map(payload: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.msgpack.decode(payload[2:])
    return decoded


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda m: m.update(kind=m["kind"][:-1]), "kind holds 2 bytes, expected 3 x 1"),
        (lambda m: m.update(extra=1), "Object contains unknown field `extra`"),
        (lambda m: m.pop("seq"), "Object missing required field `seq`"),
        (lambda m: m.update(n=0), "n must be 1..100000, got 0"),
        (lambda m: m.pop("c"), "a row has a field whose column is not in the block"),
        (lambda m: m.update(c=m["c"][:-8]), "c holds 16 bytes, expected 3 x 8"),
        (lambda m: m.update(v=b""), "v holds 0 bytes, expected 3 x 8"),
        (lambda m: m.update(v=m["v"] + b"\0" * 8), "v holds 32 bytes, expected 3 x 8"),
        (lambda m: m.update(v=m["v"][:-3]), "v holds 21 bytes, expected 3 x 8"),
        (lambda m: m.pop("trade_id_end"), "trade_id and trade_id_end go together"),
        (
            lambda m: m.update(trade_id_end=np.array([2, 1, 6], "<u4").tobytes()),
            "trade_id_end must rise to the length of trade_id",
        ),
        (lambda m: m.update(ver="1"), "Expected `int`, got `str`"),
    ],
)
def test_a_malformed_block_is_one_decode_error_with_its_bytes(change: Any, detail: str) -> None:
    m = _map(wire(_good_block()))
    change(m)
    payload = BLOCK_MAGIC + msgspec.msgpack.encode(m)
    decoded = decode_blocks([payload])
    assert decoded.columns.n == 0
    [(p, err)] = decoded.errors
    assert (p, err.reason, err.payload) == (0, "decode", payload)
    assert detail in err.detail
    batch = decode_events(payload)
    assert not batch.events and [e.detail for e in batch.errors] == [err.detail]


def _mixed_block(*, compact: bool) -> dict[str, Any]:
    """A trade, a quote, a trade: the trades have c and v, the quote bid..ask_size."""
    block = _good_block()
    quote = {"bid": 1.25, "ask": 1.5, "bid_size": 300.0, "ask_size": 100.0}
    block["rows"][1].update(kind=2, side=0, floats=quote, trade_id=None)
    block["compact"] = compact
    return block


def test_encoders_write_a_mixed_block_with_only_the_cells_its_rows_have() -> None:
    events = [e for e in reference(_mixed_block(compact=False)) if isinstance(e, StreamEvent)]
    assert len(events) == 3
    for payload in (encode_block(events), *encode_blocks(columns_from_events(events), [(0, 3)])):
        m = _map(payload)
        cells = {k: len(m[k]) // 8 for k in ("c", "v", "bid", "ask", "bid_size", "ask_size")}
        assert cells == {"c": 2, "v": 2, "bid": 1, "ask": 1, "bid_size": 1, "ask_size": 1}
        assert payload[:2] == COMPACT_MAGIC
        got = decode_blocks([payload]).columns.to_events()
        assert all(same_event(a, b) for a, b in zip(got, events, strict=True))
    # a block of one kind: every column covers every row, version 1 as ever
    trades = events[::2]
    assert encode_block(trades)[:2] == BLOCK_MAGIC
    assert encode_blocks(columns_from_events(trades), [(0, 2)])[0] == encode_block(trades)


def test_a_dense_mixed_block_decodes_as_its_compact_twin() -> None:
    """Blocks written before compact columns (a cell per row) still decode, the same events,
    alone or beside compact ones."""
    dense, compact = wire(_mixed_block(compact=False)), wire(_mixed_block(compact=True))
    assert len(dense) > len(compact)
    want = [e for e in reference(_mixed_block(compact=True)) if isinstance(e, StreamEvent)]
    assert len(want) == 3
    for payloads in ([dense], [compact], [dense, compact], [compact, dense]):
        decoded = decode_blocks(payloads)
        assert not decoded.errors
        got = decoded.columns.to_events()
        assert all(same_event(a, b) for a, b in zip(got, want * len(payloads), strict=True))


def test_a_short_compact_column_refuses_its_block_alone() -> None:
    good = wire(_mixed_block(compact=True))
    m = _map(good)
    m["bid"] = b""
    bad = COMPACT_MAGIC + msgspec.msgpack.encode(m)
    decoded = decode_blocks([good, bad, good])
    assert decoded.row_payload.tolist() == [0, 0, 0, 2, 2, 2]
    [(p, err)] = decoded.errors
    assert (p, err.reason, err.payload) == (1, "decode", bad)
    assert "bid holds 0 bytes, expected 1 x 8 (a cell per row that has the field)" in err.detail


@pytest.mark.parametrize("compact", [True, False])
def test_the_version_not_the_length_tells_the_layout(compact: bool) -> None:
    """A block's cells in the other version's layout refuse the block (one cell too many or
    too few would otherwise shift a column by a row unnoticed)."""
    payload = wire(_mixed_block(compact=compact))
    swapped = (BLOCK_MAGIC if compact else COMPACT_MAGIC) + payload[2:]
    decoded = decode_blocks([swapped])
    assert decoded.columns.n == 0
    [(_p, err)] = decoded.errors
    assert err.reason == "decode"
    want = "c holds 16 bytes, expected 3 x 8" if compact else "c holds 24 bytes, expected 2 x 8"
    assert want in err.detail


@pytest.mark.parametrize("payload", [b"\xc1", b"\xc1\x03\x80", b"\xc1\x01", b"\xc1\x01\xc1"])
def test_a_truncated_or_unknown_block_is_a_decode_error(payload: bytes) -> None:
    decoded = decode_blocks([payload])
    [(_p, err)] = decoded.errors
    assert err.reason == "decode" and err.payload == payload


def test_a_trade_id_split_inside_a_character_is_rejected_though_the_blob_is_utf8() -> None:
    block = _good_block()
    block["rows"][0]["trade_id"] = b"x\xc3"
    block["rows"][1]["trade_id"] = b"\xa9"  # the blob reads "xé..."
    decoded = decode_blocks([wire(block)])
    assert decoded.columns.seq.tolist() == [2]
    assert [e.detail for _p, e in decoded.errors] == [
        "trade_id: Input should be a valid string, unable to parse raw data as a unicode string"
    ] * 2


def test_a_bad_row_dead_letters_alone_with_its_own_dict() -> None:
    block = _good_block()
    block["rows"][1]["floats"]["c"] = -3.0
    decoded = decode_blocks([wire(block)])
    assert decoded.columns.seq.tolist() == [0, 2]
    [(p, err)] = decoded.errors
    assert (p, err.reason, err.detail) == (0, "validation", "c must be > 0, got -3.0")
    assert err.payload is not None
    letter = json.loads(err.payload)
    assert letter["c"] == -3.0 and letter["seq"] == 1 and letter["trade_id"] == "t1"
    assert letter["event_id"] == f"p|S|{from_epoch_us(T0 + 1).isoformat()[:26]}Z|1"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from([0, 2]), st.integers(0, 10_000_000)),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([500_000, 2_000_000]),
)
def test_window_marks_keep_every_window_of_every_kind_and_series_span(
    rows: list[tuple[int, int, int]], window_us: int
) -> None:
    n = len(rows)
    cols = EventColumns(
        series=(("p", "A"), ("p", "B"), ("p", "C")),
        series_idx=np.array([s for s, _k, _t in rows], np.int32),
        intervals=(None,),
        interval_idx=np.zeros(n, np.int32),
        ver=np.ones(n, np.int64),
        kind=np.array([k for _s, k, _t in rows], np.uint8),
        src_ts=np.array([t for _s, _k, t in rows], np.int64),
        seq=np.arange(n, dtype=np.int64),
        present=np.zeros(n, np.uint16),
        floats={k: np.zeros(n) for k in FLOAT_FIELDS},
        ingest_ts=np.zeros(n, np.int64),
        side=np.zeros(n, np.uint8),
        trade_id=b"",
        trade_id_end=np.zeros(n, np.int64),
    )
    marks = cols.take(window_marks(cols, window_us))

    def windows(c: EventColumns) -> set[tuple[int, int, int]]:
        return {
            (int(s), int(k), int(t) // window_us)
            for s, k, t in zip(c.series_idx, c.kind, c.src_ts, strict=True)
        }

    def spans(c: EventColumns) -> dict[tuple[int, int], tuple[int, int]]:
        out: dict[tuple[int, int], tuple[int, int]] = {}
        for s, k, t in zip(c.series_idx.tolist(), c.kind.tolist(), c.src_ts.tolist(), strict=True):
            lo, hi = out.get((s, k), (t, t))
            out[(s, k)] = (min(lo, t), max(hi, t))
        return out

    assert windows(marks) == windows(cols)
    assert spans(marks) == spans(cols)
    assert marks.n <= 2 * len(windows(cols))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([("synthetic", "AAPL"), ("binance", "BTC-USDT"), ("p", "X")]),
            st.integers(MIN_EPOCH_US, MAX_EPOCH_US),
            st.integers(0, 2**63 - 1) | st.integers(0, 120),
        ),
        max_size=40,
    )
)
def test_event_id_and_decimal_texts_are_make_event_id_and_str_of_each_row(
    rows: list[tuple[tuple[str, str], int, int]],
) -> None:
    """The block-at-once texts equal ``make_event_id`` and ``str`` row by row: seq of one digit
    and of nineteen side by side, any second datetime holds, series prefixes of different
    lengths; and a series text the matrix cannot carry (outside ASCII: row by row)."""
    events = [
        StreamEvent.create(
            provider=p, symbol=s, kind="tick", src_ts=from_epoch_us(ts), c=1.0, v=1.0, seq=seq
        )
        for (p, s), ts, seq in rows
    ]
    cols = columns_from_events(events)
    assert event_id_strs(cols) == [
        make_event_id(e.provider, e.symbol, e.src_ts, e.seq) for e in events
    ]
    assert decimal_strs(cols.seq) == [str(e.seq) for e in events]
    if events:
        odd = dataclasses.replace(cols, series=tuple((f"é{p}", f"{s}\n") for p, s in cols.series))
        assert event_id_strs(odd) == [
            f"é{e.provider}|{e.symbol}\n|{isoformat_us(e.src_ts)}|{e.seq}" for e in events
        ]


def test_quote_books_keep_the_book_and_nothing_else() -> None:
    """``EventColumns.quote_books``: a quote's series, time, seq, bid/ask and sizes (with their
    present bits) as ``take`` gives them; every other column absent zeros, ~55 bytes a row."""
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    events = [
        StreamEvent.create(
            provider="p",
            symbol=f"S{k % 3}",
            kind="quote" if k % 4 else "tick",
            src_ts=t0 + timedelta(microseconds=k),
            seq=k,
            ingest_ts=t0,
            **(
                {"bid": 1.0 + k, "ask": 2.0 + k, "bid_size": None if k % 5 == 0 else 3.0}
                if k % 4
                else {"c": 1.5, "v": 2.0, "trade_id": f"t{k}"}
            ),
        )
        for k in range(2000)
    ]
    cols = columns_from_events(events)
    rows = np.flatnonzero(cols.kind == KIND_CODES["quote"])
    books, full = cols.quote_books(rows), cols.take(rows)
    assert books.n == full.n == 1500
    assert [books.series[i] for i in books.series_idx] == [full.series[i] for i in full.series_idx]
    for name in ("src_ts", "seq", "kind"):
        assert np.array_equal(getattr(books, name), getattr(full, name))
    for name in ("bid", "ask", "bid_size", "ask_size"):
        assert np.array_equal(books.has(name), full.has(name))
        has = full.has(name)
        assert np.array_equal(books.floats[name][has], full.floats[name][has])
    assert not books.has("ingest_ts").any() and not books.has("trade_id").any()
    kept = books.series_idx.nbytes + books.src_ts.nbytes + books.seq.nbytes
    kept += books.present.nbytes + books.kind.nbytes
    kept += sum(books.floats[k].nbytes for k in ("bid", "ask", "bid_size", "ask_size"))
    assert kept / books.n == 55
    # the rest shares one read-only buffer of zeros, and stays so through take and concat
    for a in (books.ver, books.ingest_ts, books.floats["c"], books.side):
        assert not a.flags.writeable and not a.any()
    again = EventColumns.concat([books.take(np.arange(10)), books.take(np.arange(10, 20))])
    assert np.array_equal(again.src_ts, full.src_ts[:20])
    assert not again.floats["c"].flags.writeable
