"""``mdp stream status`` and ``mdp stream dlq list|replay|purge`` against a real Redis and a Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from market_data_core.codec import encode_event
from market_data_core.config import load_config
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import BusRecord, routing_key, shard_for
from market_data_pipeline.cli.app import main
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.streaming import open_bus


def _config(tmp_path: Path, redis_url: str, unique: str, partitions: int = 2) -> Path:
    path = tmp_path / "streaming.yaml"
    path.write_text(
        f"""
bus:
  type: redis
  partitions: {partitions}
  redis:
    uri: {redis_url}
    stream: ev.{unique}
    bars_stream: bars.{unique}
    signals_stream: sig.{unique}
    dlq_stream: dlq.{unique}
    consumer_group: g.{unique}
"""
    )
    return path


def _event(symbol: str) -> StreamEvent:
    return StreamEvent.create(
        provider="test",
        symbol=symbol,
        kind="tick",
        src_ts=datetime(2026, 1, 2, 14, 30, tzinfo=UTC),
        c=100.0,
        v=1.0,
        seq=1,
    )


def _letter(client: redis.Redis, unique: str, payload: bytes, shard: int) -> None:
    client.xadd(
        f"dlq.{unique}",
        {
            "payload": payload,
            "reason": "store",
            "detail": "connection lost",
            "component": "microbatch",
            "source_topic": f"ev.{unique}",
            "source_shard": str(shard),
            "source_id": "1-0",
            "ts": datetime.now(UTC).isoformat(),
            "deliveries": "1",
        },
    )


def test_status_shows_shards_groups_and_dlq(
    tmp_path: Path, redis_url: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, redis_url, unique)
    client = redis.Redis.from_url(redis_url)
    try:
        client.xadd(f"ev.{unique}:0", {"data": b"x"})
        client.xadd(f"ev.{unique}:0", {"data": b"y"})
        client.xgroup_create(f"ev.{unique}:0", f"g.{unique}", id="0")
        client.xreadgroup(f"g.{unique}", "w1", {f"ev.{unique}:0": ">"}, count=1)
        _letter(client, unique, b"junk", 0)
    finally:
        client.close()
    assert main(["stream", "status", "--config", str(cfg), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {(r["stream"], r["group"]): r for r in out["streams"]}
    row = rows[(f"ev.{unique}:0", f"g.{unique}")]
    assert (row["length"], row["pending"], row["lag"], row["consumers"]) == (2, 1, 1, 1)
    assert row["oldest_pending_ms"] is not None
    assert rows[(f"ev.{unique}:1", None)]["length"] == 0
    assert out["dlq"] == {"stream": f"dlq.{unique}", "length": 1}
    assert main(["stream", "status", "--config", str(cfg)]) == 0
    table = capsys.readouterr().out
    assert "OLDEST PENDING" in table and f"ev.{unique}:0" in table
    assert "dead letters" in table


def test_dlq_list_replay_purge(
    tmp_path: Path, redis_url: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, redis_url, unique, partitions=4)
    good = encode_event(_event("AAPL"))
    home = shard_for(routing_key("test", "AAPL"), 4)
    other = (home + 1) % 4
    client = redis.Redis.from_url(redis_url)
    try:
        _letter(client, unique, good, 0)
        _letter(client, unique, b"\x00junk", other)
        assert main(["stream", "dlq", "list", "--config", str(cfg)]) == 0
        listed = capsys.readouterr().out
        assert "microbatch" in listed and "connection lost" in listed
        assert f"ev.{unique}:{other}/1-0" in listed
        assert main(["stream", "dlq", "purge", "--config", str(cfg)]) == 2
        assert "--yes" in capsys.readouterr().err
        assert client.xlen(f"dlq.{unique}") == 2
        assert main(["stream", "dlq", "replay", "--config", str(cfg)]) == 0
        assert "replayed 2" in capsys.readouterr().out
        assert client.xlen(f"dlq.{unique}") == 0
        entries = client.xrange(f"ev.{unique}:{home}")
        assert [f[b"data"] for _, f in entries] == [good]
        # An undecodable payload cannot name its key: it goes back to its source shard.
        assert [f[b"data"] for _, f in client.xrange(f"ev.{unique}:{other}")][-1] == b"\x00junk"
        _letter(client, unique, b"again", 1)
        assert main(["stream", "dlq", "purge", "--yes", "--config", str(cfg)]) == 0
        assert "purged 1" in capsys.readouterr().out
        assert client.xlen(f"dlq.{unique}") == 0
    finally:
        client.close()


def test_inspection_needs_a_configured_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URI", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text("bus:\n  type: redis\n")
    assert main(["stream", "status", "--config", str(path)]) == 2
    assert "REDIS_URI" in capsys.readouterr().err


def test_status_and_dlq_on_kafka(
    tmp_path: Path, kafka_bootstrap: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kafka.yaml"
    path.write_text(
        f"""
bus:
  type: kafka
  partitions: 2
  kafka:
    bootstrap: {kafka_bootstrap}
    topic: ev.{unique}
    bars_topic: bars.{unique}
    signals_topic: sig.{unique}
    dlq_topic: dlq.{unique}
    group_id: g.{unique}
    session_timeout_ms: 1500
"""
    )
    payload = encode_event(_event("SPY"))
    key = routing_key("test", "SPY")

    async def setup() -> None:
        cfg = load_config(path)
        bus = await open_bus(cfg, ServerUrls(None, None, kafka_bootstrap))
        try:
            await bus.publish(f"ev.{unique}", [(key, payload)] * 3)
            consumer = bus.consumer(f"ev.{unique}", f"g.{unique}", "w1")
            got: list[BusRecord] = []
            while len(got) < 3:
                got += await consumer.poll(10, 200)
            await consumer.ack(got[:1])
            await consumer.dead_letter(got[1], reason="store", detail="x", component="test")
            await consumer.aclose()
        finally:
            await bus.aclose()

    asyncio.run(setup())
    assert main(["stream", "status", "--config", str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["streams"]
    home = shard_for(key, 2)
    row = next(r for r in rows if r["stream"] == f"ev.{unique}[{home}]")
    assert (row["group"], row["length"], row["lag"]) == (f"g.{unique}", 3, 1)
    assert main(["stream", "dlq", "replay", "--config", str(path)]) == 0
    assert "replayed 1" in capsys.readouterr().out
    assert main(["stream", "dlq", "list", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
