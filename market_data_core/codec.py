"""Wire codecs for events and signals: msgpack (default) and JSON (and, for events, the
column blocks of :mod:`market_data_core.columnar`).

Both round-trip every field exactly. msgpack carries timestamps as integer microseconds since the
epoch; JSON carries them as ISO-8601 strings with ``Z`` (the seed's format). A payload may hold one
event (a map) or several (an array of maps: a *packed* entry). Decoders auto-detect the format.

Decoding never raises anything but :class:`ContractError`: one bad item in a packed entry does
not spoil the others (:class:`DecodedBatch` keeps them apart).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import msgpack
import msgspec
from msgspec import UNSET, Meta, UnsetType
from pydantic import ValidationError

from market_data_core.columnar import BLOCK_MAGIC, decode_blocks
from market_data_core.contracts import (
    QUOTE_BAR_COLUMNS,
    Bar,
    EventKind,
    QuoteBar,
    Signal,
    StreamEvent,
    TradeSide,
    WindowBar,
    validate_event_fast,
    validate_typed_event_fast,
)
from market_data_core.errors import ContractError
from market_data_core.timeutil import (
    MAX_EPOCH_US,
    MIN_EPOCH_US,
    from_epoch_us,
    from_epoch_us_with_iso,
    isoformat_epoch_us,
    isoformat_us,
    parse_timestamp,
    to_epoch_us,
)

__all__ = [
    "CodecName",
    "DecodedBatch",
    "decode_bar",
    "decode_events",
    "decode_signal",
    "decode_window",
    "encode_bar",
    "encode_event",
    "encode_events",
    "encode_signal",
    "event_to_dict",
    "validation_reason",
]

CodecName = Literal["msgpack", "json"]
_TS_FIELDS = ("src_ts", "ingest_ts", "ts")
_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
# The JSON timestamps this codec writes (isoformat_us): the only text the fast path parses itself.
_CANONICAL_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII)


@dataclass(slots=True)
class DecodedBatch:
    """What one payload decoded into: valid events, and one ContractError per bad item."""

    events: list[StreamEvent] = field(default_factory=list)
    errors: list[ContractError] = field(default_factory=list)


def validation_reason(exc: ValidationError) -> str:
    """One readable line from a pydantic error: ``field: message; field: message``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def event_to_dict(event: StreamEvent, *, codec: CodecName = "json") -> dict[str, Any]:
    """Plain dict of the set fields; timestamps as ISO strings (json) or epoch µs (msgpack)."""
    out = {k: v for k, v in event.__dict__.items() if v is not None}
    conv = to_epoch_us if codec == "msgpack" else isoformat_us
    out["src_ts"] = conv(event.src_ts)
    if event.ingest_ts is not None:
        out["ingest_ts"] = conv(event.ingest_ts)
    return out


def _dumps(obj: Any, codec: CodecName) -> bytes:
    if codec == "msgpack":
        packed: bytes = msgpack.packb(obj, use_bin_type=True)
        return packed
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


def encode_event(event: StreamEvent, codec: CodecName = "msgpack") -> bytes:
    """One event as one payload."""
    return _dumps(event_to_dict(event, codec=codec), codec)


def encode_events(events: Sequence[StreamEvent], codec: CodecName = "msgpack") -> bytes:
    """Several events packed into one payload (an array); order is kept."""
    return _dumps([event_to_dict(e, codec=codec) for e in events], codec)


def _loads(payload: bytes) -> Any:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise ContractError("decode", f"payload must be bytes, got {type(payload).__name__}")
    data = bytes(payload)  # the same object (no copy) when payload is bytes
    if not data:
        raise ContractError("decode", "empty payload", data)
    if len(data) > _MAX_PAYLOAD_BYTES:
        raise ContractError("decode", f"payload of {len(data)} bytes exceeds 16 MiB", data)
    first = data[:1]
    if first.isspace():  # only then is the first non-blank byte worth a stripped copy
        first = data.lstrip()[:1]
    is_json = first == b"{" or first == b"["
    try:
        if is_json:
            return json.loads(data)
        return msgpack.unpackb(data, raw=False, strict_map_key=True, timestamp=0)
    except Exception as exc:  # msgpack/json raise many types; all mean "not decodable"
        kind = "JSON" if is_json else "msgpack"
        raise ContractError(
            "decode", f"not valid {kind}: {type(exc).__name__}: {exc}", data
        ) from exc


