"""The transactional outbox and change log (migration 0006): every committed bar revision is
recorded with its series' change_seq in the same transaction, an unchanged bar records
nothing, the relay marks only what it published, pruning is tracked, and checkpoints are
valid exactly while no later change touches what they cover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from market_data_core.contracts import Bar, StreamEvent
from market_data_core.errors import BusError
from market_data_core.protocols import FeatureCheckpoint
from market_data_store import PgSignalsStore, PgStoreClient

T0 = datetime(2023, 3, 1, tzinfo=UTC)


def bar(provider: str, i: int, c: float = 10.0, symbol: str = "A") -> Bar:
    return Bar(provider, symbol, "1m", T0 + timedelta(minutes=i), c, c + 1, c - 1, c, 5.0)


@pytest.fixture
async def clients(store_url: str) -> AsyncIterator[tuple[PgStoreClient, PgSignalsStore]]:
    store = await PgStoreClient.connect(store_url)
    signals = await PgSignalsStore.connect(store_url)
    # every test relays its own changes; start from an outbox with nothing left by others
    await store.relay_bar_changes(_ignore, limit=1_000_000)
    yield store, signals
    await signals.aclose()
    await store.aclose()


async def _ignore(bars: Sequence[Bar]) -> None:
    return None


async def changes(url: str, provider: str) -> list[tuple[int, datetime, int, bool]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT seq, ts, revision, relayed_at IS NOT NULL AS relayed FROM bar_changes "
            "WHERE provider = $1 ORDER BY id",
            provider,
        )
    finally:
        await conn.close()
    return [(r["seq"], r["ts"], r["revision"], r["relayed"]) for r in rows]


async def test_upserts_record_each_revision_once(
    store_url: str, clients: tuple[PgStoreClient, PgSignalsStore]
) -> None:
    store, _ = clients
    await store.upsert_bars([bar("ch", i) for i in range(5)])  # all new: the INSERT path
    await store.upsert_bars([bar("ch", i) for i in range(5)])  # a replay: nothing
    await store.upsert_bars([bar("ch", 2, c=11.0), bar("ch", 5)])  # one change, one new
    log = await changes(store_url, "ch")
    assert [(s, r) for s, _, r, _ in log] == [
        (1, 0),
        (2, 0),
        (3, 0),
        (4, 0),
        (5, 0),
        (6, 1),
        (7, 0),
    ]
    assert [ts for _, ts, _, _ in log][5:] == [T0 + timedelta(minutes=2), T0 + timedelta(minutes=5)]


async def test_ingest_ticks_records_changed_bars_with_their_seq(
    store_url: str, clients: tuple[PgStoreClient, PgSignalsStore]
) -> None:
    store, _ = clients

    def tick(s: float, price: float, seq: int) -> StreamEvent:
        return StreamEvent.create(
            provider="tk", symbol="A", kind="tick", src_ts=T0 + timedelta(seconds=s), c=price,
            v=1.0, seq=seq,
        )  # fmt: skip

    first = await store.ingest_ticks([tick(0.1, 1.0, 1), tick(1.2, 2.0, 2)], interval="1s")
    assert [(b.ts.second, b.change_seq, b.revision) for b in first.bars] == [(0, 1, 0), (1, 2, 0)]
    again = await store.ingest_ticks([tick(0.1, 1.0, 1)], interval="1s")
    assert again.bars == [] and len(await changes(store_url, "tk")) == 2
    late = await store.ingest_ticks([tick(0.9, 3.0, 3)], interval="1s")
    assert [(b.c, b.change_seq, b.revision) for b in late.bars] == [(3.0, 3, 1)]


async def test_the_relay_marks_only_what_it_published_and_one_relay_at_a_time(
    store_url: str, clients: tuple[PgStoreClient, PgSignalsStore]
) -> None:
    store, _ = clients
    await store.upsert_bars([bar("rl", i) for i in range(3)])

    async def fail(bars: Sequence[Bar]) -> None:
        raise BusError("redis bus: publish failed", backend="redis", operation="publish")

    with pytest.raises(BusError):
        await store.relay_bar_changes(fail)
    assert [relayed for *_, relayed in await changes(store_url, "rl")] == [False] * 3

    published: list[Bar] = []
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(bars: Sequence[Bar]) -> None:
        entered.set()
        await release.wait()
        published.extend(bars)

    first = asyncio.create_task(store.relay_bar_changes(slow))
    await entered.wait()
    other = await PgStoreClient.connect(store_url)
    try:
        assert (await other.relay_bar_changes(slow)).busy  # another relay holds the outbox
    finally:
        await other.aclose()
    release.set()
    result = await first
    assert result.relayed == 3 and not result.busy and not result.more
    assert [(b.symbol, b.change_seq) for b in published] == [("A", 1), ("A", 2), ("A", 3)]
    assert [relayed for *_, relayed in await changes(store_url, "rl")] == [True] * 3
    assert (await store.relay_bar_changes(slow)).relayed == 0


async def test_prune_raises_pruned_seq_and_invalidates_older_checkpoints(
    store_url: str, clients: tuple[PgStoreClient, PgSignalsStore]
) -> None:
    store, signals = clients
    await store.upsert_bars([bar("pr", i) for i in range(4)])
    cp = FeatureCheckpoint("pr", "A", "1m", T0 + timedelta(minutes=1), 2, 2, 2, b"state")
    await signals.save_checkpoints("eng", [cp])
    resume = await signals.resume_series("eng", "pr", "A", "1m")
    assert resume.checkpoint == cp and resume.seq == 4
    assert [b.ts for b in resume.bars] == [T0 + timedelta(minutes=2), T0 + timedelta(minutes=3)]
    await store.relay_bar_changes(_ignore)
    assert await store.prune_bar_changes(0) >= 4
    assert await changes(store_url, "pr") == []
    # the checkpoint's as_of_seq (2) is older than what was pruned (4): changes after it
    # could be gone, so it cannot be trusted any more; the series starts at its first bar
    resume = await signals.resume_series("eng", "pr", "A", "1m")
    assert resume.checkpoint is None and len(resume.bars) == 4 and resume.seq == 4
    progress = await signals.series_progress("eng", "1m")
    assert progress[("pr", "A")] == (4, 2)


async def test_a_checkpoint_is_valid_until_a_change_touches_what_it_covers(
    store_url: str, clients: tuple[PgStoreClient, PgSignalsStore]
) -> None:
    store, signals = clients
    await store.upsert_bars([bar("cv", i) for i in range(10)])
    cps = [
        FeatureCheckpoint("cv", "A", "1m", T0 + timedelta(minutes=m), 10, 10, m + 1, b"s%d" % m)
        for m in (3, 6)
    ]
    await signals.save_checkpoints("eng", cps)
    await signals.save_checkpoints("other-engine", [cps[0]])
    assert (await signals.resume_series("eng", "cv", "A", "1m")).checkpoint == cps[1]
    await store.upsert_bars([bar("cv", 8, c=12.0), bar("cv", 10)])  # after both: still valid
    resume = await signals.resume_series("eng", "cv", "A", "1m")
    assert resume.checkpoint == cps[1] and resume.seq == 12
    assert [(b.ts.minute, b.c) for b in resume.bars][:3] == [(7, 10.0), (8, 12.0), (9, 10.0)]
    await store.upsert_bars([bar("cv", 5, c=13.0)])  # inside the newer one: the older one
    assert (await signals.resume_series("eng", "cv", "A", "1m")).checkpoint == cps[0]
    await store.upsert_bars([bar("cv", 0, c=14.0)])  # inside both: from the first bar
    resume = await signals.resume_series("eng", "cv", "A", "1m")
    assert resume.checkpoint is None and len(resume.bars) == 11
    # keep the newest `keep` per series and engine
    more = [
        FeatureCheckpoint("cv", "A", "1m", T0 + timedelta(minutes=m), 14, 14, m + 1, b"x")
        for m in range(1, 10)
    ]
    await signals.save_checkpoints("eng", more, keep=3)
    conn = await asyncpg.connect(store_url)
    try:
        kept = await conn.fetch(
            "SELECT engine_key, ts FROM feature_checkpoints WHERE provider = 'cv' ORDER BY 1, 2"
        )
    finally:
        await conn.close()
    assert [(r[0], r[1].minute) for r in kept] == [
        ("eng", 7),
        ("eng", 8),
        ("eng", 9),
        ("other-engine", 3),
    ]


async def test_signal_state_and_signals_since(
    clients: tuple[PgStoreClient, PgSignalsStore],
) -> None:
    from market_data_core.contracts import Signal

    _, signals = clients
    sigs = [
        Signal(provider="ss", symbol=s, ts=T0 + timedelta(seconds=i), name="n", value=1.0,
               score=0.5, meta={"interval": "1s", "x": 0.1 * i})
        for s in ("A", "B") for i in range(4)
    ]  # fmt: skip
    assert (await signals.upsert_signals(sigs)).inserted == 8
    retracted = sigs[2].model_copy(update={"state": "retracted"})
    res = await signals.upsert_signals([retracted, sigs[3]])
    assert (res.updated, res.unchanged) == (1, 1)
    since = await signals.signals_since(
        [("ss", "A", T0 + timedelta(seconds=2)), ("ss", "B", T0 + timedelta(seconds=3))],
        adapters=["rules"],
    )
    assert [(s.symbol, s.ts.second, s.state) for s in since] == [
        ("A", 2, "retracted"),
        ("A", 3, "active"),
        ("B", 3, "active"),
    ]
    assert since[0] == retracted and since[1] == sigs[3]
    assert await signals.signals_since([("ss", "A", T0)], adapters=["sklearn"]) == []
