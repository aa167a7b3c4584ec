"""Shard routing, lease quotas and the dead-letter format (no server needed)."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from market_data_core.config import AppConfig, BusConfig
from market_data_core.errors import BusError, ConfigError
from market_data_core.protocols import BusRecord, murmur2, partition_key, routing_key, shard_for
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.streaming import open_bus
from market_data_pipeline.streaming.dlq import (
    key_for_shard,
    letter_fields,
    letter_from_fields,
    letter_from_record,
    replay_key,
)
from market_data_pipeline.streaming.leases import quota


@given(shards=st.integers(1, 64), live=st.integers(1, 64))
def test_quotas_cover_every_shard_and_stay_fair(shards: int, live: int) -> None:
    quotas = [quota(shards, live, rank) for rank in range(live)]
    assert sum(quotas) == shards
    assert max(quotas) <= math.ceil(shards / live)
    assert max(quotas) - min(quotas) <= 1


def test_three_consumers_four_shards() -> None:
    assert [quota(4, 3, r) for r in range(3)] == [2, 1, 1]


@given(shard=st.integers(0, 1023), extra=st.integers(1, 1024))
def test_key_for_shard_lands_on_it(shard: int, extra: int) -> None:
    partitions = shard + extra
    assert shard_for(key_for_shard(shard, partitions), partitions) == shard


def test_replay_key_reads_provider_and_symbol() -> None:
    event = {"provider": "coinbase", "symbol": "BTC-USD", "c": 1.0}
    assert replay_key(json.dumps(event).encode()) == routing_key("coinbase", "BTC-USD")
    assert replay_key(msgpack.packb([event, event])) == routing_key("coinbase", "BTC-USD")
    assert replay_key(b"\x00junk") is None
    assert replay_key(json.dumps({"symbol": "X"}).encode()) is None
    assert replay_key(b"[]") is None


def test_letter_round_trips_through_fields() -> None:
    record = BusRecord("mdp.events", 3, "17-2", b"\x81\xa1a\x01", deliveries=4)
    letter = letter_from_record(record, reason="validation", detail="h < c", component="mb")
    fields = {k: v for k, v in letter_fields(letter).items()}
    back = letter_from_fields("99-0", fields)
    assert back.entry_id == "99-0"
    assert (back.payload, back.reason, back.detail, back.component) == (
        record.payload,
        "validation",
        "h < c",
        "mb",
    )
    assert (back.source_topic, back.source_shard, back.source_id) == ("mdp.events", 3, "17-2")
    assert back.deliveries == 4
    assert back.ts == letter.ts


def test_foreign_dlq_entry_is_read_without_raising() -> None:
    back = letter_from_fields("1700000000000-0", {"payload": b"x", "source_shard": b"nope"})
    assert back.reason == "unknown"
    assert back.source_shard == 0
    assert back.ts == datetime.fromtimestamp(1_700_000_000, UTC)


async def test_kafka_without_aiokafka_is_a_readable_bus_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "aiokafka", None)
    monkeypatch.delitem(sys.modules, "market_data_pipeline.streaming.kafka_bus", raising=False)
    cfg = AppConfig(bus=BusConfig(type="kafka"))
    with pytest.raises(BusError, match=r"pip install 'mdp-streaming\[kafka\]'"):
        await open_bus(cfg, ServerUrls(None, None, "127.0.0.1:9"))


async def test_missing_server_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="REDIS_URI"):
        await open_bus(AppConfig(), ServerUrls(None, None, None))


def test_shard_is_kafkas_default_partition_of_the_symbol() -> None:
    """The values Kafka's Java client gives (as recorded by kafka-python's compatibility test:
    ``toPositive(murmur2(key)) % 1000``), and the symbol alone decides: every provider of a
    symbol, and a bare symbol key, share its shard."""
    for key, partition in [
        ("", 681),
        ("a", 524),
        ("ab", 434),
        ("abc", 107),
        ("123456789", 566),
        ("\x00 ", 742),
    ]:
        assert shard_for(routing_key("any", key) if key else key, 1000) == partition
    assert shard_for("coinbase|BTC-USD", 7) == shard_for("kraken|BTC-USD", 7)
    assert shard_for("BTC-USD", 7) == shard_for("coinbase|BTC-USD", 7)
    assert partition_key("coinbase|BTC-USD") == b"BTC-USD"


@given(key=st.binary(max_size=64))
def test_murmur2_is_aiokafkas(key: bytes) -> None:
    from aiokafka.partitioner import murmur2 as reference

    assert murmur2(key) == reference(key)


@given(
    symbol=st.text(min_size=1, max_size=32).filter(lambda s: "|" not in s), n=st.integers(1, 256)
)
def test_shard_for_is_aiokafkas_default_partitioner(symbol: str, n: int) -> None:
    from aiokafka.partitioner import DefaultPartitioner

    partitions = list(range(n))
    expected = DefaultPartitioner()(symbol.encode(), partitions, partitions)
    assert shard_for(routing_key("p", symbol), n) == expected
