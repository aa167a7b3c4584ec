"""The decoders' plain-Python fast path agrees with pydantic, and the faster time helpers agree
with the formulas they replaced.

The reference for every event is the pydantic path (``codec._validated_event``); the fast path
(``codec._fast_event``) may decline an item (``None``) but must never accept one pydantic
rejects, nor build an event that differs in any value, type, field order or fields-set.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest import mock

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from market_data_core import codec, timeutil
from market_data_core.codec import (
    DecodedBatch,
    decode_events,
    encode_event,
    encode_events,
    event_to_dict,
)
from market_data_core.contracts import _INTERVAL, _PROVIDER, _SYMBOL, StreamEvent
from market_data_core.errors import ContractError
from market_data_core.timeutil import (
    EPOCH,
    MAX_EPOCH_US,
    MIN_EPOCH_US,
    from_epoch_us,
    isoformat_epoch_us,
    isoformat_us,
    to_epoch_us,
)

FIELDS = list(StreamEvent.model_fields)
FLOAT_FIELDS = ["o", "h", "l", "c", "v", "bid", "ask", "bid_size", "ask_size"]


# --- the formulas timeutil used before (the reference for the faster versions) -------------


def ref_to_epoch_us(ts: datetime) -> int:
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def ref_from_epoch_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def ref_isoformat_us(ts: datetime) -> str:
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    return ts.isoformat(timespec="microseconds")[:-6] + "Z"


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    """A call's result, or its exception's type and text, for comparing two implementations."""
    try:
        result = fn(*args)
    except Exception as exc:  # comparing failures exactly is the point
        return ("raised", (type(exc), str(exc)))
    if isinstance(result, datetime):
        return ("datetime", (result, result.tzinfo is UTC))
    return ("value", result)


epoch_us = st.integers(MIN_EPOCH_US, MAX_EPOCH_US) | st.sampled_from(
    [MIN_EPOCH_US, MAX_EPOCH_US, 0, -1, 1, 999_999, -1_000_000, -1_000_001]
)
offsets = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
any_datetimes = st.datetimes(timezones=st.just(UTC) | offsets | st.none())


@settings(max_examples=1000, deadline=None)
@given(epoch_us)
def test_isoformat_epoch_us_is_isoformat_us_of_the_datetime(us: int) -> None:
    assert isoformat_epoch_us(us) == ref_isoformat_us(ref_from_epoch_us(us))


def test_isoformat_epoch_us_cache_stays_bounded_and_right() -> None:
    start_us = 1_700_000_000_000_000
    for i in range(10_000):
        us = start_us + i * 1_000_003
        assert isoformat_epoch_us(us) == ref_isoformat_us(ref_from_epoch_us(us))
    assert len(timeutil._SECOND_PREFIXES) <= timeutil._MAX_PREFIXES


@pytest.mark.parametrize("us", [MIN_EPOCH_US - 1, MAX_EPOCH_US + 1, 10**30, -(10**30)])
def test_out_of_range_epoch_us_raises_overflow(us: int) -> None:
    with pytest.raises(OverflowError):
        isoformat_epoch_us(us)
    with pytest.raises(OverflowError):
        from_epoch_us(us)


@settings(max_examples=1000, deadline=None)
@given(epoch_us | st.integers() | st.integers(-(10**20), 10**20))
def test_from_epoch_us_matches_the_reference(us: int) -> None:
    assert outcome(from_epoch_us, us) == outcome(ref_from_epoch_us, us)


@settings(max_examples=1000, deadline=None)
@given(any_datetimes)
def test_isoformat_us_matches_the_reference(ts: datetime) -> None:
    assert outcome(isoformat_us, ts) == outcome(ref_isoformat_us, ts)


@settings(max_examples=500, deadline=None)
@given(any_datetimes.filter(lambda ts: ts.tzinfo is not None))
def test_to_epoch_us_matches_the_reference(ts: datetime) -> None:
    assert outcome(to_epoch_us, ts) == outcome(ref_to_epoch_us, ts)


# --- fast path vs pydantic -----------------------------------------------------------------


def assert_identical(fast: StreamEvent, ref: StreamEvent) -> None:
    """Equal in every way a caller could observe (NaN and -0.0 included)."""
    assert type(fast) is type(ref) is StreamEvent
    assert list(fast.__dict__) == list(ref.__dict__) == FIELDS
    for name, value in ref.__dict__.items():
        got = fast.__dict__[name]
        assert type(got) is type(value), name
        if isinstance(value, float):
            assert repr(got) == repr(value), name
        else:
            assert got == value, name
        if isinstance(value, datetime):
            assert got.tzinfo is UTC and value.tzinfo is UTC, name
    assert fast.__pydantic_fields_set__ == ref.__pydantic_fields_set__
    assert fast.__pydantic_extra__ == ref.__pydantic_extra__
    assert fast.__pydantic_private__ == ref.__pydantic_private__
    assert repr(fast.model_dump(exclude_unset=True)) == repr(ref.model_dump(exclude_unset=True))
    assert repr(fast.model_dump()) == repr(ref.model_dump())
    if not any(isinstance(v, float) and math.isnan(v) for v in ref.__dict__.values()):
        assert fast == ref
    for name in ("json", "msgpack"):
        try:
            expected = encode_event(ref, name)  # type: ignore[arg-type]
        except Exception:  # e.g. a lone surrogate in trade_id has no msgpack form
            continue
        assert encode_event(fast, name) == expected  # type: ignore[arg-type]


def reference(item: dict[str, Any]) -> StreamEvent | ContractError:
    try:
        return codec._validated_event(copy.deepcopy(item), b"")
    except ContractError as exc:
        return exc


def check_item(item: dict[str, Any]) -> StreamEvent | None:
    """Compare both paths on one decoded item; the fast path's answer."""
    before = copy.deepcopy(item)
    fast = codec._fast_event(item)
    assert repr(item) == repr(before), "the fast path modified the item"
    if fast is not None:
        ref = reference(item)
        assert isinstance(ref, StreamEvent), f"fast path accepted what pydantic rejects: {ref}"
        assert_identical(fast, ref)
    return fast


