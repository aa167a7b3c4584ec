"""PostgreSQL binary COPY built from column arrays, with NumPy instead of a loop over rows.

The format is PostgreSQL's own (``COPY ... FROM STDIN (FORMAT binary)``, see "COPY" in the
PostgreSQL documentation, "Binary Format"): a 19-byte header, then per row an int16 field count
and per field an int32 length (-1: NULL) and the value in the type's binary send format
(network byte order), then an int16 -1 trailer. Columns here:

* :class:`Int8Column`, :class:`Int4Column`, :class:`Float8Column`: the integers and IEEE-754
  doubles themselves, big-endian (float8 round-trips bit for bit);
* :class:`TimestamptzColumn`: µs since the Unix epoch, sent as µs since 2000-01-01 (int64);
* :class:`TextColumn`: UTF-8 slices of one blob (``ends`` = each row's end offset), or
  :meth:`TextColumn.coded`: a few distinct strings chosen per row by a code;
* :class:`NumericColumn`: each float64 as the ``numeric`` that ``Decimal(repr(x))`` (the
  shortest decimal that round-trips the float) would be, same value and same display scale,
  so a binary COPY stores exactly what the text of ``repr`` did.

:func:`encode_copy` lays the rows out with a handful of array operations per column.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

import numpy as np
import numpy.typing as npt

from market_data_core.columnar import coded_rows

__all__ = [
    "COPY_HEADER",
    "Float8Column",
    "Int4Column",
    "Int8Column",
    "NumericColumn",
    "TextColumn",
    "TimestamptzColumn",
    "encode_copy",
    "numeric_send",
]

COPY_HEADER: Final = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_TRAILER: Final = b"\xff\xff"
_PG_EPOCH_US: Final = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix µs

Bools = npt.NDArray[np.bool_]
Int64s = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class _Fixed:
    """Values of one fixed width: ``data`` is (n, width) bytes in send format."""

    data: npt.NDArray[np.uint8]
    null: Bools | None


@dataclass(frozen=True, slots=True)
class _Variable:
    """Values of varying width: row i is ``blob[ends[i-1]:ends[i]]`` (empty for NULL)."""

    blob: bytes
    ends: Int64s
    null: Bools | None


def _fixed(values: npt.NDArray[np.generic], be_dtype: str, null: Bools | None) -> _Fixed:
    data = np.ascontiguousarray(values.astype(be_dtype)).view(np.uint8)
    return _Fixed(data.reshape(len(values), np.dtype(be_dtype).itemsize), null)


@dataclass(frozen=True, slots=True)
class Int8Column:
    """``bigint`` values (``null``: rows that are NULL)."""

    values: Int64s
    null: Bools | None = None

    def encode(self) -> _Fixed:
        return _fixed(self.values, ">i8", self.null)


@dataclass(frozen=True, slots=True)
class Int4Column:
    """``integer`` values (must fit int32)."""

    values: npt.NDArray[np.integer]
    null: Bools | None = None

    def encode(self) -> _Fixed:
        return _fixed(self.values, ">i4", self.null)


@dataclass(frozen=True, slots=True)
class Float8Column:
    """``double precision`` values, bit for bit (NaN, infinities and -0.0 included)."""

    values: npt.NDArray[np.float64]
    null: Bools | None = None

    def encode(self) -> _Fixed:
        return _fixed(self.values, ">f8", self.null)


@dataclass(frozen=True, slots=True)
class TimestamptzColumn:
    """``timestamptz`` values given as µs since the Unix epoch (UTC)."""

    epoch_us: Int64s
    null: Bools | None = None

    def encode(self) -> _Fixed:
        return _fixed(self.epoch_us - _PG_EPOCH_US, ">i8", self.null)


@dataclass(frozen=True, slots=True)
class TextColumn:
    """``text`` values: UTF-8 slices of ``blob`` ending at ``ends`` (must hold no NUL)."""

    blob: bytes
    ends: Int64s
    null: Bools | None = None

    @classmethod
    def coded(cls, values: Sequence[str | None], codes: npt.NDArray[np.integer]) -> TextColumn:
        """Row i is ``values[codes[i]]`` (``None``: NULL)."""
        blob, ends = coded_rows([b"" if v is None else v.encode() for v in values], codes)
        nulls = np.fromiter((v is None for v in values), np.bool_, len(values))
        return cls(blob, ends, nulls[codes] if nulls.any() else None)

    def encode(self) -> _Variable:
        return _Variable(self.blob, self.ends, self.null)


# numeric: int16 ndigits, int16 weight, uint16 sign, uint16 dscale, ndigits x int16 digits in
# base 10000. The fast layout: 4 integer groups (weight 3: up to 10**16) and 4 fractional groups
# (16 decimals); the server strips the zero groups (numeric_recv -> make_result), so the stored
# value is canonical whatever the padding.
_NUMERIC_POS: Final = 0x0000
_NUMERIC_NEG: Final = 0x4000
_INT_GROUPS: Final = 4
_FRAC_GROUPS: Final = 4
_NDIGITS: Final = _INT_GROUPS + _FRAC_GROUPS
_NUMERIC_WIDTH: Final = 8 + 2 * _NDIGITS
# Candidates m / 10**k with m below this are exact in float64 and unique for their float: x*10**k
# is within 1/8 of m, and at most one k-decimal number rounds to x (see _shortest_decimals).
_MAX_MANTISSA: Final = 2**50
_MAX_DECIMALS: Final = 16
_POW10: Final = np.array([10**k for k in range(_MAX_DECIMALS + 1)], np.int64)


def _shortest_decimals(x: npt.NDArray[np.float64]) -> tuple[Int64s, Int64s, Bools]:
    """For each |x|: ``(m, k, ok)`` with ``|x| == float(m / 10**k)`` and the fewest decimals
    ``k``, where ``ok``; rows not ``ok`` (too many digits, too large, not finite) need
    ``repr``. With ``m < 2**50`` the decimal ``m·10**-k`` is exactly the digits of Python's
    ``repr``: ``repr`` is the shortest string that round-trips, and with a fixed integer part
    fewer decimals means fewer digits; ``x * 10**k`` is within 1/8 of m (two roundings of
    relative size 2**-53), so rounding it finds m, and the float spacing at x is below
    ``10**-k / 4``, so no other k-decimal number rounds to x."""
    a = np.abs(x)
    n = len(a)
    m = np.zeros(n, np.int64)
    k = np.zeros(n, np.int64)
    found = np.zeros(n, np.bool_)
    with np.errstate(invalid="ignore", over="ignore"):
        todo = np.flatnonzero(np.isfinite(a) & (a < _MAX_MANTISSA))
        for decimals in range(_MAX_DECIMALS + 1):
            if not len(todo):
                break
            scale = float(10**decimals)
            cand = np.rint(a[todo] * scale)
            fits = cand < _MAX_MANTISSA
            hit = fits & (cand / scale == a[todo])
            rows = todo[hit]
            m[rows] = cand[hit].astype(np.int64)
            k[rows] = decimals
            found[rows] = True
            # no hit yet, and past 2**50: more decimals cannot fit either
            todo = todo[fits & ~hit]
    return m, k, found


def numeric_send(value: Decimal) -> bytes:
    """One finite ``numeric`` in PostgreSQL's binary send format, as the server stores the
    value's text: base-10000 digits, ``dscale`` = the digits after the point of the text
    (``Decimal("100.0")`` has one, ``Decimal("1.5e-07")`` eight)."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"numeric_send takes finite values, got {value}")
    whole = int("".join(map(str, digits)) or "0")
    if exponent >= 0:
        int_part, frac_part, frac_digits = whole * 10**exponent, 0, 0
    else:
        int_part, frac_part = divmod(whole, 10**-exponent)
        frac_digits = -exponent
    frac_groups = -(-frac_digits // 4)
    frac_scaled = frac_part * 10 ** (frac_groups * 4 - frac_digits)
    groups: list[int] = []
    while int_part:
        int_part, digit = divmod(int_part, 10_000)
        groups.insert(0, digit)
    weight = len(groups) - 1
    groups += [
        (frac_scaled // 10_000 ** (frac_groups - 1 - g)) % 10_000 for g in range(frac_groups)
    ]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight, sign = 0, 0
    flag = _NUMERIC_NEG if sign else _NUMERIC_POS
    return struct.pack(
        f">hhHH{len(groups)}h", len(groups), weight, flag, max(0, -exponent), *groups
    )


@dataclass(frozen=True, slots=True)
class NumericColumn:
    """``numeric`` values from float64: each the decimal ``repr`` gives (see the module
    docstring); finite values only."""

    values: npt.NDArray[np.float64]
    null: Bools | None = None

    def encode(self) -> _Variable:
        x = np.asarray(self.values, np.float64)
        n = len(x)
        m, k, ok = _shortest_decimals(x)
        if self.null is not None:
            ok |= self.null
        pow10 = _POW10[k]
        ip = m // pow10
        fp = (m % pow10) * _POW10[_MAX_DECIMALS - k]
        groups = np.empty((n, _NDIGITS), np.int64)
        for g in range(_INT_GROUPS):
            groups[:, g] = (ip // 10_000 ** (_INT_GROUPS - 1 - g)) % 10_000
        for g in range(_FRAC_GROUPS):
            groups[:, _INT_GROUPS + g] = (fp // 10_000 ** (_FRAC_GROUPS - 1 - g)) % 10_000
        head = np.empty((n, 4), np.int64)
        head[:, 0] = _NDIGITS
        head[:, 1] = _INT_GROUPS - 1
        negative = np.signbit(x) & (m != 0)
        head[:, 2] = np.where(negative, _NUMERIC_NEG, _NUMERIC_POS)
        head[:, 3] = np.maximum(k, 1)  # repr writes "100.0": one decimal at least
        rows = np.concatenate((head, groups), axis=1).astype(">i2").view(np.uint8)
        rows = rows.reshape(n, _NUMERIC_WIDTH)
        if ok.all():
            ends = np.arange(1, n + 1, dtype=np.int64) * _NUMERIC_WIDTH
            if self.null is not None and self.null.any():
                keep = ~self.null
                lengths = np.where(keep, _NUMERIC_WIDTH, 0)
                return _Variable(rows[keep].tobytes(), np.cumsum(lengths), self.null)
            return _Variable(rows.tobytes(), ends, None)
        # the few values that need repr: one at a time
        null = self.null if self.null is not None else np.zeros(n, np.bool_)
        parts: list[bytes] = []
        for i in range(n):
            if null[i]:
                parts.append(b"")
            elif ok[i]:
                parts.append(rows[i].tobytes())
            else:
                parts.append(numeric_send(Decimal(repr(float(x[i])))))
        lengths = np.fromiter(map(len, parts), np.int64, n)
        return _Variable(b"".join(parts), np.cumsum(lengths), self.null)


Column = Int8Column | Int4Column | Float8Column | TimestamptzColumn | TextColumn | NumericColumn


def encode_copy(columns: Sequence[Column], n: int) -> bytes:
    """The whole COPY stream (header, ``n`` rows of ``columns`` in order, trailer)."""
    if not columns:
        raise ValueError("a COPY row needs at least one column")
    encoded = [c.encode() for c in columns]
    sizes = []
    for e in encoded:
        if isinstance(e, _Fixed):
            width = e.data.shape[1] if e.data.ndim == 2 else 0
            if len(e.data) != n:
                raise ValueError("every column needs n rows")
            size = np.full(n, width, np.int64)
        else:
            if len(e.ends) != n:
                raise ValueError("every column needs n rows")
            size = np.diff(e.ends, prepend=0)
        if e.null is not None:
            size = np.where(e.null, 0, size)
        sizes.append(size)
    row_len = 2 + sum(4 + s for s in sizes)
    row_end = np.cumsum(row_len)
    total = len(COPY_HEADER) + (int(row_end[-1]) if n else 0) + len(_TRAILER)
    out = np.zeros(total, np.uint8)
    out[: len(COPY_HEADER)] = np.frombuffer(COPY_HEADER, np.uint8)
    out[total - 2 :] = 0xFF
    pos = row_end - row_len + len(COPY_HEADER)
    count = np.frombuffer(np.array(len(columns), ">i2").tobytes(), np.uint8)
    out[pos[:, None] + np.arange(2)] = count
    pos = pos + 2
    for e, size in zip(encoded, sizes, strict=True):
        lengths = size.copy()
        if e.null is not None:
            lengths[e.null] = -1
        out[pos[:, None] + np.arange(4)] = lengths.astype(">i4").view(np.uint8).reshape(n, 4)
        pos = pos + 4
        if isinstance(e, _Fixed):
            width = e.data.shape[1]
            rows = np.arange(n) if e.null is None else np.flatnonzero(~e.null)
            if len(rows):
                out[pos[rows, None] + np.arange(width)] = e.data[rows]
        else:
            total_bytes = int(size.sum())
            if total_bytes:
                starts = e.ends - np.diff(e.ends, prepend=0)
                ramp = np.arange(total_bytes) - np.repeat(np.cumsum(size) - size, size)
                src = np.repeat(starts, size) + ramp
                out[np.repeat(pos, size) + ramp] = np.frombuffer(e.blob, np.uint8)[src]
        pos = pos + size
    return out.tobytes()
