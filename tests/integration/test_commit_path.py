"""The micro-batcher's commit path (:class:`WindowCommitter`) against a real PostgreSQL outage.

A flush job carries events of open windows to store early; their entries are acked only when
the window closes, so an early store that does not go through must leave its events in the
window for the close to store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

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
