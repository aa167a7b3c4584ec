"""COPY payloads of any length are stored, and a COPY cut off by a lost connection is an outage.

asyncpg sends a buffer given to ``copy_to_table`` as ONE CopyData message; PostgreSQL refuses
a message longer than ``PQ_LARGE_MESSAGE_LIMIT`` (1 GiB - 2 bytes, length word included:
"invalid message length", then "terminating connection because protocol synchronization was
lost"). asyncpg reports that as a lost connection, which the store calls an outage
(``StoreUnavailableError``): the commit path would retry the same batch forever. Measured on
PostgreSQL 18.6: a payload of 1,073,741,818 bytes goes through as one message, one more byte
does not. So the store sends a payload over ``_COPY_MESSAGE_BYTES`` as several COPYs of
consecutive rows, each one memoryview; not as a stream of messages, which asyncpg sends
waiting for the socket to drain before each (a wait that outlives a lost connection).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
import pytest

from market_data_core.columnar import EventColumns, columns_from_events
from market_data_core.contracts import StreamEvent
from market_data_core.errors import StoreUnavailableError
from market_data_core.timeutil import from_epoch_us
from market_data_store import PgStoreClient, store_client
from market_data_store._errors import translate_errors
from market_data_store._event_copy import TICKS
from market_data_store._schema_names import series_key
from market_data_store.store_client import _insert_ticks_and_quotes
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
    into ``ticks`` (the all-new fast path): all stored, trade ids intact. (``_insert_ticks_and_quotes``
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
    # one message this long is refused (the keys do not change the length)
    assert len(TICKS.copy(cols, dict.fromkeys(cols.series, 0))) > PG_MAX_COPY_DATA

    no_quotes = cols.take(np.zeros(0, np.intp))

    async def write() -> tuple[int, int, dict[str, int]]:  # store_raw's write, ticks alone
        async with store._pool.acquire() as conn, conn.transaction():  # type: ignore[attr-defined]
            keys = store._series.keys  # type: ignore[attr-defined]
            return await _insert_ticks_and_quotes(conn, cols, no_quotes, keys)

    with translate_errors("store_raw"):
        inserted, quotes_in, staged = await store._write(
            [("ticks", [T0.date()])], write, series=cols.series
        )
    assert (inserted, quotes_in, sum(staged.values())) == (3, 0, 0)
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
async def test_payloads_over_the_limit_go_as_several_copies_of_the_same_rows(
    store: PgStoreClient, path: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every COPY of an ingest (ticks and quotes straight into their tables with their
    windows' marks, or, behind a stored key, into staging) over a 4,000-byte limit, as
    several COPYs of consecutive rows: the real trades' bars and the real quotes' quote bars
    equal the pandas references; each COPY one memoryview within the limit; nothing left
    for the cycle collector."""
    sent: list[tuple[str, int]] = []  # (table, payload bytes) per COPY statement
    copy_to_table = asyncpg.Connection.copy_to_table

    async def spy(self: asyncpg.Connection, table: str, **kw: Any) -> str:
        assert type(kw["source"]) is memoryview
        sent.append((table, len(kw["source"])))
        return await copy_to_table(self, table, **kw)

    monkeypatch.setattr(store_client, "_COPY_MESSAGE_BYTES", 4000)
    monkeypatch.setattr(asyncpg.Connection, "copy_to_table", spy)
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
    assert all(size <= 4000 for _table, size in sent)
    per_table = Counter(table for table, _size in sent)
    # all new: each kind COPYed into its table alone (the recompute takes the window marks as
    # parameters); behind a stored key, the ticks' COPYs into their table until the one
    # holding it fails (the transaction rolled back; the quotes' never start), then every row
    # of both kinds into staging
    staging = {"mdp_stage_ticks", "mdp_stage_quotes"}
    assert set(per_table) == ({"ticks"} | staging if stored else {"ticks", "quotes"})
    assert min(per_table.values()) > 1
    day = trades[0].src_ts.replace(hour=0, minute=0, second=0, microsecond=0)
    bars = await store.bars_range(provider, SYMBOL, "1s", day, day + timedelta(days=1))
    assert_bars_equal_reference(bars, 1000)
    qday = quotes[0].src_ts.replace(hour=0, minute=0, second=0, microsecond=0)
    qbars = await store.quote_bars_range(provider, "EUR/USD", "1s", qday, qday + timedelta(days=2))
    assert_quote_bars_equal_reference(qbars, reference_quote_bars(quotes, 1000, CARRY_MS))


