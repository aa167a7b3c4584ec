"""Publisher: batching, packing, backpressure, retries, flush on close, ingest metric.

Uses a small in-memory Bus (unit tests only; the integration tests use real Redis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest

from market_data_core.codec import decode_events
from market_data_core.contracts import StreamEvent
from market_data_core.errors import BackpressureError, BusError
from market_data_core.protocols import BusConsumer, BusRecord, DeadLetter, StreamStatus
from market_data_pipeline import telemetry
from market_data_pipeline.producers.publisher import Publisher, encode_batch

T0 = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)


class MemoryBus:
    """Keeps published items per topic; can be slowed down or made to fail."""

    def __init__(self, *, delay_s: float = 0.0, fail_times: int = 0) -> None:
        self.items: dict[str, list[tuple[str, bytes]]] = {}
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.fail_times = fail_times
        self.letters: list[DeadLetter] = []

    @property
    def backend(self) -> Literal["redis", "kafka"]:
        return "redis"

    async def publish(self, topic: str, items: Sequence[tuple[str, bytes]]) -> int:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_times > 0:
            self.fail_times -= 1
            raise BusError("connection refused")
        self.calls.append(len(items))
        self.items.setdefault(topic, []).extend(items)
        return len(items)

    def consumer(self, topic: str, group: str, name: str) -> BusConsumer:
        raise NotImplementedError

    async def tail(self, topic: str, limit: int) -> list[BusRecord]:
        return [
            BusRecord(topic, 0, f"{i}-0", payload)
            for i, (_k, payload) in enumerate(self.items.get(topic, []))
        ][-limit:]

    async def status(self, topic: str, group: str | None = None) -> list[StreamStatus]:
        return []

    async def dead_letter(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    async def dlq_list(self, limit: int) -> list[DeadLetter]:
        return self.letters[:limit]

    async def dlq_delete(self, entry_ids: Sequence[str]) -> int:
        return 0

    async def aclose(self) -> None:
        pass

    def events(self, topic: str) -> list[StreamEvent]:
        return [e for _k, p in self.items.get(topic, []) for e in decode_events(p).events]


def ticks(n: int, symbols: Sequence[str] = ("A", "B")) -> list[StreamEvent]:
    return [
        StreamEvent.create(
            provider="p",
            symbol=symbols[i % len(symbols)],
            kind="tick",
            src_ts=T0 + timedelta(milliseconds=i),
            c=10.0 + i,
            v=1.0,
            seq=i,
        )
        for i in range(n)
    ]


async def test_everything_is_published_in_batches_on_close() -> None:
    bus = MemoryBus()
    evs = ticks(1234)
    async with Publisher(bus, topic="t", batch_size=100, linger_ms=5) as pub:
        for ev in evs:
            await pub.put(ev)
    assert bus.events("t") == evs
    assert max(bus.calls) <= 100
    assert pub.published == 1234 and pub.entries == 1234


async def test_packing_keeps_per_key_order() -> None:
    bus = MemoryBus()
    evs = ticks(1000, symbols=("A", "B", "C"))
    async with Publisher(bus, topic="t", batch_size=250, pack_events=20) as pub:
        for ev in evs:
            await pub.put(ev)
    entries = bus.items["t"]
    assert len(entries) < 100  # 1000 events in packs of up to 20
    got = bus.events("t")
    assert sorted(got, key=lambda e: e.seq) == evs
    for sym in "ABC":
        assert [e for e in got if e.symbol == sym] == [e for e in evs if e.symbol == sym]
    for key, payload in entries:
        assert {f"p|{e.symbol}" for e in decode_events(payload).events} == {key}
    assert pub.entries == len(entries)


def test_encode_batch_single_events_when_not_packing() -> None:
    evs = ticks(3)
    items = encode_batch(evs, "json", 1)
    assert [k for k, _ in items] == ["p|A", "p|B", "p|A"]
    assert [decode_events(p).events[0] for _, p in items] == evs


async def test_slow_bus_blocks_put_and_put_nowait_raises() -> None:
    bus = MemoryBus(delay_s=0.2)
    pub = Publisher(bus, topic="t", batch_size=100, buffer_max_events=100, linger_ms=1)
    pub.start()
    evs = ticks(400)
    for ev in evs[:100]:
        pub.put_nowait(ev)
    with pytest.raises(BackpressureError) as info:
        pub.put_nowait(evs[100])
    assert info.value.retry_after_s > 0
    started = time.monotonic()
    for ev in evs[100:300]:
        await pub.put(ev)  # waits while the bus drains the full buffer
    assert time.monotonic() - started >= 0.3
    assert pub.buffered <= 100
    await pub.aclose()
    assert bus.events("t") == evs[:300]


async def test_transient_bus_errors_are_retried_without_loss() -> None:
    bus = MemoryBus(fail_times=3)
    before = telemetry.RETRIES.labels(component="publisher")._value.get()
    async with Publisher(bus, topic="t", batch_size=50) as pub:
        for ev in ticks(120):
            await pub.put(ev)
    assert bus.events("t") == ticks(120)
    assert pub.retries == 3
    assert telemetry.RETRIES.labels(component="publisher")._value.get() - before == 3


async def test_a_dead_bus_surfaces_as_bus_error() -> None:
    bus = MemoryBus(fail_times=10**6)
    pub = Publisher(bus, topic="t", batch_size=10, retry_timeout_s=0.3)
    pub.start()
    for ev in ticks(10):
        await pub.put(ev)
    with pytest.raises(BusError, match="publishing to t failed"):
        await pub.flush()
    with pytest.raises(BusError):
        await pub.put(ticks(1)[0])
    with pytest.raises(BusError):
        await pub.aclose()


async def test_max_msgs_per_s_paces_publishing() -> None:
    bus = MemoryBus()
    started = time.monotonic()
    async with Publisher(bus, topic="t", batch_size=50, max_msgs_per_s=500) as pub:
        for ev in ticks(300):
            await pub.put(ev)
    elapsed = time.monotonic() - started
    assert len(bus.items["t"]) == 300
    assert 0.35 <= elapsed < 2.0  # 300 at 500/s after a first batch of burst


async def test_flush_publishes_a_partial_batch_promptly() -> None:
    bus = MemoryBus()
    pub = Publisher(bus, topic="t", batch_size=1000, linger_ms=10_000)
    pub.start()
    for ev in ticks(7):
        await pub.put(ev)
    await asyncio.wait_for(pub.flush(), timeout=2)
    assert len(bus.items["t"]) == 7
    await pub.aclose()


async def test_ingested_metric_counts_by_bus_topic_provider() -> None:
    metric = telemetry.EVENTS_INGESTED.labels(bus="redis", topic="metric-t", provider="p")
    before = metric._value.get()
    async with Publisher(MemoryBus(), topic="metric-t", batch_size=10) as pub:
        for ev in ticks(25):
            await pub.put(ev)
    assert metric._value.get() - before == 25