def pydantic_only_decode(payload: bytes) -> DecodedBatch:
    """decode_events with both fast paths off (no typed msgpack stage, no per-item fast path)."""
    with (
        mock.patch.object(codec, "_typed_msgpack_events", lambda payload: None),
        mock.patch.object(codec, "_fast_event", lambda item: None),
    ):
        return decode_events(payload)


def dict_path_decode(payload: bytes) -> DecodedBatch:
    """decode_events without the typed msgpack stage (msgpack.unpackb + the per-item path)."""
    with mock.patch.object(codec, "_typed_msgpack_events", lambda payload: None):
        return decode_events(payload)


def assert_same_events(got: list[StreamEvent], want: list[StreamEvent]) -> None:
    assert len(got) == len(want)
    for fast, ref in zip(got, want, strict=True):
        assert_identical(fast, ref)


def check_typed_stage(payload: Any) -> list[StreamEvent] | None:
    """The typed msgpack stage on ``payload``: when it vouches for the payload, pydantic must
    accept every item and build identical events; its answer."""
    typed = codec._typed_msgpack_events(payload)
    if typed is not None:
        want = pydantic_only_decode(payload)
        assert want.errors == [], f"typed stage accepted what pydantic rejects: {want.errors}"
        assert_same_events(typed, want.events)
    return typed


def assert_same_batches(payload: bytes) -> DecodedBatch:
    """decode_events with and without the fast paths (the typed msgpack stage, the per-item
    path, each alone and both): the same events and the same errors."""
    got = decode_events(payload)
    want = pydantic_only_decode(payload)
    wanted_errors = [(e.reason, e.detail, e.payload) for e in want.errors]
    for batch in (got, dict_path_decode(payload)):
        assert_same_events(batch.events, want.events)
        assert [(e.reason, e.detail, e.payload) for e in batch.errors] == wanted_errors
    check_typed_stage(payload)
    return got


