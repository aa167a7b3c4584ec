"""Rollups in ``ingest_events`` (issue 20) on the shipped Binance trades: every level equals a
pandas resample of the de-duplicated trades at its interval bit for bit (the micro-bars'
rule), and the composition of the micro-bars' exact sums; any order, batching or replay gives
the same rows; a late tick revises the bar that holds it at every level, each once, on the
change log; a second replay changes nothing anywhere; the flat-bar policy at every level."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import asyncpg
import pytest

from market_data_core.config import MicroBatchConfig, RollupsConfig
from market_data_core.contracts import Bar, StreamEvent
from market_data_core.protocols import RollupPlan
from market_data_core.timeutil import format_duration_ms, parse_duration_ms
from market_data_pipeline.sessions import rollup_plan
from market_data_store import PgStoreClient
from tests.support.trades import SYMBOL, assert_bars_equal_reference, trade_events

WINDOW_MS = 2000
LEVELS = ["1m", "5m", "1h", "1d"]
DAY = datetime(2020, 2, 22, tzinfo=UTC)
NEXT_DAY = DAY + timedelta(days=1)


def plan(intervals: Sequence[str] = LEVELS, empty: str = "none") -> RollupPlan:
    cfg = MicroBatchConfig(
        window_ms=WINDOW_MS,
        rollups=RollupsConfig(intervals=list(intervals), empty_intervals=empty),  # type: ignore[arg-type]
    )
    built = rollup_plan(cfg)
    assert built is not None
    return built


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[PgStoreClient]:
    client = await PgStoreClient.connect(store_url)
    yield client
    await client.aclose()


@pytest.fixture
async def conn(store_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(store_url)
    yield c
    await c.close()


async def ingest(
    store: PgStoreClient, events: Sequence[StreamEvent], rollups: RollupPlan, batch: int = 500
) -> list[Bar]:
    changed: list[Bar] = []
    for i in range(0, len(events), batch):
        result = await store.ingest_events(
            events[i : i + batch],
            interval=format_duration_ms(WINDOW_MS),
            quote_carry_ms=60_000,
            rollups=rollups,
        )
        changed += result.bars + result.rollup_bars
    return changed


async def level_bars(store: PgStoreClient, provider: str, interval: str) -> list[Bar]:
    return await store.bars_range(provider, SYMBOL, interval, DAY, NEXT_DAY)


async def snapshot(conn: asyncpg.Connection, provider: str) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        "SELECT interval, ts, o, h, l, c, v, vwap, trade_count, revision, sum_pv, sum_v, "
        "in_session FROM bars_ohlcv WHERE provider = $1 ORDER BY interval, ts",
        provider,
    )
    return [tuple(r) for r in rows]


async def change_count(conn: asyncpg.Connection, provider: str) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM bar_changes WHERE provider = $1", provider)
    )


async def assert_composition_of_micro_bars(
    conn: asyncpg.Connection, provider: str, level: str
) -> None:
    """Each rollup bar equals the micro-bars of its bucket composed in Python: first open, last
    close, max/min, the exact sums of size and price*size, their vwap as the float nearest the
    exact quotient, the trade count."""
    level_ms = parse_duration_ms(level)
    micro = await conn.fetch(
        "SELECT ts, o, h, l, c, trade_count, sum_pv, sum_v FROM bars_ohlcv "
        "WHERE provider = $1 AND interval = $2 ORDER BY ts",
        provider,
        format_duration_ms(WINDOW_MS),
    )
    buckets: dict[datetime, list[asyncpg.Record]] = {}
    for r in micro:
        us = int(r["ts"].timestamp() * 1_000_000)
        start = datetime.fromtimestamp((us - us % (level_ms * 1000)) / 1e6, UTC)
        buckets.setdefault(start, []).append(r)
    rolled = await conn.fetch(
        "SELECT ts, o, h, l, c, v, vwap, trade_count, sum_pv, sum_v, in_session FROM bars_ohlcv "
        "WHERE provider = $1 AND interval = $2 ORDER BY ts",
        provider,
        level,
    )
    assert [r["ts"] for r in rolled] == sorted(buckets)
    for r in rolled:
        rows = buckets[r["ts"]]
        sv = sum((x["sum_v"] for x in rows), Decimal(0))
        spv = sum((x["sum_pv"] for x in rows), Decimal(0))
        expected = (
            rows[0]["o"],
            max(x["h"] for x in rows),
            min(x["l"] for x in rows),
            rows[-1]["c"],
            float(sv),
            float(Fraction(spv) / Fraction(sv)),
            sum(x["trade_count"] for x in rows),
            spv,
            sv,
            True,
        )
        assert tuple(r)[1:] == expected, (level, r["ts"])


async def test_every_level_equals_the_pandas_resample_and_the_composed_micro_bars(
    store: PgStoreClient, conn: asyncpg.Connection, unique: str
) -> None:
    provider = f"roll{unique}"
    events = trade_events(provider)
    assert len(events) == 9999
    await ingest(store, events, plan())
    assert_bars_equal_reference(
        await level_bars(store, provider, format_duration_ms(WINDOW_MS)), WINDOW_MS
    )
    for level in LEVELS:
        bars = await level_bars(store, provider, level)
        assert bars, level
        assert all(b.in_session is True for b in bars)
        assert_bars_equal_reference(bars, parse_duration_ms(level))
        await assert_composition_of_micro_bars(conn, provider, level)
    day = await level_bars(store, provider, "1d")
    assert len(day) == 1 and day[0].trade_count == 9999


async def test_any_order_and_batching_gives_the_same_rows_and_a_replay_changes_nothing(
    store: PgStoreClient, conn: asyncpg.Connection, unique: str
) -> None:
    in_order, shuffled = f"ro{unique}", f"rs{unique}"
    await ingest(store, trade_events(in_order), plan(), batch=2000)
    events = trade_events(shuffled)
    random.Random(20).shuffle(events)
    await ingest(store, events, plan(), batch=337)
    a, b = await snapshot(conn, in_order), await snapshot(conn, shuffled)
    # values equal; a shuffled history revises bars, so only the revisions may differ
    strip = [(*r[:9], *r[10:]) for r in a]
    assert strip == [(*r[:9], *r[10:]) for r in b]
    for level in LEVELS:
        assert_bars_equal_reference(
            await level_bars(store, shuffled, level), parse_duration_ms(level)
        )
    before, changes = await snapshot(conn, shuffled), await change_count(conn, shuffled)
    assert await ingest(store, trade_events(shuffled), plan()) == []
    assert await snapshot(conn, shuffled) == before
    assert await change_count(conn, shuffled) == changes


async def test_a_late_tick_revises_its_bar_at_every_level_once(
    store: PgStoreClient, conn: asyncpg.Connection, unique: str
) -> None:
    provider = f"late{unique}"
    events = trade_events(provider)
    late = events[6000]
    rest = events[:6000] + events[6001:]
    await ingest(store, rest, plan())
    before = {(r[0], r[1]): r for r in await snapshot(conn, provider)}
    changes_before = await change_count(conn, provider)
    result = await store.ingest_events([late], interval="2s", quote_carry_ms=60_000, rollups=plan())
    assert result.ticks_inserted == 1
    revised = {(b.interval, b.ts): b for b in result.bars + result.rollup_bars}
    expected_keys = set()
    for level_ms in (WINDOW_MS, *(parse_duration_ms(x) for x in LEVELS)):
        us = int(late.src_ts.timestamp() * 1_000_000)
        start = datetime.fromtimestamp((us - us % (level_ms * 1000)) / 1e6, UTC)
        expected_keys.add((format_duration_ms(level_ms), start))
    assert set(revised) == expected_keys
    for key, bar in revised.items():
        old = before[key]
        assert bar.revision == old[9] + 1, key
        assert bar.change_seq is not None
    # each revised bar is one change on the log, numbered after its series' head
    assert await change_count(conn, provider) == changes_before + len(expected_keys)
    for level in ["2s", *LEVELS]:
        assert_bars_equal_reference(
            await level_bars(store, provider, level), parse_duration_ms(level)
        )
    # a second replay of everything changes nothing at any level
    after = await snapshot(conn, provider)
    assert await ingest(store, trade_events(provider), plan()) == []
    assert await snapshot(conn, provider) == after
    assert await change_count(conn, provider) == changes_before + len(expected_keys)


def _tick(provider: str, second: float, price: float, seq: int) -> StreamEvent:
    return StreamEvent.create(
        provider=provider,
        symbol=SYMBOL,
        kind="tick",
        src_ts=DAY + timedelta(seconds=second),
        c=price,
        v=1.0,
        seq=seq,
    )


async def test_flat_bars_carry_the_last_close_at_every_level(
    store: PgStoreClient, conn: asyncpg.Connection, unique: str
) -> None:
    provider = f"flat{unique}"
    flat = plan(["1m", "5m"], empty="flat")
    # trades at 0:00:01 and 0:00:03, then nothing until 0:07:10: 2 s windows between get flat
    # bars, the 1 m buckets 0:01 .. 0:06 are flat, the 5 m bucket 0:00 is a real one
    await ingest(store, [_tick(provider, 1, 100.0, 1), _tick(provider, 3, 101.0, 2)], flat)
    assert len(await level_bars(store, provider, "2s")) == 2  # no later trade yet: no fill
    await ingest(store, [_tick(provider, 430, 105.0, 3)], flat)
    micro = await level_bars(store, provider, "2s")
    assert len(micro) == 430 // 2 + 1
    flats = [b for b in micro if b.trade_count == 0]
    assert len(flats) == len(micro) - 3
    assert all((b.o, b.h, b.l, b.c, b.v, b.vwap) == (101.0,) * 4 + (0.0, None) for b in flats)
    minutes = await level_bars(store, provider, "1m")
    assert [b.trade_count for b in minutes] == [2, 0, 0, 0, 0, 0, 0, 1]
    assert [(b.o, b.c) for b in minutes[1:7]] == [(101.0, 101.0)] * 6
    five = await level_bars(store, provider, "5m")
    assert [(b.o, b.h, b.l, b.c, b.trade_count) for b in five] == [
        (100.0, 101.0, 100.0, 101.0, 2),
        (105.0, 105.0, 105.0, 105.0, 1),
    ]
    # a late trade at 0:02:30 becomes a real bar; the flat bars after it carry its close
    result = await store.ingest_events(
        [_tick(provider, 150, 99.0, 4)], interval="2s", quote_carry_ms=60_000, rollups=flat
    )
    by_level: dict[str, list[Bar]] = {}
    for b in result.bars + result.rollup_bars:
        by_level.setdefault(b.interval, []).append(b)
    assert len(by_level["2s"]) == 1 + (430 - 152) // 2  # its window, the flat ones after
    assert all(b.revision == 1 for b in by_level["2s"])
    assert {b.ts.minute for b in by_level["1m"]} == {2, 3, 4, 5, 6}
    minutes = await level_bars(store, provider, "1m")
    assert [(b.o, b.c) for b in minutes[1:7]] == [(101.0, 101.0), (99.0, 99.0)] + [(99.0, 99.0)] * 4
    assert minutes[2].trade_count == 1 and minutes[2].v == 1.0
    five = await level_bars(store, provider, "5m")
    assert [(b.o, b.l, b.c, b.trade_count, b.revision) for b in five] == [
        (100.0, 99.0, 99.0, 3, 1),
        (105.0, 105.0, 105.0, 1, 0),  # its flat 2 s bars changed, its trades did not
    ]


async def test_without_a_plan_nothing_is_rolled_up(store: PgStoreClient, unique: str) -> None:
    provider = f"none{unique}"
    result = await store.ingest_events(
        trade_events(provider)[:50], interval="2s", quote_carry_ms=60_000
    )
    assert result.rollup_bars == [] and result.bars
    assert await level_bars(store, provider, "1m") == []
