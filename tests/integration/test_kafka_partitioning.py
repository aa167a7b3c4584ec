"""Kafka ordering with other producers (issue 16): mdp's events land where Kafka's default
partitioner puts their key (the symbol), so a plain aiokafka producer keyed by the symbol
writes beside them on the same partition; the Redis bus routes a symbol to the same shard.

Before: mdp chose the partition with CRC-32 of ``provider|symbol`` and one symbol landed on
two partitions as soon as another producer wrote it.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from market_data_core.codec import decode_events, encode_event, event_to_dict
from market_data_core.config import AppConfig, BusConfig, KafkaConfig, RedisConfig
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import Bus, routing_key, shard_for
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.streaming import open_bus

T0 = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)
SYMBOLS = ["AAPL", "MSFT", "SPY", "BTC-USD", "ETH-USD", "EUR/USD", "ES=F", "^GSPC"]


def _event(provider: str, symbol: str, i: int) -> StreamEvent:
    return StreamEvent.create(
        provider=provider,
        symbol=symbol,
        kind="tick",
        src_ts=T0 + timedelta(milliseconds=i),
        c=100.0 + i,
        v=1.0,
        seq=i,
    )


async def _kafka_bus(bootstrap: str, unique: str, partitions: int) -> Bus:
    cfg = BusConfig(
        type="kafka",
        partitions=partitions,
        kafka=KafkaConfig(
            topic=f"ev.{unique}",
            signals_topic=f"sig.{unique}",
            bars_topic=f"bars.{unique}",
            dlq_topic=f"dlq.{unique}",
            group_id=f"g.{unique}",
            session_timeout_ms=1500,
        ),
    )
    return await open_bus(AppConfig(bus=cfg), ServerUrls(None, None, bootstrap))


async def _plain_producer_writes(bootstrap: str, topic: str, provider: str, n: int) -> None:
    """Another application: a plain aiokafka producer, default partitioner, key = symbol,
    value = a StreamEvent v1 as JSON."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for i in range(n):
            for symbol in SYMBOLS:
                value = json.dumps(event_to_dict(_event(provider, symbol, 1000 + i))).encode()
                await producer.send_and_wait(topic, value=value, key=symbol.encode())
    finally:
        await producer.stop()


async def _partitions_of_symbols(bootstrap: str, topic: str) -> dict[str, set[int]]:
    """Every record of the topic read back with a plain consumer: symbol -> partitions."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    where: dict[str, set[int]] = defaultdict(set)
    try:
        await reader.topics()  # fetches the metadata of every topic
        parts = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or [])]
        reader.assign(parts)
        await reader.seek_to_beginning(*parts)
        while batch := await reader.getmany(timeout_ms=1000, max_records=10_000):
            for tp, records in batch.items():
                for record in records:
                    for event in decode_events(record.value or b"").events:
                        where[event.symbol].add(tp.partition)
    finally:
        await reader.stop()
    return where


async def test_one_symbol_one_partition_beside_a_plain_aiokafka_producer(
    kafka_bootstrap: str, redis_url: str, unique: str
) -> None:
    partitions = 4
    bus = await _kafka_bus(kafka_bootstrap, unique, partitions)
    topic = bus.config.events_topic
    try:
        ours = [_event("mdp", s, i) for i in range(5) for s in SYMBOLS]
        await bus.publish(
            topic, [(routing_key(e.provider, e.symbol), encode_event(e)) for e in ours]
        )
        await _plain_producer_writes(kafka_bootstrap, topic, "other", 5)
        await bus.publish(
            topic, [(routing_key(e.provider, e.symbol), encode_event(e)) for e in ours]
        )
        records = await bus.tail(topic, 1000)
    finally:
        await bus.aclose()

    where: dict[str, set[int]] = defaultdict(set)
    writers: dict[str, set[str]] = defaultdict(set)
    for record in records:
        for event in decode_events(record.payload).events:
            where[event.symbol].add(record.shard)
            writers[event.symbol].add(event.provider)
    assert sorted(where) == sorted(SYMBOLS)
    assert all(writers[s] == {"mdp", "other"} for s in SYMBOLS)
    assert {s: sorted(where[s]) for s in SYMBOLS} == {
        s: [shard_for(s, partitions)] for s in SYMBOLS
    }
    assert len({shard_for(s, partitions) for s in SYMBOLS}) > 1  # spread over partitions

    # The Redis bus puts each symbol on the same shard number: one documented routing.
    redis_bus = await open_bus(
        AppConfig(
            bus=BusConfig(
                partitions=partitions,
                redis=RedisConfig(stream=f"ev.{unique}", dlq_stream=f"dlq.{unique}"),
            )
        ),
        ServerUrls(redis_url, None, None),
    )
    try:
        items = [(routing_key(e.provider, e.symbol), encode_event(e)) for e in ours]
        await redis_bus.publish(redis_bus.config.events_topic, items)
        redis_records = await redis_bus.tail(redis_bus.config.events_topic, 1000)
    finally:
        await redis_bus.aclose()
    on_redis: dict[str, set[int]] = defaultdict(set)
    for record in redis_records:
        for event in decode_events(record.payload).events:
            on_redis[event.symbol].add(record.shard)
    assert on_redis == where


async def test_an_existing_topic_with_other_partitions_is_followed(
    kafka_bootstrap: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A topic another tool created with 3 partitions while the config says 4: mdp divides
    by the 3 the broker reports, as every other producer does, and says so once."""
    topic = f"ev.{unique}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    bus = await _kafka_bus(kafka_bootstrap, unique, 4)
    try:
        ours = [_event("mdp", s, i) for i in range(3) for s in SYMBOLS]
        items = [(routing_key(e.provider, e.symbol), encode_event(e)) for e in ours]
        with caplog.at_level(logging.WARNING, logger="market_data_pipeline.streaming.kafka_bus"):
            await bus.publish(topic, items)
            await bus.publish(topic, items)
        await _plain_producer_writes(kafka_bootstrap, topic, "other", 2)
    finally:
        await bus.aclose()
    assert caplog.text.count("has 3 partitions, the config says 4") == 1
    where = await _partitions_of_symbols(kafka_bootstrap, topic)
    assert {s: sorted(where[s]) for s in SYMBOLS} == {s: [shard_for(s, 3)] for s in SYMBOLS}
