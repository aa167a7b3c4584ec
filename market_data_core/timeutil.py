"""Time helpers: UTC microsecond timestamps, durations like ``"2s"``, epoch-aligned windows."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = [
    "EPOCH",
    "MAX_EPOCH_US",
    "MIN_EPOCH_US",
    "format_duration_ms",
    "from_epoch_us",
    "from_epoch_us_with_iso",
    "isoformat_epoch_us",
    "isoformat_us",
    "parse_duration_ms",
    "parse_timestamp",
    "to_epoch_us",
    "window_start_us",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)\s*$")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}


def parse_duration_ms(text: str | int | float) -> int:
    """Parse ``"500ms"``, ``"2s"``, ``"1.5s"``, ``"5m"``, ``"1h"`` (or a number of ms) into ms.

    Raises ``ValueError`` with a readable message for anything else.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like '2s' or '500ms', got {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"duration must not be negative, got {text!r}")
        return int(text)
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"expected a duration like '2s', '500ms' or '5m', got {text!r}")
    value = float(m.group(1)) * _UNIT_MS[m.group(2)]
    if value != int(value):
        raise ValueError(f"duration {text!r} is not a whole number of milliseconds")
    return int(value)


def format_duration_ms(ms: int) -> str:
    """Inverse of :func:`parse_duration_ms` for whole units: 2000 -> ``"2s"``."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def to_epoch_us(ts: datetime) -> int:
    """Exact microseconds since the epoch of an aware datetime."""
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# The range of ints from_epoch_us (and isoformat_epoch_us) accept: years 1..9999 in UTC.
MIN_EPOCH_US = to_epoch_us(datetime.min.replace(tzinfo=UTC))
MAX_EPOCH_US = to_epoch_us(datetime.max.replace(tzinfo=UTC))


def from_epoch_us(us: int) -> datetime:
    """Aware UTC datetime from microseconds since the epoch (exact).

    Raises ``OverflowError`` outside ``[MIN_EPOCH_US, MAX_EPOCH_US]``.
    """
    # positional timedelta(days, seconds, microseconds): the same value as microseconds=us,
    # without keyword parsing (a third of this function's cost on the decode hot path)
    return EPOCH + timedelta(0, 0, us)


# "YYYY-MM-DDTHH:MM:SS" of recently formatted UTC seconds. Streams carry many events per second,
# so most look-ups hit; cleared when full so that hostile or sparse input cannot grow it.
_SECOND_PREFIXES: dict[int, str] = {}
_MAX_PREFIXES = 4096


def isoformat_epoch_us(us: int) -> str:
    """``isoformat_us(from_epoch_us(us))`` without building the datetime: the same text.

    Raises ``OverflowError`` outside ``[MIN_EPOCH_US, MAX_EPOCH_US]`` (as ``from_epoch_us``).
    """
    second, fraction_us = divmod(us, 1_000_000)
    prefix = _SECOND_PREFIXES.get(second)
    if prefix is None:
        # isoformat of an aware UTC datetime: "YYYY-MM-DDTHH:MM:SS+00:00" (µs == 0 here)
        prefix = (EPOCH + timedelta(0, second)).isoformat()[:19]
        if len(_SECOND_PREFIXES) >= _MAX_PREFIXES:
            _SECOND_PREFIXES.clear()
        _SECOND_PREFIXES[second] = prefix
    return f"{prefix}.{fraction_us:06d}Z"


# second -> ("YYYY-MM-DDTHH:MM:SS", (year, month, day, hour, minute, second)) of recent seconds:
# both halves of from_epoch_us_with_iso from one look-up; bounded like _SECOND_PREFIXES.
_SECOND_PARTS: dict[int, tuple[str, tuple[int, int, int, int, int, int]]] = {}


def from_epoch_us_with_iso(us: int) -> tuple[datetime, str]:
    """``(from_epoch_us(us), isoformat_epoch_us(us))`` from one division and one look-up.

    The same datetime (aware, ``tzinfo`` is ``UTC``) and the same text as those two; for the
    decoders, which need both for every event (the value and its event_id). Raises
    ``OverflowError`` outside ``[MIN_EPOCH_US, MAX_EPOCH_US]``.
    """
    second, fraction_us = divmod(us, 1_000_000)
    entry = _SECOND_PARTS.get(second)
    if entry is None:
        start = EPOCH + timedelta(0, second)  # OverflowError out of range, as from_epoch_us
        entry = (
            start.isoformat()[:19],
            (start.year, start.month, start.day, start.hour, start.minute, start.second),
        )
        if len(_SECOND_PARTS) >= _MAX_PREFIXES:
            _SECOND_PARTS.clear()
        _SECOND_PARTS[second] = entry
    prefix, parts = entry
    # the constructor is cheaper than EPOCH + timedelta(...) and gives an equal, UTC datetime
    return datetime(*parts, fraction_us, UTC), f"{prefix}.{fraction_us:06d}Z"


def isoformat_us(ts: datetime) -> str:
    """``2025-10-24T14:02:01.234567Z``: always six fraction digits and a ``Z``.

    ``ts`` is converted to UTC first (a naive ``ts`` is taken as local time, as
    ``datetime.astimezone`` does).
    """
    if ts.tzinfo is UTC:
        # the hot case (every event id): a cached per-second prefix costs half of isoformat
        return isoformat_epoch_us(to_epoch_us(ts))
    # isoformat is C code; strftime is several times slower and does not pad years < 1000
    return ts.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO-8601 timestamp that carries a zone (``Z`` or an offset) into aware UTC.

    Raises ``ValueError`` for a naive or malformed timestamp.
    """
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"malformed timestamp {text!r}") from exc
    if ts.tzinfo is None:
        raise ValueError(f"timestamp {text!r} is naive; a zone (Z or +00:00) is required")
    return ts.astimezone(UTC)


def window_start_us(ts_us: int, window_ms: int) -> int:
    """Start of the epoch-aligned tumbling window ``[k*w, (k+1)*w)`` containing ``ts_us``."""
    w = window_ms * 1000
    return ts_us - (ts_us % w)
