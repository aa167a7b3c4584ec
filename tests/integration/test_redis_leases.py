"""Shard leases on Redis: fair spread, rebalance on join, takeover within the documented bound,
on one server (the embedded Valkey) and on a Redis Cluster (every lease in its shard's slot)."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aredis

from market_data_core.config import BusConfig, RedisConfig
from market_data_core.errors import BusError
from market_data_pipeline.servers import EmbeddedRedis
from market_data_pipeline.streaming.redis_bus import RedisBus, RedisConsumer

TTL_MS = 600


async def _bus(redis_url: str, unique: str) -> RedisBus:
    cfg = BusConfig(
        partitions=4,
        redis=RedisConfig(stream=f"lease.{unique}", lease_ttl_ms=TTL_MS),
        block_ms=50,
    )
    return await RedisBus.connect(redis_url, cfg)


@pytest.fixture(params=["valkey", "redis-cluster"])
def lease_url(request: pytest.FixtureRequest) -> str:
    if request.param == "valkey":
        return str(request.getfixturevalue("redis_url"))
    return str(request.getfixturevalue("redis_cluster_url"))


async def _spin(consumers: list[RedisConsumer], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in consumers:
            await c.poll(10, 20)


async def test_shards_spread_and_move_to_survivors(lease_url: str, unique: str) -> None:
    bus = await _bus(lease_url, unique)
    topic = bus.config.events_topic
    a, b, c = (bus.consumer(topic, "g", name) for name in ("a", "b", "c"))
    try:
        await _spin([a], 0.3)
        assert a.owned_shards == {0, 1, 2, 3}
        # Joiners get their share within two maintenance rounds.
        await _spin([a, b, c], 2 * TTL_MS / 3000 + 0.5)
        owned = [a.owned_shards, b.owned_shards, c.owned_shards]
        assert sorted(len(o) for o in owned) == [1, 1, 2]
        assert set().union(*owned) == {0, 1, 2, 3}
        assert sum(len(o) for o in owned) == 4
        # "c" dies (stops polling, never releases): survivors take its shards within
        # lease_ttl_ms + lease_ttl_ms/3 + block_ms (+ slack for a loaded machine).
        lost = c.owned_shards
        started = time.monotonic()
        bound_s = (TTL_MS + TTL_MS / 3 + 50) / 1000
        while not lost <= (a.owned_shards | b.owned_shards):
            await _spin([a, b], 0.02)
            assert time.monotonic() - started < bound_s + 1.0, "takeover too slow"
        assert a.owned_shards.isdisjoint(b.owned_shards)
        assert len(a.owned_shards | b.owned_shards) == 4
        # "c" wakes up: its first poll finds its leases gone and reads none of those shards.
        await bus.publish(topic, [(f"p|S{i}", b"x") for i in range(32)])
        assert {bus.stream_name(topic, s) for s in range(4)} == set(bus.streams(topic))
        assert await c.poll(10, 20) == []
        assert c.owned_shards.isdisjoint(a.owned_shards | b.owned_shards)
    finally:
        for consumer in (a, b, c):
            await consumer.aclose()
        await bus.aclose()


async def test_clean_close_hands_shards_over_at_once(lease_url: str, unique: str) -> None:
    bus = await _bus(lease_url, unique)
    topic = bus.config.events_topic
    a, b = bus.consumer(topic, "g", "a"), bus.consumer(topic, "g", "b")
    try:
        await _spin([a, b], 2 * TTL_MS / 3000 + 0.5)
        assert len(a.owned_shards) == len(b.owned_shards) == 2
        await a.aclose()
        started = time.monotonic()
        while b.owned_shards != {0, 1, 2, 3}:
            await _spin([b], 0.02)
            assert time.monotonic() - started < TTL_MS / 1000, "released shards not taken"
    finally:
        await a.aclose()
        await b.aclose()
        await bus.aclose()


async def test_server_restart_is_a_bus_error_then_recovers(
    redis_server: EmbeddedRedis | None, redis_url: str, unique: str
) -> None:
    if redis_server is None:
        pytest.skip("needs the embedded server (MDP_TEST_REDIS_URL is set)")
    bus = await _bus(redis_url, unique)
    topic = bus.config.events_topic
    consumer = bus.consumer(topic, "g", "a")
    try:
        await bus.publish(topic, [("p|A", b"1")])
        assert len(await consumer.poll(10, 50)) == 1
        redis_server.kill()
        with pytest.raises(BusError):
            await bus.publish(topic, [("p|A", b"2")])
        with pytest.raises(BusError):
            await consumer.poll(10, 50)
        redis_server.start()
        # The server came back empty (no AOF here): streams, groups and leases are recreated.
        await bus.publish(topic, [("p|A", b"3")])
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = [r.payload for r in await consumer.poll(10, 50)]
        assert got == [b"3"]
    finally:
        await consumer.aclose()
        await bus.aclose()


async def test_stale_consumers_without_pending_are_forgotten(
    redis_url: str, redis_client: aredis.Redis, unique: str
) -> None:
    cfg = BusConfig(
        redis=RedisConfig(stream=f"prune.{unique}", lease_ttl_ms=TTL_MS), claim_idle_ms=100
    )
    bus = await RedisBus.connect(redis_url, cfg)
    topic = cfg.events_topic
    old, new = bus.consumer(topic, "g", "old"), bus.consumer(topic, "g", "new")
    try:
        await bus.publish(topic, [("p|A", b"1")])
        records = await old.poll(10, 50)
        await old.ack(records)
        await old.aclose()
        members = await redis_client.xinfo_consumers(topic, "g")
        assert b"old" in {m["name"] for m in members}
        deadline = time.monotonic() + 10
        names = {b"old"}
        while b"old" in names and time.monotonic() < deadline:
            await new.poll(10, 50)
            names = {m["name"] for m in await redis_client.xinfo_consumers(topic, "g")}
        assert b"old" not in names
    finally:
        await new.aclose()
        await bus.aclose()
