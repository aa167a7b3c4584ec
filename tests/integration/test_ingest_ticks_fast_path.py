"""``ingest_ticks``'s fast path (all-new batches: COPY straight into the table) and its
fallback to ``ON CONFLICT`` must give exactly what the staged upsert alone gives: the same
stored ticks, the same bars, the same figures, revisions bumped only on change."""

from __future__ import annotations

import gc
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import numpy as np
import pytest

from market_data_core.columnar import columns_from_events
from market_data_core.contracts import QUOTE_BAR_COLUMNS, StreamEvent, make_event_id
from market_data_core.timeutil import from_epoch_us, to_epoch_us
from market_data_store import PgStoreClient, store_client
from tests.support.trades import decimal_ohlcv

T0 = datetime(2022, 3, 4, 10, 0, 0, tzinfo=UTC)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[PgStoreClient]:
    client = await PgStoreClient.connect(store_url, pool_min=1, pool_max=1)
    yield client
    await client.aclose()


def tick(
    provider: str,
    symbol: str,
    us: int,
    price: float,
    size: float,
    seq: int,
    ingest_ts: datetime | None = None,
) -> StreamEvent:
    return StreamEvent.create(
        provider=provider,
        symbol=symbol,
        kind="tick",
        src_ts=T0 + timedelta(microseconds=us),
        c=price,
        v=size,
        seq=seq,
        ingest_ts=ingest_ts,
    )


def live_batch(provider: str, n: int, first_seq: int = 0) -> list[StreamEvent]:
    """Two symbols interleaved, 50 µs apart, in (src_ts, seq) order as the micro-batcher
    sends them; prices and sizes with awkward shortest decimals."""
    return [
        tick(
            provider,
            f"S{i % 2}",
            50 * i,
            100.0 + (i * 7919 % 1000) / 100 + (0.1 if i % 3 == 0 else 0.0),
            (i % 9 + 1) / 1000 * 3,
            i,
        )
        for i in range(first_seq, first_seq + n)
    ]


async def stored_ticks(url: str, provider: str) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(
            await conn.fetch(
                "SELECT symbol, ts, seq, price, size, price::text AS price_text, "
                "size::text AS size_text, ingest_ts FROM ticks WHERE provider = $1 "
                "ORDER BY symbol, ts, seq",
                provider,
            )
        )
    finally:
        await conn.close()


