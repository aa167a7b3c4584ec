"""Key names of the Redis bus (issue 19): unchanged on one server; on a Redis Cluster every key a
shard needs shares its hash slot, and the shards spread evenly over the masters of the layout
``redis-cli --cluster create`` makes. Slots are checked with redis-py's CRC16 (the integration
tests ask the server, ``CLUSTER KEYSLOT``)."""

from __future__ import annotations

import pytest

from market_data_core.config import BusConfig, RedisConfig, parse_config
from market_data_core.errors import ConfigError
from market_data_pipeline.streaming.bus import open_bus
from market_data_pipeline.streaming.redis_bus import cluster_seeds
from market_data_pipeline.streaming.redis_layout import (
    CLUSTER_SLOTS,
    RedisLayout,
    hash_tag,
    shard_tags,
    slot_of,
)


def _layout(cluster: bool, partitions: int = 12) -> RedisLayout:
    return RedisLayout.of(BusConfig(partitions=partitions), cluster=cluster)


def redis_cli_masters(m: int) -> list[range]:
    """The slot ranges ``redis-cli --cluster create`` gives ``m`` masters (redis-cli.c,
    clusterManagerCommandCreate: ``last = lround(cursor + slots_per_node - 1)``)."""
    per = CLUSTER_SLOTS / m
    first, cursor, out = 0, 0.0, []
    for i in range(m):
        last = int(cursor + per - 1 + 0.5)  # lround of a positive number
        if last > CLUSTER_SLOTS or i == m - 1:
            last = CLUSTER_SLOTS - 1
        out.append(range(first, last + 1))
        first, cursor = last + 1, cursor + per
    return out


def test_one_server_keeps_the_names_of_every_release() -> None:
    layout = _layout(cluster=False, partitions=4)
    assert layout.streams("mdp.events") == [f"mdp.events:{i}" for i in range(4)]
    assert _layout(cluster=False, partitions=1).streams("mdp.events") == ["mdp.events"]
    assert layout.streams("mdp.bars") == ["mdp.bars"]
    assert layout.lease_key("mdp.events:2", "g") == "mdp:bus:mdp.events:2:g:lease"
    assert layout.members_key("mdp.events", "g") == "mdp:bus:mdp.events:g:members"
    assert layout.dlq_of("mdp.events:2") == "mdp.dlq"
    assert layout.known_dlq_streams() == ["mdp.dlq"]


def test_cluster_tags_are_fixed() -> None:
    # The stream names of a deployment: this rule must never change.
    assert shard_tags(12) == (
        "0.13", "1.10", "2.11", "3.62", "4.52", "5.2",
        "6.22", "7.32", "8.9", "9.13", "10.12", "11.42",
    )  # fmt: skip
    assert _layout(cluster=True).streams("mdp.events")[3] == "mdp.events:{3.62}"


@pytest.mark.parametrize("n", [1, 2, 3, 4, 12, 64, 1024])
def test_cluster_slots_rise_evenly(n: int) -> None:
    slots = [slot_of(f"{{{tag}}}") for tag in shard_tags(n)]
    for i, slot in enumerate(slots):
        assert (4 * i + 1) * CLUSTER_SLOTS // (4 * n) <= slot
        assert slot < max(
            (4 * i + 1) * CLUSTER_SLOTS // (4 * n) + 1, (4 * i + 3) * CLUSTER_SLOTS // (4 * n)
        )
    assert slots == sorted(slots) and len(set(slots)) == n


