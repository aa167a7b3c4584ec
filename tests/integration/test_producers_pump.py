"""``mdp stream produce``'s path with the synthetic provider on a real Redis: wire blocks ->
Publisher -> RedisBus, packed entries over shards, exactly the reference events."""

from __future__ import annotations

import asyncio
from typing import cast

import redis.asyncio as aredis

from market_data_core.codec import decode_events, encode_events
from market_data_core.config import AppConfig, BusConfig, RedisConfig, SyntheticProducerConfig
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import routing_key, shard_for
from market_data_pipeline.producers.pump import make_publisher, pump
from market_data_pipeline.producers.synthetic import SyntheticProvider
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.streaming.bus import open_bus
from tests.unit.test_producers_synthetic import reference_events


async def test_synthetic_pump_publishes_the_reference_events_packed(
    redis_url: str, unique: str
) -> None:
    stream = f"produce.{unique}"
    app = AppConfig.model_validate(
        {
            "bus": BusConfig(partitions=4, redis=RedisConfig(stream=stream)).model_dump(),
            "producers": {"pack_events": 50},
        }
    )
    bus = await open_bus(app, ServerUrls(redis_url, None, None))
    synth = SyntheticProducerConfig(provider="pump_t", symbols=[f"S{i}" for i in range(10)])
    provider = SyntheticProvider(synth, seed=11, rate_per_s=40_000, count=4321)
    publisher = make_publisher(app, bus, None)
    raw = aredis.Redis.from_url(redis_url)
    try:
        accepted = await pump(provider, publisher, asyncio.Event(), count=4321)
        assert accepted == publisher.published == 4321
        names = bus.streams(app.bus.events_topic)  # type: ignore[attr-defined]
        got: dict[str, list[StreamEvent]] = {}
        payloads: dict[str, list[bytes]] = {}
        for shard, name in enumerate(names):
            entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await raw.xrange(name))
            for _id, fields in entries:
                batch = decode_events(fields[b"data"])
                assert batch.errors == []
                key = routing_key(batch.events[0].provider, batch.events[0].symbol)
                assert shard_for(key, len(names)) == shard
                got.setdefault(key, []).extend(batch.events)
                payloads.setdefault(key, []).append(fields[b"data"])
        want = reference_events(synth, seed=11, rate_per_s=40_000, count=4321)
        for symbol in synth.symbols:
            key = routing_key("pump_t", symbol)
            mine = [e for e in want if e.symbol == symbol]
            assert got[key] == mine  # every event, in order, with its values
            # the same bytes: packs of up to 50 of one key, as encode_events writes them
            assert b"".join(payloads[key]).startswith(encode_events(mine[:50]))
        assert publisher.entries == sum(len(p) for p in payloads.values())
        assert max(len(decode_events(p).events) for ps in payloads.values() for p in ps) == 50
    finally:
        for name in bus.streams(app.bus.events_topic):  # type: ignore[attr-defined]
            await raw.delete(name)
        await raw.aclose()
        await bus.aclose()


async def test_columnar_pump_publishes_blocks_of_every_event_in_order(
    redis_url: str, unique: str
) -> None:
    """``producers.pack_as: columns``: seeded, the same events as the reference, each entry a
    column block of one series; unseeded (drawn with NumPy), every event made arrives once,
    valid, in per-symbol order."""
    from market_data_core.columnar import is_block

    stream = f"produce.{unique}"
    app = AppConfig.model_validate(
        {
            "bus": BusConfig(partitions=4, redis=RedisConfig(stream=stream)).model_dump(),
            "producers": {"pack_events": 50, "pack_as": "columns", "publish_batch_size": 333},
        }
    )
    bus = await open_bus(app, ServerUrls(redis_url, None, None))
    synth = SyntheticProducerConfig(provider="pump_c", symbols=[f"S{i}" for i in range(10)])
    raw = aredis.Redis.from_url(redis_url)
    try:
        for seed in (11, None):
            provider = SyntheticProvider(
                synth, seed=seed, rate_per_s=40_000, count=4321, quote_ratio=0.5
            )
            publisher = make_publisher(app, bus, None)
            accepted = await pump(provider, publisher, asyncio.Event(), count=4321)
            assert accepted == publisher.published == 4321
            got: dict[str, list[StreamEvent]] = {}
            for name in bus.streams(app.bus.events_topic):  # type: ignore[attr-defined]
                entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await raw.xrange(name))
                for _id, fields in entries:
                    assert is_block(fields[b"data"])
                    batch = decode_events(fields[b"data"])
                    assert batch.errors == [] and 1 <= len(batch.events) <= 50
                    assert len({e.symbol for e in batch.events}) == 1
                    got.setdefault(batch.events[0].symbol, []).extend(batch.events)
                await raw.delete(name)
            assert sum(map(len, got.values())) == 4321
            for mine in got.values():
                assert [e.seq for e in mine] == list(range(len(mine)))
                assert {e.kind for e in mine} == {"tick", "quote"}
            if seed is not None:  # the events of the row path (tested against the reference)
                want = list(
                    SyntheticProvider(
                        synth, seed=seed, rate_per_s=40_000, count=4321, quote_ratio=0.5
                    ).generate()
                )
                for symbol in synth.symbols:
                    assert [e.__dict__ for e in got[symbol]] == [
                        e.__dict__ for e in want if e.symbol == symbol
                    ]
    finally:
        await raw.aclose()
        await bus.aclose()