def _item_payload(item: Any) -> bytes:
    try:
        return json.dumps(item, default=str, allow_nan=True).encode()
    except (TypeError, ValueError):
        return repr(item).encode()


def _normalise_timestamps(item: dict[str, Any]) -> dict[str, Any]:
    for name in _TS_FIELDS:
        value = item.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                item[name] = from_epoch_us(value)
            except OverflowError as exc:
                raise ValueError(f"{name}: {value} µs is out of range") from exc
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: not a finite timestamp")
    return item


def _wire_datetime(value: object) -> datetime | None:
    """The aware UTC datetime the pydantic path makes of a wire timestamp; ``None`` if unsure.

    Sure of: integer µs within the datetime range (what ``_normalise_timestamps`` converts) and
    the canonical JSON text (which pydantic parses to the same instant).
    """
    if type(value) is int:
        return from_epoch_us(value) if MIN_EPOCH_US <= value <= MAX_EPOCH_US else None
    if type(value) is str and _CANONICAL_TS.fullmatch(value) is not None:
        try:
            return datetime.fromisoformat(value)  # "Z" gives tzinfo=UTC
        except ValueError:  # e.g. February 30th: pydantic gives the reason
            return None
    return None


# The last wire ingest_ts converted by the fast path, and its datetime. Producers stamp ingest_ts
# per block, so the events of a packed entry usually share it; a datetime is immutable, so the
# events may share one object too (equal to what pydantic would build for each).
_last_ingest_ts: list[tuple[object, datetime | None]] = [(None, None)]


def _fast_event(item: dict[str, Any]) -> StreamEvent | None:
    """The event ``_validated_event`` would return for ``item``, or ``None`` when not vouched for.

    See :func:`validate_event_fast` for the contract; this adds the wire timestamps.
    """
    raw_src_ts: Any = item.get("src_ts")
    src_ts: datetime | None
    if type(raw_src_ts) is int and MIN_EPOCH_US <= raw_src_ts <= MAX_EPOCH_US:
        src_ts = from_epoch_us(raw_src_ts)
        src_ts_iso = isoformat_epoch_us(raw_src_ts)  # µs formatted without the datetime
    else:
        src_ts = _wire_datetime(raw_src_ts)
        if src_ts is None:
            return None
        src_ts_iso = raw_src_ts  # canonical text: already isoformat_us(src_ts)
    raw_ingest_ts = item.get("ingest_ts")
    ingest_ts = None
    if raw_ingest_ts is not None:
        last_raw, last_ingest_ts = _last_ingest_ts[0]
        if raw_ingest_ts == last_raw and type(raw_ingest_ts) is type(last_raw):
            ingest_ts = last_ingest_ts
        else:
            ingest_ts = _wire_datetime(raw_ingest_ts)
            if ingest_ts is None:
                return None
            _last_ingest_ts[0] = (raw_ingest_ts, ingest_ts)  # one store: thread-safe
    return validate_event_fast(item, src_ts, src_ts_iso, ingest_ts)


# --- msgpack first stage: a typed msgspec decode of the whole payload -------------------------
#
# The wire types checked in C instead of per value in Python. Every type below only admits what
# the dict path (msgpack.unpackb + validate_event_fast) would vouch for with the same value:
# ints (never bools, floats or nil) for ver/seq/timestamps, msgpack str (never bin) for text,
# floats or exactly-representable ints (|x| < 2**53, converted like pydantic: exactly) for
# prices and sizes; NaN and infinities fail the bounds and so fall back (the rules would judge
# them there). Unknown keys, non-str keys, extension types and containers fail too. Duplicate
# keys: the last one wins, as in msgpack.unpackb. UNSET tells an absent field from an explicit
# nil (both paths mark a present nil as set).
_EpochUs = Annotated[int, Meta(ge=MIN_EPOCH_US, le=MAX_EPOCH_US)]
_ExactFloat = Annotated[float, Meta(gt=-(2**53), lt=2**53)]


