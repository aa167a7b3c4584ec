"""Events as columns: the block wire format and its vectorised decode and validation.

A *block* is a second wire encoding of a packed entry beside the msgpack and JSON arrays of
:mod:`market_data_core.codec`: the events of one ``(provider, symbol)`` as column arrays, so a
consumer decodes and validates a whole poll with a few NumPy operations instead of building one
object per event. A block payload is::

    b"\\xc1"  <version>  <MessagePack map>

``0xc1`` is the one byte MessagePack never uses and no JSON text starts with, so a block can
never be mistaken for either (and an older consumer dead-letters it as undecodable rather than
misreading it); the version byte says how the optional columns are laid out (below). The map
(:class:`_WireBlock`) holds

=============  ==================================================================================
``n``          rows (1 .. :data:`MAX_BLOCK_ROWS`)
``ver``        the StreamEvent version of every row
``provider``,  the row's ``provider`` and ``symbol`` (one series per block, as the producers pack)
``symbol``
``interval``   every row's ``interval`` (nil: none)
``kind``       bin, n x uint8: 0 tick, 1 bar, 2 quote
``src_ts``     bin, n x int64 LE: event time, µs since the epoch (UTC)
``seq``        bin, n x int64 LE
``present``    bin, n x uint16 LE: bit ``OPTIONAL_BITS[name]`` set = the row has that field
``o`` .. ``ask_size``  bin, float64 LE each (optional column; absent column = no row has the
               field): version ``0x01``, n cells, one per row (a cell whose bit is clear is
               ignored); version ``0x02``, one cell per row that has the field, in row order
``ingest_ts``  bin, int64 LE µs (optional column, as the floats)
``side``       bin, n x uint8: 0 none, 1 ``buy``, 2 ``sell`` (optional column: absent = none)
``trade_id``   bin: the rows' trade ids, UTF-8, one after the other (optional column), and
``trade_id_end``  bin, n x uint32 LE: where each row's id ends in ``trade_id`` (a row without
               one has an empty slice)
=============  ==================================================================================

Version ``0x02`` (*compact* columns) keeps a block of mixed kinds as small as its rows: a trade
carries no ``bid``..``ask_size`` cells, a quote no ``c``/``v`` cells (a block of half trades,
half quotes: 85.3 bytes per event in version 1, 61.2 in version 2). The encoders write version
2 only for a block where some column covers some rows but not all, so a block of one kind is
the same bytes as ever (version 1); consumers read both, and one older than version 2
dead-letters such a block as an unknown version (upgrade consumers before producers). The
version, not the length, tells the layout: a column of the wrong length for its block's
version refuses the block.

``event_id`` is not carried: it is what the row's fields imply (``provider|symbol|src_ts|seq``,
see :func:`~market_data_core.contracts.make_event_id`), so the rule "event_id matches its fields"
holds by construction. A payload that is not a well-formed block (bad MessagePack, a missing or
unknown key, a column of the wrong length for the block's version) is one
``ContractError("decode", ...)``.

**Validation.** Each row means the StreamEvent dict :func:`row_dict` gives; the reference for
it is the pydantic path (``codec._validated_event``). :func:`decode_blocks` tests every rule of
:func:`~market_data_core.contracts._inconsistency` and the field validators as array
operations; a row that passes them all is accepted as is (the rules are those of the reference,
so it accepts it too, with the same values), and every other row is handed to the reference,
which accepts it or gives the reason, the same reason a packed msgpack item with those values
gets. The vectorised rules only decide which rows skip the reference; they never word a
reason. ``tests/unit/test_columnar.py`` checks that both agree on random valid and invalid
blocks.
"""

from __future__ import annotations

import itertools
import json
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec
import numpy as np
import numpy.typing as npt
from msgspec import Meta

from market_data_core.contracts import (
    _INTERVAL,
    SUPPORTED_VERSIONS,
    EventKind,
    StreamEvent,
    TradeSide,
    _is_provider,
    _is_symbol,
    make_event_id,
)
from market_data_core.errors import ContractError
from market_data_core.timeutil import (
    MAX_EPOCH_US,
    MIN_EPOCH_US,
    from_epoch_us,
    isoformat_epoch_us,
    to_epoch_us,
)

__all__ = [
    "BLOCK_MAGIC",
    "COLUMN_ROW_FIELDS",
    "FLOAT_FIELDS",
    "KIND_CODES",
    "KIND_NAMES",
    "MAX_BLOCK_ROWS",
    "OPTIONAL_BITS",
    "SIDE_CODES",
    "SIDE_NAMES",
    "BlocksDecoded",
    "ColumnRow",
    "EventColumns",
    "MapsDecoded",
    "coded_rows",
    "columns_from_events",
    "columns_from_rows",
    "columns_from_wire_rows",
    "decimal_strs",
    "decimal_text",
    "decode_blocks",
    "decode_maps",
    "encode_block",
    "encode_blocks",
    "event_id_strs",
    "first_occurrences",
    "is_block",
    "row_dict",
    "window_marks",
]

BLOCK_MAGIC: Final = b"\xc1\x01"
# a block whose optional columns are compact (module docstring): version 2
_MAGIC_COMPACT: Final = b"\xc1\x02"
MAX_BLOCK_ROWS: Final = 100_000
KIND_CODES: Final = {"tick": 0, "bar": 1, "quote": 2}
KIND_NAMES: Final = ("tick", "bar", "quote")
SIDE_CODES: Final = {"buy": 1, "sell": 2}
SIDE_NAMES: Final = (None, "buy", "sell")
FLOAT_FIELDS: Final = ("o", "h", "l", "c", "v", "bid", "ask", "bid_size", "ask_size")
OPTIONAL_BITS: Final = {
    **{name: 1 << i for i, name in enumerate(FLOAT_FIELDS)},
    "ingest_ts": 1 << 9,
    "trade_id": 1 << 10,
}
_ALL_BITS: Final = sum(OPTIONAL_BITS.values())
_BOOK_FIELDS: Final = ("bid", "ask", "bid_size", "ask_size")
_TICK, _BAR, _QUOTE = 0, 1, 2

Int64s = npt.NDArray[np.int64]
Float64s = npt.NDArray[np.float64]
UInt8s = npt.NDArray[np.uint8]
UInt16s = npt.NDArray[np.uint16]
Int32s = npt.NDArray[np.int32]
Bools = npt.NDArray[np.bool_]