def wire_items(payload: bytes) -> list[dict[str, Any]]:
    obj = codec._loads(payload)
    return obj if isinstance(obj, list) else [obj]


prices = (
    st.floats(min_value=0, exclude_min=True, allow_infinity=False)
    | st.integers(1, 10**6)
    | st.sampled_from([5e-324, 1e308, 0.1, 425.15])
)
sizes = st.floats(min_value=0, allow_infinity=False) | st.sampled_from([-0.0, 0.0, 0, 7])
anything_float = st.floats() | st.integers(-(10**6), 10**6)
stamps = epoch_us.map(from_epoch_us) | st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
)


@st.composite
def valid_events(draw: st.DrawFn) -> StreamEvent:
    kind = draw(st.sampled_from(["tick", "bar", "quote"]))
    fields: dict[str, Any] = {
        "kind": kind,
        "provider": draw(st.from_regex(_PROVIDER)),
        "symbol": draw(st.from_regex(_SYMBOL)),
        "src_ts": draw(stamps),
        "seq": draw(st.integers(0, 2**64 - 1) | st.integers(0, 2**70)),
    }
    maybe = st.booleans()
    if draw(maybe):
        fields["ingest_ts"] = draw(st.none() | stamps)
    if draw(maybe):
        fields["interval"] = draw(st.none() | st.from_regex(_INTERVAL))
    if draw(maybe):
        fields["trade_id"] = draw(st.none() | st.text(max_size=8))
    if draw(maybe):
        fields["side"] = draw(st.sampled_from([None, "buy", "sell"]))
    if kind == "tick":
        fields["c"] = c = draw(prices)
        fields["v"] = draw(sizes)
        if draw(maybe):
            fields["o"] = fields["h"] = fields["l"] = c
        if draw(maybe):  # a tick's bid/ask are not judged (only a quote's are)
            fields["bid"] = draw(st.none() | anything_float)
            fields["ask"] = draw(st.none() | anything_float)
    elif kind == "bar":
        ps = sorted(draw(st.lists(prices, min_size=4, max_size=4)))
        fields["o"], fields["c"] = draw(st.permutations([ps[1], ps[2]]))
        fields["h"], fields["l"] = ps[3], ps[0]
        fields["v"] = draw(sizes)
        fields["interval"] = draw(st.from_regex(_INTERVAL))
    else:
        fields["bid"], fields["ask"] = sorted(draw(st.lists(prices, min_size=2, max_size=2)))
        if draw(maybe):
            fields["bid_size"] = draw(st.none() | sizes)
            fields["ask_size"] = draw(st.none() | sizes)
    try:
        return StreamEvent.create(**fields)
    except OverflowError:  # an offset timestamp at the edge of the datetime range
        assume(False)
        raise


def encodings(events: list[StreamEvent]) -> Iterator[tuple[str, bytes]]:
    """Every (codec, payload) the events can be written in: one each, and packed."""
    for name in ("msgpack", "json"):
        try:
            if len(events) == 1:
                yield name, encode_event(events[0], name)
            yield name, encode_events(events, name)
        except (OverflowError, UnicodeEncodeError):
            continue  # msgpack: a seq beyond 64 bits, a lone surrogate


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_events(), min_size=1, max_size=4))
def test_valid_events_take_the_fast_path_and_equal_pydantics(events: list[StreamEvent]) -> None:
    for name, payload in encodings(events):
        for item in wire_items(payload):
            big_seq = item["seq"] >= 2**64  # left to pydantic on purpose
            assert (check_item(item) is None) == big_seq, (name, item)
        if name == "msgpack":
            # the typed stage takes every valid msgpack payload, except (on purpose) prices
            # that are not exactly-representable floats: NaN, infinities, |x| >= 2**53
            typed_ok = all(
                not isinstance(v, float) or abs(v) < 2**53
                for e in events
                for v in e.__dict__.values()
            )
            assert (check_typed_stage(payload) is not None) == typed_ok, events
        batch = assert_same_batches(payload)
        assert batch.errors == []
        assert batch.events == events or any(
            isinstance(v, float) and math.isnan(v) for e in events for v in e.__dict__.values()
        )


