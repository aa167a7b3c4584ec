"""Quote-bar columns of rollups (issue 20) on the real EUR/USD quotes: at 1 m, 5 m and 1 h each
level's quote bars equal the pandas reference quote bars computed directly from all the quotes
at that interval (the micro quote-bar rule: the last quote of an instant is the book, the book
carried in from before the bucket within the carry, time weights over the whole bucket), in
order or shuffled and re-batched with duplicates; a late quote revises exactly the quote bars
whose reference changes, at every level, once each, on the change log; a replay changes
nothing; a bucket's carried book revised by a late quote that changes no micro-bar."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pandas as pd
import pytest

from market_data_core.config import MicroBatchConfig, RollupsConfig
from market_data_core.contracts import QuoteBar, StreamEvent
from market_data_core.protocols import RollupPlan
from market_data_core.timeutil import format_duration_ms, parse_duration_ms
from market_data_pipeline.sessions import rollup_plan
from market_data_store import PgStoreClient
from tests.integration.test_store_quotes import trades_between_quotes
from tests.support.quotes import (
    assert_quote_bars_equal_reference,
    quote_events,
    reference_quote_bars,
)

WINDOW_MS = 1000
LEVELS = ["1m", "5m", "1h"]
CARRY_MS = 60_000
DAY = datetime(2020, 1, 1, tzinfo=UTC)
NEXT_DAY = DAY + timedelta(days=1)


def plan(window_ms: int = WINDOW_MS) -> RollupPlan:
    built = rollup_plan(
        MicroBatchConfig(window_ms=window_ms, rollups=RollupsConfig(intervals=LEVELS))
    )
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


async def ingest(store: PgStoreClient, events: Sequence[StreamEvent], batch: int = 500) -> None:
    for i in range(0, len(events), batch):
        await store.ingest_events(
            events[i : i + batch],
            interval=format_duration_ms(WINDOW_MS),
            quote_carry_ms=CARRY_MS,
            rollups=plan(),
        )


async def level_quote_bars(
    store: PgStoreClient, provider: str, interval: str, symbol: str = "EUR/USD"
) -> list[QuoteBar]:
    return await store.quote_bars_range(provider, symbol, interval, DAY, NEXT_DAY)


async def quote_snapshot(conn: asyncpg.Connection, provider: str) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        "SELECT * FROM quote_bars WHERE provider = $1 ORDER BY interval, ts", provider
    )
    return [tuple(v for k, v in r.items() if k != "updated_at") for r in rows]


async def change_count(conn: asyncpg.Connection, provider: str) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM bar_changes WHERE provider = $1", provider)
    )


async def assert_every_level_equals_the_reference(
    store: PgStoreClient,
    provider: str,
    quotes: list[StreamEvent],
    trade_times: list[datetime] | None = None,
) -> None:
    for interval in [format_duration_ms(WINDOW_MS), *LEVELS]:
        bars = await level_quote_bars(store, provider, interval)
        reference = reference_quote_bars(quotes, parse_duration_ms(interval), CARRY_MS, trade_times)
        assert sum(b.quote_count for b in bars) == len({q.event_id for q in quotes}), interval
        assert_quote_bars_equal_reference(bars, reference)


async def test_every_level_equals_the_reference_quote_bars_of_its_quotes(
    store: PgStoreClient, unique: str
) -> None:
    provider = f"rq{unique}"
    quotes = quote_events(provider)
    assert len(quotes) == 9500
    await ingest(store, quotes)
    await assert_every_level_equals_the_reference(store, provider, quotes)
    # a composition of the level below would differ: the book of a bucket stands through the
    # windows below that have no quote bar, and past the carry inside the bucket
    hour = await level_quote_bars(store, provider, "1h")
    assert len(hour) == 7


async def test_shared_instants_sizes_trades_shuffled_batches_duplicates_and_replay(
    store: PgStoreClient, conn: asyncpg.Connection, unique: str
) -> None:
    """Timestamps floored to 100 ms (the last quote of an instant is the book), sizes with
    some undefined imbalances, trades between the quotes (windows whose only book is the
    carried one), all shuffled in batches of 333 with 1 % duplicates: every level equals the
    reference; a replay of everything writes nothing and logs nothing."""
    provider = f"rs{unique}"
    quotes = quote_events(provider, sizes=True, floor_ms=100)
    trades = trades_between_quotes(provider, quotes)
    rng = random.Random(20)
    events = quotes + trades
    events += rng.sample(events, len(events) // 100)
    rng.shuffle(events)
    await ingest(store, events, batch=333)
    await assert_every_level_equals_the_reference(
        store, provider, quotes, [t.src_ts for t in trades]
    )
    minutes = await level_quote_bars(store, provider, "1m")
    assert any(b.imbalance is None for b in await level_quote_bars(store, provider, "1s"))
    assert all(b.imbalance is not None for b in minutes)
    before, changes = await quote_snapshot(conn, provider), await change_count(conn, provider)
    await ingest(store, events, batch=1000)
    assert await quote_snapshot(conn, provider) == before
    assert await change_count(conn, provider) == changes


def _changed_keys(
    before: dict[pd.Timestamp, dict[str, float | int | None]],
    after: dict[pd.Timestamp, dict[str, float | int | None]],
) -> set[pd.Timestamp]:
    return {ts for ts in after if before.get(ts) != after[ts]} | (set(before) - set(after))


async def test_a_late_quote_revises_its_quote_bars_at_every_level_once(
    store: PgStoreClient, conn: asyncpg.Connection, unique: str
) -> None:
    """The quote bars that change are exactly those whose reference changes with the late
    quote (its windows, and the later ones its book is now carried into), at the micro level
    and every rollup level; each gets quote revision + 1 and one change record; a second
    replay of everything changes nothing."""
    provider = f"rl{unique}"
    quotes = quote_events(provider, sizes=True, floor_ms=100)
    trades = trades_between_quotes(provider, quotes)
    trade_times = [t.src_ts for t in trades]
    late = quotes[6000]
    rest = quotes[:6000] + quotes[6001:]
    await ingest(store, sorted(rest + trades, key=lambda e: e.src_ts))
    levels = [format_duration_ms(WINDOW_MS), *LEVELS]
    expected: set[tuple[str, datetime]] = set()
    stored: dict[tuple[str, datetime], QuoteBar] = {}
    for interval in levels:
        ms = parse_duration_ms(interval)
        old = reference_quote_bars(rest, ms, CARRY_MS, trade_times)
        new = reference_quote_bars(quotes, ms, CARRY_MS, trade_times)
        keys = _changed_keys(old, new)
        assert keys, interval  # the late quote's own window changes at least
        expected |= {(interval, ts.to_pydatetime()) for ts in keys}
        stored |= {(interval, b.ts): b for b in await level_quote_bars(store, provider, interval)}
    changes_before = await change_count(conn, provider)
    head = await conn.fetchval("SELECT max(id) FROM bar_changes WHERE provider = $1", provider)
    await store.ingest_events(
        [late], interval=format_duration_ms(WINDOW_MS), quote_carry_ms=CARRY_MS, rollups=plan()
    )
    logged = await conn.fetch(
        "SELECT interval, ts, quote_revision FROM bar_changes WHERE provider = $1 AND id > $2",
        provider,
        head,
    )
    assert {(r["interval"], r["ts"]) for r in logged} == expected
    assert len(logged) == len(expected)  # one change each
    for r in logged:
        old_bar = stored.get((r["interval"], r["ts"]))
        assert r["quote_revision"] == (0 if old_bar is None else old_bar.revision + 1), r
    assert {r["interval"] for r in logged} == set(levels)
    await assert_every_level_equals_the_reference(store, provider, quotes, trade_times)
    after, changes = await quote_snapshot(conn, provider), await change_count(conn, provider)
    assert changes == changes_before + len(expected)
    await ingest(store, sorted(quotes + trades, key=lambda e: e.src_ts), batch=2000)
    assert await quote_snapshot(conn, provider) == after
    assert await change_count(conn, provider) == changes


async def test_a_late_quote_revises_the_book_carried_into_a_bucket_and_no_micro_bar(
    store: PgStoreClient, conn: asyncpg.Connection, unique: str
) -> None:
    """Quote at 0:00:50, trades at 0:01:58 only: the 1 s window of the trades is 68 s after
    the quote (beyond the 60 s carry: no micro quote bar), but the 1 m bucket starts 10 s
    after it: its quote bar is the carried book over the whole minute, no quote. A late quote
    at 0:00:55 changes no micro-bar and revises that 1 m bar (and the 5 m and 1 h bars that
    hold both quotes)."""
    provider = f"rc{unique}"
    t0 = datetime(2020, 1, 1, 18, tzinfo=UTC)

    def quote(s: float, bid: float, seq: int) -> StreamEvent:
        return StreamEvent.create(
            provider=provider, symbol="X", kind="quote", src_ts=t0 + timedelta(seconds=s),
            seq=seq, bid=bid, ask=bid + 0.02, bid_size=3.0, ask_size=1.0,
        )  # fmt: skip

    def tick(s: float, seq: int) -> StreamEvent:
        return StreamEvent.create(
            provider=provider, symbol="X", kind="tick", src_ts=t0 + timedelta(seconds=s),
            c=10.0, v=1.0, seq=seq,
        )  # fmt: skip

    first = [quote(50, 10.0, 1), tick(118, 1), tick(118.5, 2)]
    await ingest(store, first)
    minute = t0 + timedelta(minutes=1)
    micro = await level_quote_bars(store, provider, "1s", "X")
    assert [b.ts for b in micro] == [t0 + timedelta(seconds=50)]
    bars = {b.ts: b for b in await level_quote_bars(store, provider, "1m", "X")}
    assert sorted(bars) == [t0, minute]
    assert (bars[minute].quote_count, bars[minute].bid, bars[minute].revision) == (0, 10.0, 0)
    late = quote(55, 10.01, 2)
    head = await conn.fetchval("SELECT max(id) FROM bar_changes WHERE provider = $1", provider)
    result = await store.ingest_events(
        [late], interval="1s", quote_carry_ms=CARRY_MS, rollups=plan()
    )
    assert [b.ts for b in result.quote_bars] == [t0 + timedelta(seconds=55)]  # its own window
    logged = await conn.fetch(
        "SELECT interval, ts, quote_revision, bid FROM bar_changes "
        "WHERE provider = $1 AND id > $2 ORDER BY interval, ts",
        provider,
        head,
    )
    assert [(r["interval"], r["ts"], r["quote_revision"]) for r in logged] == [
        ("1h", t0, 1),
        ("1m", t0, 1),
        ("1m", minute, 1),
        ("1s", t0 + timedelta(seconds=55), 0),
        ("5m", t0, 1),
    ]
    events = [*first, late]
    for interval in ["1s", *LEVELS]:
        ms = parse_duration_ms(interval)
        reference = reference_quote_bars(
            [e for e in events if e.kind == "quote"],
            ms,
            CARRY_MS,
            [e.src_ts for e in events if e.kind == "tick"],
        )
        assert_quote_bars_equal_reference(
            await level_quote_bars(store, provider, interval, "X"), reference
        )
