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

from market_data_core.columnar import EventColumns, columns_from_events, window_marks
from market_data_pipeline.consumers.batch_state import FlushJob, MicroBatchStats, OpenWindow
from market_data_pipeline.consumers.commit import WindowCommitter, _early_groups
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
        done = await committer.write(stop, FlushJob(units={}, bars=[], early=[(window, [early])]))
    finally:
        await store.aclose()
    assert done is False and committed == []
    assert stats.stored_early == 0 and stats.store_retries == 1
    # the early events are back, ahead of what arrived after them (arrival order)
    assert [p.n for p in window.parts] == [30, 10] and window.pending == 40
    assert list(window.parts[0].src_ts) == list(early.src_ts) and window.stored == []


class _CountingStore:
    """The real store, recording the event count of each ``store_raw`` call."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.store_raw_calls: list[int] = []

    async def store_raw(self, events: Any) -> Any:
        self.store_raw_calls.append(events.n)
        return await self._store.store_raw(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def test_a_jobs_early_windows_take_one_store_call_per_slot_and_duplicates_count_once(
    redis_url: str, unique: str, outage_pg: EmbeddedPostgres
) -> None:
    # pool_max 4 (the default): 3 store slots, so 5 early windows -> 3 store_raw calls
    cfg = make_config(redis_url, outage_pg.url, unique, 2000, max_batch_size=16)
    assert cfg.store.pool_max == 4
    provider = f"cp{unique}"
    symbols = ["AAA", "BBB", "CCC", "DDD", "EEE"]
    events = {s: trade_events(provider, symbol=s)[:30] for s in symbols}
    windows = {s: OpenWindow(end_us=0, series=(provider, s), received=20) for s in symbols}
    early = {s: [columns_from_events(events[s][:20])] for s in symbols}
    # AAA's in two parts, one duplicate inside its early store
    a = events["AAA"]
    early["AAA"] = [columns_from_events(a[:10]), columns_from_events([*a[10:20], a[0]])]
    windows["AAA"].received = 21
    real = await open_store(cfg, urls(cfg))
    store = _CountingStore(real)
    stats = MicroBatchStats()
    committer = WindowCommitter(
        cfg, store, stats, window_ms=2000, on_commit=lambda: None, wall_clock_us=lambda: 0
    )
    try:
        stop = asyncio.Event()
        job = FlushJob(units={}, bars=[], early=[(windows[s], early[s]) for s in symbols])
        assert await committer.write(stop, job) is True
        assert sorted(store.store_raw_calls) == [21, 40, 40]  # largest first, to the lightest
        assert (stats.stored_early, stats.ticks_inserted, stats.duplicates) == (101, 100, 1)
        for s in symbols:
            w = windows[s]
            assert w.stored_n == w.received and len(w.stored) == 1
            # each window's marks (first and last stored) are of its own rows
            assert {w.stored[0].series[int(i)] for i in w.stored[0].series_idx} == {w.series}
            own = EventColumns.concat(early[s])
            assert list(w.stored[0].src_ts) == list(own.src_ts[window_marks(own, 2_000_000)])
        # AAA's close: 10 events stored early again (duplicates) and 10 new ones
        wa = windows["AAA"]
        rest = columns_from_events(events["AAA"][10:30])
        wa.parts, wa.pending, wa.received = [rest], rest.n, wa.received + rest.n
        start = int(events["AAA"][0].src_ts.timestamp() * 1_000_000) // 2_000_000 * 2_000_000
        job = FlushJob(units={(provider, "AAA", start): wa}, bars=[])
        assert await committer.write(stop, job) is True
    finally:
        await real.aclose()
    assert len(store.store_raw_calls) == 3
    assert (stats.ticks_inserted, stats.duplicates) == (110, 11)
    # every event received is either new or a duplicate
    assert sum(w.received for w in windows.values()) == stats.ticks_inserted + stats.duplicates


def test_early_groups_balance_event_counts_over_the_store_slots() -> None:
    events = trade_events("cpgroups")
    sizes = [50, 10, 40, 30, 20, 5]
    early = [
        (OpenWindow(end_us=0, series=("cpgroups", f"S{i}")), [columns_from_events(events[:n])])
        for i, n in enumerate(sizes)
    ]
    groups = _early_groups(early, 3)
    assert sorted(sum(p.n for _w, parts in g for p in parts) for g in groups) == [50, 50, 55]
    assert sorted(id(item) for g in groups for item in g) == sorted(id(item) for item in early)
    assert _early_groups(early, 1) == [early]
    assert _early_groups(early[:2], 3) == [[early[0]], [early[1]]]
    assert _early_groups([], 3) == []