# Values no contract field expects, or expects only sometimes: every one of them must be
# either declined by the fast path or handled exactly like pydantic handles it.
canonical_iso = epoch_us.map(isoformat_epoch_us)
odd_timestamps = st.sampled_from(
    [
        "2025-10-24T14:02:01.234567Z",
        "2025-10-24T14:02:01.234567+00:00",
        "2025-10-24T16:02:01.234567+02:00",
        "2025-10-24T14:02:01.234567",
        "2025-10-24T14:02:01Z",
        "2025-10-24 14:02:01.234567Z",
        "2025-10-24T14:02:01.234567z",
        "2025-10-24T14:02:01.2345678Z",
        "2023-02-30T00:00:00.000000Z",
        "2023-02-28T24:00:00.000000Z",
        "2016-12-31T23:59:60.000000Z",
        "0000-01-01T00:00:00.000000Z",
        "1700000000",
        "\uff11\uff12\uff13\uff14-01-01T00:00:00.000000Z",  # fullwidth digits
        "",
    ]
)
nasty = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 2**63, 2**64, 2**64 - 1, -(2**63)]),
    st.floats(),
    st.sampled_from([1.0, 0.5, -0.0, math.inf, -math.inf, math.nan, 1e300]),
    st.text(max_size=6),
    st.sampled_from(["1", "1.5", " 1", "nan", "tick", "bar", "quote", "TICK", "buy", "sell"]),
    st.sampled_from(["1s", "500ms", "1s\n", "\u0661s", "1 s", "AAPL", "AAPL\n", "a|b", "p"]),
    canonical_iso,
    odd_timestamps,
    st.integers(MIN_EPOCH_US - 10, MIN_EPOCH_US + 10) | st.integers(MAX_EPOCH_US - 10, 10**19),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.binary(max_size=3),
)


def wire_event_id(item: dict[str, Any]) -> str | None:
    """The event_id matching a (mutated) item, when its parts allow one: lets mutations reach
    the rules checked before the id instead of all failing on the id."""
    provider, symbol, seq, src = (item.get(k) for k in ("provider", "symbol", "seq", "src_ts"))
    if not (isinstance(provider, str) and isinstance(symbol, str) and isinstance(seq, int)):
        return None
    if isinstance(src, int) and not isinstance(src, bool):
        if not MIN_EPOCH_US <= src <= MAX_EPOCH_US:
            return None
        ts = from_epoch_us(src)
    elif isinstance(src, str):
        try:
            ts = datetime.fromisoformat(src)
        except ValueError:
            return None
        if ts.tzinfo is None:
            return None
    else:
        return None
    try:
        return f"{provider}|{symbol}|{isoformat_us(ts)}|{seq}"
    except OverflowError:
        return None


@st.composite
def mutated_items(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    event = draw(valid_events())
    name = draw(st.sampled_from(["msgpack", "json"]))
    item = dict(event_to_dict(event, codec=name))  # type: ignore[arg-type]
    keys = st.sampled_from([*FIELDS, "ts", "extra", ""])
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["set", "set", "set", "bool", "delete", "int", "swap"]))
        key = draw(keys)
        if action == "set":
            item[key] = draw(nasty)
        elif action == "bool":  # an int subclass: the classic hole in a hand-written type check
            item[key] = draw(st.booleans())
        elif action == "delete":
            item.pop(key, None)
        elif action == "int":  # an integral float written as an int (other producers do)
            for f in FLOAT_FIELDS:
                value = item.get(f)
                if isinstance(value, float) and value.is_integer():
                    item[f] = int(value)
        elif key in item:
            other = draw(keys)
            item[key], item[other] = item.get(other), item[key]
    if draw(st.booleans()):
        event_id = wire_event_id(item)
        if event_id is not None:
            item["event_id"] = event_id
    return name, item


