"""One publisher process on one Redis server beside a Redis Cluster: events/s of
``RedisBus.publish`` for the shipped real trades (119,988 events: the 9,999 Binance trades as 12
symbols) on 12 shards in 1,000-event batches, and on the cluster with
``bus.redis.wait_replicas`` 0 and 1 (the cost of waiting for a replica).

Start the servers yourself (Debian's redis-server 7.0 here), e.g. on loopback::

    mkdir -p /tmp/rc && cd /tmp/rc
    for p in 7100 7101 7102 7103 7104 7105; do mkdir -p $p; redis-server --port $p \\
        --dir $p --cluster-enabled yes --cluster-config-file $p/nodes.conf \\
        --cluster-node-timeout 1500 --save "" --appendonly no --daemonize yes; done
    redis-cli --cluster create 127.0.0.1:710{0,1,2,3,4,5} --cluster-replicas 1 --cluster-yes
    redis-server --port 7110 --save "" --appendonly no --daemonize yes
    .venv/bin/python benchmarks/cluster_publish_bench.py \\
        --cluster-url redis+cluster://127.0.0.1:7100 --redis-url redis://127.0.0.1:7110/0

Each configuration runs ``--rounds`` times on fresh streams (deleted afterwards); prints a table
and writes ``benchmarks/results/cluster-publish-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from market_data_core.codec import encode_event
from market_data_core.config import BusConfig, RedisConfig
from market_data_core.protocols import routing_key
from market_data_pipeline.producers.datasets import load_registry, read_dataset
from market_data_pipeline.streaming.redis_bus import RedisBus

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SHARDS = 12


def items() -> list[tuple[str, bytes]]:
    spec = load_registry(ROOT / "configs" / "datasets.yaml")["binance_btcusdt_trades"]
    trades = list(read_dataset(spec))
    out: list[tuple[str, bytes]] = []
    for k in range(SHARDS):
        symbol = f"S{k}"
        for trade in trades:
            event = trade.model_copy(  # type: ignore[union-attr]
                update={
                    "symbol": symbol,
                    "event_id": trade.event_id.replace(trade.symbol, symbol, 1),  # type: ignore[union-attr]
                }
            )
            out.append((routing_key(event.provider, symbol), encode_event(event)))
    return out


async def one_run(url: str, wait_replicas: int, payload: list[tuple[str, bytes]]) -> float:
    tag = uuid.uuid4().hex[:8]
    config = BusConfig(
        partitions=SHARDS,
        redis=RedisConfig(stream=f"bench.{tag}", wait_replicas=wait_replicas),
    )
    bus = await RedisBus.connect(url, config)
    try:
        started = time.perf_counter()
        for i in range(0, len(payload), 1000):
            await bus.publish(config.events_topic, payload[i : i + 1000])
        elapsed = time.perf_counter() - started
        for stream in bus.streams(config.events_topic):
            await bus.client.delete(stream)
    finally:
        await bus.aclose()
    return len(payload) / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    payload = items()
    runs: dict[str, list[float]] = {}
    for name, url, wait in (
        ("one server", args.redis_url, 0),
        ("cluster", args.cluster_url, 0),
        ("cluster, wait_replicas 1", args.cluster_url, 1),
    ):
        runs[name] = [await one_run(url, wait, payload) for _ in range(args.rounds)]
    print(f"{len(payload):,} events, {SHARDS} shards, 1,000-event batches, one publisher")
    result: dict[str, Any] = {
        "events": len(payload),
        "shards": SHARDS,
        "host": platform.node(),
        "python": platform.python_version(),
        "runs": runs,
    }
    for name, rates in runs.items():
        print(f"{name:<26} median {statistics.median(rates):>9,.0f} ev/s   runs {rates}")
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"cluster-publish-{stamp}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
