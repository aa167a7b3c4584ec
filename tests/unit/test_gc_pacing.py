"""paced_gc: no automatic collection inside, cycles still collected on the timer, the
collector restored on exit."""

from __future__ import annotations

import asyncio
import gc
import weakref

from market_data_pipeline.gc_pacing import paced_gc


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


async def test_cycles_are_collected_by_the_timer_and_the_collector_is_restored() -> None:
    assert gc.isenabled()
    async with paced_gc(young_every_s=0.05, full_every_s=0.2):
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0  # what existed at start is out of the collector's way
        node = _Node()
        ref = weakref.ref(node)
        del node
        assert ref() is not None  # the automatic collector is off: the cycle is still there
        for _ in range(100):
            await asyncio.sleep(0.02)
            if ref() is None:
                break
        assert ref() is None, "the timed collection never freed the cycle"
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


async def test_leaves_a_disabled_collector_alone() -> None:
    gc.disable()
    try:
        async with paced_gc(young_every_s=0.05):
            assert gc.get_freeze_count() == 0
        assert not gc.isenabled()
    finally:
        gc.enable()
