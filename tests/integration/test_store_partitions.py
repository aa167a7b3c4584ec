"""Native partition fallback: rows land in their day's partition, new days appear by
themselves (also for data years old), and concurrent writers never lose or deadlock."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, date, datetime, timedelta

import asyncpg

from market_data_core.contracts import Bar, StreamEvent
from market_data_store import PgStoreClient


async def partitions_of(url: str, table: str) -> dict[str, int]:
    """Partition name -> rows in it."""
    conn = await asyncpg.connect(url)
    try:
        names = [
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = $1::regclass",
                table,
            )
        ]
        return {n: await conn.fetchval(f'SELECT count(*) FROM "{n}"') for n in names}
    finally:
        await conn.close()


def bar(provider: str, symbol: str, ts: datetime, c: float = 10.0) -> Bar:
    return Bar(provider, symbol, "1m", ts, c, c + 1, c - 1, c, 5.0)


async def test_rows_land_in_their_day_and_new_days_appear(store_url: str) -> None:
    client = await PgStoreClient.connect(store_url)
    try:
        today = datetime.now(UTC).date()
        before = await partitions_of(store_url, "bars_ohlcv")
        # The migration pre-created today and the next days.
        assert f"bars_ohlcv_p{today:%Y%m%d}" in before

        old = datetime(2020, 2, 22, 23, 59, 59, 999_999, tzinfo=UTC)
        bars = [bar("part", "A", old), bar("part", "A", old + timedelta(microseconds=1))]
        res = await client.upsert_bars(bars)
        assert res.inserted == 2
        after = await partitions_of(store_url, "bars_ohlcv")
        assert after["bars_ohlcv_p20200222"] == 1
        assert after["bars_ohlcv_p20200223"] == 1

        # A second client (cold cache) writing the same and a new day: no error, no race.
        other = await PgStoreClient.connect(store_url)
        try:
            await other.upsert_bars([bar("part", "A", datetime(2020, 2, 24, tzinfo=UTC))])
        finally:
            await other.aclose()
        assert (await partitions_of(store_url, "bars_ohlcv"))["bars_ohlcv_p20200224"] == 1

        tick = StreamEvent.create(
            provider="part",
            symbol="A",
            kind="tick",
            src_ts=datetime(2019, 12, 31, 23, 59, 59, tzinfo=UTC),
            c=1.5,
            v=2.0,
            seq=1,
        )
        await client.ingest_ticks([tick], interval="2s")
        assert (await partitions_of(store_url, "ticks"))["ticks_p20191231"] == 1
        assert (await partitions_of(store_url, "bars_ohlcv"))["bars_ohlcv_p20191231"] == 1

        far = today + timedelta(days=10)
        # 5 tables (bars_ohlcv, ticks, signals, quotes, quote_bars) x the new days
        assert await client.ensure_partitions(days_ahead=10) == 5 * 8
        for table in ("ticks", "quotes", "quote_bars"):
            assert f"{table}_p{far:%Y%m%d}" in await partitions_of(store_url, table)
        assert await client.ensure_partitions(days_ahead=10) == 0
    finally:
        await client.aclose()


async def test_concurrent_overlapping_upserts_lose_nothing(store_url: str) -> None:
    t0 = datetime(2023, 5, 1, tzinfo=UTC)
    symbols = [f"C{i}" for i in range(20)]
    # Two batches over the same series, overlapping by half, in opposite orders: a classic
    # lock-order deadlock without the per-series advisory locks.
    keys = [(s, t0 + timedelta(minutes=m)) for s in symbols for m in range(3000)]
    half = len(keys) // 2
    a = [bar("conc", s, ts) for s, ts in keys[: half + half // 2]]
    b = [bar("conc", s, ts, c=11.0) for s, ts in reversed(keys[half // 2 :])]
    c1 = await PgStoreClient.connect(store_url)
    c2 = await PgStoreClient.connect(store_url)
    try:
        for _ in range(3):
            r1, r2 = await asyncio.wait_for(
                asyncio.gather(c1.upsert_bars(a), c2.upsert_bars(b)), timeout=120
            )
            a = [dataclasses.replace(x, v=x.v + 1) for x in a]
            b = [dataclasses.replace(x, v=x.v + 1) for x in b]
        got = []
        for s in symbols:
            got += await c1.bars_range("conc", s, "1m", t0, t0 + timedelta(days=5))
        assert {(g.symbol, g.ts) for g in got} == set(keys)
        assert r1.changed + r2.changed >= len(keys)
    finally:
        await c1.aclose()
        await c2.aclose()


async def test_concurrent_tick_ingest_is_exact(store_url: str) -> None:
    """Two clients ingest overlapping tick sets of the same symbols at once: the bars equal
    those of one client ingesting the union."""
    t0 = datetime(2023, 6, 1, 8, tzinfo=UTC)
    ticks = [
        StreamEvent.create(
            provider="ct",
            symbol=f"T{i % 4}",
            kind="tick",
            src_ts=t0 + timedelta(milliseconds=13 * i),
            c=100 + (i * 7919 % 101) / 100,
            v=(i % 9 + 1) / 1000,
            seq=i,
        )
        for i in range(40_000)
    ]
    part_a = ticks[:25_000]
    part_b = ticks[15_000:]
    c1 = await PgStoreClient.connect(store_url)
    c2 = await PgStoreClient.connect(store_url)
    try:

        async def feed(client: PgStoreClient, part: list[StreamEvent]) -> int:
            n = 0
            for i in range(0, len(part), 2000):
                n += (await client.ingest_ticks(part[i : i + 2000], interval="1s")).ticks_inserted
            return n

        n1, n2 = await asyncio.wait_for(
            asyncio.gather(feed(c1, part_a), feed(c2, list(reversed(part_b)))), timeout=180
        )
        assert n1 + n2 == len(ticks)
        got = {}
        for s in ("T0", "T1", "T2", "T3"):
            for b in await c1.bars_range("ct", s, "1s", t0, t0 + timedelta(hours=1)):
                got[(s, b.ts)] = (b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count)
        # The same ticks ingested by one client, alone, under another provider.
        ref_ticks = [
            StreamEvent.create(
                provider="ct1",
                symbol=t.symbol,
                kind="tick",
                src_ts=t.src_ts,
                c=t.c,
                v=t.v,
                seq=t.seq,
            )
            for t in ticks
        ]
        await c1.ingest_ticks(ref_ticks, interval="1s")
        ref = {}
        for s in ("T0", "T1", "T2", "T3"):
            for b in await c1.bars_range("ct1", s, "1s", t0, t0 + timedelta(hours=1)):
                ref[(s, b.ts)] = (b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count)
        assert got == ref and len(ref) > 500
    finally:
        await c1.aclose()
        await c2.aclose()


def test_partition_names_are_utc_days() -> None:
    from market_data_store._timeseries import partition_ddl, partition_name

    assert partition_name("ticks", date(2020, 2, 22)) == "ticks_p20200222"
    ddl = partition_ddl("ticks", date(2020, 2, 29))
    assert "FROM ('2020-02-29 00:00:00+00') TO ('2020-03-01 00:00:00+00')" in ddl


async def test_partition_dropped_under_a_client_is_recreated(store_url: str) -> None:
    client = await PgStoreClient.connect(store_url)
    try:
        ts = datetime(2018, 7, 4, 12, tzinfo=UTC)
        await client.upsert_bars([bar("drop", "A", ts)])
        conn = await asyncpg.connect(store_url)
        try:
            await conn.execute('DROP TABLE "bars_ohlcv_p20180704"')  # e.g. a retention job
        finally:
            await conn.close()
        res = await client.upsert_bars([bar("drop", "A", ts, c=12.0)])
        assert res.inserted == 1
        assert (await partitions_of(store_url, "bars_ohlcv"))["bars_ohlcv_p20180704"] == 1
    finally:
        await client.aclose()
