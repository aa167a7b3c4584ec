"""``ingest_ticks``: raw ticks are the truth, bars are recomputed exactly from them."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest

from market_data_core.contracts import Bar, StreamEvent
from market_data_core.errors import StoreError
from market_data_core.timeutil import from_epoch_us
from market_data_store import PgStoreClient
from tests.conftest import DATA
from tests.support.trades import decimal_ohlcv

TRADES = DATA / "binance-futures-btcusdt-trades-2020-02-22.csv"
DAY0 = datetime(2020, 2, 22, tzinfo=UTC)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[PgStoreClient]:
    client = await PgStoreClient.connect(store_url)
    yield client
    await client.aclose()


def load_trades(provider: str) -> tuple[list[StreamEvent], list[tuple[int, int, Decimal, Decimal]]]:
    events, raw = [], []
    with TRADES.open() as f:
        for row in csv.DictReader(f):
            ts_us, tid = int(row["timestamp"]), int(row["id"])
            raw.append((ts_us, tid, Decimal(row["price"]), Decimal(row["amount"])))
            events.append(
                StreamEvent.create(
                    provider=provider,
                    symbol=row["symbol"],
                    kind="tick",
                    src_ts=from_epoch_us(ts_us),
                    c=float(row["price"]),
                    v=float(row["amount"]),
                    seq=tid,
                    trade_id=row["id"],
                    side=row["side"],
                )
            )
    return events, raw


def reference(
    raw: list[tuple[int, int, Decimal, Decimal]], window_ms: int
) -> dict[datetime, tuple[float, float, float, float, float, float, int]]:
    """Exact decimal OHLCV per epoch-aligned window, as the floats of the exact decimals."""
    w = window_ms * 1000
    groups: dict[int, list[tuple[int, int, Decimal, Decimal]]] = defaultdict(list)
    for t in {(ts, tid): (ts, tid, p, a) for ts, tid, p, a in raw}.values():
        groups[t[0] - t[0] % w].append(t)
    out = {}
    for start, trades in groups.items():
        trades.sort(key=lambda t: (t[0], t[1]))
        out[from_epoch_us(start)] = decimal_ohlcv([t[2] for t in trades], [t[3] for t in trades])
    return out


def as_tuple(b: Bar) -> tuple[float, float, float, float, float, float | None, int | None]:
    return (b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count)


@pytest.mark.parametrize("window_ms", [500, 2000, 5000])
async def test_bars_equal_decimal_reference_despite_shuffle_and_duplicates(
    store: PgStoreClient, window_ms: int
) -> None:
    provider = f"ref{window_ms}"
    events, raw = load_trades(provider)
    rng = random.Random(window_ms)
    noisy = events + rng.sample(events, len(events) // 100)  # 1% duplicates
    rng.shuffle(noisy)
    interval = f"{window_ms}ms"
    inserted = 0
    for i in range(0, len(noisy), 1500):
        res = await store.ingest_ticks(noisy[i : i + 1500], interval=interval)
        inserted += res.ticks_inserted
    assert inserted == len(events)

    got = await store.bars_range(provider, "BTCUSDT", interval, DAY0, DAY0 + timedelta(days=1))
    ref = reference(raw, window_ms)
    assert [b.ts for b in got] == sorted(ref)
    bad = [(b.ts, as_tuple(b), ref[b.ts]) for b in got if as_tuple(b) != ref[b.ts]]
    assert not bad, f"{len(bad)} of {len(got)} bars differ; first: {bad[:3]}"

    replay = await store.ingest_ticks(events, interval=interval)
    assert replay.ticks_inserted == 0 and replay.bars == []
    assert replay.bars_result.changed == 0 and replay.bars_result.unchanged == len(ref)


async def test_revision_increments_only_on_change(store: PgStoreClient) -> None:
    t0 = datetime(2021, 6, 1, 12, 0, 0, tzinfo=UTC)

    def tick(ms: int, price: float, seq: int, size: float = 1.0) -> StreamEvent:
        return StreamEvent.create(
            provider="rev",
            symbol="X",
            kind="tick",
            src_ts=t0 + timedelta(milliseconds=ms),
            c=price,
            v=size,
            seq=seq,
        )

    first = [tick(100, 10.0, 1), tick(900, 11.0, 2), tick(1500, 12.0, 3)]
    res = await store.ingest_ticks(first, interval="1s")
    assert res.ticks_inserted == 3
    assert [(b.ts, b.revision, b.o, b.c, b.trade_count) for b in res.bars] == [
        (t0, 0, 10.0, 11.0, 2),
        (t0 + timedelta(seconds=1), 0, 12.0, 12.0, 1),
    ]
    assert (res.bars_result.inserted, res.bars_result.updated) == (2, 0)

    again = await store.ingest_ticks(first[:2], interval="1s")
    assert again.ticks_inserted == 0 and again.bars == []
    assert again.bars_result.unchanged == 1

    # A late tick earlier than the open of window 0: only that bar changes, revision 1.
    late = await store.ingest_ticks([tick(50, 9.5, 0, size=2.0)], interval="1s")
    assert late.ticks_inserted == 1
    (bar,) = late.bars
    assert (bar.ts, bar.revision, bar.o, bar.l, bar.c, bar.v, bar.trade_count) == (
        t0,
        1,
        9.5,
        9.5,
        11.0,
        4.0,
        3,
    )
    assert bar.vwap == float(Decimal("40.0") / Decimal("4.0"))  # (19+10+11)/4
    assert (late.bars_result.inserted, late.bars_result.updated) == (0, 1)

    # A tick with the same (ts, seq) -- the same event_id -- but another price is a
    # duplicate: the first stored version stays.
    dup = await store.ingest_ticks([tick(50, 99.0, 0)], interval="1s")
    assert dup.ticks_inserted == 0 and dup.bars == []
    stored = await store.bars_range("rev", "X", "1s", t0, t0 + timedelta(seconds=2))
    assert [b.revision for b in stored] == [1, 0]


async def test_same_ticks_at_another_interval_produce_its_bars(store: PgStoreClient) -> None:
    events, raw = load_trades("multi")
    sample = events[:3000]
    await store.ingest_ticks(sample, interval="1s")
    res = await store.ingest_ticks(sample, interval="5s")  # every tick is a duplicate now
    assert res.ticks_inserted == 0
    assert res.bars and res.bars_result.inserted == len(res.bars)
    ref = reference(raw[:3000], 5000)
    assert {b.ts: as_tuple(b) for b in res.bars} == ref


async def test_non_tick_events_are_refused(store: PgStoreClient) -> None:
    bar_event = StreamEvent.create(
        provider="p",
        symbol="X",
        kind="bar",
        interval="1m",
        src_ts=DAY0,
        o=1.0,
        h=1.0,
        l=1.0,
        c=1.0,
        v=1.0,
        seq=0,
    )
    with pytest.raises(StoreError, match="bar event"):
        await store.ingest_ticks([bar_event], interval="1s")


async def test_staging_tables_are_emptied_and_vacuumed(store_url: str) -> None:
    from market_data_store._pool import StagingJanitor

    client = await PgStoreClient.connect(store_url, pool_min=1, pool_max=1)
    client._janitor = StagingJanitor(vacuum_rows=2500)
    try:
        events, _ = load_trades("janitor")
        for i in range(0, 5000, 1000):
            await client.ingest_ticks(events[i : i + 1000], interval="1s")
        async with client._pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM mdp_stage_ticks") == 0
            # 5 x 1000 rows with a vacuum after 3000: at most 2000 dead rows' pages remain.
            pages = await conn.fetchval("SELECT pg_relation_size('mdp_stage_ticks') / 8192")
            assert pages < 60
    finally:
        await client.aclose()


def _exact_vwap(prices: list[float], sizes: list[float]) -> Fraction:
    """sum(p*v)/sum(v) of the floats' shortest decimals (what the store keeps), exactly."""
    p = [Fraction(repr(x)) for x in prices]
    v = [Fraction(repr(x)) for x in sizes]
    return sum((a * b for a, b in zip(p, v, strict=True)), Fraction(0)) / sum(v, Fraction(0))