def payload_of(name: str, obj: Any) -> bytes | None:
    try:
        if name == "msgpack":
            packed: bytes = msgpack.packb(obj, use_bin_type=True)
            return packed
        return json.dumps(obj).encode()
    except (TypeError, ValueError, OverflowError):
        return None  # not representable in this codec (bytes in JSON, huge ints in msgpack)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_items())
def test_mutated_items_agree_with_pydantic(named_item: tuple[str, dict[str, Any]]) -> None:
    name, item = named_item
    payload = payload_of(name, item)
    assume(payload is not None)
    assert payload is not None
    for decoded in wire_items(payload):
        check_item(decoded)
    assert_same_batches(payload)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_items(), min_size=2, max_size=5), st.sampled_from(["msgpack", "json"]))
def test_mutated_packed_entries_agree_with_pydantic(
    named_items: list[tuple[str, dict[str, Any]]], name: str
) -> None:
    payload = payload_of(name, [item for _, item in named_items])
    assume(payload is not None)
    assert payload is not None
    assert_same_batches(payload)


# --- the cases the properties rely on, stated once ----------------------------------------


def seed_item(**over: Any) -> dict[str, Any]:
    """A valid msgpack-shaped tick with ``over`` applied; its event_id follows the overrides
    (formatting ``seq`` as given, so that a coerced seq needs pydantic's own judgement)."""
    src_us = 1_761_314_521_234_567
    item: dict[str, Any] = {
        "ver": 1,
        "provider": "ibkr",
        "symbol": "SPY",
        "kind": "tick",
        "src_ts": src_us,
        "c": 425.15,
        "v": 1200.0,
        "seq": 183,
    }
    item.update(over)
    if "event_id" not in over:
        src = item["src_ts"]
        iso = isoformat_epoch_us(src) if isinstance(src, int) and src <= MAX_EPOCH_US else src
        item["event_id"] = f"{item['provider']}|{item['symbol']}|{iso}|{item['seq']}"
    return item


def test_integer_prices_are_floats_after_the_fast_path() -> None:
    event = check_item(seed_item(c=425, v=1200))
    assert event is not None
    assert type(event.c) is float and type(event.v) is float


def test_explicit_nulls_count_as_set_like_pydantic() -> None:
    event = check_item(seed_item(interval=None, bid=None))
    assert event is not None
    assert {"interval", "bid"} <= event.model_fields_set
    assert "ingest_ts" not in event.model_fields_set


@pytest.mark.parametrize(
    "over",
    [
        {"ver": True},
        {"ver": 1.0},
        {"seq": True},
        {"seq": False},
        {"seq": 183.0},
        {"seq": "183"},
        {"seq": 2**64},
        {"c": True},
        {"c": "425.15"},
        {"c": 2**53 + 1},
        {"trade_id": b"abc"},
        {"src_ts": 1_761_314_521.234567},
        {"src_ts": "2025-10-24T16:02:01.234567+02:00"},
        {"src_ts": "2025-10-24T14:02:01.234567+00:00"},
        {"extra": 1},
    ],
)
def test_the_fast_path_leaves_coercions_to_pydantic(over: dict[str, Any]) -> None:
    """What pydantic may coerce (or reject), the fast path declines; the outcome is pydantic's."""
    item = seed_item(**over)
    assert codec._fast_event(item) is None
    for name in ("msgpack", "json"):
        payload = payload_of(name, item)
        if payload is not None:
            assert_same_batches(payload)


@pytest.mark.parametrize(
    "over",
    [
        {"c": math.nan},
        {"c": -1.0},
        {"v": -0.5},
        {"kind": "quote", "bid": 2.0, "ask": 1.0},
        {"kind": "bar", "interval": "1m", "o": 1.0, "h": 1.5, "l": 0.5, "c": 2.0},
        {"seq": -1},
        {"event_id": "ibkr|SPY|2025-10-24T14:02:01.234567Z|184"},
        {"event_id": "ibkr|SPY|2025-10-24T14:02:01.234567Z|183\n"},
        {"symbol": "SP|Y"},
        {"interval": "two seconds"},
        {"side": "hold"},
        {"src_ts": MAX_EPOCH_US + 1},
    ],
)
def test_broken_rules_are_declined_and_pydantic_gives_the_reason(over: dict[str, Any]) -> None:
    item = seed_item(**over)
    assert codec._fast_event(item) is None
    batch = assert_same_batches(msgpack.packb(item))
    assert batch.events == [] and len(batch.errors) == 1


