"""``ingest_events`` with quotes (issue 15): raw quotes stored once, quote bars recomputed from
all stored quotes equal the pandas reference over the real EUR/USD quotes at 0.5, 1, 2 and 5 s,
whatever the order, duplicates or batching; the book carried into windows with trades and no
quote; every change of a window on the change log with both of its bars."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from market_data_core.contracts import Bar, QuoteBar, StreamEvent, WindowBar
from market_data_core.errors import StoreError
from market_data_core.protocols import TickIngestResult
from market_data_core.timeutil import format_duration_ms
from market_data_store import PgSignalsStore, PgStoreClient
from market_data_store.store_client import whole_us
from tests.support.quotes import (
    assert_quote_bars_equal_reference,
    quote_events,
    reference_quote_bars,
)

WINDOWS = [500, 1000, 2000, 5000]
CARRY_MS = 60_000
DAY = datetime(2020, 1, 1, tzinfo=UTC)
NEXT_DAY = datetime(2020, 1, 3, tzinfo=UTC)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[PgStoreClient]:
    client = await PgStoreClient.connect(store_url)
    yield client
    await client.aclose()


async def ingest(
    store: PgStoreClient, events: Sequence[StreamEvent], window_ms: int, batch: int = 1000
) -> tuple[int, int]:
    ticks = quotes = 0
    for i in range(0, len(events), batch):
        result = await store.ingest_events(
            events[i : i + batch], interval=format_duration_ms(window_ms), quote_carry_ms=CARRY_MS
        )
        ticks += result.ticks_inserted
        quotes += result.quotes_inserted
    return ticks, quotes


async def quote_bars(store: PgStoreClient, provider: str, window_ms: int) -> list[QuoteBar]:
    return await store.quote_bars_range(
        provider, "EUR/USD", format_duration_ms(window_ms), DAY, NEXT_DAY
    )


def trades_between_quotes(provider: str, quotes: list[StreamEvent]) -> list[StreamEvent]:
    """A trade every 7.3 s of the quotes' span (at the then mid): many fall in windows without
    a quote, whose book is carried (or not, after a quiet minute)."""
    start, end = quotes[0].src_ts, quotes[-1].src_ts
    out = []
    t, k = start, 0
    while t < end:
        out.append(
            StreamEvent.create(
                provider=provider, symbol="EUR/USD", kind="tick", src_ts=t, c=1.12, v=1.0, seq=k
            )
        )
        t += timedelta(milliseconds=7300)
        k += 1
    return out


@pytest.mark.parametrize("window_ms", WINDOWS)
async def test_quote_bars_equal_the_pandas_reference(
    store: PgStoreClient, window_ms: int, unique: str
) -> None:
    events = quote_events(f"fx{unique}")
    assert len(events) == 9500
    ticks, stored = await ingest(store, events, window_ms)
    assert (ticks, stored) == (0, 9500)
    reference = reference_quote_bars(events, window_ms, CARRY_MS)
    bars = await quote_bars(store, f"fx{unique}", window_ms)
    assert sum(b.quote_count for b in bars) == 9500
    assert_quote_bars_equal_reference(bars, reference)


@pytest.mark.parametrize("window_ms", WINDOWS)
async def test_shared_instants_sizes_trades_shuffled_batches_and_duplicates(
    store: PgStoreClient, window_ms: int, unique: str
) -> None:
    """Timestamps floored to 100 ms (several quotes per instant: the last by seq is the book),
    sizes (imbalance; some quotes with both sizes 0), trades in windows without quotes (the
    carried book), ingested shuffled in batches of 333 with 1 % duplicates: the same rows as
    the reference of the de-duplicated quotes."""
    p = f"fs{unique}"
    quotes = quote_events(p, sizes=True, floor_ms=100)
    instants = {q.src_ts for q in quotes}
    assert len(quotes) - len(instants) > 250  # many instants hold several quotes
    trades = trades_between_quotes(p, quotes)
    rng = random.Random(window_ms)
    events = quotes + trades
    events += rng.sample(events, len(events) // 100)
    rng.shuffle(events)
    ticks, stored = await ingest(store, events, window_ms, batch=333)
    assert (ticks, stored) == (len(trades), len(quotes))
    reference = reference_quote_bars(quotes, window_ms, CARRY_MS, [t.src_ts for t in trades])
    bars = await quote_bars(store, p, window_ms)
    assert_quote_bars_equal_reference(bars, reference)
    carried = [b for b in bars if b.quote_count == 0]
    assert carried and all(b.spread_bps_mean is None for b in carried)
    assert any(b.imbalance is None for b in bars) and any(b.imbalance is not None for b in bars)
    # a replay of everything changes nothing
    again = await store.ingest_events(
        events, interval=format_duration_ms(window_ms), quote_carry_ms=CARRY_MS
    )
    assert (again.ticks_inserted, again.quotes_inserted, again.bars, again.quote_bars) == (
        0,
        0,
        [],
        [],
    )


async def test_a_late_quote_changes_the_book_carried_into_later_windows(
    store: PgStoreClient, store_url: str, unique: str
) -> None:
    p = f"lq{unique}"
    t0 = datetime(2021, 3, 1, 12, tzinfo=UTC)

    def quote(s: float, bid: float, seq: int) -> StreamEvent:
        return StreamEvent.create(
            provider=p, symbol="X", kind="quote", src_ts=t0 + timedelta(seconds=s), seq=seq,
            bid=bid, ask=bid + 0.02, bid_size=3.0, ask_size=1.0,
        )  # fmt: skip

    def tick(s: float, seq: int) -> StreamEvent:
        return StreamEvent.create(
            provider=p, symbol="X", kind="tick", src_ts=t0 + timedelta(seconds=s), c=10.0,
            v=1.0, seq=seq,
        )  # fmt: skip

    first = await store.ingest_events(
        [quote(0.5, 10.0, 1), tick(1.5, 1), tick(2.5, 2), quote(3.5, 10.1, 2)],
        interval="1s",
        quote_carry_ms=2000,
    )
    # windows 0 (quote), 1 and 2 (trades, book carried from 0.5 s: 1 s and 2 s old), 3 (quote)
    by_ts = {b.ts: b for b in first.quote_bars}
    assert sorted((b.ts - t0).seconds for b in first.quote_bars) == [0, 1, 2, 3]
    assert by_ts[t0 + timedelta(seconds=1)].quote_count == 0
    assert by_ts[t0 + timedelta(seconds=1)].bid == 10.0
    assert by_ts[t0 + timedelta(seconds=1)].imbalance == 0.5
    # window 3: carried book (from 0.5 s, 2.5 s old at 3 s) beyond the 2 s carry: none
    w3 = by_ts[t0 + timedelta(seconds=3)]
    assert (w3.quote_count, w3.bid) == (1, 10.1)
    assert w3.spread_bps == pytest.approx(w3.spread_bps_max, rel=1e-15)
    assert [b.change_seq for b in first.bars] == [2, 3]  # windows 1 and 2: one change each
    # a late quote at 1.2 s changes window 1 and the book carried into window 2 (and 3)
    late = await store.ingest_events([quote(1.2, 10.05, 3)], interval="1s", quote_carry_ms=2000)
    changed = {(b.ts - t0).seconds: b for b in late.quote_bars}
    assert sorted(changed) == [1, 2, 3]
    assert changed[2].bid == 10.05 and changed[2].revision == 1
    assert changed[3].revision == 1  # the 1.2 s book is 1.8 s old at 3 s: carried now
    assert late.bars == []  # the trade bars did not change
    conn = await asyncpg.connect(store_url)
    try:
        rows = await conn.fetch(
            "SELECT seq, ts, o IS NULL AS no_trades, bid, quote_revision FROM bar_changes "
            "WHERE provider = $1 ORDER BY id",
            p,
        )
    finally:
        await conn.close()
    assert [(r["seq"], (r["ts"] - t0).seconds, r["no_trades"]) for r in rows] == [
        (1, 0, True),
        (2, 1, False),
        (3, 2, False),
        (4, 3, True),
        (5, 1, False),
        (6, 2, False),
        (7, 3, True),
    ]
    published: list[WindowBar] = []

    async def publish(windows: Sequence[WindowBar]) -> None:
        published.extend(w for w in windows if w.provider == p)

    while (await store.relay_bar_changes(publish, limit=1000)).relayed:
        pass
    kinds = [(type(w).__name__, w.change_seq) for w in published]
    assert kinds == [
        ("QuoteBar", 1),
        ("Bar", 2),
        ("Bar", 3),
        ("QuoteBar", 4),
        ("Bar", 5),
        ("Bar", 6),
        ("QuoteBar", 7),
    ]
    w1 = published[4]
    assert isinstance(w1, Bar) and w1.quote is not None
    assert (w1.quote.quote_count, w1.quote.revision, w1.revision) == (1, 1, 0)
    # what inference resumes from: every window, trade bars with their quote bars attached
    signals = await PgSignalsStore.connect(store_url)
    try:
        resume = await signals.resume_series("k", p, "X", "1s")
    finally:
        await signals.aclose()
    assert [(type(w).__name__, (w.ts - t0).seconds) for w in resume.bars] == [
        ("QuoteBar", 0),
        ("Bar", 1),
        ("Bar", 2),
        ("QuoteBar", 3),
    ]
    assert resume.seq == 7
    windows = await store.windows_range(p, "X", "1s", t0, t0 + timedelta(minutes=1))
    assert windows == resume.bars


async def test_a_provider_bar_is_refused(store: PgStoreClient) -> None:
    bar = StreamEvent.create(
        provider="pb", symbol="X", kind="bar", interval="1s", src_ts=DAY, o=1.0, h=1.0, l=1.0,
        c=1.0, seq=0,
    )  # fmt: skip
    with pytest.raises(StoreError, match="bar event"):
        await store.ingest_events([bar], interval="1s", quote_carry_ms=0)
    quote = StreamEvent.create(
        provider="pb", symbol="X", kind="quote", src_ts=DAY, bid=1.0, ask=1.1, seq=0
    )
    with pytest.raises(StoreError, match="quote event"):
        await store.ingest_ticks([quote], interval="1s")


async def test_trade_only_batches_with_and_without_a_book_in_reach(
    store: PgStoreClient, store_url: str, unique: str
) -> None:
    """A batch of trades alone: with a stored quote within the carry of its windows, its
    windows get the carried book (and a window that already has a quote bar keeps it on its
    change record); with no quote within reach (the statement that skips the quote-bar
    lookups), its windows get a trade bar alone and a change record with no quote part."""
    p = f"tq{unique}"
    t0 = datetime(2021, 3, 2, 12, tzinfo=UTC)

    def quote(s: float, bid: float, seq: int) -> StreamEvent:
        return StreamEvent.create(
            provider=p, symbol="X", kind="quote", src_ts=t0 + timedelta(seconds=s), seq=seq,
            bid=bid, ask=bid + 0.02, bid_size=3.0, ask_size=1.0,
        )  # fmt: skip

    def tick(s: float, seq: int) -> StreamEvent:
        return StreamEvent.create(
            provider=p, symbol="X", kind="tick", src_ts=t0 + timedelta(seconds=s), c=10.0,
            v=1.0, seq=seq,
        )  # fmt: skip

    async def put(events: list[StreamEvent]) -> TickIngestResult:
        return await store.ingest_events(events, interval="1s", quote_carry_ms=2000)

    first = await put([quote(0.5, 10.0, 1)])
    assert [(b.ts - t0).seconds for b in first.quote_bars] == [0]
    # trades in window 0 (its quote bar stays) and window 1 (the 0.5 s book carried in)
    near = await put([tick(0.7, 1), tick(1.5, 2)])
    assert [(b.ts - t0).seconds for b in near.bars] == [0, 1]
    assert [((b.ts - t0).seconds, b.quote_count, b.bid) for b in near.quote_bars] == [(1, 0, 10.0)]
    # a trade alone in window 2: the 0.5 s quote is before the batch's span, 1.5 s before the
    # window, within the carry
    edge = await put([tick(2.3, 5)])
    assert [((b.ts - t0).seconds, b.quote_count, b.bid) for b in edge.quote_bars] == [(2, 0, 10.0)]
    # trades 10 s later: the last quote is 9.5 s old, beyond the 2 s carry
    far = await put([tick(10.5, 3), tick(11.2, 4)])
    assert [(b.ts - t0).seconds for b in far.bars] == [10, 11]
    assert far.quote_bars == [] and far.quotes_inserted == 0
    assert far.quote_bars_result.inserted == far.quote_bars_result.updated == 0
    published: list[WindowBar] = []

    async def publish(windows: Sequence[WindowBar]) -> None:
        published.extend(w for w in windows if w.provider == p)

    while (await store.relay_bar_changes(publish, limit=1000)).relayed:
        pass
    seen = [
        (
            type(w).__name__,
            (w.ts - t0).seconds,
            None if isinstance(w, QuoteBar) or w.quote is None else w.quote.quote_count,
        )
        for w in published
    ]
    assert seen == [
        ("QuoteBar", 0, None),
        ("Bar", 0, 1),  # the trade bar's change carries the window's unchanged quote bar
        ("Bar", 1, 0),  # carried book
        ("Bar", 2, 0),
        ("Bar", 10, None),
        ("Bar", 11, None),
    ]
    # the same rows as one batch of everything recomputed from scratch
    again = await put([quote(0.5, 10.0, 1), tick(0.7, 1), tick(1.5, 2), tick(10.5, 3)])
    assert (again.bars, again.quote_bars) == ([], [])
    windows = await store.windows_range(p, "X", "1s", t0, t0 + timedelta(minutes=1))
    assert [(w.ts - t0).seconds for w in windows] == [0, 1, 2, 10, 11]


async def test_a_batch_spanning_months_creates_only_the_days_it_writes(
    store: PgStoreClient, store_url: str, unique: str
) -> None:
    """A batch of old quotes of one series and live trades of another (a replay beside a live
    source, as `mdp demo` runs): quote_bars gets the partitions of the days its bars can be
    on (the events' days, and the days a quote's carry reaches), not one per day between the
    batch's oldest and newest event (which once made thousands of empty partitions, and a
    later `mdp db downgrade` ran out of lock memory dropping them)."""
    old = datetime(2019, 6, 3, 23, 59, 30, tzinfo=UTC)
    live = datetime(2019, 9, 1, 12, tzinfo=UTC)
    quote = StreamEvent.create(
        provider=f"sp{unique}", symbol="Q", kind="quote", src_ts=old, bid=1.0, ask=1.1, seq=0
    )
    trade = StreamEvent.create(
        provider=f"sp{unique}", symbol="T", kind="tick", src_ts=live, c=1.0, v=1.0, seq=0
    )
    result = await store.ingest_events([quote, trade], interval="1s", quote_carry_ms=CARRY_MS)
    assert (result.quotes_inserted, result.ticks_inserted) == (1, 1)
    conn = await asyncpg.connect(store_url)
    try:
        days = {
            r["relname"].rsplit("_p", 1)[1]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'quote_bars'::regclass AND c.relname LIKE 'quote_bars_p2019%'"
            )
        }
    finally:
        await conn.close()
    # the quote's day, the next day (its 60 s carry crosses midnight) and the trade's day
    assert days == {"20190603", "20190604", "20190901"}


async def test_a_books_duration_is_its_exact_whole_microseconds(store_url: str) -> None:
    """The quote bar's time weights (``d``, ``book_us``) are whole microseconds, computed in
    float8 without numeric arithmetic: exact from 1 µs to 30 years (a plain ``date_part``
    times 10^6 is off by a fraction for many of these; past 30 years the float error grows)."""
    rnd = random.Random(7)
    thirty_years = 30 * 365 * 86_400_000_000
    spans = [1, 266, 999_999, 86_400_000_000, 86_400_000_001, 10 * 366 * 86_400_000_000 + 7]
    spans += [
        rnd.randrange(1, min(10**k, thirty_years)) for k in range(2, 17) for _ in range(2_000)
    ]
    conn = await asyncpg.connect(store_url)
    try:
        got = await conn.fetch(
            f"""SELECT us, {whole_us("(t0 + us * interval '1 microsecond') - t0")} AS d
            FROM unnest($1::bigint[]) AS us,
                 (SELECT TIMESTAMPTZ '2021-03-04 05:06:07.891011+00' AS t0) c""",
            spans,
        )
    finally:
        await conn.close()
    assert [(r["us"], r["d"]) for r in got] == [(us, float(us)) for us in spans]


async def test_a_cached_plan_sees_the_partitions_created_and_dropped_after_it(
    store_url: str, unique: str
) -> None:
    """The bar recompute runs on its prepared statement's generic plan, cached on the
    connection: windows on a day whose partitions did not exist when it was planned, and on
    a day whose partition a retention job dropped and the store created again, are computed
    from the rows there are, not from the partitions the plan was made with."""
    store = await PgStoreClient.connect(store_url, pool_min=1, pool_max=1)
    p = f"gp{unique}"

    def events(t0: datetime, n: int, seq0: int) -> list[StreamEvent]:
        out = []
        for i in range(n):
            ts = t0 + timedelta(milliseconds=100 * i)
            out.append(
                StreamEvent.create(
                    provider=p,
                    symbol="X",
                    kind="tick",
                    src_ts=ts,
                    c=10.0 + i,
                    v=1.0,
                    seq=seq0 + 2 * i,
                )
            )
            out.append(
                StreamEvent.create(
                    provider=p,
                    symbol="X",
                    kind="quote",
                    src_ts=ts,
                    bid=9.0 + i,
                    ask=11.0 + i,
                    bid_size=1.0,
                    ask_size=3.0,
                    seq=seq0 + 2 * i + 1,
                )
            )
        return out

    async def window(t0: datetime) -> Bar:
        (bar,) = await store.windows_range(p, "X", "1s", t0, t0 + timedelta(seconds=1))
        assert isinstance(bar, Bar) and bar.quote is not None
        return bar

    try:
        for day in (datetime(2016, 3, 1, tzinfo=UTC), datetime(2016, 5, 9, tzinfo=UTC)):
            await store.ingest_events(events(day, 3, 0), interval="1s", quote_carry_ms=CARRY_MS)
            bar = await window(day)
            assert (bar.trade_count, bar.c, bar.quote.quote_count, bar.quote.bid) == (
                3,
                12.0,
                3,
                11.0,
            )
        conn = await asyncpg.connect(store_url)
        try:
            await conn.execute('DROP TABLE "ticks_p20160509"')
            await conn.execute('DROP TABLE "quotes_p20160509"')
        finally:
            await conn.close()
        later = datetime(2016, 5, 9, 0, 0, 0, 500_000, tzinfo=UTC)
        await store.ingest_events(events(later, 2, 100), interval="1s", quote_carry_ms=CARRY_MS)
        bar = await window(datetime(2016, 5, 9, tzinfo=UTC))
        assert (bar.trade_count, bar.o, bar.c, bar.quote.quote_count, bar.quote.bid) == (
            2,
            10.0,
            11.0,
            2,
            10.0,
        )
    finally:
        await store.aclose()
