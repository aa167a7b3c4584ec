"""The quote bars the store client folds from a batch (``market_data_store._quote_fold``) are
the bits the recompute statement computes (issue 21): random books (shared instants, unknown
and zero sizes, quiet stretches past the carry, trades between), cut into batches at random,
with late quotes and re-sent ones, ingested by a client that folds and by one that does not;
every quote bar and every change record equal, float for float."""

from __future__ import annotations

import random
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from market_data_core.columnar import EventColumns, columns_from_events
from market_data_core.contracts import StreamEvent
from market_data_core.errors import StoreError
from market_data_store import PgStoreClient
from market_data_store import _quote_fold as quote_fold
from tests.support.quotes import spy_on_folds

T0 = datetime(2021, 3, 1, 14, 0, tzinfo=UTC)
WINDOW = "1s"
CARRY_MS = 1500
SYMBOLS = ("AAA", "BBB", "CCC")


@pytest.fixture
async def stores(store_url: str) -> AsyncIterator[tuple[PgStoreClient, PgStoreClient]]:
    folding = await PgStoreClient.connect(store_url)
    reference = await PgStoreClient.connect(store_url)
    reference.fold_quotes = False
    yield folding, reference
    await folding.aclose()
    await reference.aclose()


def _size(rng: random.Random) -> float | None:
    roll = rng.random()
    if roll < 0.1:
        return None
    if roll < 0.2:
        return 0.0
    return rng.uniform(0, 1000)


def book_events(rng: random.Random, provider: str, n: int) -> list[StreamEvent]:
    """``n`` quotes (and a few trades) per symbol in time order."""
    out: list[StreamEvent] = []
    for symbol in SYMBOLS:
        t = T0 + timedelta(microseconds=rng.randrange(1_000_000))
        mid = rng.uniform(10, 500)
        for k in range(n):
            roll = rng.random()
            if roll < 0.15:
                gap = 0  # the same instant, the next seq
            elif roll < 0.6:
                gap = rng.randrange(1, 5000)
            elif roll < 0.97:
                gap = rng.randrange(1, 400_000)
            else:
                gap = rng.randrange(1_600_000, 4_000_000)  # quiet past the carry
            t += timedelta(microseconds=gap)
            mid *= 1 + rng.gauss(0, 1e-4)
            half = rng.choice((0.0, rng.uniform(0, mid * 1e-3)))
            out.append(
                StreamEvent.create(
                    provider=provider,
                    symbol=symbol,
                    kind="quote",
                    src_ts=t,
                    bid=mid - half,
                    ask=mid + half,
                    bid_size=_size(rng),
                    ask_size=_size(rng),
                    seq=k,
                )
            )
            if rng.random() < 0.05:
                out.append(
                    StreamEvent.create(
                        provider=provider,
                        symbol=symbol,
                        kind="tick",
                        src_ts=t + timedelta(microseconds=rng.randrange(1, 3_000_000)),
                        c=mid,
                        v=1.0,
                        seq=k,
                    )
                )
    out.sort(key=lambda e: (e.src_ts, e.symbol, e.seq))
    return out


