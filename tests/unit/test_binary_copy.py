"""The binary COPY stream, read back by a plain parser of the format: every row, every field.

(The server's reading of the same streams is in ``tests/integration/test_binary_copy.py``.)
"""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market_data_core.columnar import columns_from_events
from market_data_core.contracts import StreamEvent
from market_data_core.errors import StoreError
from market_data_core.timeutil import from_epoch_us
from market_data_store._event_copy import TICKS
from market_data_store.binary_copy import (
    COPY_HEADER,
    Float8Column,
    Int8Column,
    NumericColumn,
    TextColumn,
    TimestamptzColumn,
    _numeric_of_repr,
    encode_copy,
    numeric_send,
)

PG_EPOCH_US = 946_684_800_000_000


def parse(stream: bytes) -> list[tuple[bytes | None, ...]]:
    """Rows of a binary COPY stream as tuples of raw field bytes (None: NULL)."""
    assert stream.startswith(COPY_HEADER)
    pos = len(COPY_HEADER)
    rows = []
    while True:
        (count,) = struct.unpack_from(">h", stream, pos)
        pos += 2
        if count == -1:
            assert pos == len(stream)
            return rows
        fields: list[bytes | None] = []
        for _ in range(count):
            (length,) = struct.unpack_from(">i", stream, pos)
            pos += 4
            if length == -1:
                fields.append(None)
            else:
                fields.append(stream[pos : pos + length])
                pos += length
        rows.append(tuple(fields))


texts = st.text(max_size=5).filter(lambda t: "\x00" not in t)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False) | st.none(),
            st.integers(-(2**60), 2**60) | st.none(),
            texts | st.none(),
            st.sampled_from(["", "AAPL", "BTC-USD", None]),
            st.floats(min_value=0, max_value=1e9, allow_nan=False) | st.none(),
        ),
        min_size=1,
        max_size=40,
    ),
    st.booleans(),
)
def test_every_row_and_field_as_sent(rows: list[tuple[Any, ...]], keep_order: bool) -> None:
    n = len(rows)
    ints = np.array([r[0] for r in rows], np.int64)
    floats = np.array([0.0 if r[1] is None else r[1] for r in rows])
    stamps = np.array([0 if r[2] is None else r[2] for r in rows], np.int64)
    free = [r[3] or "" for r in rows]
    blob = "".join(free).encode()
    ends = np.cumsum([len(t.encode()) for t in free]).astype(np.int64)
    words = ["", "AAPL", "BTC-USD", None]
    codes = np.array([words.index(r[4]) for r in rows])
    nums = np.array([0.0 if r[5] is None else r[5] for r in rows])
    stream = encode_copy(
        [
            Int8Column(ints),
            Float8Column(floats, np.array([r[1] is None for r in rows])),
            TimestamptzColumn(stamps, np.array([r[2] is None for r in rows])),
            TextColumn(blob, ends, np.array([r[3] is None for r in rows])),
            TextColumn.coded(words, codes),
            NumericColumn(nums, np.array([r[5] is None for r in rows])),
        ],
        n,
        keep_order=keep_order,
    )
    want = [
        (
            struct.pack(">q", r[0]),
            None if r[1] is None else struct.pack(">d", r[1]),
            None if r[2] is None else struct.pack(">q", r[2] - PG_EPOCH_US),
            None if r[3] is None else r[3].encode(),
            None if r[4] is None else r[4].encode(),
            None if r[5] is None else numeric_send(Decimal(repr(r[5]))),
        )
        for r in rows
    ]
    got = parse(stream)
    # numeric: the fast layout pads with zero groups; compare the values it stands for
    got = [(*g[:5], None if g[5] is None else _numeric_value(g[5])) for g in got]
    want = [(*w[:5], None if w[5] is None else _numeric_value(w[5])) for w in want]
    if keep_order:
        assert got == want
    else:
        assert sorted(got, key=repr) == sorted(want, key=repr)


def _numeric_value(raw: bytes) -> tuple[Decimal, int]:
    """(value, display scale) of a numeric in send format."""
    ndigits, weight, sign, dscale = struct.unpack_from(">hhHH", raw)
    digits = struct.unpack_from(f">{ndigits}h", raw, 8)
    value = sum(Decimal(d) * Decimal(10_000) ** (weight - i) for i, d in enumerate(digits))
    return (-value if sign == 0x4000 else value), dscale


def test_rows_of_one_layout_keep_their_order_when_grouped() -> None:
    ids = np.arange(10, dtype=np.int64)
    words = ["a", "bbb"]
    codes = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0, 0])
    stream = encode_copy([Int8Column(ids), TextColumn.coded(words, codes)], 10)
    got = [struct.unpack(">q", r[0])[0] for r in parse(stream)]  # type: ignore[arg-type]
    assert got == [0, 2, 5, 6, 8, 9, 1, 3, 4, 7]


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numeric_of_repr_is_numeric_send_of_the_decimal(x: float) -> None:
    assert _numeric_of_repr(x) == numeric_send(Decimal(repr(x)))


def test_raw_rows_carry_their_series_key_and_refuse_an_unknown_series() -> None:
    """``RawTable.copy`` writes each row's series' ``series_key`` from the client's registry
    (the table's ``CHECK`` holds it to the hash: migration 0013); a series with rows but no
    key is a ``StoreError``, never a row with a made-up key. A series without rows needs
    none."""
    events = [
        StreamEvent.create(
            provider="prov",
            symbol=sym,
            kind="tick",
            src_ts=from_epoch_us(1_700_000_000_000_000 + i),
            c=100.0 + i,
            v=1.0,
            seq=i,
        )
        for i, sym in enumerate(["AAA", "BBB", "AAA", "CCC", "BBB"])
    ]
    cols = columns_from_events(events)
    keys = {("prov", "AAA"): -(2**63), ("prov", "BBB"): 7, ("prov", "CCC"): 2**63 - 1}
    at, sym_at = TICKS.columns.index("series_key"), TICKS.columns.index("symbol")
    rows = parse(TICKS.copy(cols, keys))
    assert len(rows) == 5
    for row in rows:
        symbol = row[sym_at].decode()  # type: ignore[union-attr]
        assert struct.unpack(">q", row[at]) == (keys[("prov", symbol)],)  # type: ignore[arg-type]
    without_c = cols.take(np.array([0, 1, 2, 4]))
    assert ("prov", "CCC") in without_c.series  # listed, no rows: no key needed
    del keys[("prov", "CCC")]
    assert len(parse(TICKS.copy(without_c, keys))) == 4
    with pytest.raises(StoreError, match="prov/CCC is not registered"):
        TICKS.copy(cols, keys)