@pytest.mark.parametrize("masters", [3, 4, 5, 6, 8])
def test_shards_spread_over_the_masters_of_redis_cli_create(masters: int) -> None:
    ranges = redis_cli_masters(masters)
    assert sum(len(r) for r in ranges) == CLUSTER_SLOTS
    for n in range(masters, 257, masters):  # a multiple of the masters: exactly n / m each
        counts = [0] * masters
        for tag in shard_tags(n):
            slot = slot_of(f"{{{tag}}}")
            counts[next(j for j, r in enumerate(ranges) if slot in r)] += 1
        assert counts == [n // masters] * masters, (n, counts)
    # plain tags {0}..{11} would not: 4, 5 and 3 shards on three masters
    plain = [0] * 3
    for i in range(12):
        slot = slot_of(f"{{{i}}}")
        plain[next(j for j, r in enumerate(redis_cli_masters(3)) if slot in r)] += 1
    assert plain == [4, 5, 3]


def test_cluster_keys_of_a_shard_share_its_slot() -> None:
    layout = _layout(cluster=True)
    topics = ["mdp.events", "mdp.bars", "mdp.signals"]
    for stream in (s for t in topics for s in layout.streams(t)):
        slot = slot_of(stream)
        assert slot_of(layout.lease_key(stream, "mdp-consumers")) == slot
        assert slot_of(layout.lease_key(stream, "odd{group}")) == slot
        assert slot_of(layout.dlq_of(stream)) == slot
    assert layout.dlq_of("mdp.bars") == "mdp.dlq:{mdp.bars}"
    assert layout.dlq_of("mdp.events:{3.62}") == "mdp.dlq:{3.62}"
    assert slot_of(layout.dlq_registry) == slot_of("mdp.dlq")
    assert layout.dlq_for_letter("mdp.events", 3) == "mdp.dlq:{3.62}"
    assert layout.dlq_for_letter("/data/trades.csv", 0) == "mdp.dlq"  # a replayed file's row
    assert len(layout.known_dlq_streams()) == 1 + 12 + 2


def test_hash_tag_follows_redis() -> None:
    assert hash_tag("a{b}c") == "b"
    assert hash_tag("a{}c{d}") is None  # an empty first tag: the whole key is hashed
    assert hash_tag("a{b") is None
    assert hash_tag("{x}{y}") == "x"


def test_cluster_refuses_braces_in_topic_names() -> None:
    config = BusConfig(redis=RedisConfig(stream="mdp.{events}"))
    with pytest.raises(ValueError, match=r"bus\.redis\.stream"):
        RedisLayout.of(config, cluster=True)
    assert RedisLayout.of(config, cluster=False).stream_name("mdp.{events}", 0) == "mdp.{events}"


def test_cluster_urls() -> None:
    assert cluster_seeds("redis://h:1/0") is None
    assert cluster_seeds(
        "redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001/0?ssl_cert_reqs=none"
    ) == (
        "redis://:pw@10.0.0.1:7000/0?ssl_cert_reqs=none",
        [("10.0.0.1", 7000), ("10.0.0.2", 7001)],
    )
    assert cluster_seeds("rediss+cluster://u:p@[::1]:7000?x=1") == (
        "rediss://u:p@[::1]:7000/?x=1",
        [("::1", 7000)],
    )
    assert cluster_seeds("redis+cluster://h") == ("redis://h", [("h", 6379)])
    with pytest.raises(ValueError):
        cluster_seeds("redis+cluster://a:1,:2")


def test_config_accepts_the_cluster_switches() -> None:
    cfg = parse_config({"bus": {"redis": {"uri": "redis+cluster://h:7000", "cluster": True}}})
    assert cfg.bus.redis.cluster and cfg.bus.redis.wait_replicas == 0
    cfg = parse_config({"bus": {"redis": {"uri": "rediss+cluster://:pw@h:7000"}}})
    assert "pw" not in repr(cfg.bus.redis)
    with pytest.raises(ConfigError, match="wait_replicas"):
        parse_config({"bus": {"redis": {"wait_replicas": -1}}})
    with pytest.raises(ConfigError, match="redis\\+cluster://"):
        parse_config({"bus": {"redis": {"uri": "http://h:7000"}}})


async def test_cluster_without_a_url_is_a_config_error() -> None:
    from market_data_core.config import AppConfig
    from market_data_pipeline.servers import ServerUrls

    cfg = AppConfig(bus=BusConfig(redis=RedisConfig(cluster=True)))
    with pytest.raises(ConfigError, match="no cluster is configured"):
        await open_bus(cfg, ServerUrls("redis://127.0.0.1:1/0", None, None, ("valkey",)))
