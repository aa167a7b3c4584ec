"""Running a provider into the bus: :func:`make_publisher` builds the :class:`Publisher` the
config describes, :func:`pump` moves a provider's events into it until the source ends, a count
or a duration is reached, or the stop event is set, then flushes.

Used by ``mdp stream produce``/``replay`` and by every producer of ``mdp run``/``demo``
(:mod:`market_data_pipeline.runner`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from market_data_core.config import AppConfig
from market_data_core.protocols import Bus, Provider
from market_data_pipeline.producers.publisher import Publisher, WireSource

__all__ = ["ProgressSink", "make_publisher", "pump"]

# How long a stopped WireSource may take to hand over its last block before it is cancelled.
_CLOSE_GRACE_S = 1.0


class ProgressSink(Protocol):
    """Receives the number of events accepted so far (called per event or block: cheap)."""

    def update(self, done: float | None = None, *, total: float | None = None) -> None: ...


def make_publisher(config: AppConfig, bus: Bus, max_msgs_per_s: float | None) -> Publisher:
    """The publisher of ``producers.*`` onto ``bus.events_topic``, paced at
    ``max_msgs_per_s`` entries per second (``None``: unpaced)."""
    p = config.producers
    return Publisher(
        bus,
        topic=config.bus.events_topic,
        codec=config.bus.codec,
        batch_size=p.publish_batch_size,
        buffer_max_events=p.buffer_max_events,
        pack_events=p.pack_events,
        pack_as=p.pack_as,
        max_msgs_per_s=max_msgs_per_s,
    )


async def pump(
    provider: Provider,
    publisher: Publisher,
    stop: asyncio.Event,
    *,
    duration_s: float | None = None,
    count: int | None = None,
    progress: ProgressSink | None = None,
) -> int:
    """Move events from ``provider`` into ``publisher`` until the source ends, ``count``
    events, ``duration_s`` or ``stop``; then flush. Returns how many events were accepted.

    A :class:`WireSource` (the synthetic provider) hands over blocks of events already in
    wire form (``publisher.put_block``: no ``StreamEvent`` and no ``put`` per event); any other
    provider goes event by event. Either way every event the source made is buffered before
    the publisher is flushed, so a stop loses nothing. ``progress`` is told the count of
    accepted events after each event or block.

    Raises what the provider or the publisher raise (``BusError`` after the publisher's
    retries are exhausted)."""
    accepted = 0

    async def run_blocks(source: WireSource) -> None:
        nonlocal accepted
        blocks = source.wire_blocks(publisher.codec)
        try:
            async for block in blocks:
                if count is not None and accepted + len(block) > count:
                    block = block.head(count - accepted)
                await publisher.put_block(block)
                accepted += len(block)
                if progress is not None:
                    progress.update(accepted)
                if count is not None and accepted >= count:
                    return
        finally:
            await blocks.aclose()

    async def run() -> None:
        nonlocal accepted
        if isinstance(provider, WireSource):
            await run_blocks(provider)
            return
        events = provider.events()
        try:
            async for ev in events:
                await publisher.put(ev)
                accepted += 1
                if progress is not None:
                    progress.update(accepted)
                if count is not None and accepted >= count:
                    return
        finally:
            # Close the source now (a live feed's socket), not whenever it is collected.
            closer = getattr(events, "aclose", None)
            if closer is not None:
                await closer()

    publisher.start()
    task = asyncio.create_task(run(), name=f"pump:{provider.name}")
    stopper = asyncio.create_task(stop.wait(), name="stop-wait")
    try:
        done, _ = await asyncio.wait(
            {task, stopper}, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED
        )
        if task not in done:
            # Stop asked or time is up: stop taking events, keep what was accepted.
            await provider.aclose()
            if isinstance(provider, WireSource):
                # it hands over the events due by now and ends by itself (bounded wait)
                await asyncio.wait({task}, timeout=_CLOSE_GRACE_S)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            task.result()
    finally:
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await provider.aclose()
        await publisher.aclose()
    return accepted
