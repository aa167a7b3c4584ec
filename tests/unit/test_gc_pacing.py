"""paced_gc: no automatic collection inside, cycles still collected on the timer, the
collector restored on exit."""

from __future__ import annotations

import asyncio
import gc
import platform
import sys
import weakref

import pytest

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


# A worker's pattern: 2 MiB NumPy buffers (a poll's columns, a COPY stream) freed between
# small objects that stay. Run in a fresh interpreter so the allocator starts clean.
_BUFFERS = """
import asyncio, sys
import numpy as np, psutil
from market_data_pipeline.gc_pacing import paced_gc

def rss_mib():
    return psutil.Process().memory_info().rss / 2**20

def churn():
    np.ones(4 * 2**20 // 8)  # freed at once: glibc raises its mmap threshold past it
    keep = []
    for i in range(300):
        big = np.ones(2 * 2**20 // 8)
        keep.append(np.ones(64))  # small survivors between the buffers
        if i % 2:
            del big  # freed before the next one is allocated
        else:
            keep.append(big)
    return [k for k in keep if k.size == 64]

async def main():
    base = rss_mib()
    if sys.argv[1] == "paced":
        async with paced_gc(young_every_s=0.05):
            survivors = churn()
            await asyncio.sleep(0.3)  # a timed collection (and trim) runs
    else:
        survivors = churn()
    print(round(rss_mib() - base), len(survivors))

asyncio.run(main())
"""


def _grown_mib(mode: str) -> int:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _BUFFERS, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[1] == "300"
    return int(out[0])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's allocator",
)
def test_freed_buffers_go_back_to_the_system_under_paced_gc() -> None:
    # 300 MiB of 2 MiB buffers allocated, half kept until the survivors are sorted out
    assert _grown_mib("plain") > 250  # glibc alone keeps the freed pages (the worker's RSS)
    assert _grown_mib("paced") < 40
