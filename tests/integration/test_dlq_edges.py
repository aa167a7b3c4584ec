"""Dead letters and tail at their edges (issue 18, item 6), on real servers.

* An entry another producer wrote with its content outside ``data`` used to be dead-lettered
  as "empty payload" with its content lost; the letter now keeps every field of the entry
  (Redis: every field but ``data``; Kafka: the key and the headers).
* ``dlq replay`` re-sent undecodable letters straight back to the DLQ; it now has ``--reason``
  and ``--id`` filters and skips letters that cannot succeed unless ``--force``.
* ``tail --topic mdp.bras`` (a typo) printed "no entries" and exited 0; an unknown stream is
  now one line listing mdp's topics, exit 2 (an existing stream that is not ours is shown).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from aiokafka import AIOKafkaProducer

from market_data_core.codec import encode_event
from market_data_core.config import AppConfig, BusConfig, KafkaConfig
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import BusRecord
from market_data_pipeline.cli.app import main
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.streaming import open_bus
from tests.support.cli import run_mdp, stream_config, write_config

T0 = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)


def _event(symbol: str, seq: int = 1) -> StreamEvent:
    return StreamEvent.create(
        provider="test", symbol=symbol, kind="tick", src_ts=T0, c=100.0, v=1.0, seq=seq
    )


def test_a_foreign_entry_keeps_every_field_in_its_dead_letter(
    tmp_path: Path, redis_url: str, store_url: str, unique: str
) -> None:
    """Before: the letter said "decode: empty payload" and held b"" (content gone)."""
    cfg = write_config(tmp_path / "c.yaml", stream_config(redis_url, store_url, unique))
    foreign = encode_event(_event("AAA"), "json")
    good = encode_event(_event("BBB"))
    client = redis.Redis.from_url(redis_url)
    try:
        stream = f"t.{unique}.events"
        client.xadd(stream, {"payload": foreign, "source": b"other-app"})
        # mdp's field plus one of another tool: decoded as usual, the extra field ignored
        client.xadd(stream, {"data": good, "trace": b"abc"})
        done = run_mdp("stream", "micro-batch", "--config", str(cfg), "--drain", "--idle-s", "1")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "2 events in" not in done.stdout  # the foreign entry holds no mdp event
        assert "1 events in" in done.stdout and "1 dead letter (decode 1)" in done.stdout
        ((letter_id, fields),) = client.xrange(f"t.{unique}.dlq")
    finally:
        client.close()
    assert fields[b"reason"] == b"decode"
    assert fields[b"payload"] == b""
    assert fields[b"source_field.payload"] == foreign
    assert fields[b"source_field.source"] == b"other-app"
    assert b"no data field, only payload, source (kept in the letter)" in fields[b"detail"]

    listed = run_mdp("stream", "dlq", "list", "--config", str(cfg), "--json")
    assert listed.returncode == 0, listed.stderr
    (shown,) = json.loads(listed.stdout)
    assert shown["source_fields"] == {"payload": foreign.decode(), "source": "other-app"}

    tail = run_mdp("stream", "tail", "--config", str(cfg), "--topic", "mdp.dlq")
    assert tail.returncode == 0 and "decode" in tail.stdout, tail.stderr

    # re-sent it would be the same empty payload again: skipped and kept, saying why
    replay = run_mdp("stream", "dlq", "replay", "--config", str(cfg))
    assert replay.returncode == 0, replay.stderr
    assert f"skipped {letter_id.decode()}: decode: re-sent unchanged it fails again" in (
        replay.stderr
    )
    assert "replayed 0 dead letter(s); 1 skipped" in replay.stdout


def test_kafka_key_and_headers_reach_the_dead_letter(kafka_bootstrap: str, unique: str) -> None:
    content = encode_event(_event("CCC"), "json")

    async def go() -> tuple[list[BusRecord], BusRecord, list[tuple[str, bytes]]]:
        cfg = AppConfig(
            bus=BusConfig(
                type="kafka",
                kafka=KafkaConfig(
                    topic=f"ev.{unique}",
                    bars_topic=f"bars.{unique}",
                    signals_topic=f"sig.{unique}",
                    dlq_topic=f"dlq.{unique}",
                    group_id=f"g.{unique}",
                    session_timeout_ms=1500,
                ),
            )
        )
        bus = await open_bus(cfg, ServerUrls(None, None, kafka_bootstrap))
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        try:
            await bus.ensure_topic(f"ev.{unique}")  # type: ignore[attr-defined]
            await producer.start()
            try:
                await producer.send_and_wait(
                    f"ev.{unique}",
                    value=b"",
                    key=b"other|CCC",
                    headers=[("content", content), ("origin", b"other-app")],
                    partition=0,
                )
            finally:
                await producer.stop()
            consumer = bus.consumer(f"ev.{unique}", f"g.{unique}", "w1")
            got: list[BusRecord] = []
            for _ in range(200):
                got += await consumer.poll(10, 200)
                if got:
                    break
            await consumer.dead_letter(
                got[0], reason="decode", detail="empty payload", component="microbatch"
            )
            await consumer.aclose()
            tailed = await bus.tail(f"ev.{unique}", 5)
            (letter,) = await bus.dlq_list(10)
            return got, tailed[-1], list(letter.source_fields)
        finally:
            await bus.aclose()

    got, tailed, kept = asyncio.run(go())
    expected = (("key", b"other|CCC"), ("header.content", content), ("header.origin", b"other-app"))
    assert got[0].payload == b"" and got[0].extra_fields == expected
    assert tailed.extra_fields == expected
    assert tuple(kept) == expected


def _dlq_config(tmp_path: Path, redis_url: str, unique: str) -> Path:
    path = tmp_path / "streaming.yaml"
    path.write_text(
        f"""
