"""Versioned message contracts: StreamEvent v1, Signal v1, and the Bar the store keeps.

Every rule a consumer relies on is checked here, once, with a precise reason:
``ContractError`` (via the codecs) carries that reason to the dead-letter stream.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from market_data_core.timeutil import isoformat_us

__all__ = [
    "QUOTE_BAR_COLUMNS",
    "SUPPORTED_VERSIONS",
    "Bar",
    "EventKind",
    "QuoteBar",
    "Signal",
    "StreamEvent",
    "TradeSide",
    "WindowBar",
    "make_event_id",
    "make_signal_id",
    "validate_event_fast",
    "validate_typed_event_fast",
]

SUPPORTED_VERSIONS = (1,)
EventKind = Literal["tick", "bar", "quote"]
TradeSide = Literal["buy", "sell"]

# '|' separates event_id parts, so it may appear in neither provider nor symbol.
# \Z, not $: "$" also matches before a trailing newline ("AAPL\n" is not a symbol)
_PROVIDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_SYMBOL = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9._\-/:=^]{0,31}\Z")
_ADAPTER = re.compile(r"^[a-z][a-z0-9_\-]{0,31}\Z")
_INTERVAL = re.compile(r"^[0-9]+(us|ms|s|m|h|d)\Z")


# Names seen valid before skip the regex (hot path); bounded so hostile input cannot grow them.
_GOOD_PROVIDERS: set[str] = set()
_GOOD_SYMBOLS: set[str] = set()
_MAX_REMEMBERED = 100_000


def _remember(cache: set[str], name: str) -> None:
    if len(cache) < _MAX_REMEMBERED:
        cache.add(name)


def _is_provider(v: str) -> bool:
    if v in _GOOD_PROVIDERS:
        return True
    if _PROVIDER.match(v):
        _remember(_GOOD_PROVIDERS, v)
        return True
    return False


def _is_symbol(v: str) -> bool:
    if v in _GOOD_SYMBOLS:
        return True
    if _SYMBOL.match(v):
        _remember(_GOOD_SYMBOLS, v)
        return True
    return False


def _check_provider(v: str) -> str:
    if not _is_provider(v):
        raise ValueError(f"malformed provider {v!r} (letters, digits, '_', '.', '-'; max 64)")
    return v


def _check_symbol(v: str) -> str:
    if not _is_symbol(v):
        raise ValueError(
            f"malformed symbol {v!r} (letters, digits and . _ - / : = ^; max 32; no '|')"
        )
    return v


def make_event_id(provider: str, symbol: str, src_ts: datetime, seq: int) -> str:
    """``provider|symbol|src_ts(ISO-8601, µs, Z)|seq``: the same source record, the same id."""
    return f"{provider}|{symbol}|{isoformat_us(src_ts)}|{seq}"


def make_signal_id(provider: str, symbol: str, ts: datetime, name: str, adapter: str) -> str:
    """``provider|symbol|ts|name|adapter``: a signal re-emitted on replay keeps its id."""
    return f"{provider}|{symbol}|{isoformat_us(ts)}|{name}|{adapter}"


def _aware_utc(value: datetime, field: str) -> datetime:
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{field} is naive; timestamps must be timezone-aware UTC")
    return value.astimezone(UTC)


_INF = math.inf


def _price_problem(name: str, value: float) -> str | None:
    if 0 < value < math.inf:
        return None
    if not math.isfinite(value):
        return f"{name} is not finite ({value})"
    return f"{name} must be > 0, got {value}"


def _size_problem(name: str, value: float | None) -> str | None:
    if value is None or 0 <= value < math.inf:
        return None
    if not math.isfinite(value):
        return f"{name} is not finite ({value})"
    return f"{name} must be >= 0, got {value}"


def _inconsistency(
    kind: str,
    interval: str | None,
    o: float | None,
    h: float | None,
    l: float | None,  # noqa: E741
    c: float | None,
    v: float | None,
    bid: float | None,
    ask: float | None,
    bid_size: float | None,
    ask_size: float | None,
) -> str | None:
    """The first cross-field rule a StreamEvent breaks (the reason), or ``None``.

    The single statement of those rules: ``StreamEvent._consistent`` (pydantic) and
    ``validate_event_fast`` (the decoders' fast path) both ask it.
    """
    # Hot path (every event, every consumer): plain locals, no loops over names.
    if kind == "tick":
        if c is None:
            return "a tick needs its trade price in c"
        if v is None:
            return "a tick needs its trade size in v"
    elif kind == "bar":
        if o is None or h is None or l is None or c is None:
            given = {"o": o, "h": h, "l": l, "c": c}
            missing = [n for n, value in given.items() if value is None]
            return f"a bar needs o, h, l and c; missing {', '.join(missing)}"
        if interval is None:
            return "a bar needs its interval (e.g. '1m')"
    elif bid is None or ask is None:
        return "a quote needs bid and ask"
    # Each inline range test is exactly the helper's "no problem" case (NaN fails it too): the
    # helper, which words the reason, is called only for a value that breaks its rule.
    problem = None
    if o is not None and not 0 < o < _INF:
        problem = _price_problem("o", o)
    if problem is None and h is not None and not 0 < h < _INF:
        problem = _price_problem("h", h)
    if problem is None and l is not None and not 0 < l < _INF:
        problem = _price_problem("l", l)
    if problem is None and c is not None and not 0 < c < _INF:
        problem = _price_problem("c", c)
    if problem is None and v is not None and not 0 <= v < _INF:
        problem = _size_problem("v", v)
    if problem is not None:
        return problem
    if kind == "quote":
        assert bid is not None and ask is not None
        if not (
            0 < bid < _INF
            and 0 < ask < _INF
            and (bid_size is None or 0 <= bid_size < _INF)
            and (ask_size is None or 0 <= ask_size < _INF)
        ):
            problem = (
                _price_problem("bid", bid)
                or _price_problem("ask", ask)
                or _size_problem("bid_size", bid_size)
                or _size_problem("ask_size", ask_size)
            )
            if problem is not None:
                return problem
        if bid > ask:
            return f"crossed quote: bid ({bid}) > ask ({ask})"
    if o is not None and c is not None:
        if h is not None and h < (o if o > c else c):
            return f"h ({h}) < max(o, c) ({max(o, c)})"
        if l is not None and l > (o if o < c else c):
            return f"l ({l}) > min(o, c) ({min(o, c)})"
    if h is not None and l is not None and h < l:
        return f"h ({h}) < l ({l})"
    return None


class StreamEvent(BaseModel):
    """One market-data event on the events stream (v1).

    ``kind="tick"`` is a trade: price in ``c``, size in ``v`` (``o=h=l=c`` allowed, or omitted).
    ``kind="bar"`` is a provider bar of ``interval`` (``v`` optional: quote-derived bars such
    as FX bid bars carry no volume). ``kind="quote"`` is top of book (``bid``,
    ``ask``, sizes). ``src_ts`` is event time (UTC, µs); ``ingest_ts`` when mdp received it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ver: int
    provider: str
    symbol: str
    kind: EventKind
    interval: str | None = None
    src_ts: datetime
    ingest_ts: datetime | None = None
    o: float | None = None
    h: float | None = None
    l: float | None = None  # noqa: E741 - the seed's field name
    c: float | None = None
    v: float | None = None
    seq: int
    event_id: str
    bid: float | None = None
    ask: float | None = None
    bid_size: float | None = None
    ask_size: float | None = None
    trade_id: str | None = None
    side: TradeSide | None = None

    @field_validator("ver")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v not in SUPPORTED_VERSIONS:
            raise ValueError(
                f"unknown ver {v} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
            )
        return v

    _provider_ok = field_validator("provider")(_check_provider)
    _symbol_ok = field_validator("symbol")(_check_symbol)

    @field_validator("interval")
    @classmethod
    def _interval_ok(cls, v: str | None) -> str | None:
        if v is not None and not _INTERVAL.match(v):
            raise ValueError(f"malformed interval {v!r} (expected e.g. '1s', '500ms', '1m')")
        return v

    @field_validator("src_ts")
    @classmethod
    def _src_ts_aware(cls, v: datetime) -> datetime:
        return _aware_utc(v, "src_ts")

    @field_validator("ingest_ts")
    @classmethod
    def _ingest_ts_aware(cls, v: datetime | None) -> datetime | None:
        return None if v is None else _aware_utc(v, "ingest_ts")

    @field_validator("seq")
    @classmethod
    def _seq_ok(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"seq must be >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StreamEvent:
        problem = _inconsistency(
            self.kind,
            self.interval,
            self.o,
            self.h,
            self.l,
            self.c,
            self.v,
            self.bid,
            self.ask,
            self.bid_size,
            self.ask_size,
        )
        if problem is not None:
            raise ValueError(problem)
        expected = make_event_id(self.provider, self.symbol, self.src_ts, self.seq)
        if self.event_id != expected:
            raise ValueError(
                f"event_id {self.event_id!r} does not match its fields (expected {expected!r})"
            )
        return self

    @property
    def price(self) -> float:
        """The trade price of a tick, the close of a bar, the mid of a quote."""
        if self.kind == "quote":
            assert self.bid is not None and self.ask is not None
            return (self.bid + self.ask) / 2
        assert self.c is not None
        return self.c

    @classmethod
    def trusted(cls, **fields: Any) -> StreamEvent:
        """Build an event WITHOUT validation, computing ``event_id`` (and ``ver=1``).

        Only for producers whose values are valid by construction (the synthetic generator:
        finite positive floats, aware UTC timestamps, a valid symbol); every consumer validates
        on decode anyway, so a bug here ends in the dead-letter stream, never in the store.
        Five times cheaper than :meth:`create` on the producer's hot path.
        """
        fields.setdefault("ver", 1)
        if "event_id" not in fields:
            fields["event_id"] = make_event_id(
                fields["provider"], fields["symbol"], fields["src_ts"], fields["seq"]
            )
        data = dict(_EVENT_DEFAULTS)
        data.update(fields)
        event = cls.__new__(cls)
        # what pydantic's own model_construct sets, minus its per-field Python loop
        object.__setattr__(event, "__dict__", data)
        object.__setattr__(event, "__pydantic_fields_set__", set(fields))
        object.__setattr__(event, "__pydantic_extra__", None)
        object.__setattr__(event, "__pydantic_private__", None)
        return event

    @classmethod
    def create(cls, **fields: Any) -> StreamEvent:
        """Build a validated event, computing ``event_id`` (and ``ver=1``) when not given."""
        fields.setdefault("ver", 1)
        if "event_id" not in fields:
            src_ts = fields["src_ts"]
            if isinstance(src_ts, datetime):
                src_ts = _aware_utc(src_ts, "src_ts")
            fields["event_id"] = make_event_id(
                fields["provider"], fields["symbol"], src_ts, fields["seq"]
            )
        return cls.model_validate(fields)


_EVENT_DEFAULTS: dict[str, Any] = {
    name: info.default for name, info in StreamEvent.model_fields.items() if not info.is_required()
}
_EVENT_FIELDS = frozenset(StreamEvent.model_fields)
_FIELDS_TEMPLATE: dict[str, Any] = {
    name: _EVENT_DEFAULTS.get(name) for name in StreamEvent.model_fields
}
_KINDS = frozenset(get_args(EventKind))
_SIDES = frozenset(get_args(TradeSide))
# Every int of at most this magnitude is exactly a float: pydantic's int -> float is then float().
_MAX_EXACT_FLOAT_INT = 2**53
# msgpack's integer range; larger seqs (JSON only) are left to pydantic.
_MAX_FAST_SEQ = 2**64


class _Unsure(Exception):
    """The fast path cannot vouch for an item: pydantic decides."""


def _lax_float(value: object) -> float | None:
    """``value`` as pydantic would store it in a ``float | None`` field, or raise ``_Unsure``.

    Only the plain cases: ``None``, a float (kept as is: NaN, inf and -0.0 included, the rules
    judge them later) and an int small enough to be exactly a float (pydantic converts it).
    Bools, big ints, numeric strings and anything else raise.
    """
    if value is None or type(value) is float:
        return value
    if type(value) is int and -_MAX_EXACT_FLOAT_INT <= value <= _MAX_EXACT_FLOAT_INT:
        return float(value)
    raise _Unsure


def validate_event_fast(
    item: dict[str, Any], src_ts: datetime, src_ts_iso: str, ingest_ts: datetime | None
) -> StreamEvent | None:
    """``StreamEvent.model_validate(item)`` in plain Python for the usual shapes, else ``None``.

    For the decoders' hot path (pydantic's validation is most of a consumer's decode cost).
    The caller has already turned the wire timestamps into ``src_ts``/``ingest_ts`` (aware UTC,
    exactly what the pydantic path would get; ``ingest_ts`` is ``None`` when absent or null) and
    ``src_ts_iso`` is ``isoformat_us(src_ts)``; the other values are read from ``item``.

    Contract: when this returns an event, ``model_validate`` would have accepted the same item
    and built an equal event: the same field values and types, the same ``__dict__`` order and
    the same fields set. ``None`` means "not vouched for" (a broken rule, or merely an unusual
    item: an unknown key, a bool, a numeric string...): the caller must then run pydantic, which
    accepts or gives the reason. ``item`` is not modified.
    """
    if not _EVENT_FIELDS.issuperset(item):
        return None  # an unknown key (extra="forbid")
    try:  # the required fields (a dict subscript is cheaper than .get)
        ver = item["ver"]
        provider = item["provider"]
        symbol = item["symbol"]
        kind = item["kind"]
        seq = item["seq"]
        event_id = item["event_id"]
    except KeyError:
        return None
    if type(ver) is not int or ver not in SUPPORTED_VERSIONS:
        return None
    # names seen before are a set look-up, inline (no call)
    if type(provider) is not str or (
        provider not in _GOOD_PROVIDERS and not _is_provider(provider)
    ):
        return None
    if type(symbol) is not str or (symbol not in _GOOD_SYMBOLS and not _is_symbol(symbol)):
        return None
    if type(kind) is not str or kind not in _KINDS:
        return None
    if type(seq) is not int or not 0 <= seq < _MAX_FAST_SEQ:
        return None
    if type(event_id) is not str:
        return None
    get = item.get
    interval = get("interval")
    if interval is not None and (type(interval) is not str or not _INTERVAL.match(interval)):
        return None
    trade_id = get("trade_id")
    if trade_id is not None and type(trade_id) is not str:
        return None
    side = get("side")
    if side is not None and (type(side) is not str or side not in _SIDES):
        return None
    o, h, l, c, v = get("o"), get("h"), get("l"), get("c"), get("v")  # noqa: E741
    bid, ask, bid_size, ask_size = get("bid"), get("ask"), get("bid_size"), get("ask_size")
    # usually all floats or absent: one inline test instead of nine calls
    floats_as_given = (
        (o is None or type(o) is float)
        and (h is None or type(h) is float)
        and (l is None or type(l) is float)
        and (c is None or type(c) is float)
        and (v is None or type(v) is float)
        and (bid is None or type(bid) is float)
        and (ask is None or type(ask) is float)
        and (bid_size is None or type(bid_size) is float)
        and (ask_size is None or type(ask_size) is float)
    )
    if not floats_as_given:
        try:  # pydantic converts an int to a float; anything else is for pydantic to judge
            o, h, c, v = _lax_float(o), _lax_float(h), _lax_float(c), _lax_float(v)
            l = _lax_float(l)  # noqa: E741
            bid, ask = _lax_float(bid), _lax_float(ask)
            bid_size, ask_size = _lax_float(bid_size), _lax_float(ask_size)
        except _Unsure:
            return None
    if _inconsistency(kind, interval, o, h, l, c, v, bid, ask, bid_size, ask_size) is not None:
        return None
    # make_event_id(provider, symbol, src_ts, seq), from the text the caller already has
    if event_id != f"{provider}|{symbol}|{src_ts_iso}|{seq}":
        return None
    # The __dict__ model_validate builds: every field in declaration order (model_dump and
    # event_to_dict follow it). Copying a template and updating it keeps that order and is
    # cheaper than a 20-entry literal; the values are the ones checked above.
    fields = _FIELDS_TEMPLATE.copy()
    fields.update(item)
    fields["src_ts"] = src_ts
    fields["ingest_ts"] = ingest_ts
    if not floats_as_given:
        fields.update(
            {
                "o": o,
                "h": h,
                "l": l,
                "c": c,
                "v": v,
                "bid": bid,
                "ask": ask,
                "bid_size": bid_size,
                "ask_size": ask_size,
            }
        )
    event = object.__new__(StreamEvent)  # what StreamEvent.__new__ is, one lookup cheaper
    object.__setattr__(event, "__dict__", fields)
    # model_validate marks every key given, an explicit None included (exclude_unset relies on it)
    object.__setattr__(event, "__pydantic_fields_set__", set(item))
    object.__setattr__(event, "__pydantic_extra__", None)
    object.__setattr__(event, "__pydantic_private__", None)
    return event


def validate_typed_event_fast(
    item: dict[str, Any], src_ts: datetime, src_ts_iso: str, ingest_ts: datetime | None
) -> StreamEvent | None:
    """:func:`validate_event_fast` for an item whose value TYPES a typed decoder already checked.

    The caller (the msgpack decoder's first stage, a msgspec Struct) guarantees that ``item``
    holds only StreamEvent field names, all the required ones, and that each value is already
    what pydantic would store: ``ver``/``seq`` an ``int`` (not a bool), ``0 <= seq < 2**64``;
    ``provider``/``symbol``/``event_id`` and a non-null ``interval``/``trade_id`` a ``str``;
    ``kind`` one of :data:`EventKind`, a non-null ``side`` one of :data:`TradeSide`; each price
    or size ``None`` or a ``float`` (an int converted exactly). Timestamps as for
    :func:`validate_event_fast`. What is left to check here are the value rules (version,
    names, interval, cross-field rules, event_id), the same ones ``validate_event_fast`` checks.

    The same contract: an event equal in every way to what ``model_validate`` builds, or
    ``None`` (not vouched for; the caller falls back). ``item`` is not modified.
    """
    if item["ver"] not in SUPPORTED_VERSIONS:
        return None
    provider = item["provider"]
    if provider not in _GOOD_PROVIDERS and not _is_provider(provider):
        return None
    symbol = item["symbol"]
    if symbol not in _GOOD_SYMBOLS and not _is_symbol(symbol):
        return None
    # the __dict__ model_validate builds (declaration order, defaults for absent fields)
    fields = _FIELDS_TEMPLATE.copy()
    fields.update(item)
    interval = fields["interval"]
    if interval is not None and not _INTERVAL.match(interval):
        return None
    problem = _inconsistency(
        fields["kind"],
        interval,
        fields["o"],
        fields["h"],
        fields["l"],
        fields["c"],
        fields["v"],
        fields["bid"],
        fields["ask"],
        fields["bid_size"],
        fields["ask_size"],
    )
    if problem is not None:
        return None
    # make_event_id(provider, symbol, src_ts, seq), from the text the caller already has
    if fields["event_id"] != f"{provider}|{symbol}|{src_ts_iso}|{fields['seq']}":
        return None
    fields["src_ts"] = src_ts
    fields["ingest_ts"] = ingest_ts
    event = _new_object(StreamEvent)
    _set_attribute(event, "__dict__", fields)
    _set_attribute(event, "__pydantic_fields_set__", set(item))
    _set_attribute(event, "__pydantic_extra__", None)
    _set_attribute(event, "__pydantic_private__", None)
    return event


# pre-bound: two attribute look-ups fewer for each of the five calls per event
_new_object = object.__new__
_set_attribute = object.__setattr__


class Signal(BaseModel):
    """One inference output (v1): ``name`` fired for ``symbol`` at event time ``ts``.

    ``state`` is ``active``, or ``retracted`` when a corrected bar re-scored its symbol and the
    signal no longer holds (the row stays in the table with that state; ``mdp.signals`` carries
    the retraction as an event with the same ``signal_id``). The last event per ``signal_id``
    on the stream is the row's current state.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ver: int = 1
    provider: str
    symbol: str
    ts: datetime
    name: str
    value: float
    score: float
    meta: dict[str, Any] = {}
    adapter: str = "rules"
    signal_id: str = ""
    state: Literal["active", "retracted"] = "active"

    @field_validator("ver")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v not in SUPPORTED_VERSIONS:
            raise ValueError(
                f"unknown ver {v} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})"
            )
        return v

    @field_validator("ts")
    @classmethod
    def _ts_aware(cls, v: datetime) -> datetime:
        return _aware_utc(v, "ts")

    _provider_ok = field_validator("provider")(_check_provider)
    _symbol_ok = field_validator("symbol")(_check_symbol)

    @field_validator("adapter")
    @classmethod
    def _adapter_ok(cls, v: str) -> str:
        if not _ADAPTER.match(v):
            raise ValueError(
                f"malformed adapter {v!r} (rules, sklearn or a plugin's name: lowercase "
                "letters, digits, '_', '-'; max 32)"
            )
        return v

    @model_validator(mode="after")
    def _finite_and_id(self) -> Signal:
        for name in ("value", "score"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} is not finite ({getattr(self, name)})")
        expected = make_signal_id(self.provider, self.symbol, self.ts, self.name, self.adapter)
        if not self.signal_id:
            object.__setattr__(self, "signal_id", expected)
        elif self.signal_id != expected:
            raise ValueError(
                f"signal_id {self.signal_id!r} does not match its fields (expected {expected!r})"
            )
        return self


@dataclass(frozen=True, slots=True)
class QuoteBar:
    """The top of book over one window ``[ts, ts + interval)`` (key: provider, symbol,
    interval, ts), as the store keeps it in ``quote_bars``.

    The book is a step function of event time: a quote sets it at its ``src_ts``, and of the
    quotes at one instant the last by ``(src_ts, seq)`` is the book at that instant. The
    window starts with the book *carried* from the last quote before ``ts``, if that quote is
    at most ``micro_batch.quote_carry_ms`` older than ``ts`` (else the window's book starts at
    its first quote). A window has a quote bar when it holds quotes, or trades and a carried
    book.

    - ``bid``, ``ask``, ``bid_size``, ``ask_size``: the book at the window's close; ``mid`` =
      ``(bid + ask) / 2`` of it.
    - ``quote_count``: the quotes in the window (0: only trades, the book carried).
    - ``spread_bps_min``/``_max``/``_mean``: over the window's quotes (each quote's
      ``(ask - bid) / ((ask + bid) / 2) * 1e4``; ``None`` when ``quote_count`` is 0).
    - ``spread_bps``: the time-weighted mean spread: each book state weighted by how long it
      stood inside the window (from its instant, or from ``ts`` for the carried one, to the
      next instant or the window end). The window's spread, ``None`` never.
    - ``imbalance``: the time-weighted top-of-book imbalance
      ``(bid_size - ask_size) / (bid_size + ask_size)`` over the time it is defined (both
      sizes known, not both 0); ``imbalance_close`` that of the closing book; ``None`` where
      undefined.

    ``revision`` counts changes after the first write (late quotes, or a carried book that a
    late quote changed); ``change_seq`` as for :class:`Bar` (``None`` off the change log).
    """

    provider: str
    symbol: str
    interval: str
    ts: datetime
    bid: float
    ask: float
    bid_size: float | None
    ask_size: float | None
    mid: float
    quote_count: int
    spread_bps: float
    spread_bps_min: float | None
    spread_bps_max: float | None
    spread_bps_mean: float | None
    imbalance: float | None
    imbalance_close: float | None
    revision: int = 0
    change_seq: int | None = None

    @property
    def key(self) -> tuple[str, str, str, datetime]:
        return (self.provider, self.symbol, self.interval, self.ts)


QUOTE_BAR_COLUMNS = (
    "bid",
    "ask",
    "bid_size",
    "ask_size",
    "mid",
    "quote_count",
    "spread_bps",
    "spread_bps_min",
    "spread_bps_max",
    "spread_bps_mean",
    "imbalance",
    "imbalance_close",
)
"""The value columns of a :class:`QuoteBar` (the store's ``quote_bars`` columns beside the
key and ``revision``), in the order the store and the references use."""


@dataclass(frozen=True, slots=True)
class Bar:
    """One OHLCV row as the store keeps it (key: provider, symbol, interval, ts).

    ``ts`` is the window start (UTC). ``v`` is ``None`` for provider bars without volume (then
    ``vwap`` is ``None`` too); ``vwap`` and ``trade_count`` are ``None`` for provider bars that
    do not carry them. ``revision`` counts corrections by late data (0 = never corrected).
    ``change_seq`` is this revision's position in its series' change log (the store's
    ``bar_series``/``bar_changes``: 1, 2, ... per (provider, symbol, interval), one per
    committed change of the window); ``None`` for a bar that did not come from the log.
    ``quote`` is the same window's :class:`QuoteBar` where one exists and was read with the
    bar (the change log and the store's reads attach it), else ``None``. ``in_session`` is set
    on rollup bars (``micro_batch.rollups``): whether the window lies inside a trading session
    of the symbol's calendar (a ``1d`` bar: whether it is a session, else the stretch between
    two); ``True`` for 24/7 symbols; ``None`` for micro-bars and provider bars.
    """

    provider: str
    symbol: str
    interval: str
    ts: datetime
    o: float
    h: float
    l: float  # noqa: E741
    c: float
    v: float | None
    vwap: float | None = None
    trade_count: int | None = None
    revision: int = 0
    change_seq: int | None = None
    quote: QuoteBar | None = None
    in_session: bool | None = None

    @property
    def key(self) -> tuple[str, str, str, datetime]:
        return (self.provider, self.symbol, self.interval, self.ts)

    @property
    def spread_bps(self) -> float | None:
        """The window's time-weighted spread in bps (``None``: no book in the window)."""
        return None if self.quote is None else self.quote.spread_bps

    @property
    def imbalance(self) -> float | None:
        """The window's time-weighted top-of-book imbalance (``None``: undefined)."""
        return None if self.quote is None else self.quote.imbalance


WindowBar = Bar | QuoteBar
"""What one window of a series is on the change log (``mdp.bars``) and to inference: its
trade :class:`Bar` (with the window's quote bar as ``Bar.quote``), or, for a window without a
trade bar, its :class:`QuoteBar`."""