def test_canonical_json_timestamps_take_the_fast_path() -> None:
    item = seed_item(src_ts="2025-10-24T14:02:01.234567Z", ingest_ts="2025-10-24T14:02:01.3Z")
    assert codec._fast_event(item) is None  # ingest_ts is not in the canonical form
    item["ingest_ts"] = "2025-10-24T14:02:01.300000Z"
    event = check_item(item)
    assert event is not None
    assert event.ingest_ts == datetime(2025, 10, 24, 14, 2, 1, 300000, tzinfo=UTC)


@pytest.mark.parametrize("name", ["msgpack", "json"])
def test_a_shared_ingest_ts_is_converted_once_and_right(name: str) -> None:
    ingest = datetime(2025, 10, 24, 14, 2, 2, 500000, tzinfo=UTC)
    events = [
        StreamEvent.create(
            provider="p",
            symbol="S",
            kind="tick",
            src_ts=EPOCH,
            ingest_ts=ingest,
            c=1.0,
            v=1.0,
            seq=i,
        )
        for i in range(3)
    ]
    payload = encode_events(events, name)  # type: ignore[arg-type]
    assert [check_item(item) for item in wire_items(payload)] == events
    assert assert_same_batches(payload).events == events


@pytest.mark.parametrize("same_value", [1, 1.0, True, "1", 1_761_314_522_500_000])
def test_a_remembered_ingest_ts_needs_the_same_type_too(same_value: object) -> None:
    """An ingest_ts equal to the previous one but of another type is not taken from memory."""
    first = seed_item(ingest_ts=1_761_314_522_500_000)
    second = seed_item(ingest_ts=same_value)
    if same_value == 1:
        first["ingest_ts"] = 1  # 1 µs after the epoch: the int the others equal
    assert_same_batches(msgpack.packb([first, second]))
    assert check_item(first) is not None
    check_item(second)


# --- the typed msgpack stage (msgspec): what it must decline or take exactly --------------


def test_the_wire_struct_has_exactly_the_contract_fields() -> None:
    """An extra Struct field would let an unknown key through; a missing one declines it."""
    assert list(codec._WireEvent.__struct_fields__) == FIELDS


def raw_map(pairs: list[tuple[Any, Any]], **packb: Any) -> bytes:
    """A msgpack map written pair by pair (duplicate keys allowed), values packed with
    ``msgpack.packb(value, use_bin_type=True, **packb)``."""
    assert len(pairs) < 16
    out = bytes([0x80 | len(pairs)])
    for key, value in pairs:
        out += msgpack.packb(key, use_bin_type=True) + msgpack.packb(
            value, use_bin_type=True, **packb
        )
    return out


def raw_array(maps: list[bytes]) -> bytes:
    """A msgpack array (array 16 header) of already packed items."""
    return bytes([0xDC]) + len(maps).to_bytes(2, "big") + b"".join(maps)


def seed_pairs(**over: Any) -> list[tuple[Any, Any]]:
    return list(seed_item(**over).items())


def test_a_plain_msgpack_payload_takes_the_typed_stage() -> None:
    events = check_typed_stage(raw_map(seed_pairs(ingest_ts=1_761_314_522_500_000)))
    assert events is not None and len(events) == 1
    assert events[0].model_fields_set == {*seed_item(), "ingest_ts"}


def test_the_typed_stage_marks_explicit_nils_as_set() -> None:
    payload = raw_map(seed_pairs(interval=None, bid=None, ingest_ts=None, side=None))
    events = check_typed_stage(payload)
    assert events is not None
    assert {"interval", "bid", "ingest_ts", "side"} <= events[0].model_fields_set
    assert "ask" not in events[0].model_fields_set
    assert_same_batches(payload)