async def _one_bar(
    store: PgStoreClient, symbol: str, prices: list[float], sizes: list[float]
) -> Bar:
    t0 = datetime(2021, 6, 2, 9, 30, tzinfo=UTC)
    ticks = [
        StreamEvent.create(
            provider="vwap",
            symbol=symbol,
            kind="tick",
            src_ts=t0 + timedelta(milliseconds=100 * i),
            c=p,
            v=s,
            seq=i,
        )
        for i, (p, s) in enumerate(zip(prices, sizes, strict=True))
    ]
    res = await store.ingest_ticks(ticks, interval="2s")
    (bar,) = res.bars
    return bar


@pytest.mark.parametrize(
    ("prices", "sizes", "expected"),
    [
        # issue 16: a sub-cent token; rounding to 10 decimals stored 1.23e-08, below the low
        (
            [1.234567e-8, 1.234569e-8, 1.234568e-8],
            [1_000_000.0, 2_000_000.0, 1_500_000.0],
            Fraction("5.555557e-8") / Fraction("4.5"),  # 1.2345682222...e-8
        ),
        # issue 16: price near 4e-6 with sizes near 1e10 (stored 3.9522e-06 before)
        (
            [3.95214e-6, 3.95216e-6],
            [1.2e10, 9.0e9],
            Fraction("82.99512e-6") / Fraction("21"),  # 3.95214857142857...e-6
        ),
    ],
)
async def test_vwap_of_tiny_prices_is_exact_and_inside_the_bar(
    store: PgStoreClient, prices: list[float], sizes: list[float], expected: Fraction
) -> None:
    bar = await _one_bar(store, f"TINY{len(prices)}", prices, sizes)
    assert _exact_vwap(prices, sizes) == expected
    assert bar.vwap == float(expected)  # the float nearest the exact value
    assert bar.vwap is not None and bar.l <= bar.vwap <= bar.h