def reference_bars(
    events: list[StreamEvent], window_ms: int
) -> dict[tuple[str, datetime], tuple[float, float, float, float, float, float, int]]:
    """Exact decimal OHLCV per (symbol, window) of the distinct ticks."""
    w = timedelta(milliseconds=window_ms)
    groups: dict[tuple[str, datetime], list[StreamEvent]] = {}
    for e in {e.event_id: e for e in events}.values():
        start = T0 + ((e.src_ts - T0) // w) * w  # T0 is window-aligned for the sizes used
        groups.setdefault((e.symbol, start), []).append(e)
    out = {}
    for key, trades in groups.items():
        trades.sort(key=lambda e: (e.src_ts, e.seq))
        prices = [Decimal(repr(e.c)) for e in trades]
        out[key] = decimal_ohlcv(prices, [Decimal(repr(e.v)) for e in trades])
    return out


async def stored_bars(
    store: PgStoreClient, provider: str, interval: str
) -> dict[tuple[str, datetime], tuple[Any, ...]]:
    out = {}
    for symbol in ("S0", "S1"):
        for b in await store.bars_range(provider, symbol, interval, T0, T0 + timedelta(hours=1)):
            out[(symbol, b.ts)] = (b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count)
    return out


async def test_floats_are_stored_as_their_shortest_decimal(
    store: PgStoreClient, store_url: str
) -> None:
    values = [0.1, 1e-7, 123456.789, 100.0, 0.30000000000000004, 1e16, 2.5e-5, 98765.4321]
    # all new (fast path), then the same values again as new ticks behind one stored tick
    # (the first key is stored: the ON CONFLICT path)
    fast = [tick("exact", "S0", i, v, v, i) for i, v in enumerate(values)]
    res = await store.ingest_ticks(fast, interval="1s")
    assert res.ticks_inserted == len(values)
    staged = [fast[0]] + [tick("exact", "S1", i, v, v, i) for i, v in enumerate(values)]
    res = await store.ingest_ticks(staged, interval="1s")
    assert res.ticks_inserted == len(values)

    rows = await stored_ticks(store_url, "exact")
    by_symbol: dict[str, list[Any]] = {"S0": [], "S1": []}
    for r in rows:
        by_symbol[r["symbol"]].append(r)
    for symbol in ("S0", "S1"):
        got = by_symbol[symbol]
        assert [r["price"] for r in got] == [Decimal(repr(v)) for v in values]
        assert [r["size"] for r in got] == [Decimal(repr(v)) for v in values]
    # the same text (value and scale) whichever path stored them
    assert [r["price_text"] for r in by_symbol["S0"]] == [r["price_text"] for r in by_symbol["S1"]]
    assert [r["size_text"] for r in by_symbol["S0"]] == [r["size_text"] for r in by_symbol["S1"]]
    assert by_symbol["S0"][0]["price_text"] == "0.1"
    assert by_symbol["S0"][1]["price_text"] == "0.0000001"


async def test_stored_tick_in_the_middle_falls_back_exactly_and_idempotently(
    store: PgStoreClient, store_url: str
) -> None:
    batch = live_batch("mid", 3000)
    middle = batch[1500]
    first = await store.ingest_ticks([middle], interval="2s")
    assert first.ticks_inserted == 1

    res = await store.ingest_ticks(batch, interval="2s")
    assert res.ticks_inserted == len(batch) - 1  # everything but the stored tick
    ref = reference_bars(batch, 2000)
    assert await stored_bars(store, "mid", "2s") == ref
    assert res.bars_result.changed == len(res.bars) == len(ref)
    # the window of the stored tick existed (a bar of one tick): updated, the others new
    assert (res.bars_result.inserted, res.bars_result.updated) == (len(ref) - 1, 1)

    rows = await stored_ticks(store_url, "mid")
    assert len(rows) == len(batch)
    # the stored key is what event_id encodes
    assert {make_event_id("mid", r["symbol"], r["ts"], r["seq"]) for r in rows} == {
        e.event_id for e in batch
    }

    again = await store.ingest_ticks(batch, interval="2s")
    assert again.ticks_inserted == 0 and again.bars == []
    assert again.bars_result.unchanged == len(ref)
    assert len(await stored_ticks(store_url, "mid")) == len(batch)


async def test_fast_path_figures_and_revisions(store: PgStoreClient) -> None:
    # 0..1.5 s of ticks: windows [0, 1s) and [1s, 2s) of S0 and S1, all new
    batch = live_batch("rev", 30_000)[::1000]
    res = await store.ingest_ticks(batch, interval="1s")
    ref = reference_bars(batch, 1000)
    assert res.ticks_inserted == len(batch)
    assert (res.bars_result.inserted, res.bars_result.updated, res.bars_result.unchanged) == (
        len(ref),
        0,
        0,
    )
    assert {(b.symbol, b.ts): b.revision for b in res.bars} == dict.fromkeys(ref, 0)
    assert await stored_bars(store, "rev", "1s") == ref

    # New ticks of S0's second window, plus duplicates of every window: only that bar
    # changes (revision 1); the duplicate-only windows are recomputed and left alone.
    late = [tick("rev", "S0", 1_999_000, 1.25, 0.5, 10**9), tick("rev", "S0", 1_999_001, 3.5, 1, 0)]
    res = await store.ingest_ticks([*batch, *late], interval="1s")
    assert res.ticks_inserted == 2
    ref = reference_bars([*batch, *late], 1000)
    assert await stored_bars(store, "rev", "1s") == ref
    ((bar),) = res.bars
    assert ((bar.symbol, bar.ts), bar.revision) == (("S0", T0 + timedelta(seconds=1)), 1)
    assert (res.bars_result.updated, res.bars_result.unchanged) == (1, len(ref) - 1)

    # all-new ticks in a new window only: inserted at revision 0, nothing else touched
    fresh = [tick("rev", "S1", 5_000_000 + i, 7.0 + i, 1.0, 10**9 + i) for i in range(3)]
    res = await store.ingest_ticks(fresh, interval="1s")
    assert res.ticks_inserted == 3
    assert [(b.ts, b.revision, b.o, b.c, b.trade_count) for b in res.bars] == [
        (T0 + timedelta(seconds=5), 0, 7.0, 9.0, 3)
    ]
    stored = {
        (b.symbol, b.ts): b.revision
        for s in ("S0", "S1")
        for b in await store.bars_range("rev", s, "1s", T0, T0 + timedelta(seconds=10))
    }
    assert sorted(stored.values()) == [0] * (len(stored) - 1) + [1]


async def test_ingest_ts_kept_or_stamped_with_the_transaction_time(
    store: PgStoreClient, store_url: str
) -> None:
    given = datetime(2022, 3, 4, 10, 0, 5, tzinfo=UTC)
    before = datetime.now(UTC)
    for provider, stamps in (
        ("stamp_all", [given, given]),
        ("stamp_none", [None, None]),
        ("stamp_mixed", [given, None]),
    ):
        batch = [
            tick(provider, "S0", i, 1.0 + i, 1.0, i, ingest_ts=s) for i, s in enumerate(stamps)
        ]
        assert (await store.ingest_ticks(batch, interval="1s")).ticks_inserted == 2
        rows = await stored_ticks(store_url, provider)
        for r, s in zip(rows, stamps, strict=True):
            if s is not None:
                assert r["ingest_ts"] == s
            else:
                assert before - timedelta(seconds=1) <= r["ingest_ts"] <= datetime.now(UTC)


@pytest.mark.parametrize("n", [10, 3000])  # below and above the TRUNCATE threshold
async def test_staging_table_is_left_empty(store: PgStoreClient, n: int) -> None:
    batch = live_batch(f"stage{n}", n)
    assert (await store.ingest_ticks(batch, interval="1s")).ticks_inserted == n
    assert (await store.ingest_ticks(batch, interval="1s")).ticks_inserted == 0
    async with store._pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM mdp_stage_ticks") == 0


@pytest.mark.parametrize("replayed", [False, True], ids=["all-new COPY", "staged upsert"])
async def test_an_ingest_leaves_no_garbage_cycle_holding_its_copy_payload(
    store: PgStoreClient, replayed: bool
) -> None:
    """Every COPY payload is freed when the call returns, by reference counting alone. Given
    a file object, asyncpg defines a reader class per ``copy_to_table`` call (a cycle that
    holds the file): each payload stayed alive until the next full collection, which the
    streaming stages run once a minute, so a worker's RSS grew ~1 MiB/s between them."""
    provider = f"gc-{replayed}"
    batch = columns_from_events(live_batch(provider, 4_000))
    if replayed:  # the slow path: COPY into staging, then INSERT ... ON CONFLICT
        await store.ingest_columns(batch, interval="1s")
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await store.ingest_columns(batch, interval="1s")
        gc.collect()
        held = [o for o in gc.garbage if isinstance(o, (io.IOBase, type))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert held == []


def mixed_batch(provider: str, n: int) -> list[StreamEvent]:
    """``live_batch``'s trades with every third event a quote instead (bid below the trade
    price, a spread of 1-3 cents), in (src_ts, seq) order."""
    out = []
    for e in live_batch(provider, n):
        if e.seq % 3:
            out.append(e)
            continue
        out.append(
            StreamEvent.create(
                provider=provider,
                symbol=e.symbol,
                kind="quote",
                src_ts=e.src_ts,
                bid=e.c,
                ask=round(e.c + (e.seq % 3 + 1) / 100, 2),
                bid_size=float(e.seq % 7 + 1),
                ask_size=float(e.seq % 5 + 1),
                seq=e.seq,
            )
        )
    return out


async def stored_state(store: PgStoreClient, url: str, provider: str) -> dict[str, Any]:
    """What the store holds of ``provider`` (ticks, quotes, bars, quote bars: their values,
    not ``ingest_ts`` or revisions) and the staging tables' rows."""
    conn = await asyncpg.connect(url)
    try:
        raw = {
            table: [
                tuple(r)
                for r in await conn.fetch(
                    f"SELECT symbol, ts, seq, {values} FROM {table} WHERE provider = $1 "
                    "ORDER BY symbol, ts, seq",
                    provider,
                )
            ]
            for table, values in (
                ("ticks", "price, size, side, trade_id"),
                ("quotes", "bid, ask, bid_size, ask_size"),
            )
        }
    finally:
        await conn.close()
    async with store._pool.acquire() as c:  # type: ignore[attr-defined]
        staged = [await c.fetchval(f"SELECT count(*) FROM {t}") for t in _STAGES]
    end = T0 + timedelta(hours=1)
    return {
        **raw,
        "bars": [
            (s, b.ts, b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count)
            for s in ("S0", "S1")
            for b in await store.bars_range(provider, s, "2s", T0, end)
        ],
        "quote_bars": [
            (s, b.ts, b.quote_count, *(getattr(b, c) for c in QUOTE_BAR_COLUMNS))
            for s in ("S0", "S1")
            for b in await store.quote_bars_range(provider, s, "2s", T0, end)
        ],
        "staged": staged,
    }


_STAGES = ("mdp_stage_ticks", "mdp_stage_quotes")


@pytest.mark.parametrize("kind", ["tick", "quote"])
@pytest.mark.parametrize("call", ["ingest_columns", "store_raw"])
async def test_a_stored_key_in_the_middle_of_a_mixed_batch_reruns_it_carefully(
    store: PgStoreClient, store_url: str, monkeypatch: pytest.MonkeyPatch, kind: str, call: str
) -> None:
    """A batch of trades and quotes whose first and last keys are new but with one stored
    ``kind`` in the middle: its COPY straight into the table fails, the transaction is rolled
    back and run again on the slow path (staged, ``ON CONFLICT DO NOTHING``), and the store
    then holds exactly what the same batch gives where nothing was stored before: every row
    once, the same bars and quote bars, staging left empty."""
    tries: list[bool] = []
    insert = store_client._insert_ticks_and_quotes

    async def spy(*args: Any, careful: bool = False, **kwargs: Any) -> Any:
        tries.append(careful)
        return await insert(*args, careful=careful, **kwargs)

    monkeypatch.setattr(store_client, "_insert_ticks_and_quotes", spy)
    results = {}
    for provider, middle_stored in ((f"mix-{kind}-{call}", True), (f"ref-{kind}-{call}", False)):
        batch = mixed_batch(provider, 3000)
        middle = next(e for e in batch[1500:] if e.kind == kind)
        if middle_stored:
            await store.ingest_events([middle], interval="2s")
        tries.clear()
        cols = columns_from_events(batch)
        res = await getattr(store, call)(
            cols, **({"interval": "2s"} if call != "store_raw" else {})
        )
        first_tries = list(tries)
        if call == "store_raw":  # then the bars, as a replay of the batch
            await store.ingest_columns(cols, interval="2s")
        n_ticks = sum(e.kind == "tick" for e in batch)
        n_quotes = len(batch) - n_ticks
        stored_before = (kind == "tick", kind == "quote") if middle_stored else (False, False)
        assert (res.ticks_inserted, res.quotes_inserted) == (
            n_ticks - stored_before[0],
            n_quotes - stored_before[1],
        )
        # the careful rerun only when a stored key sat inside a fast COPY
        assert first_tries == ([False, True] if middle_stored else [False])
        results[middle_stored] = await stored_state(store, store_url, provider)
    assert results[True] == results[False]
    assert len(results[True]["ticks"]) > 1000 and len(results[True]["quotes"]) > 500
    assert results[True]["bars"] and results[True]["quote_bars"]
    assert results[True]["staged"] == [0, 0]


async def test_window_marks_reach_the_recompute_as_exact_timestamps(store_url: str) -> None:
    """The recompute takes each kind's window marks as parameters (µs as bigint, turned into
    timestamptz by ``epoch + us * interval '1 microsecond'``): every instant comes out as the
    timestamptz the client means, to the microsecond, from 1900 to 2200 (float8 holds those
    µs exactly), in row order and with its provider and symbol."""
    rng = np.random.default_rng(7)
    lo = to_epoch_us(datetime(1900, 1, 1, tzinfo=UTC))
    hi = to_epoch_us(datetime(2200, 1, 1, tzinfo=UTC))
    us = np.concatenate(([lo, -1, 0, 1, hi - 1], rng.integers(lo, hi, 2000))).astype(np.int64)
    events = [
        StreamEvent.create(
            provider="p",
            symbol=f"S{i % 3}",
            kind="tick",
            src_ts=from_epoch_us(int(u)),
            c=1.0,
            v=1.0,
            seq=i,
        )
        for i, u in enumerate(us.tolist())
    ]
    cols = columns_from_events(events)
    conn = await asyncpg.connect(store_url)
    try:
        sql = f"WITH {store_client._marks_cte('m', 1).strip()} SELECT provider, symbol, ts FROM m"
        rows = await conn.fetch(sql, *store_client._marks_params(cols))
    finally:
        await conn.close()
    assert [(r[0], r[1], to_epoch_us(r[2])) for r in rows] == [
        ("p", f"S{i % 3}", u) for i, u in enumerate(us.tolist())
    ]
