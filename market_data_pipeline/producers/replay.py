"""Replay providers: a registered dataset file, or bars already in the store.

Both yield events with deterministic ids (the same source record, the same ``event_id``), so a
replay is idempotent downstream. ``speed=None`` replays as fast as the bus accepts; ``speed=N``
sleeps so that event time advances N times faster than wall time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

from market_data_core.contracts import Bar, StreamEvent
from market_data_core.protocols import StoreClient
from market_data_pipeline.producers.datasets import DatasetSpec, RowError, read_dataset

__all__ = ["DatasetReplayProvider", "StoreBarsReplayProvider", "bar_to_event"]

# Hand the loop back every this many rows, so a fast replay never starves the publisher.
_YIELD_EVERY = 256


class _SpeedGate:
    """Sleeps so that event time runs ``speed`` times faster than wall time (None: no sleeping)."""

    def __init__(self, speed: float | None) -> None:
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._t0_event: datetime | None = None
        self._t0_wall = 0.0

    async def wait(self, src_ts: datetime) -> None:
        if self.speed is None:
            return
        if self._t0_event is None:
            self._t0_event, self._t0_wall = src_ts, time.monotonic()
            return
        due = self._t0_wall + (src_ts - self._t0_event).total_seconds() / self.speed
        delay_s = due - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)


class DatasetReplayProvider:
    """Events of a registered dataset within ``[start, end)``.

    Bad rows are kept in :attr:`errors` and handed to ``on_error`` (which dead-letters them);
    the replay goes on. Raises ``ConfigError`` if the file cannot be read.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        speed: float | None = None,
        on_error: Callable[[RowError], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self._start = start
        self._end = end
        self._gate = _SpeedGate(speed)
        self._on_error = on_error
        self.errors: list[RowError] = []
        self.rows_read = 0
        self._closed = False

    @property
    def name(self) -> str:
        return self.spec.provider

    async def events(self) -> AsyncIterator[StreamEvent]:
        for item in read_dataset(self.spec, self._start, self._end):
            if self._closed:
                return
            self.rows_read += 1
            if self.rows_read % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if isinstance(item, RowError):
                self.errors.append(item)
                if self._on_error is not None:
                    await self._on_error(item)
                continue
            await self._gate.wait(item.src_ts)
            yield item.model_copy(update={"ingest_ts": datetime.now(UTC)})

    async def aclose(self) -> None:
        self._closed = True


def bar_to_event(bar: Bar) -> StreamEvent:
    """A stored bar as a ``kind="bar"`` event (``seq`` 0: one bar per key and start time)."""
    return StreamEvent.create(
        provider=bar.provider,
        symbol=bar.symbol,
        kind="bar",
        interval=bar.interval,
        src_ts=bar.ts,
        o=bar.o,
        h=bar.h,
        l=bar.l,
        c=bar.c,
        v=bar.v,
        seq=0,
    )


class StoreBarsReplayProvider:
    """Bars of one (provider, symbol, interval) already in the store, ``start <= ts < end``,
    read in day-sized pages. Raises ``StoreError`` if the store fails."""

    def __init__(
        self,
        store: StoreClient,
        *,
        provider: str,
        symbol: str,
        interval: str,
        start: datetime,
        end: datetime,
        speed: float | None = None,
        page_s: float = 86_400.0,
    ) -> None:
        self._store = store
        self._provider = provider
        self._symbol = symbol
        self._interval = interval
        self._start = start
        self._end = end
        self._gate = _SpeedGate(speed)
        self._page_s = page_s
        self._closed = False

    @property
    def name(self) -> str:
        return self._provider

    async def events(self) -> AsyncIterator[StreamEvent]:
        cursor = self._start
        while cursor < self._end and not self._closed:
            page_end = min(self._end, cursor + timedelta(seconds=self._page_s))
            bars = await self._store.bars_range(
                self._provider, self._symbol, self._interval, cursor, page_end
            )
            for bar in bars:
                await self._gate.wait(bar.ts)
                yield bar_to_event(bar)
            cursor = page_end

    async def aclose(self) -> None:
        self._closed = True