def tiled_trades(provider: str, n: int) -> EventColumns:
    """``n`` ticks: the real trades again and again, each pass an hour after the one before
    (keys unique, in order)."""
    base = columns_from_events(trade_events(provider))
    reps = -(-n // base.n)

    def tile(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.tile(a, reps)[:n]

    shift = np.repeat(np.arange(reps, dtype=np.int64) * 3_600_000_000, base.n)[:n]
    lengths = tile(np.diff(base.trade_id_end, prepend=0))
    ends = np.cumsum(lengths)
    return dataclasses.replace(
        base,
        series_idx=tile(base.series_idx),
        interval_idx=tile(base.interval_idx),
        ver=tile(base.ver),
        kind=tile(base.kind),
        src_ts=tile(base.src_ts) + shift,
        seq=np.arange(n, dtype=np.int64),
        present=tile(base.present),
        floats={k: tile(a) for k, a in base.floats.items()},
        ingest_ts=tile(base.ingest_ts),
        side=tile(base.side),
        trade_id=(base.trade_id * reps)[: int(ends[-1])],
        trade_id_end=ends,
    )


@pytest.mark.slow
async def test_a_connection_lost_in_the_middle_of_a_copy_is_an_outage_not_a_hang(
    store: PgStoreClient, store_url: str
) -> None:
    """600,000 ticks (60 MB, COPYed in 16 MiB statements): another transaction holds the
    1,000th tick's key, so the first COPY waits on it with most of its payload unread, and
    the server ends the session. The ingest raises ``StoreUnavailableError`` (given the
    payload as a stream of messages, a file object or an async iterable, asyncpg waits for
    the socket to drain before each, and that wait outlives the connection: the ingest would
    hang for ever); once the other transaction is gone, the retry stores every tick once."""
    cols = tiled_trades("lost", 600_000)
    assert (
        len(TICKS.copy(cols, dict.fromkeys(cols.series, 0))) > 3 * store_client._COPY_MESSAGE_BYTES
    )
    # the days' partitions first: creating one would wait for the blocker, not the COPY
    days = store_client._days(cols.src_ts)
    await store._partitions.ensure(store._pool, "ticks", days)  # type: ignore[attr-defined]
    admin = await asyncpg.connect(store_url)
    blocker = await asyncpg.connect(store_url)
    try:
        held = blocker.transaction()
        await held.start()
        await blocker.execute(
            "INSERT INTO ticks (provider, symbol, ts, seq, price, size, series_key) "
            f"VALUES ($1, $2, $3, $4, 1, 1, {series_key('$1::text', '$2::text')})",
            *cols.series[0],
            from_epoch_us(int(cols.src_ts[999])),
            int(cols.seq[999]),
        )
        task = asyncio.create_task(store.ingest_columns(cols, interval="1s"))
        pid = None
        while pid is None:  # the store's COPY, waiting for the blocker's transaction
            if task.done():
                pytest.fail(f"the ingest ended before its COPY waited: {task.exception()!r}")
            await asyncio.sleep(0.01)
            pid = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'COPY \"ticks\"%' AND wait_event_type = 'Lock'"
            )
        await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(StoreUnavailableError):
            await task
        await held.rollback()
    finally:
        await blocker.close()
        await admin.close()
    result = await store.ingest_columns(cols, interval="1s")
    assert result.ticks_inserted == cols.n
    conn = await asyncpg.connect(store_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ticks WHERE provider = 'lost'") == cols.n
    finally:
        await conn.close()