bus:
  type: redis
  partitions: 2
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


def _letter(
    client: redis.Redis,
    unique: str,
    *,
    reason: str,
    payload: bytes,
    component: str = "microbatch",
    source_topic: str | None = None,
) -> str:
    entry_id = client.xadd(
        f"dlq.{unique}",
        {
            "payload": payload,
            "reason": reason,
            "detail": f"a {reason} letter",
            "component": component,
            "source_topic": source_topic if source_topic is not None else f"ev.{unique}",
            "source_shard": "0",
            "source_id": "1-0",
            "ts": datetime.now(UTC).isoformat(),
            "deliveries": "1",
        },
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def test_dlq_replay_filters_and_skips_what_cannot_succeed(
    tmp_path: Path, redis_url: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(_dlq_config(tmp_path, redis_url, unique))
    good = encode_event(_event("DDD"))
    client = redis.Redis.from_url(redis_url)
    try:
        ids = {
            "late": _letter(client, unique, reason="late", payload=good),
            "decode": _letter(client, unique, reason="decode", payload=b"\x00junk"),
            "trimmed": _letter(client, unique, reason="trimmed", payload=b"", component="bus"),
            "max_deliveries": _letter(
                client, unique, reason="max_deliveries", payload=good, component="bus"
            ),
            "row": _letter(
                client,
                unique,
                reason="parse",
                payload=b"20200101,oops",
                component="replay",
                source_topic="/data/trades.csv",
            ),
        }

        def left() -> set[str]:
            return {
                (i.decode() if isinstance(i, bytes) else i)
                for i, _ in client.xrange(f"dlq.{unique}")
            }

        # --reason: only the late letter
        assert main(["stream", "dlq", "replay", "--config", cfg, "--reason", "late"]) == 0
        assert "replayed 1 dead letter(s); 0 skipped" in capsys.readouterr().out
        assert ids["late"] not in left()

        # no filter: max_deliveries may succeed now; the others are skipped with the reason
        assert main(["stream", "dlq", "replay", "--config", cfg]) == 0
        out, err = capsys.readouterr()
        assert "replayed 1 dead letter(s); 3 skipped (--force" in out
        assert f"skipped {ids['decode']}: decode: re-sent unchanged it fails again" in err
        assert f"skipped {ids['trimmed']}: trimmed: re-sent unchanged it fails again" in err
        assert f"skipped {ids['row']}: a bad row of the dataset file /data/trades.csv" in err
        assert left() == {ids["decode"], ids["trimmed"], ids["row"]}

        # --id with --force: the consumer was fixed, re-send that one anyway
        assert (
            main(["stream", "dlq", "replay", "--config", cfg, "--id", ids["decode"], "--force"])
            == 0
        )
        assert "replayed 1 dead letter(s); 0 skipped" in capsys.readouterr().out
        # a dataset row is a line of a file, not a bus entry: not even --force sends it
        assert (
            main(["stream", "dlq", "replay", "--config", cfg, "--id", ids["row"], "--force"]) == 0
        )
        assert "replayed 0 dead letter(s); 1 skipped" in capsys.readouterr().out
        assert left() == {ids["trimmed"], ids["row"]}
        assert not client.exists("/data/trades.csv")

        # what the replays re-sent, on the events stream: late, max_deliveries, decode
        sent = [
            f[b"data"] for s in (f"ev.{unique}:0", f"ev.{unique}:1") for _, f in client.xrange(s)
        ]
        assert sorted(sent) == sorted([good, good, b"\x00junk"])

        assert main(["stream", "dlq", "replay", "--config", cfg, "--id", "0-1"]) == 2
        assert "no dead letter with id 0-1" in capsys.readouterr().err
    finally:
        client.close()


def test_tail_of_an_unknown_topic_is_one_line_exit_2(
    tmp_path: Path, redis_url: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(_dlq_config(tmp_path, redis_url, unique))
    assert main(["stream", "tail", "--config", cfg, "--topic", "mdp.bras"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("mdp: error: --topic: no stream 'mdp.bras' on the bus; mdp's topics are")
    for alias, name in (("mdp.events", f"ev.{unique}"), ("mdp.dlq", f"dlq.{unique}")):
        assert f"{alias} ({name})" in err

    # another tool's stream is shown, its entries decoded or described
    client = redis.Redis.from_url(redis_url)
    try:
        client.xadd(f"other.{unique}", {"data": encode_event(_event("EEE"))})
        client.xadd(f"other.{unique}", {"body": b"{}", "kind": b"ping"})
    finally:
        client.close()
    assert main(["stream", "tail", "--config", cfg, "--topic", f"other.{unique}"]) == 0
    out = capsys.readouterr().out
    assert "EEE" in out and "<no data field; the entry has: body, kind>" in out
    # our own, empty stream: no entries, exit 0
    assert main(["stream", "tail", "--config", cfg, "--topic", "mdp.signals"]) == 0
    assert f"sig.{unique}: no entries" in capsys.readouterr().out


def test_tail_of_an_unknown_kafka_topic_does_not_create_it(
    tmp_path: Path, kafka_bootstrap: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kafka.yaml"
    path.write_text(
        f"""
bus:
  type: kafka
  kafka:
    bootstrap: {kafka_bootstrap}
    topic: ev.{unique}
    bars_topic: bars.{unique}
    signals_topic: sig.{unique}
    dlq_topic: dlq.{unique}
    group_id: g.{unique}
"""
    )
    assert main(["stream", "tail", "--config", str(path), "--topic", f"typo.{unique}"]) == 2
    assert "no stream" in capsys.readouterr().err

    async def exists() -> bool:
        bus = await open_bus(load(path), ServerUrls(None, None, kafka_bootstrap))
        try:
            return await bus.topic_exists(f"typo.{unique}")
        finally:
            await bus.aclose()

    assert asyncio.run(exists()) is False


def load(path: Path) -> AppConfig:
    from market_data_core.config import load_config

    return load_config(path)
