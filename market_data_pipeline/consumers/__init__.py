"""Consumer stages: the micro-batcher (events -> bars), the inference consumer (bars -> signals)."""

import asyncio
import contextlib

__all__ = ["sleep_or_stop"]


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile (backoff that shutdown can cut)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
