"""The micro-batcher's commit path (:class:`WindowCommitter`) against a real PostgreSQL outage.

A flush job carries events of open windows to store early; their entries are acked only when
the window closes, so an early store that does not go through must leave its events in the
window for the close to store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from market_data_core.columnar import columns_from_events
from market_data_pipeline.consumers.batch_state import FlushJob, MicroBatchStats, OpenWindow
from market_data_pipeline.consumers.commit import WindowCommitter
from market_data_pipeline.servers import EmbeddedPostgres
from market_data_pipeline.wiring import open_store, upgrade_schema
from tests.support.pipeline import make_config, urls
from tests.support.trades import trade_events


@pytest.fixture
def outage_pg() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres()
    server.start()
    upgrade_schema(server.url)
    yield server
    server.cleanup()


async def test_early_stores_given_up_on_a_stop_go_back_to_their_window(
    redis_url: str, unique: str, outage_pg: EmbeddedPostgres
) -> None:
    cfg = make_config(redis_url, outage_pg.url, unique, 2000, max_batch_size=16)
    events = trade_events(f"cp{unique}")[:40]
    later = columns_from_events(events[30:])  # arrived after the early store was taken
    early = columns_from_events(events[:30])
    window = OpenWindow(end_us=0, series=(events[0].provider, events[0].symbol))
    window.parts = [later]
    window.pending = later.n
    store = await open_store(cfg, urls(cfg))
    stats = MicroBatchStats()
    committed: list[bool] = []
    committer = WindowCommitter(
        cfg,
        store,
        stats,
        window_ms=2000,
        on_commit=lambda: committed.append(True),
        wall_clock_us=lambda: 0,
    )
    try:
        await asyncio.to_thread(outage_pg.stop)
        stop = asyncio.Event()
        stop.set()  # a SIGTERM while the store is down: the first failure ends the commit
        done = await committer.write(stop, FlushJob(units={}, bars=[], early=[(window, early)]))
    finally:
        await store.aclose()
    assert done is False and committed == []
    assert stats.stored_early == 0 and stats.store_retries == 1
    # the early events are back, ahead of what arrived after them (arrival order)
    assert [p.n for p in window.parts] == [30, 10] and window.pending == 40
    assert window.parts[0] is early and window.stored == []


class _CountingStore:
    """The real store, counting its ``store_raw`` calls."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.store_raw_calls = 0

    async def store_raw(self, events: Any) -> Any:
        self.store_raw_calls += 1
        return await self._store.store_raw(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_jobs_early_windows_are_stored_in_one_call_and_duplicates_counted_once(
    redis_url: str, unique: str, outage_pg: EmbeddedPostgres
) -> None:
    cfg = make_config(redis_url, outage_pg.url, unique, 2000, max_batch_size=16)
    provider = f"cp{unique}"
    a = trade_events(provider, symbol="AAA")[:30]
    b = trade_events(provider, symbol="BBB")[:30]
    wa = OpenWindow(end_us=0, series=(provider, "AAA"), received=21)
    wb = OpenWindow(end_us=0, series=(provider, "BBB"), received=20)
    early_a = columns_from_events([*a[:20], a[0]])  # one duplicate inside the early store
    early_b = columns_from_events(b[:20])
    real = await open_store(cfg, urls(cfg))
    store = _CountingStore(real)
    stats = MicroBatchStats()
    committer = WindowCommitter(
        cfg, store, stats, window_ms=2000, on_commit=lambda: None, wall_clock_us=lambda: 0
    )
    try:
        stop = asyncio.Event()
        job = FlushJob(units={}, bars=[], early=[(wa, early_a), (wb, early_b)])
        assert await committer.write(stop, job) is True
        assert store.store_raw_calls == 1
        assert (stats.stored_early, stats.ticks_inserted, stats.duplicates) == (41, 40, 1)
        assert (wa.stored_n, wb.stored_n) == (21, 20)
        assert len(wa.stored) == len(wb.stored) == 1  # each window's marks of its own rows
        assert {wa.stored[0].series[int(i)] for i in wa.stored[0].series_idx} == {wa.series}
        # the close: 10 events stored early again (duplicates) and 10 new ones
        rest = columns_from_events(a[10:30])
        wa.parts, wa.pending, wa.received = [rest], rest.n, wa.received + rest.n
        start = int(a[0].src_ts.timestamp() * 1_000_000) // 2_000_000 * 2_000_000
        job = FlushJob(units={(provider, "AAA", start): wa}, bars=[])
        assert await committer.write(stop, job) is True
    finally:
        await real.aclose()
    assert store.store_raw_calls == 1
    assert (stats.ticks_inserted, stats.duplicates) == (50, 11)
    # every event received is either new or a duplicate
    assert wa.received + wb.received == stats.ticks_inserted + stats.duplicates