@pytest.mark.parametrize(
    ("pairs", "typed"),
    [
        # duplicate keys: the last one wins, as in msgpack.unpackb
        ([*seed_pairs(), ("c", 1.0)], True),
        ([*seed_pairs(), ("c", None)], False),  # a tick without c: pydantic's reason
        ([*seed_pairs(), ("v", True)], False),
        ([("c", True), *seed_pairs()], False),  # a bad first value fails the typed decode
        ([*seed_pairs(), ("trade_id", "x"), ("trade_id", None)], True),
        ([*seed_pairs(), ("seq", 184)], False),  # the event_id was made for seq 183
        # ints for floats: exact below 2**53 only
        (seed_pairs(c=2**53 - 1), True),
        (seed_pairs(bid=-(2**53) + 1), True),  # a tick's bid is not judged
        (seed_pairs(c=2**53), False),
        (seed_pairs(c=2**53 + 1), False),
        (seed_pairs(v=2**64 - 1), False),
        (seed_pairs(v=-(2**63)), False),
        (seed_pairs(c=float(2**53)), False),  # a float that large: declined too (pydantic takes it)
        (seed_pairs(v=-0.0), True),
        (seed_pairs(v=0), True),
        (seed_pairs(c=math.nan), False),
        (seed_pairs(bid=math.inf), False),  # a tick's bid is not judged: pydantic accepts it
        # ints for ints: the whole msgpack range, bools never
        (seed_pairs(seq=2**64 - 1), True),
        (seed_pairs(seq=2**63), True),
        (seed_pairs(seq=-1), False),
        (seed_pairs(seq=True), False),
        (seed_pairs(ver=2**64 - 1), False),
        (seed_pairs(ver=True), False),
        (seed_pairs(ver=1.0), False),
        (seed_pairs(src_ts=MAX_EPOCH_US), True),
        (seed_pairs(src_ts=MIN_EPOCH_US), True),
        (seed_pairs(src_ts=MAX_EPOCH_US + 1), False),
        (seed_pairs(ingest_ts=MIN_EPOCH_US - 1), False),
        (seed_pairs(ingest_ts=True), False),
        # bin where text is expected, text where a number is
        (seed_pairs(provider=b"ibkr"), False),
        (seed_pairs(trade_id=b"7"), False),
        (seed_pairs(side=b"buy"), False),
        (seed_pairs(c="425.15"), False),
        (seed_pairs(src_ts="2025-10-24T14:02:01.234567Z"), False),
        # nil for required fields
        (seed_pairs(ver=None), False),
        (seed_pairs(seq=None), False),
        (seed_pairs(src_ts=None), False),
        (seed_pairs(kind=None), False),
        # extension types and containers where scalars are expected
        (seed_pairs(c=msgpack.ExtType(5, b"\x00")), False),
        (seed_pairs(src_ts=msgpack.Timestamp(1_761_314_521, 0)), False),
        (seed_pairs(c=[425.15]), False),
        (seed_pairs(provider={"a": 1}), False),
        (seed_pairs(trade_id=[]), False),
        # keys: unknown, bin-typed, not text
        ([*seed_pairs(), ("extra", 1)], False),
        ([*seed_pairs(), ("ts", 1)], False),
        ([*seed_pairs()[1:], (b"ver", 1)], False),
        ([*seed_pairs(), (1, 1)], False),
        # the value rules, each broken once (the typed stage must check them itself)
        (seed_pairs(provider="ib|kr"), False),
        (seed_pairs(provider=""), False),
        (seed_pairs(provider="-ibkr"), False),
        (seed_pairs(symbol="SP|Y"), False),
        (seed_pairs(symbol="S" * 33), False),
        (seed_pairs(interval="two seconds"), False),
        (seed_pairs(interval="1s"), True),
        (seed_pairs(ver=2), False),
        (seed_pairs(event_id="ibkr|SPY|2025-10-24T14:02:01.234567Z|184"), False),
        (seed_pairs(c=0.0), False),
        (seed_pairs(v=-1.0), False),
        (seed_pairs(kind="bar"), False),
        (seed_pairs(kind="quote", bid=2.0, ask=1.0), False),
        (seed_pairs(kind="quote", bid=1.0, ask=2.0, bid_size=-1.0), False),
        (seed_pairs(kind="quote", bid=1.0, ask=2.0, ask_size=0.0), True),
        (seed_pairs(kind="bar", interval="1m", o=1.0, h=1.5, l=0.5, c=2.0), False),
        (seed_pairs(kind="bar", interval="1m", o=1.0, h=2.5, l=0.5, c=2.0), True),
        # enums: only the contract's spellings
        (seed_pairs(kind="TICK"), False),
        (seed_pairs(side="hold"), False),
        (seed_pairs(side="sell"), True),
    ],
)
def test_the_typed_stage_takes_or_declines_like_the_reference(
    pairs: list[tuple[Any, Any]], typed: bool
) -> None:
    for payload in (raw_map(pairs), raw_array([raw_map(pairs)] * 2)):
        assert (check_typed_stage(payload) is not None) == typed
        assert_same_batches(payload)