async def test_vwap_relative_error_at_every_magnitude(store: PgStoreClient) -> None:
    """Prices 1e-12 .. 1e9, sizes up to 1e12: vwap is inside [low, high] and within 1e-15 of
    the exact decimal value (the README's exactness statement)."""
    rng = random.Random(16)
    bad = []
    for decade in range(-12, 10):
        for size_decade in (-8, 0, 6, 12):
            n = rng.randint(2, 6)
            base = 10.0**decade
            prices = [float(f"{rng.uniform(1, 9.999) * base:.15g}") for _ in range(n)]
            sizes = [float(f"{rng.uniform(0.1, 1) * 10.0**size_decade:.12g}") for _ in range(n)]
            bar = await _one_bar(store, f"M{decade + 12}S{size_decade + 8}", prices, sizes)
            exact = _exact_vwap(prices, sizes)
            assert bar.vwap is not None
            rel = abs(Fraction(bar.vwap) - exact) / exact
            if not (bar.l <= bar.vwap <= bar.h) or rel > Fraction("1e-15"):
                bad.append((decade, size_decade, prices, sizes, bar.vwap, exact, rel))
            elif bar.vwap != float(exact):
                bad.append(("not the nearest float", decade, size_decade, bar.vwap, exact))
    assert not bad, f"{len(bad)} bars wrong, first: {bad[:2]}"


def _tick(provider: str, symbol: str, seq: int) -> StreamEvent:
    return StreamEvent.create(
        provider=provider,
        symbol=symbol,
        kind="tick",
        src_ts=DAY0 + timedelta(seconds=seq),
        c=100.0 + seq,
        v=1.0,
        seq=seq,
    )


async def test_writers_register_each_series_and_refuse_a_series_key_collision(
    store: PgStoreClient, store_url: str
) -> None:
    """Reads match a series by ``series_key`` alone, so no two series may share one:
    writers register every series in ``raw_series`` first. A series whose key another series
    holds (a 64-bit hash collision: made here by registering a name under another's key) is
    refused with a StoreError naming both, and nothing of it is stored."""
    import asyncpg

    from market_data_store._schema_names import series_key

    await store.ingest_ticks(
        [_tick("regtest", "AAA", 1), _tick("regtest", "AAA", 2)], interval="1s"
    )
    conn = await asyncpg.connect(store_url)
    try:
        registered = await conn.fetch(
            f"SELECT provider, symbol, series_key = {series_key('provider', 'symbol')} AS ok "
            "FROM raw_series WHERE provider = 'regtest'"
        )
        assert [tuple(r) for r in registered] == [("regtest", "AAA", True)]
        # "regtest/CLASH" registered under the key of "regtest/BBB" (as a collision would be)
        await conn.execute(
            "INSERT INTO raw_series (series_key, provider, symbol) "
            f"VALUES ({series_key('$1::text', '$2::text')}, 'regtest', 'CLASH')",
            "regtest",
            "BBB",
        )
        with pytest.raises(StoreError, match="regtest/BBB has the series key of regtest/CLASH"):
            await store.ingest_ticks([_tick("regtest", "BBB", 3)], interval="1s")
        assert await conn.fetchval("SELECT count(*) FROM ticks WHERE symbol = 'BBB'") == 0
        bars = await conn.fetchval(
            "SELECT count(*) FROM bars_ohlcv WHERE provider = 'regtest' AND symbol = 'AAA'"
        )
        assert bars == 2
    finally:
        await conn.close()
