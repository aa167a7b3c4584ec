"""Binary COPY built from arrays stores exactly what the text of each value stores.

The reference for ``numeric`` is the shipped path: ``repr(x)`` COPYed as text and cast with
``::numeric`` (so ``Decimal(repr(x))``); the same values sent by
:class:`~market_data_store.binary_copy.NumericColumn` must be equal AND print the same
(``::text`` shows the display scale). float8 comes back bit for bit, timestamptz to the µs,
text (non-ASCII, empty, NULL) as sent. Values are seeded random draws from several
distributions plus the edge cases (zero, -0.0, 1e-05, 2**50, subnormals, 17-digit floats).
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import numpy as np
import pytest

from market_data_core.timeutil import MAX_EPOCH_US, MIN_EPOCH_US, from_epoch_us, to_epoch_us
from market_data_store.binary_copy import (
    Float8Column,
    Int4Column,
    Int8Column,
    NumericColumn,
    TextColumn,
    TimestamptzColumn,
    encode_copy,
    numeric_send,
)

EDGES = [
    0.0,
    -0.0,
    1.0,
    100.0,
    0.1,
    0.30000000000000004,
    1e-05,
    1.5e-07,
    0.0001,
    9.999e-05,
    227.53,
    65000.5,
    1e15,
    2.0**50 - 1,
    2.0**50,
    2.0**50 + 1,
    2.0**53 + 2,
    1e16,
    1.2345678901234567e16,
    1e22,
    1e300,
    5e-324,
    2.2250738585072014e-308,
    123456.78901234567,
    0.1 + 0.7,
    -1.5,
    -0.0001,
]


def sample_floats(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    out = list(EDGES)
    while len(out) < n:
        pick = rng.randrange(6)
        if pick == 0:  # prices with 2..8 decimals
            out.append(round(rng.uniform(0.01, 100_000), rng.randrange(2, 9)))
        elif pick == 1:  # sizes: integers and crypto fractions
            out.append(float(rng.randrange(1, 10_000)) / 10 ** rng.randrange(0, 9))
        elif pick == 2:  # any float of a wide range of magnitudes
            out.append(rng.uniform(-1, 1) * 10 ** rng.uniform(-12, 18))
        elif pick == 3:  # any finite bit pattern
            x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
            if np.isfinite(x):
                out.append(x)
        elif pick == 4:  # sums that need 17 digits
            out.append(rng.randrange(1, 10**6) / 100 + 0.1)
        else:  # near the fast path's bound
            out.append(float(rng.randrange(2**49, 2**51)) / 10 ** rng.randrange(0, 6))
    return out


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(database_url, server_settings={"timezone": "UTC"})
    yield c
    await c.close()


async def test_numeric_from_floats_is_what_the_text_of_repr_stores(
    conn: asyncpg.Connection,
) -> None:
    values = sample_floats(60_000, seed=20261130)
    n = len(values)
    await conn.execute("CREATE TEMP TABLE num_bin (i int8, x numeric)")
    await conn.execute("CREATE TEMP TABLE num_ref (i int8, x text)")
    ids = np.arange(n, dtype=np.int64)
    stream = encode_copy([Int8Column(ids), NumericColumn(np.array(values))], n)
    await conn.copy_to_table("num_bin", source=io.BytesIO(stream), format="binary")
    await conn.copy_records_to_table(
        "num_ref", records=[(i, repr(x)) for i, x in enumerate(values)], columns=["i", "x"]
    )
    bad = await conn.fetch(
        "SELECT b.i, b.x::text AS got, r.x::numeric::text AS want FROM num_bin b "
        "JOIN num_ref r USING (i) WHERE b.x <> r.x::numeric OR b.x::text <> r.x::numeric::text"
    )
    assert [dict(r) for r in bad[:5]] == []
    assert await conn.fetchval("SELECT count(*) FROM num_bin") == n


async def test_numeric_send_matches_the_servers_own_send_format(
    conn: asyncpg.Connection,
) -> None:
    texts = ["0.0", "100.0", "1.5e-07", "1e+16", "-3.25", "12345.6789", "0.00001", "5e-324"]
    for text in texts:
        sent = await conn.fetchval("SELECT numeric_send($1::text::numeric)", text)
        assert numeric_send(Decimal(text)) == sent, text


async def test_every_column_type_round_trips_with_nulls(conn: asyncpg.Connection) -> None:
    rng = np.random.default_rng(7)
    n = 5_000
    ints = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    ints[:3] = [-(2**63), 2**63 - 1, 0]
    small = rng.integers(-(2**31), 2**31 - 1, n, dtype=np.int64).astype(np.int32)
    floats = rng.standard_normal(n) * 10.0 ** rng.integers(-300, 300, n)
    floats[:4] = [np.nan, np.inf, -np.inf, -0.0]
    stamps = rng.integers(MIN_EPOCH_US, MAX_EPOCH_US, n, dtype=np.int64)
    stamps[:3] = [MIN_EPOCH_US, MAX_EPOCH_US, 0]
    words = ["", "AAPL", "é€😀", "buy", None]
    codes = rng.integers(0, len(words), n)
    free = [f"t{i}-{'é' * (i % 3)}" for i in range(n)]
    blob = "".join(free).encode()
    ends = np.cumsum([len(s.encode()) for s in free])
    null = rng.random(n) < 0.2
    await conn.execute(
        "CREATE TEMP TABLE all_types (i int8, a int8, b int4, c float8, d timestamptz, "
        "e text, f text, g numeric)"
    )
    prices = np.round(rng.uniform(0.01, 1e5, n), 2)
    stream = encode_copy(
        [
            Int8Column(np.arange(n, dtype=np.int64)),
            Int8Column(ints, null),
            Int4Column(small),
            Float8Column(floats, null),
            TimestamptzColumn(stamps, null),
            TextColumn.coded(words, codes),
            TextColumn(blob, ends, null),
            NumericColumn(prices, null),
        ],
        n,
    )
    await conn.copy_to_table("all_types", source=io.BytesIO(stream), format="binary")
    rows = await conn.fetch("SELECT a, b, c, d, e, f, g::text AS g FROM all_types ORDER BY i")
    assert len(rows) == n
    for i, r in enumerate(rows):
        if null[i]:
            assert (r["a"], r["c"], r["d"], r["f"], r["g"]) == (None,) * 5
        else:
            assert r["a"] == ints[i]
            assert struct.pack("<d", r["c"]) == struct.pack("<d", floats[i])
            assert to_epoch_us(r["d"]) == stamps[i] and r["d"] == from_epoch_us(int(stamps[i]))
            assert r["f"] == free[i]
            assert r["g"] == str(Decimal(repr(float(prices[i]))))
        assert r["b"] == small[i]
        assert r["e"] == words[codes[i]]
