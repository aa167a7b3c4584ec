"""Idempotent bar upserts, read helpers, signals and job runs against a real PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from market_data_core.contracts import Bar, Signal
from market_data_core.errors import StoreError
from market_data_store import PgJobRunTracker, PgSignalsStore, PgStoreClient

T0 = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[PgStoreClient]:
    client = await PgStoreClient.connect(store_url)
    yield client
    await client.aclose()


def make_bars(n: int, provider: str, symbols: int = 10, interval: str = "1m") -> list[Bar]:
    out = []
    for i in range(n):
        px = 100.0 + (i % 977) * 0.01
        out.append(
            Bar(
                provider=provider,
                symbol=f"S{i % symbols}",
                interval=interval,
                # Spread over several days so several partitions are involved.
                ts=T0 + timedelta(minutes=i // symbols),
                o=px,
                h=px + 0.5,
                l=px - 0.5,
                c=px + 0.25,
                v=1000.0 + i,
                vwap=px + 0.1,
                trade_count=i % 50,
            )
        )
    return out


async def test_upsert_100k_replay_and_one_change(store: PgStoreClient) -> None:
    bars = make_bars(100_000, "bulk")
    first = await store.upsert_bars(bars)
    assert (first.inserted, first.updated, first.unchanged) == (100_000, 0, 0)
    count = await store.count_rows("bars_ohlcv")

    replay = await store.upsert_bars(bars)
    assert (replay.inserted, replay.updated, replay.unchanged) == (0, 0, 100_000)
    assert replay.changed == 0
    assert await store.count_rows("bars_ohlcv") == count

    changed = list(bars)
    changed[4242] = dataclasses.replace(bars[4242], c=bars[4242].c + 0.01)
    one = await store.upsert_bars(changed)
    assert (one.inserted, one.updated, one.unchanged) == (0, 1, 99_999)
    assert await store.count_rows("bars_ohlcv") == count

    b = changed[4242]
    got = await store.bars_range(b.provider, b.symbol, b.interval, b.ts, b.ts + timedelta(1))
    assert got[0] == dataclasses.replace(b, revision=1)


async def test_duplicate_keys_in_a_batch_last_wins(store: PgStoreClient) -> None:
    a = make_bars(1, "dups")[0]
    b = dataclasses.replace(a, c=a.c + 1)
    res = await store.upsert_bars([a, b])
    assert (res.inserted, res.updated, res.unchanged) == (1, 0, 0)
    got = await store.bars_range(a.provider, a.symbol, a.interval, a.ts, a.ts + timedelta(1))
    assert got == [b]


async def test_bars_range_and_latest_bars(store: PgStoreClient) -> None:
    bars = make_bars(60, "reads", symbols=3, interval="5s")
    await store.upsert_bars(bars)
    s1 = [b for b in bars if b.symbol == "S1"]
    got = await store.bars_range("reads", "S1", "5s", s1[3].ts, s1[7].ts)
    assert got == s1[3:7]
    latest = await store.latest_bars("5s", 4)
    assert set(latest) >= {("reads", "S0"), ("reads", "S1"), ("reads", "S2")}
    assert latest[("reads", "S1")] == s1[-4:]
    assert all(k[0] == "reads" for k in latest)  # only series that have 5s bars
    assert await store.latest_bars("5s", 0) == {}


async def test_bad_interval_is_a_store_error(store: PgStoreClient) -> None:
    with pytest.raises(StoreError, match="interval"):
        await store.ingest_ticks([], interval="2 fortnights")


async def test_signals_roundtrip_idempotent(store_url: str) -> None:
    signals = await PgSignalsStore.connect(store_url)
    try:
        sigs = [
            Signal(
                provider="p",
                symbol=f"S{i % 2}",
                ts=T0 + timedelta(seconds=i),
                name="breakout",
                value=1.0 + i,
                score=0.5,
                meta={"rule": "r1", "i": i},
            )
            for i in range(10)
        ]
        res = await signals.upsert_signals(sigs)
        assert (res.inserted, res.updated, res.unchanged) == (10, 0, 0)
        res = await signals.upsert_signals(sigs)
        assert (res.inserted, res.updated, res.unchanged) == (0, 0, 10)
        changed = [sigs[0].model_copy(update={"score": 0.9}), *sigs[1:]]
        res = await signals.upsert_signals(changed)
        assert (res.inserted, res.updated, res.unchanged) == (0, 1, 9)
        got = await signals.signals_range(T0, T0 + timedelta(seconds=10))
        assert got == changed
        assert await signals.signals_range(T0, T0 + timedelta(seconds=10), symbol="S1") == [
            s for s in changed if s.symbol == "S1"
        ]
    finally:
        await signals.aclose()


async def test_job_runs_start_and_finish(store_url: str) -> None:
    tracker = await PgJobRunTracker.connect(store_url, pool_max=1)
    try:
        run_id = await tracker.start("micro-batch", "abc123")
        (row,) = await tracker.recent(1, job="micro-batch")
        assert (row.id, row.status, row.finished_at) == (run_id, "running", None)
        await tracker.finish(
            run_id, status="success", events_in=10, rows_written=3, errors=1, detail="ok"
        )
        (row,) = await tracker.recent(1, job="micro-batch")
        assert (row.status, row.events_in, row.rows_written, row.errors, row.detail) == (
            "success",
            10,
            3,
            1,
            "ok",
        )
        assert row.finished_at is not None and row.config_hash == "abc123"
        with pytest.raises(StoreError, match="no run"):
            await tracker.finish(-1, status="failed", events_in=0, rows_written=0, errors=0)
    finally:
        await tracker.aclose()


async def test_bars_without_volume_store_null_and_replay_unchanged(store: PgStoreClient) -> None:
    """Provider bars without volume (FX bid bars): v and vwap stored null, every upsert path
    (COPY of new bars, the all-unchanged read, the staged upsert of a change) keeps them."""
    bars = [dataclasses.replace(b, v=None, vwap=None) for b in make_bars(50, "novol", symbols=2)]
    first = await store.upsert_bars(bars)
    assert (first.inserted, first.updated) == (50, 0)
    got = await store.bars_range("novol", "S0", "1m", T0, T0 + timedelta(days=1))
    assert len(got) == 25 and all(b.v is None and b.vwap is None for b in got)
    replay = await store.upsert_bars(bars)
    assert (replay.inserted, replay.updated, replay.unchanged) == (0, 0, 50)
    # a vendor correction that adds the volume later is a change (revision 1), and back
    corrected = [dataclasses.replace(bars[0], v=12.5), *bars[1:]]
    res = await store.upsert_bars(corrected)
    assert (res.updated, res.unchanged) == (1, 49)
    (bar,) = await store.bars_range("novol", "S0", "1m", T0, T0 + timedelta(minutes=1))
    assert (bar.v, bar.revision) == (12.5, 1)
    res = await store.upsert_bars(bars)
    assert res.updated == 1
    (bar,) = await store.bars_range("novol", "S0", "1m", T0, T0 + timedelta(minutes=1))
    assert (bar.v, bar.revision) == (None, 2)
