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
# base 10000. The fast layout gives every value of a column the same groups (up to 4 integer
# ones, weight 3: below 10**16; up to 4 fractional: 16 decimals), zeros included: the server
# strips zero groups (numeric_recv -> make_result), so the stored value is canonical anyway.
_NUMERIC_POS: Final = 0x0000
_NUMERIC_NEG: Final = 0x4000
_INT_GROUPS: Final = 4
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
    return _numeric(bool(sign), int("".join(map(str, digits)) or "0"), exponent)


def _numeric_of_repr(x: float) -> bytes:
    """``numeric_send(Decimal(repr(x)))`` without the Decimal: the digits of the text."""
    text = repr(x)
    mantissa, _e, power = text.partition("e")
    negative = mantissa.startswith("-")
    whole, _dot, fraction = mantissa.lstrip("-").partition(".")
    return _numeric(negative, int(whole + fraction), (int(power) if power else 0) - len(fraction))


def _numeric(negative: bool, whole: int, exponent: int) -> bytes:
    """The send format of ``(-1)**negative * whole * 10**exponent`` (display scale
    ``max(0, -exponent)``)."""
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
        groups.append(digit)
    groups.reverse()
    weight = len(groups) - 1
    tail: list[int] = []
    for _ in range(frac_groups):
        frac_scaled, digit = divmod(frac_scaled, 10_000)
        tail.append(digit)
    groups += reversed(tail)
    lead = 0
    while lead < len(groups) and groups[lead] == 0:
        lead += 1
    end = len(groups)
    while end > lead and groups[end - 1] == 0:
        end -= 1
    groups = groups[lead:end]
    weight -= lead
    if not groups:
        weight, negative = 0, False
    flag = _NUMERIC_NEG if negative else _NUMERIC_POS
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
        fast = ok if self.null is None else ok & ~self.null
        # as few base-10000 groups as the column's values need (the server strips zero groups)
        pow10 = _POW10[k]
        ip = np.where(fast, m // pow10, 0)
        frac_digits = int(k[fast].max()) if fast.any() else 0
        frac_groups = -(-frac_digits // 4)
        int_groups = 1
        while int_groups < _INT_GROUPS and np.any(ip >= 10_000**int_groups):
            int_groups += 1
        fp = np.where(fast, (m % pow10) * _POW10[frac_groups * 4 - np.minimum(k, frac_digits)], 0)
        ndigits = int_groups + frac_groups
        width = 8 + 2 * ndigits
        cells = np.empty((n, 4 + ndigits), np.int64)
        cells[:, 0] = ndigits
        cells[:, 1] = int_groups - 1
        cells[:, 2] = np.where(np.signbit(x) & (m != 0), _NUMERIC_NEG, _NUMERIC_POS)
        cells[:, 3] = np.maximum(k, 1)  # repr writes "100.0": one decimal at least
        for g in range(int_groups - 1, -1, -1):
            ip, cells[:, 4 + g] = np.divmod(ip, 10_000)
        for g in range(frac_groups - 1, -1, -1):
            fp, cells[:, 4 + int_groups + g] = np.divmod(fp, 10_000)
        rows = cells.astype(">i2").view(np.uint8).reshape(n, width)
        if fast.all():
            return _Variable(rows.tobytes(), np.arange(1, n + 1, dtype=np.int64) * width, None)
        # NULLs (empty), and the few values that need repr (one at a time)
        null = self.null if self.null is not None else np.zeros(n, np.bool_)
        slow = np.flatnonzero(~fast & ~null)
        slow_parts = [_numeric_of_repr(v) for v in x[slow].tolist()]
        lengths = np.where(fast, width, 0)
        lengths[slow] = np.fromiter(map(len, slow_parts), np.int64, len(slow_parts))
        ends = np.cumsum(lengths)
        out = np.empty(int(ends[-1]) if n else 0, np.uint8)
        starts = ends - lengths
        fast_rows = np.flatnonzero(fast)
        out[starts[fast_rows, None] + np.arange(width)] = rows[fast_rows]
        for i, part in zip(slow.tolist(), slow_parts, strict=True):
            out[int(starts[i]) : int(ends[i])] = np.frombuffer(part, np.uint8)
        return _Variable(out.tobytes(), ends, self.null)


Column = Int8Column | Int4Column | Float8Column | TimestamptzColumn | TextColumn | NumericColumn


def _field_parts(e: _Fixed | _Variable, n: int) -> list[npt.NDArray[np.uint8] | _Variable]:
    """One field of every row as parts: fixed-width byte matrices (n, w), and the slices of a
    blob for values of varying width. A field is its int32 length (-1: NULL), then its bytes."""
    if isinstance(e, _Fixed):
        if len(e.data) != n:
            raise ValueError("every column needs n rows")
        width = e.data.shape[1]
        if e.null is None or not e.null.any():
            head = np.broadcast_to(
                np.frombuffer(np.array(width, ">i4").tobytes(), np.uint8), (n, 4)
            )
            return [head, e.data]
        size = np.where(e.null, 0, width)
        starts = np.arange(n, dtype=np.int64) * width
        e = _Variable(e.data.tobytes(), starts + width, e.null)  # NULL rows are skipped below
    if len(e.ends) != n:
        raise ValueError("every column needs n rows")
    size = np.diff(e.ends, prepend=0)
    lengths = size.copy()
    if e.null is not None:
        size = np.where(e.null, 0, size)
        lengths[e.null] = -1
    if n and np.all(size == size[0]) and e.null is None:
        width = int(size[0])
        data = np.frombuffer(e.blob, np.uint8, n * width).reshape(n, width)
        return [lengths.astype(">i4").view(np.uint8).reshape(n, 4), data]
    head = lengths.astype(">i4").view(np.uint8).reshape(n, 4)
    return [head, _Variable(e.blob, e.ends, e.null)]


def _gather(part: _Variable, rows: npt.NDArray[np.intp], width: int) -> npt.NDArray[np.uint8]:
    """The slices of ``rows`` (all ``width`` bytes long) as an (len(rows), width) matrix."""
    if width == 0:
        return np.zeros((len(rows), 0), np.uint8)
    blob = np.frombuffer(part.blob, np.uint8)
    starts = part.ends[rows] - width
    if len(rows) == len(part.ends) and len(blob) == len(rows) * width:
        return blob.reshape(len(rows), width)  # every row, one after the other: as stored
    taken: npt.NDArray[np.uint8] = blob[starts[:, None] + np.arange(width)]
    return taken


def _recode(layout: Int64s, widths: Int64s) -> Int64s:
    """A code per distinct pair (layout, width)."""
    _values, codes = np.unique(np.stack((layout, widths), axis=1), axis=0, return_inverse=True)
    recoded: Int64s = codes.ravel().astype(np.int64)
    return recoded


def encode_copy(columns: Sequence[Column], n: int, *, keep_order: bool = False) -> bytes:
    """The whole COPY stream (header, ``n`` rows of ``columns``, trailer).

    Rows whose fields have the same widths are laid out together as one byte matrix (a
    fixed-width column without NULLs is the same width in every row; the others are grouped
    by their widths). With ``keep_order=False`` rows are written group by group (the order
    within a group kept): what a staging table needs, and the cheapest; ``keep_order=True``
    writes them in the given order (one group per run of equal layouts)."""
    if not columns:
        raise ValueError("a COPY row needs at least one column")
    count = np.broadcast_to(
        np.frombuffer(np.array(len(columns), ">i2").tobytes(), np.uint8), (n, 2)
    )
    parts: list[npt.NDArray[np.uint8] | _Variable] = [count]
    for c in columns:
        parts += _field_parts(c.encode(), n)
    variable = [p for p in parts if isinstance(p, _Variable)]
    if n == 0:
        return COPY_HEADER + _TRAILER
    widths = [
        np.where(p.null, 0, np.diff(p.ends, prepend=0))
        if p.null is not None
        else np.diff(p.ends, prepend=0)
        for p in variable
    ]
    # one int64 per row that tells layouts apart
    layout = np.zeros(n, np.int64)
    small = len(widths) <= 3 and all(int(w.max()) < 1 << 20 for w in widths)
    for w in widths:
        layout = layout * (1 << 20) + w if small else _recode(layout, w)
    if keep_order:
        change = np.flatnonzero(np.diff(layout)) + 1
        groups = np.split(np.arange(n), change)
    else:
        order = np.argsort(layout, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(layout[order])) + 1)
    if len(groups) > 1:  # each group takes its rows of every part: fewer, wider parts
        parts = _merge_fixed(parts)
    chunks = [COPY_HEADER]
    for rows in groups:
        first = int(rows[0])
        matrices = []
        v = 0
        for p in parts:
            if isinstance(p, np.ndarray):
                matrices.append(p if len(rows) == n else p[rows])
            else:
                matrices.append(_gather(p, rows, int(widths[v][first])))
                v += 1
        chunks.append(np.concatenate(matrices, axis=1).tobytes())
    chunks.append(_TRAILER)
    return b"".join(chunks)


def _merge_fixed(
    parts: list[npt.NDArray[np.uint8] | _Variable],
) -> list[npt.NDArray[np.uint8] | _Variable]:
    """``parts`` with every run of adjacent byte matrices joined into one (one copy each)."""
    out: list[npt.NDArray[np.uint8] | _Variable] = []
    run: list[npt.NDArray[np.uint8]] = []
    for part in parts:
        if isinstance(part, np.ndarray):
            run.append(part)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else np.concatenate(run, axis=1))
            run = []
        out.append(part)
    if run:
        out.append(run[0] if len(run) == 1 else np.concatenate(run, axis=1))
    return out