class _WireEvent(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    """A StreamEvent as msgpack carries it (the fields in StreamEvent's order)."""

    ver: int
    provider: str
    symbol: str
    kind: EventKind
    interval: str | UnsetType | None = UNSET
    src_ts: _EpochUs
    ingest_ts: _EpochUs | UnsetType | None = UNSET
    o: _ExactFloat | UnsetType | None = UNSET
    h: _ExactFloat | UnsetType | None = UNSET
    l: _ExactFloat | UnsetType | None = UNSET  # noqa: E741 - the contract's field name
    c: _ExactFloat | UnsetType | None = UNSET
    v: _ExactFloat | UnsetType | None = UNSET
    # msgpack ints are below 2**64: the range validate_event_fast vouches for
    seq: Annotated[int, Meta(ge=0)]
    event_id: str
    bid: _ExactFloat | UnsetType | None = UNSET
    ask: _ExactFloat | UnsetType | None = UNSET
    bid_size: _ExactFloat | UnsetType | None = UNSET
    ask_size: _ExactFloat | UnsetType | None = UNSET
    trade_id: str | UnsetType | None = UNSET
    side: TradeSide | UnsetType | None = UNSET


_WIRE_DECODER = msgspec.msgpack.Decoder(list[_WireEvent] | _WireEvent)
# First bytes _loads reads as JSON (or strips as blanks first): those payloads skip the stage.
_NOT_MSGPACK_FIRST = frozenset(b"{[ \t\n\r\x0b\x0c")
_to_builtins = msgspec.to_builtins


def _typed_msgpack_events(payload: bytes) -> list[StreamEvent] | None:
    """Every event of a msgpack ``payload``, or ``None`` when not vouched for as a whole.

    ``None`` on any msgspec error (malformed, a type the wire types do not admit) and whenever
    one item breaks a rule: the caller then decodes the payload the usual way, which keeps the
    good items and gives each bad one its reason. The events are exactly what that usual path
    builds (see :func:`validate_typed_event_fast`).
    """
    try:
        decoded: list[_WireEvent] | _WireEvent = _WIRE_DECODER.decode(payload)
    except Exception:  # msgspec errors, UnicodeDecodeError...: the usual path says why
        return None
    wire = decoded if isinstance(decoded, list) else [decoded]
    if not wire:
        return None  # "empty event array" is the usual path's to report
    events = []
    last_raw, last_ingest_ts = _last_ingest_ts[0]
    for w in wire:
        raw_ingest_ts = w.ingest_ts
        ingest_ts = None
        if raw_ingest_ts is not None and raw_ingest_ts is not UNSET:
            # as _fast_event: equal and of the same type (a JSON str could be remembered)
            if raw_ingest_ts == last_raw and type(last_raw) is int:
                ingest_ts = last_ingest_ts
            else:
                ingest_ts = from_epoch_us(raw_ingest_ts)
                last_raw, last_ingest_ts = raw_ingest_ts, ingest_ts
                _last_ingest_ts[0] = (raw_ingest_ts, ingest_ts)  # one store: thread-safe
        src_ts, src_ts_iso = from_epoch_us_with_iso(w.src_ts)
        # to_builtins: the present fields only (UNSET omitted), values as decoded
        event = validate_typed_event_fast(_to_builtins(w), src_ts, src_ts_iso, ingest_ts)
        if event is None:
            return None
        events.append(event)
    return events


def _validated_event(item: Any, payload: bytes) -> StreamEvent:
    """The reference path: pydantic decides, and gives the reason. Modifies a dict ``item``."""
    if not isinstance(item, dict):
        raise ContractError(
            "decode", f"expected a map (one event), got {type(item).__name__}", payload
        )
    try:
        # the item is freshly decoded and ours: normalise it in place, no copy
        return StreamEvent.model_validate(_normalise_timestamps(item))
    except ValidationError as exc:
        raise ContractError("validation", validation_reason(exc), payload) from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise ContractError("validation", str(exc), payload) from exc


def _decode_block(payload: bytes) -> DecodedBatch:
    decoded = decode_blocks([payload])
    return DecodedBatch(decoded.columns.to_events(), [exc for _p, exc in decoded.errors])


def decode_events(payload: bytes) -> DecodedBatch:
    """Decode a payload holding one event, a packed array of events, or a column block
    (:mod:`market_data_core.columnar`).

    Never raises: an undecodable payload gives one error carrying the original bytes; in a packed
    payload or a block each invalid item gives its own error carrying that item (as JSON) as
    payload.
    """
    if type(payload) is bytes and payload[:1] == BLOCK_MAGIC[:1]:
        return _decode_block(payload)
    if (
        type(payload) is bytes
        and 0 < len(payload) <= _MAX_PAYLOAD_BYTES
        and payload[0] not in _NOT_MSGPACK_FIRST
    ):
        # msgpack: the typed first stage, all or nothing; the per-item path below otherwise
        typed = _typed_msgpack_events(payload)
        if typed is not None:
            return DecodedBatch(typed)
    batch = DecodedBatch()
    try:
        obj = _loads(payload)
    except ContractError as exc:
        batch.errors.append(exc)
        return batch
    # Each item: the plain-Python fast path first (most items are ordinary valid events and it
    # costs a fraction of pydantic's validation); pydantic for whatever it does not vouch for.
    if isinstance(obj, list):
        if not obj:
            batch.errors.append(ContractError("decode", "empty event array", bytes(payload)))
        events = batch.events
        for item in obj:
            event = _fast_event(item) if type(item) is dict else None
            if event is None:
                try:
                    event = _validated_event(item, b"")
                except ContractError as exc:
                    # the item's own bytes are only worth making for a dead letter
                    exc.payload = _item_payload(item)
                    batch.errors.append(exc)
                    continue
            events.append(event)
        return batch
    event = _fast_event(obj) if type(obj) is dict else None
    if event is None:
        try:
            event = _validated_event(obj, bytes(payload))
        except ContractError as exc:
            batch.errors.append(exc)
            return batch
    batch.events.append(event)
    return batch


def encode_signal(signal: Signal, codec: CodecName = "msgpack") -> bytes:
    """One signal as one payload."""
    d = signal.model_dump()
    d["ts"] = to_epoch_us(signal.ts) if codec == "msgpack" else isoformat_us(signal.ts)
    return _dumps(d, codec)


def decode_signal(payload: bytes) -> Signal:
    """Decode one signal; raises ``ContractError`` (only) when it cannot."""
    obj = _loads(payload)
    if not isinstance(obj, dict):
        raise ContractError("decode", f"expected a map (one signal), got {type(obj).__name__}")
    try:
        return Signal.model_validate(_normalise_timestamps(dict(obj)))
    except ValidationError as exc:
        raise ContractError("validation", validation_reason(exc), bytes(payload)) from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise ContractError("validation", str(exc), bytes(payload)) from exc


def iter_valid(batches: Iterable[DecodedBatch]) -> Iterable[StreamEvent]:
    """All valid events of several batches, in order."""
    for b in batches:
        yield from b.events


_BAR_FIELDS = (
    "provider",
    "symbol",
    "interval",
    "o",
    "h",
    "l",
    "c",
    "v",
    "vwap",
    "trade_count",
    "revision",
    "change_seq",
    "in_session",
)
_QUOTE_BAR_FIELDS = ("provider", "symbol", "interval", *QUOTE_BAR_COLUMNS, "revision", "change_seq")
# a quote bar nested in its window's bar: the window's key and change_seq are the bar's
_NESTED_QUOTE_FIELDS = tuple(
    n for n in _QUOTE_BAR_FIELDS if n not in ("provider", "symbol", "interval", "change_seq")
)
_QUOTE_PRICES = ("bid", "ask", "mid", "spread_bps")
_QUOTE_OPTIONAL = (
    "bid_size",
    "ask_size",
    "spread_bps_min",
    "spread_bps_max",
    "spread_bps_mean",
    "imbalance",
    "imbalance_close",
)


def _wire_ts(ts: datetime, codec: CodecName) -> int | str:
    return to_epoch_us(ts) if codec == "msgpack" else isoformat_us(ts)


def encode_bar(bar: WindowBar, codec: CodecName = "msgpack") -> bytes:
    """One window for the ``mdp.bars`` stream (``ts`` = window start): a trade bar
    (``type: bar``, with ``spread_bps``/``imbalance`` of the window, null without a book, and
    the window's whole quote bar under ``quote``), or a window's quote bar alone
    (``type: quote_bar``)."""
    d: dict[str, Any] = {"ver": 1}
    if isinstance(bar, QuoteBar):
        d["type"] = "quote_bar"
        d.update({name: getattr(bar, name) for name in _QUOTE_BAR_FIELDS})
        d["ts"] = _wire_ts(bar.ts, codec)
        return _dumps(d, codec)
    d["type"] = "bar"
    d.update({name: getattr(bar, name) for name in _BAR_FIELDS})
    d["ts"] = _wire_ts(bar.ts, codec)
    q = bar.quote
    d["spread_bps"] = None if q is None else q.spread_bps
    d["imbalance"] = None if q is None else q.imbalance
    d["quote"] = None if q is None else {n: getattr(q, n) for n in _NESTED_QUOTE_FIELDS}
    return _dumps(d, codec)


def _number(name: str, value: Any, *, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _when(obj: dict[str, Any]) -> datetime:
    ts = obj["ts"]
    return from_epoch_us(ts) if isinstance(ts, int) else parse_timestamp(str(ts))


def _change_seq(obj: dict[str, Any]) -> int | None:
    seq = obj.get("change_seq")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 1):
        raise ValueError(f"change_seq must be a positive integer, got {seq!r}")
    return seq


def _quote_bar(
    fields: dict[str, Any], provider: Any, symbol: Any, interval: Any, ts: datetime
) -> QuoteBar:
    for name in _QUOTE_PRICES:
        _number(name, fields.get(name), optional=False)
    for name in _QUOTE_OPTIONAL:
        _number(name, fields.get(name), optional=True)
    count = fields.get("quote_count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"quote_count must be a non-negative integer, got {count!r}")
    values: dict[str, Any] = {n: fields.get(n) for n in _NESTED_QUOTE_FIELDS}
    values["revision"] = values["revision"] or 0
    return QuoteBar(
        provider=provider,
        symbol=symbol,
        interval=interval,
        ts=ts,
        change_seq=fields.get("change_seq"),
        **values,
    )


def decode_window(payload: bytes) -> WindowBar:
    """Inverse of :func:`encode_bar`: a :class:`Bar` (with its ``quote``) or a
    :class:`QuoteBar`. Raises ``ContractError`` (only) when it cannot."""
    obj = _loads(payload)
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind not in ("bar", "quote_bar"):
        raise ContractError("decode", "expected a bar map (type=bar or quote_bar)", bytes(payload))
    try:
        when = _when(obj)
        seq = _change_seq(obj)
        if not isinstance(obj.get("provider"), str) or not isinstance(obj.get("symbol"), str):
            raise ValueError("provider and symbol must be strings")
        if kind == "quote_bar":
            fields = dict(obj)
            fields["change_seq"] = seq
            return _quote_bar(fields, obj["provider"], obj["symbol"], obj.get("interval"), when)
        return _bar(obj, when)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ContractError("validation", f"bad bar: {exc}", bytes(payload)) from exc


def _bar(obj: dict[str, Any], when: datetime) -> Bar:
    fields: dict[str, Any] = {name: obj.get(name) for name in _BAR_FIELDS}
    fields["revision"] = fields["revision"] or 0
    fields["change_seq"] = _change_seq(obj)
    nested = obj.get("quote")
    quote = None
    if nested is not None:
        if not isinstance(nested, dict):
            raise ValueError(f"quote must be a map, got {type(nested).__name__}")
        quote = _quote_bar(nested, obj["provider"], obj["symbol"], obj.get("interval"), when)
    if fields["in_session"] is not None and not isinstance(fields["in_session"], bool):
        raise ValueError(f"in_session must be a boolean, got {fields['in_session']!r}")
    bar = Bar(ts=when, quote=quote, **fields)
    for name in ("o", "h", "l", "c", "v"):
        value = getattr(bar, name)
        if value is None and name == "v":
            continue  # a provider bar without volume
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    return bar


def decode_bar(payload: bytes) -> Bar:
    """A trade bar from :func:`encode_bar` (``type: bar``); a quote bar or anything else is a
    ``ContractError`` (see :func:`decode_window` for both)."""
    obj = _loads(payload)
    if not isinstance(obj, dict) or obj.get("type") != "bar":
        raise ContractError("decode", "expected a bar map (type=bar)", bytes(payload))
    try:
        if not isinstance(obj.get("provider"), str) or not isinstance(obj.get("symbol"), str):
            raise ValueError("provider and symbol must be strings")
        return _bar(obj, _when(obj))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ContractError("validation", f"bad bar: {exc}", bytes(payload)) from exc
