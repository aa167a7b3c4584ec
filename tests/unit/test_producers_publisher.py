"""Publisher: batching, packing, backpressure, retries, flush on close, ingest metric; wire
blocks and ``pump`` with the synthetic provider (its block path).

Uses a small in-memory Bus (unit tests only; the integration tests use real Redis)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market_data_core.codec import decode_events, event_to_dict
from market_data_core.config import SyntheticProducerConfig
from market_data_core.contracts import StreamEvent
from market_data_core.errors import BackpressureError, BusError
from market_data_core.protocols import (
    BusConsumer,
    BusRecord,
    DeadLetter,
    StreamStatus,
    routing_key,
)
from market_data_pipeline import telemetry
from market_data_pipeline.producers.publisher import (
    Publisher,
    WireBlock,
    default_batch_size,
    encode_batch,
    encode_rows,
)
from market_data_pipeline.producers.pump import pump
from market_data_pipeline.producers.synthetic import SyntheticProvider
from tests.unit.test_codec import events as codec_events

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
            raise BusError("connection refused", backend="redis", operation="publish")
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


def _block(evs: Sequence[StreamEvent], codec: Literal["msgpack", "json"] = "msgpack") -> WireBlock:
    return WireBlock(
        codec,
        [routing_key(e.provider, e.symbol) for e in evs],
        [event_to_dict(e, codec=codec) for e in evs],
    )


@pytest.mark.parametrize("codec", ["msgpack", "json"])
async def test_blocks_publish_the_same_entries_as_single_events(
    codec: Literal["msgpack", "json"],
) -> None:
    evs = ticks(1234, symbols=("A", "B", "C"))
    one_by_one, in_blocks = MemoryBus(), MemoryBus()
    async with Publisher(one_by_one, topic="t", codec=codec, batch_size=100, pack_events=7) as a:
        for ev in evs:
            await a.put(ev)
    async with Publisher(in_blocks, topic="t", codec=codec, batch_size=100, pack_events=7) as b:
        for i in range(0, len(evs), 333):
            await b.put_block(_block(evs[i : i + 333], codec))
    assert in_blocks.items == one_by_one.items
    assert in_blocks.calls == one_by_one.calls  # the same batches
    assert b.published == a.published == 1234 and b.entries == a.entries
    assert sorted(in_blocks.events("t"), key=lambda e: e.seq) == evs


async def test_put_block_refuses_another_codec() -> None:
    pub = Publisher(MemoryBus(), topic="t", codec="msgpack")
    with pytest.raises(ValueError, match="json"):
        await pub.put_block(_block(ticks(2), "json"))
    await pub.aclose()


async def test_a_block_cancelled_while_waiting_for_room_is_still_published() -> None:
    bus = MemoryBus(delay_s=0.2)
    pub = Publisher(bus, topic="t", batch_size=100, buffer_max_events=100, linger_ms=1)
    pub.start()
    evs = ticks(250)
    await pub.put_block(_block(evs[:100]))
    waiting = asyncio.create_task(pub.put_block(_block(evs[100:250])))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the buffer is full: backpressure
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await pub.aclose()
    assert bus.events("t") == evs  # the stop lost nothing


async def test_ingested_metric_counts_blocks() -> None:
    metric = telemetry.EVENTS_INGESTED.labels(bus="redis", topic="metric-b", provider="p")
    before = metric._value.get()
    async with Publisher(MemoryBus(), topic="metric-b", batch_size=10) as pub:
        await pub.put_block(_block(ticks(25)))
    assert metric._value.get() - before == 25


def _synthetic(rate: float, **kw: Any) -> SyntheticProvider:
    cfg = SyntheticProducerConfig(provider="syn", symbols=[f"S{i}" for i in range(10)])
    return SyntheticProvider(cfg, seed=1, rate_per_s=rate, **kw)


def _assert_gapless(evs: Sequence[StreamEvent]) -> None:
    """Every symbol's events are seq 0, 1, 2, ... in order: nothing lost or reordered."""
    by_symbol: dict[str, list[int]] = {}
    for e in evs:
        by_symbol.setdefault(e.symbol, []).append(e.seq)
    for seqs in by_symbol.values():
        assert seqs == list(range(len(seqs)))


async def test_pump_synthetic_publishes_exactly_count_events() -> None:
    bus = MemoryBus()
    pub = Publisher(bus, topic="t", batch_size=500, pack_events=50)
    accepted = await pump(_synthetic(50_000), pub, asyncio.Event(), count=1234)
    assert accepted == pub.published == 1234
    evs = bus.events("t")
    assert len(evs) == 1234
    _assert_gapless(evs)


@pytest.mark.parametrize("rate", [1000.0, 20_000.0])
async def test_pump_synthetic_holds_the_rate_for_a_duration(rate: float) -> None:
    bus = MemoryBus()
    pub = Publisher(bus, topic="t", batch_size=500, pack_events=50)
    await pump(_synthetic(rate), pub, asyncio.Event(), duration_s=1.0)
    # the events due when the time is up are made and published too; "when" is when the
    # pump's timer fires, late by the event loop's lag (216 events, 11 ms, seen at 20,000/s
    # on a slow shared machine)
    assert abs(pub.published - rate) <= 0.03 * rate
    evs = bus.events("t")
    assert len(evs) == pub.published
    _assert_gapless(evs)
    packs = [len(decode_events(p).events) for _k, p in bus.items["t"]]
    assert max(packs) <= 50
    if rate >= 20_000:  # batches of 500 over 10 symbols fill packs of 50
        assert max(packs) == 50


async def test_pump_stop_publishes_everything_made() -> None:
    bus = MemoryBus(delay_s=0.05)  # a slow bus: blocks wait in the buffer when the stop comes
    pub = Publisher(bus, topic="t", batch_size=500, pack_events=50, buffer_max_events=1000)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stop.set)
    provider = _synthetic(100_000)
    accepted = await pump(provider, pub, stop)
    evs = bus.events("t")
    assert accepted > 0
    # every event made is published, the last block (made at the stop) included
    assert len(evs) == pub.published == provider.made >= accepted
    _assert_gapless(evs)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(codec_events(), min_size=1, max_size=30),
    st.sampled_from(["msgpack", "json"]),
    st.sampled_from([1, 3, 50]),
)
def test_rows_encode_to_the_codecs_bytes_for_any_events(
    evs: list[StreamEvent], codec: Literal["msgpack", "json"], pack: int
) -> None:
    """The publisher's own encoder (msgspec for msgpack) writes exactly what
    market_data_core.codec writes, for any valid events."""
    pairs = [(routing_key(e.provider, e.symbol), event_to_dict(e, codec=codec)) for e in evs]
    items, per_provider = encode_rows(pairs, codec, pack)
    assert items == encode_batch(evs, codec, pack)
    assert sum(per_provider.values()) == len(evs)


async def test_a_call_carries_500_entries_by_default_single_or_packed() -> None:
    """Unset, a publish call takes 500 entries' worth of events: 500 single events, or 500
    packs (5,000 events at 10 per entry), at most 100,000 events."""
    assert default_batch_size(1) == 500
    assert default_batch_size(50) == 25_000
    assert default_batch_size(1000) == 100_000
    for pack, n in ((1, 1_234), (10, 12_345)):
        bus = MemoryBus()
        evs = ticks(n)
        async with Publisher(bus, topic="t", pack_events=pack, linger_ms=10_000) as pub:
            for ev in evs:
                await pub.put(ev)
        assert max(bus.calls) == 500  # full calls of 500 entries, then the rest
        assert sorted(bus.events("t"), key=lambda e: e.seq) == evs and pub.published == n
