"""Garbage collection paced by time rather than by allocations, for the streaming stages.

CPython's cyclic collector runs after every 700 net container allocations, and its older
generations are rescanned whole from time to time. A micro-batch worker holds a window's worth
of events (at 30k events/s and 2 s windows, hundreds of thousands of live objects) while
allocating a few objects per event, so the collector kept rescanning the same live buffer:
measured with ``benchmarks/worker_bench.py``, a third of the worker's CPU (14.0 µs/event with
the default collector, 9.3 with none). Reference counting frees almost everything these
processes discard; the collector is only needed for reference cycles, which are rare here.

So, while :func:`paced_gc` is active: what exists at start (modules, pydantic schemas, config:
never garbage) is frozen out of the collector's sight, the automatic collector is off, and a
background task collects the young generations every ``young_every_s`` and everything every
``full_every_s``. Cyclic garbage waits at most that long; memory stays bounded by the live
data, as before.

Freed memory goes back to the system (glibc only; elsewhere nothing changes). The columnar
hot path allocates and frees NumPy buffers of hundreds of kB to a few MB per poll and commit.
glibc serves a block above ``M_MMAP_THRESHOLD`` with its own ``mmap`` and unmaps it on free, but
raises that threshold to the size of every such block freed (up to 32 MiB), after which the
same buffers come from the heap, whose freed pages stay in the process: a worker's RSS grew
with its buffers' high-water mark and never shrank. While :func:`paced_gc` is active the
threshold is fixed at ``_MMAP_THRESHOLD_BYTES`` (``mallopt``, which also ends the dynamic
adjustment) and ``malloc_trim(0)`` hands back free heap pages after each timed collection
(see ``mallopt(3)``, ``malloc_trim(3)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import AsyncIterator
from functools import cache

__all__ = ["paced_gc"]

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_MMAP_THRESHOLD_BYTES = 256 * 1024


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim, libc.mallopt  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def _fix_mmap_threshold() -> None:
    libc = _glibc()
    if libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")


def _trim() -> None:
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


async def _collect(young_every_s: float, full_every_s: float) -> None:
    loop = asyncio.get_running_loop()
    next_full = loop.time() + full_every_s
    while True:
        await asyncio.sleep(young_every_s)
        if loop.time() >= next_full:
            gc.collect()
            next_full = loop.time() + full_every_s
        else:
            gc.collect(1)
        _trim()


@contextlib.asynccontextmanager
async def paced_gc(young_every_s: float = 2.0, full_every_s: float = 60.0) -> AsyncIterator[None]:
    """Within the block: no automatic collection, a timed one instead (see the module doc).
    On exit the collector is restored as it was found and the frozen objects are released."""
    if not gc.isenabled():  # someone else manages collection (a test, an embedding app)
        yield
        return
    gc.collect()
    gc.freeze()
    gc.disable()
    _fix_mmap_threshold()
    task = asyncio.create_task(_collect(young_every_s, full_every_s), name="paced-gc")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gc.enable()
        gc.unfreeze()