def batches(rng: random.Random, events: list[StreamEvent]) -> list[list[StreamEvent]]:
    """Consecutive runs of random length; now and then a run takes a quote from long before
    (late) or sends one of an earlier run again (a redelivery)."""
    out: list[list[StreamEvent]] = []
    i = 0
    while i < len(events):
        size = rng.choice((1, rng.randrange(2, 40), rng.randrange(40, 200)))
        run = list(events[i : i + size])
        i += size
        if out and rng.random() < 0.15:
            earlier = rng.choice(out)
            run.append(rng.choice(earlier))  # sent again: the batch is not all new
        out.append(run)
    for _ in range(len(out) // 10):  # late: a run's event moved to a later run
        a = rng.randrange(len(out))
        b = rng.randrange(a, len(out))
        if len(out[a]) > 1 and a != b:
            out[b].append(out[a].pop(rng.randrange(len(out[a]))))
    return out


def _bits(value: Any) -> Any:
    return struct.pack("<d", value) if isinstance(value, float) else value


async def stored(store_url: str, provider: str) -> tuple[list[Any], list[Any]]:
    conn = await asyncpg.connect(store_url)
    try:
        bars = await conn.fetch(
            "SELECT * FROM quote_bars WHERE provider = $1 ORDER BY symbol, interval, ts",
            provider,
        )
        changes = await conn.fetch(
            "SELECT * FROM bar_changes WHERE provider = $1 ORDER BY symbol, interval, seq",
            provider,
        )
    finally:
        await conn.close()
    skip = {"id", "provider", "committed_at", "relayed_at", "updated_at"}  # the run's own
    return (
        [tuple(_bits(v) for k, v in r.items() if k not in skip) for r in bars],
        [tuple(_bits(v) for k, v in r.items() if k not in skip) for r in changes],
    )


# how the fold adds its sums: its own choice, every window one by one, all in lockstep
WAYS = {"chosen": {}, "one by one": {"_PER_WINDOW_COST": 0.0}, "lockstep": {"_PER_STEP_COST": 0.0}}


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("seed", range(4))
async def test_folded_quote_bars_are_the_statements_bits(
    stores: tuple[PgStoreClient, PgStoreClient],
    store_url: str,
    unique: str,
    seed: int,
    way: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folding, reference = stores
    for name, cost in WAYS[way].items():
        monkeypatch.setattr(quote_fold, name, cost)
    folds = spy_on_folds(monkeypatch)
    for store, provider in ((folding, f"fa{unique}"), (reference, f"fb{unique}")):
        rng = random.Random(seed)  # the same events and runs for both
        runs = batches(rng, book_events(rng, provider, 600))
        for run in runs:
            if len(run) > 4 and rng.random() < 0.3:
                # parts stored early (an open window's events), the bars at the close, with
                # the early quotes of the calls that inserted all theirs (as the worker keeps
                # them); now and then one of those left out (its window is then recomputed)
                cut = len(run) // 2
                calls = (
                    [run[:cut]] if rng.random() < 0.5 else [run[: cut // 2], run[cut // 2 : cut]]
                )
                early, early_quotes = [], []
                for part in calls:
                    cols = columns_from_events(part)
                    result = await store.store_raw(cols)
                    early.append(cols)
                    quotes = [e for e in part if e.kind == "quote"]
                    if result.quotes_inserted == len(quotes):
                        early_quotes += quotes
                if early_quotes and rng.random() < 0.1:
                    early_quotes.pop(rng.randrange(len(early_quotes)))
                rest = columns_from_events(run[cut:])
                await store.ingest_columns(
                    rest,
                    interval=WINDOW,
                    quote_carry_ms=CARRY_MS,
                    stored=EventColumns.concat(early),
                    early_quotes=columns_from_events(early_quotes) if early_quotes else None,
                )
            else:
                await store.ingest_events(run, interval=WINDOW, quote_carry_ms=CARRY_MS)
    got = await stored(store_url, f"fa{unique}")
    want = await stored(store_url, f"fb{unique}")
    assert len(want[0]) > 100
    assert got[0] == want[0]
    assert got[1] == want[1]
    # both paths ran: windows folded, and batches the statement recomputed alone
    assert sum(folds.folded) > 100
    assert sum(folds.early) > 5
    assert len(folds.folded) < len(runs)


# books the contract accepts (finite floats) where a float8 operation of the quote bar
# overflows: PostgreSQL raises; the folding client must not store a bar instead
OVERFLOWS = {
    "bid + ask": {"bid": 1e308, "ask": 1e308},
    "bid_size + ask_size": {"bid_size": 1e308, "ask_size": 1e308},
}


@pytest.mark.parametrize("case", list(OVERFLOWS))
async def test_a_book_postgres_cannot_aggregate_raises_alike(
    stores: tuple[PgStoreClient, PgStoreClient], unique: str, case: str
) -> None:
    outcomes = []
    for store, provider in zip(stores, (f"oa{unique}", f"ob{unique}"), strict=True):
        fields = {"bid": 100.0, "ask": 100.5, "bid_size": 10.0, "ask_size": 5.0}
        events = [
            StreamEvent.create(
                provider=provider,
                symbol="AAA",
                kind="quote",
                src_ts=T0 + timedelta(milliseconds=100 * k),
                seq=k,
                **{**fields, **(OVERFLOWS[case] if k == 1 else {})},
            )
            for k in range(3)  # the odd book in the middle: not the window's closing book
        ]
        try:
            await store.ingest_events(events, interval=WINDOW, quote_carry_ms=CARRY_MS)
            outcomes.append("stored")
        except StoreError as exc:
            outcomes.append(str(exc).rsplit(":", 1)[-1].strip())
    assert outcomes[0] == outcomes[1]
    assert outcomes[1] != "stored"


@pytest.mark.parametrize("given", ["exact", "one twice", "one missing", "one foreign stored"])
async def test_early_quotes_that_are_not_the_windows_stored_quotes_are_not_folded(
    stores: tuple[PgStoreClient, PgStoreClient],
    store_url: str,
    unique: str,
    given: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A window is folded from the early quotes given only when the store holds exactly
    those: a quote given twice, left out, or one someone else stored in the window between
    the early store and the close sends it to the statement (the same bits either way)."""
    folds = spy_on_folds(monkeypatch)
    for store, provider in zip(stores, (f"ea{unique}", f"eb{unique}"), strict=True):

        def quote(k: int, provider: str = provider) -> StreamEvent:
            return StreamEvent.create(
                provider=provider,
                symbol="AAA",
                kind="quote",
                src_ts=T0 + timedelta(milliseconds=90 * k),
                seq=k,
                bid=100.0 + k / 7,
                ask=100.5 + k / 3,
                bid_size=10.0 + k,
                ask_size=5.0,
            )

        early = [quote(1), quote(5)]
        await store.store_raw(columns_from_events(early))
        if given in ("one foreign stored", "one twice"):
            # another writer (with "one twice": as many stored quotes as kept ones given)
            await store.store_raw(columns_from_events([quote(2)]))
        kept = {
            "exact": early,
            "one twice": [quote(1), quote(1), quote(5)],
            "one missing": [quote(5)],
            "one foreign stored": early,
        }[given]
        await store.ingest_columns(
            columns_from_events([quote(6)]),
            interval=WINDOW,
            quote_carry_ms=CARRY_MS,
            stored=columns_from_events(early),
            early_quotes=columns_from_events(kept),
        )
    got = await stored(store_url, f"ea{unique}")
    want = await stored(store_url, f"eb{unique}")
    assert got == want and len(want[0]) == 1
    assert sum(folds.early) == (1 if given == "exact" else 0)