def test_float32_prices_are_widened_like_the_reference() -> None:
    payload = raw_map(seed_pairs(c=425.15, v=0.1), use_single_float=True)
    events = check_typed_stage(payload)
    assert events is not None
    assert events[0].c == float(msgpack.unpackb(msgpack.packb(425.15, use_single_float=True)))


def test_one_bad_item_sends_the_whole_entry_the_usual_way() -> None:
    good = [raw_map(seed_pairs(seq=i, c=100.0 + i)) for i in range(5)]
    bad = raw_map(seed_pairs(seq=99, c=-1.0))
    payload = raw_array([*good[:2], bad, *good[2:]])
    assert codec._typed_msgpack_events(payload) is None
    batch = assert_same_batches(payload)
    assert [e.seq for e in batch.events] == [0, 1, 2, 3, 4]
    assert len(batch.errors) == 1 and "c must be > 0" in batch.errors[0].detail


@pytest.mark.parametrize(
    "payload",
    [
        raw_map(seed_pairs()) + b"\x00",  # trailing bytes
        raw_map(seed_pairs())[:-3],  # truncated
        msgpack.packb([]),
        msgpack.packb(5),
        msgpack.packb("tick"),
        msgpack.packb([5, seed_item()]),
        msgpack.packb([[seed_item()]]),
        raw_map(seed_pairs(provider="ib\udcff"), unicode_errors="surrogatepass"),  # bad UTF-8
        b"\xc1",  # never-used msgpack byte
        b" " + raw_map(seed_pairs()),
    ],
)
def test_undecodable_payloads_fall_back_and_give_the_usual_error(payload: bytes) -> None:
    assert codec._typed_msgpack_events(payload) is None
    assert assert_same_batches(payload).errors


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_other_buffer_types_decode_the_same(wrap: Any) -> None:
    payload = raw_array([raw_map(seed_pairs(seq=i)) for i in range(3)])
    got = decode_events(wrap(payload))
    assert_same_events(got.events, pydantic_only_decode(payload).events)
    assert got.errors == []


@settings(max_examples=300, deadline=None)
@given(epoch_us)
def test_from_epoch_us_with_iso_is_both_helpers(us: int) -> None:
    dt, iso = timeutil.from_epoch_us_with_iso(us)
    assert outcome(lambda: dt) == outcome(ref_from_epoch_us, us)
    assert iso == ref_isoformat_us(ref_from_epoch_us(us)) == isoformat_epoch_us(us)


@pytest.mark.parametrize("us", [MIN_EPOCH_US - 1, MAX_EPOCH_US + 1, 10**30, -(10**30)])
def test_from_epoch_us_with_iso_raises_overflow_out_of_range(us: int) -> None:
    with pytest.raises(OverflowError):
        timeutil.from_epoch_us_with_iso(us)
