"""Versioned message contracts: StreamEvent v1, Signal v1, and the Bar the store keeps.

Every rule a consumer relies on is checked here, once, with a precise reason:
``ContractError`` (via the codecs) carries that reason to the dead-letter stream.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from market_data_core.timeutil import isoformat_us

__all__ = [
    "SUPPORTED_VERSIONS",
    "Bar",
    "EventKind",
    "Signal",
    "StreamEvent",
    "make_event_id",
    "make_signal_id",
]

SUPPORTED_VERSIONS = (1,)
EventKind = Literal["tick", "bar", "quote"]

# '|' separates event_id parts, so it may appear in neither provider nor symbol.
_PROVIDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_SYMBOL = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9._\-/:=^]{0,31}$")
_INTERVAL = re.compile(r"^\d+(us|ms|s|m|h|d)$")


# Names seen valid before skip the regex (hot path); bounded so hostile input cannot grow them.
_GOOD_PROVIDERS: set[str] = set()
_GOOD_SYMBOLS: set[str] = set()
_MAX_REMEMBERED = 100_000


def _remember(cache: set[str], name: str) -> None:
    if len(cache) < _MAX_REMEMBERED:
        cache.add(name)


def _check_provider(v: str) -> str:
    if v in _GOOD_PROVIDERS:
        return v
    if not _PROVIDER.match(v):
        raise ValueError(f"malformed provider {v!r} (letters, digits, '_', '.', '-'; max 64)")
    _remember(_GOOD_PROVIDERS, v)
    return v


def _check_symbol(v: str) -> str:
    if v in _GOOD_SYMBOLS:
        return v
    if not _SYMBOL.match(v):
        raise ValueError(
            f"malformed symbol {v!r} (letters, digits and . _ - / : = ^; max 32; no '|')"
        )
    _remember(_GOOD_SYMBOLS, v)
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


def _check_price(name: str, value: float | None) -> None:
    if value is None or 0 < value < math.inf:
        return
    if not math.isfinite(value):
        raise ValueError(f"{name} is not finite ({value})")
    raise ValueError(f"{name} must be > 0, got {value}")


def _check_size(name: str, value: float | None) -> None:
    if value is None or 0 <= value < math.inf:
        return
    if not math.isfinite(value):
        raise ValueError(f"{name} is not finite ({value})")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


class StreamEvent(BaseModel):
    """One market-data event on the events stream (v1).

    ``kind="tick"`` is a trade: price in ``c``, size in ``v`` (``o=h=l=c`` allowed, or omitted).
    ``kind="bar"`` is a provider bar of ``interval``. ``kind="quote"`` is top of book (``bid``,
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
    side: Literal["buy", "sell"] | None = None

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
        # Hot path (every event, every consumer): plain attribute access, no loops over names.
        o, h, l, c = self.o, self.h, self.l, self.c  # noqa: E741
        kind = self.kind
        if kind == "tick":
            if c is None:
                raise ValueError("a tick needs its trade price in c")
            if self.v is None:
                raise ValueError("a tick needs its trade size in v")
        elif kind == "bar":
            if o is None or h is None or l is None or c is None or self.v is None:
                missing = [n for n in ("o", "h", "l", "c", "v") if getattr(self, n) is None]
                raise ValueError(f"a bar needs o, h, l, c and v; missing {', '.join(missing)}")
            if self.interval is None:
                raise ValueError("a bar needs its interval (e.g. '1m')")
        elif self.bid is None or self.ask is None:
            raise ValueError("a quote needs bid and ask")
        if o is not None:
            _check_price("o", o)
        if h is not None:
            _check_price("h", h)
        if l is not None:
            _check_price("l", l)
        if c is not None:
            _check_price("c", c)
        if self.v is not None:
            _check_size("v", self.v)
        if kind == "quote":
            assert self.bid is not None and self.ask is not None
            _check_price("bid", self.bid)
            _check_price("ask", self.ask)
            _check_size("bid_size", self.bid_size)
            _check_size("ask_size", self.ask_size)
            if self.bid > self.ask:
                raise ValueError(f"crossed quote: bid ({self.bid}) > ask ({self.ask})")
        if o is not None and c is not None:
            if h is not None and h < (o if o > c else c):
                raise ValueError(f"h ({h}) < max(o, c) ({max(o, c)})")
            if l is not None and l > (o if o < c else c):
                raise ValueError(f"l ({l}) > min(o, c) ({min(o, c)})")
        if h is not None and l is not None and h < l:
            raise ValueError(f"h ({h}) < l ({l})")
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


class Signal(BaseModel):
    """One inference output (v1): ``name`` fired for ``symbol`` at event time ``ts``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ver: int = 1
    provider: str
    symbol: str
    ts: datetime
    name: str
    value: float
    score: float
    meta: dict[str, Any] = {}
    adapter: Literal["rules", "sklearn"] = "rules"
    signal_id: str = ""

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
class Bar:
    """One OHLCV row as the store keeps it (key: provider, symbol, interval, ts).

    ``ts`` is the window start (UTC). ``vwap`` and ``trade_count`` are ``None`` for provider bars
    that do not carry them. ``revision`` counts corrections by late data (0 = never corrected).
    """

    provider: str
    symbol: str
    interval: str
    ts: datetime
    o: float
    h: float
    l: float  # noqa: E741
    c: float
    v: float
    vwap: float | None = None
    trade_count: int | None = None
    revision: int = 0

    @property
    def key(self) -> tuple[str, str, str, datetime]:
        return (self.provider, self.symbol, self.interval, self.ts)