class _WireBlock(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The map after the block header (see the module docstring)."""

    n: int
    ver: int
    provider: str
    symbol: str
    kind: bytes
    src_ts: bytes
    seq: bytes
    present: bytes
    interval: str | None = None
    o: bytes | None = None
    h: bytes | None = None
    l: bytes | None = None  # noqa: E741 - the contract's field name
    c: bytes | None = None
    v: bytes | None = None
    bid: bytes | None = None
    ask: bytes | None = None
    bid_size: bytes | None = None
    ask_size: bytes | None = None
    ingest_ts: bytes | None = None
    side: bytes | None = None
    trade_id: bytes | None = None
    trade_id_end: bytes | None = None


_BLOCK_DECODER = msgspec.msgpack.Decoder(_WireBlock)
_BLOCK_ENCODER = msgspec.msgpack.Encoder()
# column -> (dtype, bytes per row)
_COLUMN_TYPES: Final[dict[str, tuple[str, int]]] = {
    "kind": ("<u1", 1),
    "src_ts": ("<i8", 8),
    "seq": ("<i8", 8),
    "present": ("<u2", 2),
    **{name: ("<f8", 8) for name in FLOAT_FIELDS},
    "ingest_ts": ("<i8", 8),
    "side": ("<u1", 1),
    "trade_id_end": ("<u4", 4),
}
_OPTIONAL_COLUMNS: Final = (*FLOAT_FIELDS, "ingest_ts", "side")
# the optional columns with a presence bit per row: compact on the wire (module docstring)
_COMPACT: Final = (*FLOAT_FIELDS, "ingest_ts")
# every compact column is 8 bytes a cell (float64 or int64): decode spreads them as int64 at once
assert all(_COLUMN_TYPES[name][1] == 8 for name in _COMPACT)


# A column no row has (a tick's bid, a quote's c...) is a view of this read-only zero buffer
# rather than an array of its own: windows buffer a lot of rows, mostly of one kind.
_ZERO_BYTES = np.zeros(1 << 21, np.uint8)
_ZERO_BYTES.flags.writeable = False


def _absent(n: int, dtype: Any) -> Any:
    """A read-only column of ``n`` zeros sharing :data:`_ZERO_BYTES` (a new array when
    longer than it)."""
    size = np.dtype(dtype).itemsize
    if n * size > len(_ZERO_BYTES):
        return np.zeros(n, dtype)
    return _ZERO_BYTES[: n * size].view(dtype)


def _is_absent(a: Any) -> bool:
    return a.base is _ZERO_BYTES


def _pick(a: Any, idx: Any) -> Any:
    """``a[idx]``, an absent column staying absent."""
    return _absent(len(idx), a.dtype) if _is_absent(a) else a[idx]


def is_block(payload: bytes) -> bool:
    """Whether ``payload`` is a column block (by its header; not whether it is well-formed)."""
    return payload[:1] == BLOCK_MAGIC[:1]


@dataclass(slots=True)
class EventColumns:
    """Events as column arrays (all of length ``n``), in the order they were read.

    ``series`` lists the distinct ``(provider, symbol)`` pairs and ``series_idx`` each row's
    index in it; ``intervals`` likewise (index 0 is ``None``, no interval). Times are µs since
    the epoch (UTC). A float or ``ingest_ts`` cell counts only when the row's ``present`` bit
    (:data:`OPTIONAL_BITS`) is set; ``side`` is 0 (none), 1 (buy) or 2 (sell); the row's trade
    id is ``trade_id[trade_id_end[i-1]:trade_id_end[i]]`` (UTF-8, when its bit is set).
    ``event_id`` is not kept: it is ``make_event_id`` of the row's fields.
    """

    series: tuple[tuple[str, str], ...]
    series_idx: Int32s
    intervals: tuple[str | None, ...]
    interval_idx: Int32s
    ver: Int64s
    kind: UInt8s
    src_ts: Int64s
    seq: Int64s
    present: UInt16s
    floats: dict[str, Float64s]
    ingest_ts: Int64s
    side: UInt8s
    trade_id: bytes
    trade_id_end: Int64s

    @property
    def n(self) -> int:
        return len(self.src_ts)

    def has(self, name: str) -> Bools:
        """Rows that have the optional field ``name``."""
        has: Bools = (self.present & OPTIONAL_BITS[name]) != 0
        return has

    def trade_id_at(self, i: int) -> str | None:
        """Row ``i``'s trade id (``None`` when it has none)."""
        if not self.present[i] & OPTIONAL_BITS["trade_id"]:
            return None
        start = int(self.trade_id_end[i - 1]) if i else 0
        return self.trade_id[start : int(self.trade_id_end[i])].decode()

    def slice(self, start: int, stop: int) -> EventColumns:
        """Rows ``start`` to ``stop`` (views of the arrays, no copy)."""
        first = int(self.trade_id_end[start - 1]) if start else 0
        ends = self.trade_id_end[start:stop]
        last = int(ends[-1]) if len(ends) else first
        return EventColumns(
            series=self.series,
            series_idx=self.series_idx[start:stop],
            intervals=self.intervals,
            interval_idx=self.interval_idx[start:stop],
            ver=self.ver[start:stop],
            kind=self.kind[start:stop],
            src_ts=self.src_ts[start:stop],
            seq=self.seq[start:stop],
            present=self.present[start:stop],
            floats={k: a[start:stop] for k, a in self.floats.items()},
            ingest_ts=self.ingest_ts[start:stop],
            side=self.side[start:stop],
            trade_id=self.trade_id[first:last],
            trade_id_end=ends - first,
        )

    def take(self, rows: npt.NDArray[np.intp] | Bools) -> EventColumns:
        """The rows selected by an index array or a mask, in that order."""
        idx = np.flatnonzero(rows) if rows.dtype == np.bool_ else np.asarray(rows, np.intp)
        blob, ends = _take_slices(self.trade_id, self.trade_id_end, idx)
        return EventColumns(
            series=self.series,
            series_idx=self.series_idx[idx],
            intervals=self.intervals,
            interval_idx=self.interval_idx[idx],
            ver=self.ver[idx],
            kind=self.kind[idx],
            src_ts=self.src_ts[idx],
            seq=self.seq[idx],
            present=self.present[idx],
            floats={k: _pick(a, idx) for k, a in self.floats.items()},
            ingest_ts=_pick(self.ingest_ts, idx),
            side=_pick(self.side, idx),
            trade_id=blob,
            trade_id_end=ends,
        )

    def quote_books(self, rows: npt.NDArray[np.intp]) -> EventColumns:
        """The quotes ``rows`` (indices of quote rows) with only their book: series, time,
        seq, bid, ask and the sizes with their ``present`` bits; every other column absent
        (zeros sharing one read-only buffer, as in a decoded block without them), so a row
        holds ~55 of its ~124 bytes. What a quote bar is computed from (the store's
        ``ingest_columns(early_quotes=...)``); not a whole event any more."""
        book_bits = sum(OPTIONAL_BITS[k] for k in _BOOK_FIELDS)
        n = len(rows)
        return EventColumns(
            series=self.series,
            series_idx=self.series_idx[rows],
            intervals=(None,),
            interval_idx=_absent(n, np.int32),
            ver=_absent(n, np.int64),
            kind=np.full(n, _QUOTE, np.uint8),
            src_ts=self.src_ts[rows],
            seq=self.seq[rows],
            present=self.present[rows] & np.uint16(book_bits),
            floats={
                k: a[rows] if k in _BOOK_FIELDS else _absent(n, np.float64)
                for k, a in self.floats.items()
            },
            ingest_ts=_absent(n, np.int64),
            side=_absent(n, np.uint8),
            trade_id=b"",
            trade_id_end=_absent(n, np.int64),
        )

    def to_events(self) -> list[StreamEvent]:
        """One StreamEvent per row, equal in every way to what ``StreamEvent.model_validate``
        builds from :func:`row_dict` of the row (values, fields set). Rows must be valid
        (as every row :func:`decode_blocks` returns is); nothing is checked here."""
        out = []
        fields_template: dict[str, Any] = dict.fromkeys(StreamEvent.model_fields)
        floats = {k: a.tolist() for k, a in self.floats.items()}
        present = self.present.tolist()
        ingest = self.ingest_ts.tolist()
        sides = self.side.tolist()
        for i, (s, iv, ver, kind, ts, seq) in enumerate(
            zip(
                self.series_idx.tolist(),
                self.interval_idx.tolist(),
                self.ver.tolist(),
                self.kind.tolist(),
                self.src_ts.tolist(),
                self.seq.tolist(),
                strict=True,
            )
        ):
            provider, symbol = self.series[s]
            src_ts = from_epoch_us(ts)
            fields = dict(fields_template)
            given = {"ver", "provider", "symbol", "kind", "src_ts", "seq", "event_id"}
            fields.update(
                ver=ver,
                provider=provider,
                symbol=symbol,
                kind=KIND_NAMES[kind],
                src_ts=src_ts,
                seq=seq,
                event_id=make_event_id(provider, symbol, src_ts, seq),
            )
            interval = self.intervals[iv]
            if interval is not None:
                fields["interval"] = interval
                given.add("interval")
            bits = present[i]
            for name in FLOAT_FIELDS:
                if bits & OPTIONAL_BITS[name]:
                    fields[name] = floats[name][i]
                    given.add(name)
            if bits & OPTIONAL_BITS["ingest_ts"]:
                fields["ingest_ts"] = from_epoch_us(ingest[i])
                given.add("ingest_ts")
            if sides[i]:
                fields["side"] = SIDE_NAMES[sides[i]]
                given.add("side")
            if bits & OPTIONAL_BITS["trade_id"]:
                fields["trade_id"] = self.trade_id_at(i)
                given.add("trade_id")
            event = object.__new__(StreamEvent)
            object.__setattr__(event, "__dict__", fields)
            object.__setattr__(event, "__pydantic_fields_set__", given)
            object.__setattr__(event, "__pydantic_extra__", None)
            object.__setattr__(event, "__pydantic_private__", None)
            out.append(event)
        return out

    @staticmethod
    def concat(parts: Sequence[EventColumns]) -> EventColumns:
        """The rows of ``parts`` one after the other (series and intervals re-coded)."""
        if len(parts) == 1:
            return parts[0]
        series: dict[tuple[str, str], int] = {}
        intervals: dict[str | None, int] = {None: 0}
        series_idx = []
        interval_idx = []
        blobs = []
        ends = []
        offset = 0
        # parts coded alike (a window's parts: one series each) keep their codes
        alike = bool(parts) and all(
            p.series == parts[0].series and p.intervals == parts[0].intervals for p in parts
        )
        for p in parts:
            if alike:
                series_idx.append(p.series_idx)
                interval_idx.append(p.interval_idx)
            else:
                s_map = np.array([series.setdefault(s, len(series)) for s in p.series], np.int32)
                i_map = np.array(
                    [intervals.setdefault(iv, len(intervals)) for iv in p.intervals], np.int32
                )
                series_idx.append(s_map[p.series_idx] if p.n else p.series_idx)
                interval_idx.append(i_map[p.interval_idx] if p.n else p.interval_idx)
            blobs.append(p.trade_id)
            ends.append(p.trade_id_end + offset)
            offset += len(p.trade_id)
        names = parts[0].floats.keys() if parts else FLOAT_FIELDS
        return EventColumns(
            series=parts[0].series if alike else tuple(series),
            series_idx=np.concatenate(series_idx) if parts else np.zeros(0, np.int32),
            intervals=parts[0].intervals if alike else tuple(intervals),
            interval_idx=np.concatenate(interval_idx) if parts else np.zeros(0, np.int32),
            ver=_cat([p.ver for p in parts], np.int64),
            kind=_cat([p.kind for p in parts], np.uint8),
            src_ts=_cat([p.src_ts for p in parts], np.int64),
            seq=_cat([p.seq for p in parts], np.int64),
            present=_cat([p.present for p in parts], np.uint16),
            floats={k: _cat([p.floats[k] for p in parts], np.float64) for k in names},
            ingest_ts=_cat([p.ingest_ts for p in parts], np.int64),
            side=_cat([p.side for p in parts], np.uint8),
            trade_id=b"".join(blobs),
            trade_id_end=_cat(ends, np.int64),
        )


def _digits(values: Int64s, width: int | None = None) -> npt.NDArray[np.uint8]:
    """Non-negative integers as ASCII digits, right-aligned and zero-padded to ``width``
    (default: the widest value's): an (n, width) matrix."""
    if width is None:
        top = int(values.max()) if len(values) else 0
        width = len(str(top))
    out = np.empty((len(values), width), np.uint8)
    rest = values
    for col in range(width - 1, -1, -1):
        rest, digit = np.divmod(rest, 10)
        out[:, col] = digit + 48
    return out


def _digit_counts(values: Int64s, width: int) -> Int64s:
    """How many decimal digits each non-negative value of at most ``width`` digits has."""
    counts = np.ones(len(values), np.int64)
    for d in range(1, width):
        counts += values >= 10**d
    return counts


def decimal_text(values: Int64s) -> tuple[bytes, Int64s]:
    """Non-negative integers as their decimal text (ASCII): a blob and end offsets."""
    n = len(values)
    if n == 0:
        return b"", np.zeros(0, np.int64)
    matrix = _digits(values)
    width = matrix.shape[1]
    lengths = _digit_counts(values, width)
    keep = np.arange(width) >= (width - lengths)[:, None]
    return matrix[keep].tobytes(), np.cumsum(lengths)


def _lines(matrix: npt.NDArray[np.uint8]) -> list[str]:
    """The rows of an ASCII matrix as text, NUL bytes (padding) left out: each row ends in
    ``\\n`` in its last column, so the rows are one blob split at C speed, with no loop per
    row (``bytes.replace`` drops the padding wherever a row has it)."""
    lines = matrix.tobytes().replace(b"\0", b"").decode("ascii").split("\n")
    lines.pop()  # what follows the last row's newline
    return lines


def _unpadded_digits(values: Int64s) -> tuple[npt.NDArray[np.uint8], int]:
    """``values`` (non-negative) as right-aligned ASCII digits whose leading zeros are NUL
    (padding for :func:`_lines`), and the matrix's width."""
    width = len(str(int(values.max()))) if len(values) else 1
    digits = _digits(values, width)
    digits[np.arange(width) < (width - _digit_counts(values, width))[:, None]] = 0
    return digits, width


def decimal_strs(values: Int64s) -> list[str]:
    """Non-negative integers as their decimal text, one ``str`` per value: ``str(v)`` for
    each, made from a digit matrix rather than value by value."""
    if not len(values):
        return []
    digits, width = _unpadded_digits(values)
    matrix = np.empty((len(values), width + 1), np.uint8)
    matrix[:, :width] = digits
    matrix[:, width] = ord("\n")
    return _lines(matrix)


def _iso_us_texts(src_ts: Int64s) -> npt.NDArray[np.uint8]:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ|`` of each µs timestamp (within the datetime range), as
    an (n, 28) ASCII matrix: one text per distinct second, the microseconds as digits."""
    seconds, fraction = np.divmod(src_ts, 1_000_000)
    distinct, which = np.unique(seconds, return_inverse=True)
    heads = np.frombuffer(
        b"".join(isoformat_epoch_us(int(sec) * 1_000_000)[:20].encode() for sec in distinct),
        np.uint8,
    ).reshape(len(distinct), 20)
    out = np.empty((len(src_ts), 28), np.uint8)
    out[:, :20] = heads[which]
    out[:, 20:26] = _digits(fraction, 6)
    out[:, 26] = ord("Z")
    out[:, 27] = ord("|")
    return out


def event_id_strs(cols: EventColumns) -> list[str]:
    """Each row's ``event_id`` as its fields imply it, ``provider|symbol|src_ts|seq`` with the
    time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``
    (:func:`~market_data_core.contracts.make_event_id`), built as one ASCII matrix (the
    series' prefixes, one text per distinct second, the microsecond and ``seq`` digits)
    rather than row by row. Rows must have ``src_ts`` within the datetime range and
    ``seq >= 0``."""
    n = cols.n
    if n == 0:
        return []
    texts = [f"{p}|{s}|" for p, s in cols.series]
    if not all(t.isascii() and "\n" not in t and "\0" not in t for t in texts):
        # not the matrix's alphabet (the contract's symbols are, providers need not be)
        return [
            f"{texts[j]}{isoformat_epoch_us(ts)}|{seq}"
            for j, ts, seq in zip(
                cols.series_idx.tolist(), cols.src_ts.tolist(), cols.seq.tolist(), strict=True
            )
        ]
    prefixes = [t.encode("ascii") for t in texts]
    width = max(map(len, prefixes))
    table = np.zeros((len(prefixes), width), np.uint8)  # NUL-padded: dropped by _lines
    for s, prefix in enumerate(prefixes):
        table[s, : len(prefix)] = np.frombuffer(prefix, np.uint8)
    digits, seq_width = _unpadded_digits(cols.seq)
    matrix = np.empty((n, width + 28 + seq_width + 1), np.uint8)
    matrix[:, :width] = table[cols.series_idx]
    matrix[:, width : width + 28] = _iso_us_texts(cols.src_ts)
    matrix[:, width + 28 : width + 28 + seq_width] = digits
    matrix[:, -1] = ord("\n")
    return _lines(matrix)


def coded_rows(values: Sequence[bytes], codes: npt.NDArray[np.integer]) -> tuple[bytes, Int64s]:
    """Row i is ``values[codes[i]]``: a blob and end offsets (a dictionary-coded column)."""
    lengths = np.fromiter(map(len, values), np.int64, len(values))
    starts = np.cumsum(lengths) - lengths
    row_len = lengths[codes]
    ends = np.cumsum(row_len)
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        return b"", ends
    ramp = np.arange(total) - np.repeat(ends - row_len, row_len)
    src = np.repeat(starts[codes], row_len) + ramp
    return np.frombuffer(b"".join(values), np.uint8)[src].tobytes(), ends


def first_occurrences(*keys: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """Indices of the rows whose key (the tuple of ``keys`` at the row) has not occurred in an
    earlier row, in row order: de-duplication where the first arrival wins."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, np.intp)
    order = np.lexsort(keys[::-1])  # by keys[0], then keys[1], ...; stable: arrival order
    stacked = [k[order] for k in keys]
    new = np.ones(n, np.bool_)
    same = np.ones(n - 1, np.bool_)
    for k in stacked:
        same &= k[1:] == k[:-1]
    new[1:] = ~same
    return np.sort(order[new])


def window_marks(cols: EventColumns, window_us: int) -> npt.NDArray[np.intp]:
    """The rows with the earliest and the latest ``src_ts`` of every ``(series, kind,
    window)`` of ``window_us``: of each kind, the same windows, and per series the same first
    and last event time, as all the rows (all a store's bar recompute needs to know of rows
    it already holds: trade bars follow the windows of the ticks, quote bars those of the
    quotes, so a window's marks hold a tick when it holds one)."""
    ts = cols.src_ts
    window = ts - ts % window_us
    order = np.lexsort((ts, window, cols.kind, cols.series_idx))
    s, k, w = cols.series_idx[order], cols.kind[order], window[order]
    new = np.ones(len(order), np.bool_)
    new[1:] = (s[1:] != s[:-1]) | (k[1:] != k[:-1]) | (w[1:] != w[:-1])
    last = np.ones(len(order), np.bool_)
    last[:-1] = new[1:]
    marks: npt.NDArray[np.intp] = np.unique(order[new | last])
    return marks


def _cat(arrays: list[Any], dtype: Any) -> Any:
    if all(_is_absent(a) for a in arrays):
        return _absent(sum(map(len, arrays)), dtype)
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype)


def _take_slices(blob: bytes, ends: Int64s, idx: npt.NDArray[np.intp]) -> tuple[bytes, Int64s]:
    """The slices ``idx`` of a blob of consecutive slices ending at ``ends``, packed again."""
    if not blob:
        return b"", np.zeros(len(idx), np.int64)
    starts = np.concatenate(([0], ends[:-1]))[idx]
    lengths = ends[idx] - starts
    new_ends = np.cumsum(lengths)
    total = int(new_ends[-1]) if len(new_ends) else 0
    if total == 0:
        return b"", new_ends
    # each output byte's source: its slice's start plus its position within the slice
    src = np.repeat(starts - (new_ends - lengths), lengths) + np.arange(total)
    return np.frombuffer(blob, np.uint8)[src].tobytes(), new_ends


@dataclass(slots=True)
class BlocksDecoded:
    """What :func:`decode_blocks` made of some payloads: the valid rows as columns (in
    payload order), the payload each row came from (``row_payload``, an index into the
    payloads), and ``(payload index, error)`` per bad row or undecodable payload."""

    columns: EventColumns
    row_payload: Int32s
    errors: list[tuple[int, ContractError]]


def _empty_columns() -> EventColumns:
    z64 = np.zeros(0, np.int64)
    return EventColumns(
        series=(),
        series_idx=np.zeros(0, np.int32),
        intervals=(None,),
        interval_idx=np.zeros(0, np.int32),
        ver=z64,
        kind=np.zeros(0, np.uint8),
        src_ts=z64,
        seq=z64,
        present=np.zeros(0, np.uint16),
        floats={k: np.zeros(0, np.float64) for k in FLOAT_FIELDS},
        ingest_ts=z64,
        side=np.zeros(0, np.uint8),
        trade_id=b"",
        trade_id_end=z64,
    )


_FIELD_AT: Final = {name: i for i, name in enumerate(_WireBlock.__struct_fields__)}
# (position, name, bytes per row) of the columns whose length _parse checks
_SIZED: Final = tuple(
    (_FIELD_AT[name], name, size)
    for name, (_d, size) in _COLUMN_TYPES.items()
    if name not in _COMPACT
)
# (position, name, bytes per cell) of the optional columns, a cell per row (version 1) or
# per row that has the field (version 2), whose sizes _assemble checks for all blocks at once
_COMPACT_SIZED: Final = tuple((_FIELD_AT[name], name, _COLUMN_TYPES[name][1]) for name in _COMPACT)
# where _parse appends the block's layout (True: version 2) to its fields
_IS_COMPACT: Final = len(_WireBlock.__struct_fields__)
_N, _VER, _PROVIDER, _SYMBOL = (_FIELD_AT[k] for k in ("n", "ver", "provider", "symbol"))
_INTERVAL_AT, _TRADE_ID, _TRADE_ID_END = (
    _FIELD_AT[k] for k in ("interval", "trade_id", "trade_id_end")
)
_astuple = msgspec.structs.astuple


def _parse(payload: bytes) -> tuple[Any, ...]:
    """The block's map as a tuple (:class:`_WireBlock`'s fields in order, then whether its
    optional columns are compact), its columns' sizes checked; ``ContractError("decode")``
    otherwise. (What needs the rows' values is checked for all blocks at once:
    :func:`_assemble`.)"""
    magic = payload[:2]
    if magic != BLOCK_MAGIC and magic != _MAGIC_COMPACT:
        raise ContractError(
            "decode", f"unknown column block version {payload[1:2].hex() or 'none'}", payload
        )
    try:
        block = (
            *_astuple(_BLOCK_DECODER.decode(memoryview(payload)[2:])),
            magic == _MAGIC_COMPACT,
        )
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ContractError("decode", f"not a valid column block: {exc}", payload) from exc
    n = block[_N]
    if not 1 <= n <= MAX_BLOCK_ROWS:
        raise ContractError(
            "decode", f"column block: n must be 1..{MAX_BLOCK_ROWS}, got {n}", payload
        )
    for at, name, size in _SIZED:
        col = block[at]
        if col is not None and len(col) != n * size:
            raise ContractError(
                "decode",
                f"column block: {name} holds {len(col)} bytes, expected {n} x {size}",
                payload,
            )
    trade_id, ends = block[_TRADE_ID], block[_TRADE_ID_END]
    if (trade_id is None) != (ends is None):
        raise ContractError(
            "decode", "column block: trade_id and trade_id_end go together", payload
        )
    if ends is not None and int.from_bytes(ends[-4:], "little") != len(trade_id):
        raise ContractError("decode", _BAD_ENDS, payload)
    return block


_BAD_ENDS = "column block: trade_id_end must rise to the length of trade_id"
_MISSING_COLUMN = "column block: a row has a field whose column is not in the block"
_STRAY_TRADE_ID = "column block: a row without a trade_id has one in trade_id"


def _missing_columns(block: tuple[Any, ...]) -> int:
    """The optional-field bits whose column the block leaves out."""
    missing = 0
    for name in (*FLOAT_FIELDS, "ingest_ts", "trade_id"):
        if block[_FIELD_AT[name]] is None:
            missing |= OPTIONAL_BITS[name]
    return missing


def _assemble(
    blocks: list[tuple[Any, ...]],
) -> tuple[EventColumns, npt.NDArray[np.intp], Bools]:
    """The rows of ``blocks`` as one :class:`EventColumns` (not validated), each row's block,
    and the blocks that break a rule needing the rows' values (a row carrying a field whose
    column the block lacks, trade id ends that fall, a trade id in a row without one).
    Each column of all blocks is joined into one buffer and read with one ``frombuffer``."""
    nb = len(blocks)
    sizes = np.fromiter((b[_N] for b in blocks), np.intp, nb)
    total = int(sizes.sum())
    row_block = np.repeat(np.arange(nb), sizes)
    series: dict[tuple[str, str], int] = {}
    intervals: dict[str | None, int] = {None: 0}
    s_codes = np.fromiter(
        (series.setdefault((b[_PROVIDER], b[_SYMBOL]), len(series)) for b in blocks),
        np.int32,
        nb,
    )
    i_codes = np.fromiter(
        (intervals.setdefault(b[_INTERVAL_AT], len(intervals)) for b in blocks), np.int32, nb
    )
    missing = np.zeros(nb, np.uint16)
    short = np.zeros(nb, np.bool_)  # an optional column of the wrong length for its version
    is_compact = np.fromiter((b[_IS_COMPACT] for b in blocks), np.bool_, nb)
    any_compact = bool(is_compact.any())
    compact_rows = is_compact[row_block] if any_compact else is_compact  # rows of version 2

    def column(name: str, dtype: Any) -> Any:
        """A column every block of which has a cell per row (or none: zeros)."""
        at = _FIELD_AT[name]
        parts = [b[at] for b in blocks]
        absent = [p is None for p in parts]
        if all(absent):
            return _absent(total, dtype)
        if any(absent):
            zero = b"\0" * np.dtype(dtype).itemsize
            parts = [zero * b[_N] if p is None else p for b, p in zip(blocks, parts, strict=True)]
        return np.frombuffer(b"".join(parts), dtype)

    def compact_columns() -> dict[str, Any]:
        """The optional columns with a presence bit (:data:`_COMPACT`), by name: a cell per
        row of a version-1 block, per row that has the field of a version-2 block, none
        where a block leaves the column out. A block whose part has another length gets
        none and is refused. The columns that need spreading out over their rows are
        spread all at once: one scatter into a (columns, rows) array. (Every such column
        is 8 bytes a cell, float64 or int64: the scatter moves them as int64, bit for bit.)"""
        # the columns to spread: their names, and per block their part, its length, whether
        # the block leaves the column out
        names: list[str] = []
        parts_of: list[list[bytes]] = []
        lengths_of: list[npt.NDArray[np.intp]] = []
        absent_of: list[list[bool]] = []
        out: dict[str, Any] = {}
        for name in _COMPACT:
            at = _FIELD_AT[name]
            dtype = _COLUMN_TYPES[name][0]
            parts = [b[at] for b in blocks]
            absent = [p is None for p in parts]
            gaps = any(absent)
            if gaps:
                missing[np.array(absent)] |= np.uint16(OPTIONAL_BITS[name])
                if all(absent):
                    out[name] = _absent(total, dtype)
                    continue
                parts = [b"" if p is None else p for p in parts]
            lengths = np.fromiter(map(len, parts), np.intp, nb)
            if not any_compact and not gaps and np.array_equal(lengths, sizes * 8):
                out[name] = np.frombuffer(b"".join(parts), dtype)  # every block dense
                continue
            names.append(name)
            parts_of.append(parts)
            lengths_of.append(lengths)
            absent_of.append(absent)
        if not names:
            return out
        k = len(names)
        cells = np.broadcast_to(sizes, (k, nb))  # (columns, blocks)
        if any_compact:
            bit_of = np.array([OPTIONAL_BITS[name] for name in names], np.uint16)
            flagged = (present & bit_of[:, None]) != 0  # (columns, rows)
            counted = np.add.reduceat(flagged, first_rows, axis=1, dtype=np.intp)
            cells = np.where(is_compact, counted, sizes)
            # every row of a version-1 block has a cell
            takes = flagged if all_compact else flagged | ~compact_rows
        else:
            takes = np.ones((k, total), np.bool_)
        none = np.array(absent_of, np.bool_)
        wrong = ~none & (np.stack(lengths_of) != cells * 8)
        if wrong.any():  # refused below; read as absent meanwhile, keeping the rows aligned
            short[wrong.any(axis=0)] = True
            for j, block in zip(*np.nonzero(wrong), strict=True):
                parts_of[j][block] = b""
            none |= wrong
        if none.any():
            takes = takes & ~none[:, row_block]
        cells_in = np.frombuffer(b"".join([p for parts in parts_of for p in parts]), "<i8")
        rows = np.zeros((k, total), np.int64)
        rows.reshape(-1)[np.flatnonzero(takes)] = cells_in
        for j, name in enumerate(names):
            out[name] = rows[j].view(_COLUMN_TYPES[name][0])
        return out

    first_rows = np.cumsum(sizes) - sizes
    all_compact = bool(is_compact.all())
    present = column("present", "<u2")
    compacted = compact_columns()
    floats = {name: compacted[name] for name in FLOAT_FIELDS}
    ingest_ts = compacted["ingest_ts"]
    trade_blob = b""
    trade_ends = np.zeros(total, np.int64)
    falls = np.zeros(total, np.bool_)
    has_blob = [b[_TRADE_ID] is not None for b in blocks]
    if not all(has_blob):
        missing[~np.array(has_blob)] |= np.uint16(OPTIONAL_BITS["trade_id"])
    if any(has_blob):
        blobs = [b[_TRADE_ID] or b"" for b in blocks]
        blob_sizes = np.fromiter(map(len, blobs), np.int64, nb)
        trade_blob = b"".join(blobs)
        block_start = np.repeat(np.cumsum(blob_sizes) - blob_sizes, sizes)
        trade_ends = column("trade_id_end", "<u4").astype(np.int64) + block_start
        starts = np.concatenate(([0], trade_ends[:-1]))
        starts[first_rows] = block_start[first_rows]
        falls = trade_ends < starts
        has_id = (present & OPTIONAL_BITS["trade_id"]) != 0
        falls |= (trade_ends > starts) & ~has_id
        if np.any(trade_ends < starts):  # those blocks are refused; keep slices well-formed
            trade_ends = np.maximum.accumulate(trade_ends)
    stray = falls | ((present & missing[row_block]) != 0)
    bad_block = short.copy()
    if stray.any():
        bad_block[row_block[stray]] = True
    cols = EventColumns(
        series=tuple(series),
        series_idx=s_codes[row_block],
        intervals=tuple(intervals),
        interval_idx=i_codes[row_block],
        ver=np.repeat(np.fromiter((b[_VER] for b in blocks), np.int64, nb), sizes),
        kind=column("kind", np.uint8),
        src_ts=column("src_ts", "<i8"),
        seq=column("seq", "<i8"),
        present=present,
        floats=floats,
        ingest_ts=ingest_ts,
        side=column("side", np.uint8),
        trade_id=trade_blob,
        trade_id_end=trade_ends,
    )
    return cols, row_block, bad_block


def _block_error(block: tuple[Any, ...], payload: bytes) -> ContractError:
    """Why :func:`_assemble` refused a block."""
    present = np.frombuffer(block[_FIELD_AT["present"]], "<u2")
    if np.any(present & np.uint16(_missing_columns(block))):
        return ContractError("decode", _MISSING_COLUMN, payload)
    for at, name, size in _COMPACT_SIZED:
        col = block[at]
        if block[_IS_COMPACT]:
            cells = int(np.count_nonzero(present & np.uint16(OPTIONAL_BITS[name])))
            what = f"{cells} x {size} (a cell per row that has the field)"
        else:
            cells = block[_N]
            what = f"{cells} x {size}"
        if col is not None and len(col) != cells * size:
            return ContractError(
                "decode", f"column block: {name} holds {len(col)} bytes, expected {what}", payload
            )
    ends = np.frombuffer(block[_TRADE_ID_END] or b"", "<u4").astype(np.int64)
    if np.any(np.diff(ends, prepend=0) < 0):
        return ContractError("decode", _BAD_ENDS, payload)
    return ContractError("decode", _STRAY_TRADE_ID, payload)


def _trade_ids_ok(cols: EventColumns, has_id: Bools) -> Bools:
    """Rows whose trade id (if any) is valid UTF-8 (every row passes when all are)."""
    blob = cols.trade_id
    if not blob:
        return np.ones(cols.n, np.bool_)
    try:
        blob.decode()
    except UnicodeDecodeError:
        each: Bools = np.ones(cols.n, np.bool_)
        starts = np.concatenate(([0], cols.trade_id_end[:-1]))
        for i in np.flatnonzero(has_id).tolist():
            try:
                blob[int(starts[i]) : int(cols.trade_id_end[i])].decode()
            except UnicodeDecodeError:
                each[i] = False
        return each
    # The whole blob is UTF-8: a slice is too unless it starts or ends inside a character,
    # i.e. unless its first byte, or the byte after it, is a continuation byte (0b10xxxxxx).
    ends = cols.trade_id_end
    starts = np.concatenate(([0], ends[:-1]))
    nonempty = starts < ends
    inside = (np.frombuffer(blob, np.uint8) & 0xC0) == 0x80
    inside = np.concatenate((inside, [False]))  # the end of the blob is a boundary
    ok: Bools = ~(nonempty & (inside[starts] | inside[ends]))
    return ok


def valid_rows(cols: EventColumns) -> Bools:
    """Rows that pass every StreamEvent rule (see the module docstring), as a mask; a row
    outside it may still be valid (the reference decides)."""
    f = cols.floats
    bits = cols.present
    kind = cols.kind

    def has(name: str) -> Bools:
        mask: Bools = (bits & OPTIONAL_BITS[name]) != 0
        return mask

    ok: Bools = (bits & ~np.uint16(_ALL_BITS)) == 0
    ok &= kind <= _QUOTE
    ok &= (cols.src_ts >= MIN_EPOCH_US) & (cols.src_ts <= MAX_EPOCH_US)
    has_ingest = has("ingest_ts")
    ok &= ~has_ingest | ((cols.ingest_ts >= MIN_EPOCH_US) & (cols.ingest_ts <= MAX_EPOCH_US))
    ok &= cols.seq >= 0
    ok &= cols.side <= 2
    series_ok = np.array(
        [
            _is_provider(p) and _is_symbol(s)
            for p, s in cols.series  # few per poll
        ],
        np.bool_,
    )
    if len(series_ok):
        ok &= series_ok[cols.series_idx]
    ok &= np.isin(cols.ver, SUPPORTED_VERSIONS)
    interval_ok = np.array(
        [iv is None or _INTERVAL.match(iv) is not None for iv in cols.intervals], np.bool_
    )
    ok &= interval_ok[cols.interval_idx]
    has_o, has_h, has_l, has_c, has_v = (has(n) for n in ("o", "h", "l", "c", "v"))
    is_tick, is_bar, is_quote = kind == _TICK, kind == _BAR, kind == _QUOTE
    ok &= ~is_tick | (has_c & has_v)
    ok &= ~is_bar | (has_o & has_h & has_l & has_c & (cols.interval_idx != 0))
    has_bid, has_ask = has("bid"), has("ask")
    ok &= ~is_quote | (has_bid & has_ask)
    with np.errstate(invalid="ignore"):
        for name, present in (("o", has_o), ("h", has_h), ("l", has_l), ("c", has_c)):
            x = f[name]
            ok &= ~present | ((x > 0) & (x < np.inf))
        v = f["v"]
        ok &= ~has_v | ((v >= 0) & (v < np.inf))
        bid, ask = f["bid"], f["ask"]
        quote_ok = (bid > 0) & (bid < np.inf) & (ask > 0) & (ask < np.inf) & (bid <= ask)
        for name in ("bid_size", "ask_size"):
            x = f[name]
            quote_ok &= ~has(name) | ((x >= 0) & (x < np.inf))
        ok &= ~is_quote | quote_ok
        o, h, lo, c = f["o"], f["h"], f["l"], f["c"]
        oc = has_o & has_c
        ok &= ~(oc & has_h) | (h >= np.maximum(o, c))
        ok &= ~(oc & has_l) | (lo <= np.minimum(o, c))
        ok &= ~(has_h & has_l) | (h >= lo)
    has_id = has("trade_id")
    ok &= ~has_id | _trade_ids_ok(cols, has_id)
    return ok


def row_dict(cols: EventColumns, i: int) -> dict[str, Any]:
    """Row ``i`` as the StreamEvent dict it stands for (timestamps as epoch µs, as msgpack
    carries them): the reference path's input for the row, and its dead letter's payload."""
    provider, symbol = cols.series[int(cols.series_idx[i])]
    kind = int(cols.kind[i])
    ts = int(cols.src_ts[i])
    seq = int(cols.seq[i])
    row: dict[str, Any] = {
        "ver": int(cols.ver[i]),
        "provider": provider,
        "symbol": symbol,
        "kind": KIND_NAMES[kind] if kind < len(KIND_NAMES) else kind,
    }
    interval = cols.intervals[int(cols.interval_idx[i])]
    if interval is not None:
        row["interval"] = interval
    row["src_ts"] = ts
    bits = int(cols.present[i])
    if bits & OPTIONAL_BITS["ingest_ts"]:
        row["ingest_ts"] = int(cols.ingest_ts[i])
    for name in FLOAT_FIELDS:
        if bits & OPTIONAL_BITS[name]:
            row[name] = float(cols.floats[name][i])
    row["seq"] = seq
    # implied by the fields; with an out-of-range src_ts the reference stops before it
    row["event_id"] = (
        make_event_id(provider, symbol, from_epoch_us(ts), seq)
        if MIN_EPOCH_US <= ts <= MAX_EPOCH_US
        else ""
    )
    side = int(cols.side[i])
    if side:
        row["side"] = SIDE_NAMES[side] if side < len(SIDE_NAMES) else side
    if bits & OPTIONAL_BITS["trade_id"]:
        start = int(cols.trade_id_end[i - 1]) if i else 0
        raw = cols.trade_id[start : int(cols.trade_id_end[i])]
        try:
            row["trade_id"] = raw.decode()
        except UnicodeDecodeError:
            row["trade_id"] = raw  # the reference gives the reason
    unknown = bits & ~_ALL_BITS
    if unknown:
        row[f"present_bits_{unknown:#06x}"] = True  # no such field: the reference says so
    return row


def _row_payload(row: dict[str, Any]) -> bytes:
    return json.dumps(row, default=repr, allow_nan=True).encode()


def decode_blocks(payloads: Sequence[bytes]) -> BlocksDecoded:
    """Decode and validate column-block payloads (see the module docstring) into one
    :class:`EventColumns` of their valid rows, in order.

    Never raises: an undecodable payload gives one ``ContractError("decode")`` carrying its
    bytes; each invalid row gives the reference path's ``ContractError("validation")`` (its
    reason) carrying the row's dict as JSON. Rows of one payload stay together and in order.
    """
    blocks: list[tuple[Any, ...]] = []
    owners: list[int] = []
    errors: list[tuple[int, ContractError]] = []
    for p, payload in enumerate(payloads):
        try:
            blocks.append(_parse(payload))
        except ContractError as exc:
            errors.append((p, exc))
            continue
        owners.append(p)
    if not blocks:
        return BlocksDecoded(_empty_columns(), np.zeros(0, np.int32), _sorted(errors))
    cols, row_block, bad_block = _assemble(blocks)
    row_payload = np.array(owners, np.int32)[row_block]
    ok = valid_rows(cols)
    suspects = ~ok
    if bad_block.any():
        for b in np.flatnonzero(bad_block).tolist():
            errors.append((owners[b], _block_error(blocks[b], payloads[owners[b]])))
        refused = bad_block[row_block]
        ok &= ~refused
        suspects &= ~refused
    for i in np.flatnonzero(suspects).tolist():
        if _reference_accepts(cols, i, errors, int(row_payload[i])):
            ok[i] = True
    if not ok.all():
        cols = cols.take(ok)
        row_payload = row_payload[ok]
    return BlocksDecoded(cols, row_payload, _sorted(errors))


def _sorted(errors: list[tuple[int, ContractError]]) -> list[tuple[int, ContractError]]:
    return sorted(errors, key=lambda e: e[0])  # stable: rows of a payload keep their order


def _reference_accepts(
    cols: EventColumns, i: int, errors: list[tuple[int, ContractError]], owner: int
) -> bool:
    """Run the reference (pydantic) path on row ``i``: True if it accepts the row, else its
    error (the reason, the row as JSON) is appended to ``errors``."""
    from market_data_core.codec import _validated_event  # the codec imports this module

    row = row_dict(cols, i)
    payload = _row_payload(row)
    try:
        _validated_event(dict(row), payload)
    except ContractError as exc:
        errors.append((owner, exc))
        return False
    return True


def encode_block(events: Sequence[StreamEvent]) -> bytes:
    """Events of one ``(provider, symbol)``, ``ver`` and ``interval`` as one block payload.

    Raises ``ValueError`` for no events, more than :data:`MAX_BLOCK_ROWS`, events of
    several series, versions or intervals, or a ``seq`` beyond int64.
    """
    if not events:
        raise ValueError("a column block needs at least one event")
    if len(events) > MAX_BLOCK_ROWS:
        raise ValueError(f"a column block holds at most {MAX_BLOCK_ROWS} events")
    first = events[0]
    keys = {(e.provider, e.symbol, e.ver, e.interval) for e in events}
    if len(keys) > 1:
        raise ValueError("a column block holds events of one provider, symbol, ver, interval")
    return encode_columns(columns_from_events(events), interval=first.interval, ver=first.ver)


def encode_columns(cols: EventColumns, *, interval: str | None = None, ver: int = 1) -> bytes:
    """:class:`EventColumns` of one series as one block payload (see :func:`encode_block`)."""
    n = cols.n
    if not 1 <= n <= MAX_BLOCK_ROWS or len(cols.series) != 1:
        raise ValueError("a column block holds 1..MAX_BLOCK_ROWS events of one series")
    provider, symbol = cols.series[0]
    bits = cols.present
    fields: dict[str, Any] = {
        "n": n,
        "ver": ver,
        "provider": provider,
        "symbol": symbol,
        "interval": interval,
        "kind": cols.kind.astype("<u1").tobytes(),
        "src_ts": cols.src_ts.astype("<i8").tobytes(),
        "seq": cols.seq.astype("<i8").tobytes(),
        "present": bits.astype("<u2").tobytes(),
    }
    union = int(np.bitwise_or.reduce(bits)) if n else 0
    partial = False  # some column covers some rows but not all: version 2 (compact)
    for name in FLOAT_FIELDS:
        if union & OPTIONAL_BITS[name]:
            has = cols.has(name)
            partial |= not has.all()
            fields[name] = cols.floats[name][has].astype("<f8").tobytes()
    if union & OPTIONAL_BITS["ingest_ts"]:
        has = cols.has("ingest_ts")
        partial |= not has.all()
        fields["ingest_ts"] = cols.ingest_ts[has].astype("<i8").tobytes()
    if np.any(cols.side):
        fields["side"] = cols.side.astype("<u1").tobytes()
    if union & OPTIONAL_BITS["trade_id"]:
        fields["trade_id"] = cols.trade_id
        fields["trade_id_end"] = cols.trade_id_end.astype("<u4").tobytes()
    if interval is None:
        del fields["interval"]
    return (_MAGIC_COMPACT if partial else BLOCK_MAGIC) + _BLOCK_ENCODER.encode(fields)


_NOT_BLOCK_RUNS = "blocks are consecutive runs of 1..MAX_BLOCK_ROWS rows of one series"


def encode_blocks(
    cols: EventColumns, bounds: Sequence[tuple[int, int]], *, ver: int = 1
) -> list[bytes]:
    """Rows ``start:stop`` of ``cols`` as one block payload for each ``(start, stop)`` of
    ``bounds`` (ascending, contiguous, each of 1..:data:`MAX_BLOCK_ROWS` rows of one series,
    no ``interval``): byte for byte what :func:`encode_columns` gives for each slice alone,
    with the columns compacted and laid out once for all of ``cols`` instead of once per block
    (a block of 50 events spent more on that than on its msgpack).

    Raises ``ValueError`` for bounds that are not such runs."""
    if not bounds:
        return []
    nb = len(bounds)
    first = [a for a, _ in bounds]  # each block's first row and the row after its last
    after = [b for _, b in bounds]
    n = cols.n
    series_idx = cols.series_idx
    if (
        first[0] != 0
        or after[-1] != n
        or first[1:] != after[:-1]
        or not all(1 <= b - a <= MAX_BLOCK_ROWS for a, b in bounds)
        or cols.interval_idx.any()
    ):
        raise ValueError(_NOT_BLOCK_RUNS)
    starts = np.array(first, np.int64)
    stops = np.array(after, np.int64)
    sizes = stops - starts
    is_start = np.zeros(n, np.bool_)
    is_start[starts] = True
    if not is_start[1:][series_idx[1:] != series_idx[:-1]].all():
        raise ValueError(_NOT_BLOCK_RUNS)
    bits = cols.present
    unions = np.bitwise_or.reduceat(bits, starts).tolist()
    union_all = int(np.bitwise_or.reduce(bits))
    sided = (np.maximum.reduceat(cols.side, starts) > 0).tolist()
    # Every column is laid out once as bytes; a block takes a bytes slice of each (slicing
    # bytes costs a fraction of a NumPy slice and its tobytes, times a dozen columns a block).
    # each block's byte range in a column of 1, 2, 4 and 8 bytes a row (Python ints)
    a1, b1 = starts.tolist(), stops.tolist()
    a2, b2 = (starts * 2).tolist(), (stops * 2).tolist()
    a4, b4 = (starts * 4).tolist(), (stops * 4).tolist()
    a8, b8 = (starts * 8).tolist(), (stops * 8).tolist()
    kind = cols.kind.astype("<u1", copy=False).tobytes()
    src_ts = cols.src_ts.astype("<i8", copy=False).tobytes()
    seq = cols.seq.astype("<i8", copy=False).tobytes()
    present = bits.astype("<u2", copy=False).tobytes()
    side = cols.side.astype("<u1", copy=False).tobytes()
    # each optional column's cells of the rows that have it (compact), as bytes, and the
    # byte where each block's cells start in them; all columns' counts in one 2-D pass
    compact: list[tuple[str, int, bytes, list[int]]] = []
    partial = np.zeros(nb, np.bool_)  # the blocks of version 2 (see encode_columns)
    names = [name for name in _COMPACT if union_all & OPTIONAL_BITS[name]]
    if names:
        bit_of = np.array([OPTIONAL_BITS[k] for k in names], np.uint16)
        has = (bits & bit_of[:, None]) != 0  # (columns, rows)
        counts = np.add.reduceat(has, starts, axis=1, dtype=np.int64)  # (columns, blocks)
        ends = np.zeros((len(names), nb + 1), np.int64)
        np.cumsum(counts, axis=1, out=ends[:, 1:])
        partial = ((counts > 0) & (counts < sizes)).max(axis=0)
        every = (ends[:, -1] == n).tolist()
        for j, name in enumerate(names):
            values = cols.ingest_ts if name == "ingest_ts" else cols.floats[name]
            dtype = "<i8" if name == "ingest_ts" else "<f8"
            cells = values if every[j] else values[has[j]]
            at = (ends[j] * 8).tolist()
            compact.append(
                (name, OPTIONAL_BITS[name], cells.astype(dtype, copy=False).tobytes(), at)
            )
    magics = [_MAGIC_COMPACT if p else BLOCK_MAGIC for p in partial.tolist()]
    id_bit = OPTIONAL_BITS["trade_id"]
    id_blob = cols.trade_id
    id_firsts: list[int] = []
    id_lasts: list[int] = []
    id_ends_bytes = b""
    if union_all & id_bit:
        ends_of = cols.trade_id_end
        firsts = np.concatenate(([0], ends_of[:-1]))[starts]
        id_firsts, id_lasts = firsts.tolist(), ends_of[stops - 1].tolist()
        # each row's end from its block's first byte in the blob
        id_ends_bytes = (ends_of - np.repeat(firsts, sizes)).astype("<u4").tobytes()
    owners = series_idx[starts].tolist()
    out = []
    for i in range(nb):
        provider, symbol = cols.series[owners[i]]
        union = unions[i]
        fields: dict[str, Any] = {
            "n": b1[i] - a1[i],
            "ver": ver,
            "provider": provider,
            "symbol": symbol,
            "kind": kind[a1[i] : b1[i]],
            "src_ts": src_ts[a8[i] : b8[i]],
            "seq": seq[a8[i] : b8[i]],
            "present": present[a2[i] : b2[i]],
        }
        for name, bit, cells_b, at in compact:
            if union & bit:
                fields[name] = cells_b[at[i] : at[i + 1]]
        if sided[i]:
            fields["side"] = side[a1[i] : b1[i]]
        if union & id_bit:
            fields["trade_id"] = id_blob[id_firsts[i] : id_lasts[i]]
            fields["trade_id_end"] = id_ends_bytes[a4[i] : b4[i]]
        out.append(magics[i] + _BLOCK_ENCODER.encode(fields))
    return out


def columns_from_events(
    events: Iterable[StreamEvent], *, seq_limit: int = 2**63 - 1
) -> EventColumns:
    """Validated events as :class:`EventColumns` (``event_id`` dropped: it is implied).
    Raises ``ValueError`` for a ``seq`` above ``seq_limit`` (int64)."""
    evs = list(events)
    n = len(evs)
    series: dict[tuple[str, str], int] = {}
    intervals: dict[str | None, int] = {None: 0}
    s_idx = np.fromiter(
        (series.setdefault((e.provider, e.symbol), len(series)) for e in evs), np.int32, n
    )
    i_idx = np.fromiter(
        (intervals.setdefault(e.interval, len(intervals)) for e in evs), np.int32, n
    )
    seqs = [e.seq for e in evs]
    if seqs and max(seqs) > seq_limit:
        raise ValueError(f"seq above {seq_limit} does not fit a column")
    present = np.zeros(n, np.uint16)
    floats = {}
    for name in FLOAT_FIELDS:
        vals = [getattr(e, name) for e in evs]
        mask = np.fromiter((x is not None for x in vals), np.bool_, n)
        present |= np.where(mask, np.uint16(OPTIONAL_BITS[name]), np.uint16(0))
        floats[name] = np.fromiter((0.0 if x is None else x for x in vals), np.float64, n)
    ingest = [e.ingest_ts for e in evs]
    ingest_mask = np.fromiter((x is not None for x in ingest), np.bool_, n)
    present |= np.where(ingest_mask, np.uint16(OPTIONAL_BITS["ingest_ts"]), np.uint16(0))
    ids = [e.trade_id for e in evs]
    id_mask = np.fromiter((x is not None for x in ids), np.bool_, n)
    present |= np.where(id_mask, np.uint16(OPTIONAL_BITS["trade_id"]), np.uint16(0))
    encoded = [b"" if x is None else x.encode() for x in ids]
    return EventColumns(
        series=tuple(series),
        series_idx=s_idx,
        intervals=tuple(intervals),
        interval_idx=i_idx,
        ver=np.fromiter((e.ver for e in evs), np.int64, n),
        kind=np.fromiter((KIND_CODES[e.kind] for e in evs), np.uint8, n),
        src_ts=np.fromiter((to_epoch_us(e.src_ts) for e in evs), np.int64, n),
        seq=np.array(seqs, np.int64) if n else np.zeros(0, np.int64),
        present=present,
        floats=floats,
        ingest_ts=np.fromiter((0 if x is None else to_epoch_us(x) for x in ingest), np.int64, n),
        side=np.fromiter((SIDE_CODES.get(e.side or "", 0) for e in evs), np.uint8, n),
        trade_id=b"".join(encoded),
        trade_id_end=np.cumsum(np.fromiter(map(len, encoded), np.int64, n)),
    )


def columns_from_wire_rows(rows: Sequence[Any]) -> EventColumns:
    """Events in msgpack wire form (what ``codec.event_to_dict(event, codec="msgpack")``
    gives, or a ``msgspec.Struct`` that encodes as that dict) as :class:`EventColumns`, for
    a producer that makes wire rows without building events. The rows are trusted to be
    valid events (``event_id`` is dropped: the block implies it; ``src_ts``/``ingest_ts`` are
    epoch µs); a consumer validates the block anyway."""
    dicts: list[dict[str, Any]] = msgspec.to_builtins(list(rows))
    n = len(dicts)
    series: dict[tuple[str, str], int] = {}
    intervals: dict[str | None, int] = {None: 0}
    present = np.zeros(n, np.uint16)
    floats = {}
    for name in FLOAT_FIELDS:
        vals = [d.get(name) for d in dicts]
        given = np.fromiter((x is not None for x in vals), np.bool_, n)
        if given.any():
            present |= np.where(given, np.uint16(OPTIONAL_BITS[name]), np.uint16(0))
            floats[name] = np.fromiter((0.0 if x is None else x for x in vals), np.float64, n)
        else:
            floats[name] = _absent(n, np.float64)
    ingest = [d.get("ingest_ts") for d in dicts]
    has_ingest = np.fromiter((x is not None for x in ingest), np.bool_, n)
    present |= np.where(has_ingest, np.uint16(OPTIONAL_BITS["ingest_ts"]), np.uint16(0))
    ids = [d.get("trade_id") for d in dicts]
    has_id = np.fromiter((x is not None for x in ids), np.bool_, n)
    present |= np.where(has_id, np.uint16(OPTIONAL_BITS["trade_id"]), np.uint16(0))
    encoded = [b"" if x is None else x.encode() for x in ids]
    series_idx = np.fromiter(
        (series.setdefault((d["provider"], d["symbol"]), len(series)) for d in dicts),
        np.int32,
        n,
    )
    interval_idx = np.fromiter(
        (intervals.setdefault(d.get("interval"), len(intervals)) for d in dicts), np.int32, n
    )
    return EventColumns(
        series=tuple(series),
        series_idx=series_idx,
        intervals=tuple(intervals),
        interval_idx=interval_idx,
        ver=np.fromiter((d.get("ver", 1) for d in dicts), np.int64, n),
        kind=np.fromiter((KIND_CODES[d["kind"]] for d in dicts), np.uint8, n),
        src_ts=np.fromiter((d["src_ts"] for d in dicts), np.int64, n),
        seq=np.fromiter((d["seq"] for d in dicts), np.int64, n),
        present=present,
        floats=floats,
        ingest_ts=np.fromiter((0 if x is None else x for x in ingest), np.int64, n),
        side=np.fromiter((SIDE_CODES.get(d.get("side") or "", 0) for d in dicts), np.uint8, n),
        trade_id=b"".join(encoded),
        trade_id_end=np.cumsum(np.fromiter(map(len, encoded), np.int64, n)),
    )


COLUMN_ROW_FIELDS: Final = (
    "provider",
    "symbol",
    "kind",
    "src_ts",
    "seq",
    "present",
    "c",
    "v",
    "bid",
    "ask",
    "bid_size",
    "ask_size",
    "side",
    "trade_id",
    "ingest_ts",
)
"""A *column row*: one trade or quote as a plain tuple of these values, for producers that
make events in bulk: ``kind`` and ``side`` are codes (:data:`KIND_CODES`, :data:`SIDE_CODES`,
0: none), ``present`` the row's :data:`OPTIONAL_BITS` (a float or ``ingest_ts`` whose bit is
clear is ignored, 0.0 / 0 by convention), ``trade_id`` a str ("" when its bit is clear),
times epoch µs. Tuples of one shape transpose at C speed (:func:`columns_from_rows`)."""

ColumnRow = tuple[
    str, str, int, int, int, int, float, float, float, float, float, float, int, str, int
]


def columns_from_rows(rows: Sequence[ColumnRow]) -> EventColumns:
    """Column rows (see :data:`COLUMN_ROW_FIELDS`; trusted to be valid trades and quotes)
    as :class:`EventColumns`."""
    n = len(rows)
    if n == 0:
        return _empty_columns()
    (
        providers,
        symbols,
        kind,
        src_ts,
        seq,
        present,
        c,
        v,
        bid,
        ask,
        bid_size,
        ask_size,
        side,
        trade_ids,
        ingest_ts,
    ) = zip(*rows, strict=True)
    series, series_idx = _first_seen_codes(list(zip(providers, symbols, strict=True)), n)
    lengths = np.fromiter(map(len, trade_ids), np.int64, n)
    blob = "".join(trade_ids).encode()
    if len(blob) != int(lengths.sum()):  # not all ASCII: the lengths in bytes
        parts = [t.encode() for t in trade_ids]
        lengths = np.fromiter(map(len, parts), np.int64, n)
    return EventColumns(
        series=series,
        series_idx=series_idx,
        intervals=(None,),
        interval_idx=np.zeros(n, np.int32),
        ver=np.ones(n, np.int64),
        kind=np.array(kind, np.uint8),
        src_ts=np.array(src_ts, np.int64),
        seq=np.array(seq, np.int64),
        present=np.array(present, np.uint16),
        floats={
            "o": _absent(n, np.float64),
            "h": _absent(n, np.float64),
            "l": _absent(n, np.float64),
            "c": np.array(c, np.float64),
            "v": np.array(v, np.float64),
            "bid": np.array(bid, np.float64),
            "ask": np.array(ask, np.float64),
            "bid_size": np.array(bid_size, np.float64),
            "ask_size": np.array(ask_size, np.float64),
        },
        ingest_ts=np.array(ingest_ts, np.int64),
        side=np.array(side, np.uint8),
        trade_id=blob,
        trade_id_end=np.cumsum(lengths),
    )


# --- one event per payload: msgpack maps decoded straight into columns ------------------------
#
# The wire types of a StreamEvent map (market_data_core.codec's typed first stage uses the same
# ones): ints (never bools, floats or nil) for ver/seq/timestamps, timestamps within the
# datetime range, msgpack str for text, floats or exactly-representable ints for prices and
# sizes (NaN and infinities fail the bounds). Whatever they do not admit is left to the
# reference path, which accepts it or gives the reason.
WireEpochUs = Annotated[int, Meta(ge=MIN_EPOCH_US, le=MAX_EPOCH_US)]
WireFloat = Annotated[float, Meta(gt=-(2**53), lt=2**53)]


class _WireMap(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    """One StreamEvent map as msgpack carries it (the fields in StreamEvent's order). An
    absent optional field reads as ``None``, as an explicit nil does: a column tells neither
    from the other (the row's ``present`` bit is clear), as :func:`columns_from_events`."""

    ver: int
    provider: str
    symbol: str
    kind: EventKind
    interval: str | None = None
    src_ts: WireEpochUs
    ingest_ts: WireEpochUs | None = None
    o: WireFloat | None = None
    h: WireFloat | None = None
    l: WireFloat | None = None  # noqa: E741 - the contract's field name
    c: WireFloat | None = None
    v: WireFloat | None = None
    seq: Annotated[int, Meta(ge=0)]
    event_id: str
    bid: WireFloat | None = None
    ask: WireFloat | None = None
    bid_size: WireFloat | None = None
    ask_size: WireFloat | None = None
    trade_id: str | None = None
    side: TradeSide | None = None


_MAP_DECODER = msgspec.msgpack.Decoder(_WireMap)
_MAPS_DECODER = msgspec.msgpack.Decoder(list[_WireMap])
_RAW_LIST_DECODER = msgspec.msgpack.Decoder(list[msgspec.Raw])
# first byte of a msgpack map: fixmap, map 16, map 32
_MAP_FIRST: Final = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_MAP_FIRST_BYTES: Final = bytes(sorted(_MAP_FIRST))
# what the codec decodes at most (a larger payload is its error to report)
_MAX_MAP_PAYLOAD: Final = 16 * 1024 * 1024
_MAX_INT64: Final = 2**63 - 1


@dataclass(slots=True)
class MapsDecoded:
    """What :func:`decode_maps` made of some payloads: the valid events of those it vouches
    for as columns (in payload order, one row per payload), the payload each row came from
    (``row_payload``, an index into the payloads), and the payloads it does not vouch for
    (``others``, ascending): to be decoded one by one with ``codec.decode_events``, which
    accepts them or gives the reason."""

    columns: EventColumns
    row_payload: Int32s
    others: list[int]


def _wire_maps(payloads: list[bytes | memoryview]) -> list[_WireMap | None]:
    """Each payload as a :class:`_WireMap`, ``None`` where it is not exactly one map of the
    wire types. All at once when they are (one decode of them joined as a msgpack array,
    after checking that the array's items are exactly the payloads), else one by one."""
    k = len(payloads)
    joined = b"\xdd" + k.to_bytes(4, "big") + b"".join(payloads)
    try:
        raws = _RAW_LIST_DECODER.decode(joined)
        # item by item the same lengths as the payloads: the items are the payloads (in C)
        aligned = list(map(len, raws)) == list(map(len, payloads))
    except (msgspec.DecodeError, UnicodeDecodeError):
        aligned = False
    if aligned:
        try:
            decoded: list[_WireMap | None] = list(_MAPS_DECODER.decode(joined))
            return decoded
        except (msgspec.DecodeError, UnicodeDecodeError):
            pass  # one of them is not of the wire types: find which
    out: list[_WireMap | None] = []
    for payload in payloads:
        try:
            out.append(_MAP_DECODER.decode(payload))
        except (msgspec.DecodeError, UnicodeDecodeError):
            out.append(None)
    return out


def _float_column(values: tuple[float | None, ...]) -> tuple[Float64s, Bools | None]:
    """A float column and where it is given (``None``: everywhere). The wire floats are
    never NaN (the bounds refuse it), so NaN marks an absent cell."""
    col = np.array(values, np.float64)
    given = ~np.isnan(col)
    if given.all():
        return col, None
    col[~given] = 0.0
    return col, given


def _coded(values: tuple[Any, ...], codes: dict[Any, int]) -> UInt8s:
    """Each value's code (all the values are keys of ``codes``)."""
    first = values[0]
    if values.count(first) == len(values):
        return np.full(len(values), codes[first], np.uint8)
    return np.fromiter(map(codes.__getitem__, values), np.uint8, len(values))


def _first_seen_codes(values: Sequence[Any], n: int, *, first: Any = ()) -> tuple[Any, Int32s]:
    """The distinct ``values`` in order of first appearance (after ``first``, the values
    coded before any: ``(None,)`` puts ``None`` at 0) and each value's code, as int32; the
    loops run in C (``dict.fromkeys``, ``map``)."""
    distinct = tuple(dict.fromkeys(itertools.chain(first, values)))
    codes = {v: i for i, v in enumerate(distinct)}
    return distinct, np.fromiter(map(codes.__getitem__, values), np.int32, n)


def _int64s_or_none(values: tuple[int | None, ...]) -> Int64s | None:
    """``values`` as int64 when none is ``None``, else ``None``."""
    try:
        return np.array(values, np.int64)
    except TypeError:
        return None


def _int64_or_flag(values: tuple[int, ...], bad: Bools) -> Int64s:
    """``values`` as int64; one beyond int64 is 0 and flagged in ``bad``."""
    try:
        return np.array(values, np.int64)
    except OverflowError:
        big = np.fromiter((v > _MAX_INT64 for v in values), np.bool_, len(values))
        bad |= big
        return np.fromiter((0 if v > _MAX_INT64 else v for v in values), np.int64, len(values))


_SIDE_OR_NONE: Final[dict[str | None, int]] = {None: 0}
_SIDE_OR_NONE.update(SIDE_CODES)


_first_byte = operator.itemgetter(0)


def _all_maps(payloads: Sequence[bytes]) -> bool:
    """Whether every payload is ``bytes`` of at most ``_MAX_MAP_PAYLOAD`` starting as a
    msgpack map does, tested without a Python loop per payload."""
    k = len(payloads)
    if list(map(type, payloads)).count(bytes) != k:
        return False
    lengths = list(map(len, payloads))
    if min(lengths) == 0 or max(lengths) > _MAX_MAP_PAYLOAD:
        return False
    firsts = bytes(map(_first_byte, payloads))
    return not firsts.translate(None, _MAP_FIRST_BYTES)


def decode_maps(payloads: Sequence[bytes]) -> MapsDecoded:
    """Decode and validate payloads of one event each (a msgpack map, or an array of one)
    straight into
    :class:`EventColumns`, without an object per event: the maps of a poll are decoded at
    once with typed msgspec, their values checked by :func:`valid_rows` (the StreamEvent
    rules as array operations) and their ``event_id`` against the one their fields imply.

    A payload that is not a map, is not one of the wire types, breaks a rule, has an
    ``event_id`` of other fields or a ``seq`` beyond int64 is not vouched for: it is listed
    in ``others`` for the reference path, which accepts it or gives the reason (the vectorised
    rules only decide which payloads skip it; they never word a reason). Every row accepted
    here is one the reference accepts, with the same values: what
    ``columns_from_events(decode_events(payload).events)`` gives
    (``tests/unit/test_columnar_maps.py`` checks both agree on random valid and invalid maps).
    Never raises.
    """
    candidates: list[int] = []
    maps: list[bytes | memoryview] = []
    others: list[int] = []
    k = len(payloads)
    if k and _all_maps(payloads):  # the usual poll: every payload a map (tested in C)
        candidates = list(range(k))
        maps = list(payloads)
    else:
        for i, p in enumerate(payloads):
            if type(p) is not bytes or not 0 < len(p) <= _MAX_MAP_PAYLOAD:
                others.append(i)
            elif p[0] in _MAP_FIRST:
                candidates.append(i)
                maps.append(p)
            elif p[0] == 0x91 and len(p) > 1 and p[1] in _MAP_FIRST:  # an array of one map
                candidates.append(i)
                maps.append(memoryview(p)[1:])
            else:
                others.append(i)
    if not candidates:
        return MapsDecoded(_empty_columns(), np.zeros(0, np.int32), others)
    wire = _wire_maps(maps)
    rows = [w for w in wire if w is not None]
    if len(rows) < len(wire):
        others += [i for i, w in zip(candidates, wire, strict=True) if w is None]
        candidates = [i for i, w in zip(candidates, wire, strict=True) if w is not None]
    n = len(rows)
    if n == 0:
        return MapsDecoded(_empty_columns(), np.zeros(0, np.int32), sorted(others))
    (
        ver,
        provider,
        symbol,
        kind,
        interval,
        src_ts,
        ingest_ts,
        o,
        h,
        lo,
        c,
        v,
        seq,
        event_id,
        bid,
        ask,
        bid_size,
        ask_size,
        trade_id,
        side,
    ) = zip(*map(_astuple, rows), strict=True)
    bad = np.zeros(n, np.bool_)
    present = np.zeros(n, np.uint16)
    floats: dict[str, Float64s] = {}
    for name, values in zip(
        FLOAT_FIELDS, (o, h, lo, c, v, bid, ask, bid_size, ask_size), strict=True
    ):
        if values[0] is None and values.count(None) == n:  # None: an identity test each
            floats[name] = _absent(n, np.float64)
            continue
        col, given = _float_column(values)
        floats[name] = col
        bit = np.uint16(OPTIONAL_BITS[name])
        if given is None:
            present |= bit
        else:
            present[given] |= bit
    ingest_bit = np.uint16(OPTIONAL_BITS["ingest_ts"])
    if ingest_ts[0] is None and ingest_ts.count(None) == n:
        ingest = _absent(n, np.int64)
    elif (ingest := _int64s_or_none(ingest_ts)) is not None:
        present |= ingest_bit
    else:
        has_ingest = np.fromiter((x is not None for x in ingest_ts), np.bool_, n)
        ingest = np.fromiter((x or 0 for x in ingest_ts), np.int64, n)
        present[has_ingest] |= ingest_bit
    id_bit = np.uint16(OPTIONAL_BITS["trade_id"])
    ids: Sequence[str] = trade_id
    try:
        id_text = "".join(trade_id)  # a TypeError when a row has none
        present |= id_bit
    except TypeError:
        has_id = np.fromiter((x is not None for x in trade_id), np.bool_, n)
        present[has_id] |= id_bit
        ids = [x or "" for x in trade_id]
        id_text = "".join(ids)
    id_lengths = np.fromiter(map(len, ids), np.int64, n)
    id_blob = id_text.encode()
    if len(id_blob) != int(id_lengths.sum()):  # not all ASCII: the lengths in bytes
        id_lengths = np.fromiter((len(x.encode()) for x in ids), np.int64, n)
    if provider.count(provider[0]) == n:  # one provider (the usual poll): code the symbols
        symbols, series_idx = _first_seen_codes(symbol, n)
        series = tuple((provider[0], s) for s in symbols)
    else:
        series, series_idx = _first_seen_codes(list(zip(provider, symbol, strict=True)), n)
    if interval.count(None) == n:
        intervals: tuple[str | None, ...] = (None,)
        interval_idx = np.zeros(n, np.int32)
    else:
        intervals, interval_idx = _first_seen_codes(interval, n, first=(None,))
    if set(ver) <= set(SUPPORTED_VERSIONS):
        vers = np.array(ver, np.int64)
    else:  # an unknown version, maybe beyond int64: the reference words it
        unknown = np.fromiter((x not in SUPPORTED_VERSIONS for x in ver), np.bool_, n)
        bad |= unknown
        vers = np.fromiter((1 if u else x for u, x in zip(unknown, ver, strict=True)), np.int64, n)
    cols = EventColumns(
        series=series,
        series_idx=series_idx,
        intervals=intervals,
        interval_idx=interval_idx,
        ver=vers,
        kind=_coded(kind, KIND_CODES),
        src_ts=np.array(src_ts, np.int64),
        seq=_int64_or_flag(seq, bad),
        present=present,
        floats=floats,
        ingest_ts=ingest,
        side=_coded(side, _SIDE_OR_NONE),
        trade_id=id_blob,
        trade_id_end=np.cumsum(id_lengths),
    )
    ok = valid_rows(cols) & ~bad
    ok &= _event_ids_match(cols, event_id)
    row_payload = np.array(candidates, np.int32)
    if not ok.all():
        others += [candidates[i] for i in np.flatnonzero(~ok).tolist()]
        cols = cols.take(ok)
        row_payload = row_payload[ok]
    return MapsDecoded(cols, row_payload, sorted(others))


def _event_ids_match(cols: EventColumns, wire_ids: Sequence[str]) -> Bools:
    """Rows whose wire ``event_id`` is the one their fields imply
    (``provider|symbol|src_ts|seq``, :func:`~market_data_core.contracts.make_event_id`),
    compared as byte matrices rather than built as text row by row: the wire ids left-aligned
    in one fixed-width array, the implied ones assembled from the series' prefix, the
    timestamp's text (one per distinct second) and the ``seq`` digits. Rows must have
    ``src_ts`` in range and ``seq >= 0``."""
    n = cols.n
    if n == 0:
        return np.ones(0, np.bool_)
    seq = cols.seq
    width = len(str(int(seq.max())))
    digit_counts = _digit_counts(seq, width)
    prefixes = [f"{p}|{s}|".encode() for p, s in cols.series]
    prefix_lengths = np.fromiter(map(len, prefixes), np.int64, len(prefixes))
    # "YYYY-MM-DDTHH:MM:SS.ffffffZ|" is 28 characters for every year datetime holds
    lengths = np.fromiter(map(len, wire_ids), np.int64, n)
    ok: Bools = lengths == prefix_lengths[cols.series_idx] + 28 + digit_counts
    size = int(lengths.max())
    try:  # left-aligned, zero-padded (the implied ids are ASCII: another id is not them)
        wire = np.array(wire_ids, dtype=f"S{max(size, 1)}").view(np.uint8).reshape(n, -1)
    except UnicodeEncodeError:
        ascii_ids = [w if w.isascii() else "" for w in wire_ids]
        ok &= np.fromiter(map(str.isascii, wire_ids), np.bool_, n)
        wire = np.array(ascii_ids, dtype=f"S{max(size, 1)}").view(np.uint8).reshape(n, -1)
    # what follows the prefix, left-aligned: the timestamp's text, "|", the seq digits
    tail = np.zeros((n, 28 + width), np.uint8)
    tail[:, :28] = _iso_us_texts(cols.src_ts)
    digits = _digits(seq, width)  # right-aligned: shift each row left by its zero padding
    column = np.arange(width)
    shifted = np.take_along_axis(
        digits, np.minimum((width - digit_counts)[:, None] + column, width - 1), axis=1
    )
    shifted[column >= digit_counts[:, None]] = 0
    tail[:, 28:] = shifted
    # the prefixes ("provider|symbol|") where each row's wire id starts, then what follows
    # them: taken from each row's own offset (the prefix lengths differ between series)
    prefix_width = int(prefix_lengths.max())
    table = np.zeros((len(prefixes), prefix_width), np.uint8)
    for s, prefix in enumerate(prefixes):
        table[s, : len(prefix)] = np.frombuffer(prefix, np.uint8)
    if wire.shape[1] < prefix_width + tail.shape[1]:
        wire = np.pad(wire, ((0, 0), (0, prefix_width + tail.shape[1] - wire.shape[1])))
    row_prefix_lengths = prefix_lengths[cols.series_idx]
    # a prefix's padding is zero in the table: compare it with the bytes the row has there
    # only where the row's prefix is (the rest is checked as the row's tail)
    head = wire[:, :prefix_width]
    inside = np.arange(prefix_width) < row_prefix_lengths[:, None]
    ok &= ((head == table[cols.series_idx]) | ~inside).all(axis=1)
    first_length = int(prefix_lengths[0])
    if (prefix_lengths == first_length).all():  # one prefix length (symbols alike): a slice
        after = wire[:, first_length : first_length + tail.shape[1]]
    else:
        at = row_prefix_lengths[:, None] + np.arange(tail.shape[1])
        after = np.take_along_axis(wire, at, axis=1)
    ok &= (after == tail).all(axis=1)
    return ok
