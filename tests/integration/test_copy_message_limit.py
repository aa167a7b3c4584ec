"""A COPY payload over PostgreSQL's 1 GiB message limit is still stored.

asyncpg sends a buffer given to ``copy_to_table`` as ONE CopyData message; PostgreSQL refuses
a message longer than ``PQ_LARGE_MESSAGE_LIMIT`` (1 GiB - 2 bytes, length word included:
"invalid message length", then "terminating connection because protocol synchronization was
lost"). asyncpg reports that as a lost connection, which the store calls an outage
(``StoreUnavailableError``): the commit path would retry the same batch forever. Measured on
PostgreSQL 18.6: a payload of 1,073,741,818 bytes goes through as one message, one more byte
does not.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest

from market_data_core.columnar import columns_from_events
from market_data_core.contracts import StreamEvent
from market_data_store import PgStoreClient, store_client
from market_data_store._errors import translate_errors
from market_data_store._event_copy import TICKS
from market_data_store.store_client import _ANY_TICK_EXISTS_SQL, _INSERT_TICKS_SQL, _insert_raw
from tests.support.quotes import (
    assert_quote_bars_equal_reference,
    quote_events,
    reference_quote_bars,
)
from tests.support.trades import SYMBOL, assert_bars_equal_reference, trade_events

# the longest payload PostgreSQL takes in one CopyData message
PG_MAX_COPY_DATA = 0x3FFFFFFE - 4
T0 = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[PgStoreClient]:
    client = await PgStoreClient.connect(store_url, pool_min=1, pool_max=1)
    yield client
    await client.aclose()


@pytest.mark.slow
async def test_a_tick_payload_over_a_gigabyte_is_stored(
    store: PgStoreClient, store_url: str
) -> None:
    """Three ticks whose trade ids (360 MB each) make a 1.08 GB COPY payload, COPYed straight
    into ``ticks`` (the all-new fast path): all stored, trade ids intact. (``_insert_raw``
    itself: ``ingest_columns`` would also copy the trade ids a few times, 24 bytes of index
    per byte, in ``EventColumns.take``.)"""
    id_len = 360_000_000
    events = [
        StreamEvent.create(
            provider="huge",
            symbol="X",
            kind="tick",
            src_ts=T0 + timedelta(milliseconds=i),
            c=100.0 + i,
            v=1.0,
            seq=i,
            trade_id=str(i),
        )
        for i in range(3)
    ]
    cols = dataclasses.replace(
        columns_from_events(events),
        trade_id=b"".join(str(i).encode() * id_len for i in range(3)),
        trade_id_end=np.arange(1, 4, dtype=np.int64) * id_len,
    )
    assert len(TICKS.copy(cols)) > PG_MAX_COPY_DATA  # one message this long is refused

    async def write() -> tuple[int, int]:  # store_raw's write, for the ticks alone
        async with store._pool.acquire() as conn, conn.transaction():  # type: ignore[attr-defined]
            return await _insert_raw(
                conn, TICKS, cols, _ANY_TICK_EXISTS_SQL, _INSERT_TICKS_SQL, None
            )

    with translate_errors("store_raw"):
        inserted, staged = await store._write([("ticks", [T0.date()])], write)
    assert (inserted, staged) == (3, 0)
    conn = await asyncpg.connect(store_url)
    try:
        rows = await conn.fetch(
            "SELECT seq, length(trade_id) AS n, left(trade_id, 3) AS head, "
            "right(trade_id, 3) AS tail FROM ticks WHERE provider = 'huge' ORDER BY seq"
        )
    finally:
        await conn.close()
    assert [(r["seq"], r["n"], r["head"], r["tail"]) for r in rows] == [
        (i, id_len, str(i) * 3, str(i) * 3) for i in range(3)
    ]


CARRY_MS = 60_000


@pytest.mark.parametrize("path", ["all new", "stored in the middle"])
async def test_payloads_sent_in_many_messages_store_the_same_rows_and_bars(
    store: PgStoreClient, path: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every COPY of an ingest (ticks and quotes straight into their tables with their
    windows' marks, or, behind a stored key, into staging) split into 997-byte CopyData
    messages, cutting fields anywhere: the real trades' bars and the real quotes' quote bars
    equal the pandas references; and nothing is left for the cycle collector."""
    sent: list[tuple[int, int]] = []  # (payload bytes, messages) per split COPY
    slices = store_client._slices

    async def counted(view: memoryview, size: int) -> AsyncIterator[memoryview]:
        n = 0
        async for part in slices(view, size):
            n += 1
            yield part
        sent.append((len(view), n))

    monkeypatch.setattr(store_client, "_COPY_MESSAGE_BYTES", 997)
    monkeypatch.setattr(store_client, "_slices", counted)
    provider = f"split{unique}"
    trades = trade_events(provider)
    quotes = quote_events(provider, sizes=True)
    if path == "stored in the middle":
        first = await store.ingest_events(
            [trades[5000], quotes[4750]], interval="1s", quote_carry_ms=CARRY_MS
        )
        assert (first.ticks_inserted, first.quotes_inserted) == (1, 1)
    sent.clear()
    cols = columns_from_events(trades + quotes)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        res = await store.ingest_columns(cols, interval="1s", quote_carry_ms=CARRY_MS)
        gc.collect()
        held = [o for o in gc.garbage if isinstance(o, (bytes, bytearray, memoryview))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert held == []
    stored = 1 if path == "stored in the middle" else 0
    assert (res.ticks_inserted, res.quotes_inserted) == (
        len(trades) - stored,
        len(quotes) - stored,
    )
    # per kind, the COPY into its table, then its marks (all new), or the COPY into its
    # table aborted by the stored key (the server's error arrives while messages are still
    # being sent), then staging: each in many messages
    assert len(sent) == 4
    assert all(n == -(-size // 997) and n > 1 for size, n in sent)
    day = trades[0].src_ts.replace(hour=0, minute=0, second=0, microsecond=0)
    bars = await store.bars_range(provider, SYMBOL, "1s", day, day + timedelta(days=1))
    assert_bars_equal_reference(bars, 1000)
    qday = quotes[0].src_ts.replace(hour=0, minute=0, second=0, microsecond=0)
    qbars = await store.quote_bars_range(provider, "EUR/USD", "1s", qday, qday + timedelta(days=2))
    assert_quote_bars_equal_reference(qbars, reference_quote_bars(quotes, 1000, CARRY_MS))
