"""Producer benchmark: does the synthetic producer sustain the requested rate, and how close
is it to the bare XADD ceiling on the same server?

For each requested aggregate rate, run ``SyntheticProvider -> Publisher -> RedisBus`` (the real
``mdp stream produce`` path: ``pump``, packs of ``--pack`` events per entry, unseeded like
``mdp bench``'s producers) for ``--duration-s`` and report the achieved events/s and the CPU
this process spent per event (``time.process_time``; the server is another process). Then run
it unpaced (the producer's own ceiling) and finally a bare publish of pre-encoded payloads of
the same size and batch size with the producers' client method (the publish script, as
``RedisBus.publish`` sends it: the server/client ceiling).

    .venv/bin/python benchmarks/producer_bench.py --rates 1000,5000,20000,40000 --duration-s 5

``--quote-ratio 0.5``: that share of the synthetic events are quotes (as ``mdp bench
--quote-ratio``); the bare ceiling publishes trades either way.

Uses ``REDIS_URI`` when set, else an embedded Valkey. Appends its figures to
``benchmarks/results/producer-<utc time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aredis

from market_data_core.codec import encode_event
from market_data_core.config import (
    AppConfig,
    BusConfig,
    ProducersConfig,
    RedisConfig,
    SyntheticProducerConfig,
)
from market_data_pipeline.producers.pump import make_publisher, pump
from market_data_pipeline.producers.synthetic import SyntheticProvider
from market_data_pipeline.servers import EmbeddedRedis, ServerUrls
from market_data_pipeline.streaming.bus import open_bus
from market_data_pipeline.streaming.redis_bus import RedisBus

RESULTS = Path(__file__).parent / "results"
SYMBOLS = ["SPY", "AAPL", "MSFT", "QQQ", "NVDA", "TSLA", "AMZN", "META", "GOOG", "IWM"]


async def producer_run(
    url: str, stream: str, rate: float | None, duration_s: float, args: argparse.Namespace
) -> dict[str, Any]:
    app = AppConfig(
        bus=BusConfig(
            codec=args.codec,
            partitions=args.partitions,
            redis=RedisConfig(stream=stream),
        ),
        producers=ProducersConfig(
            publish_batch_size=args.batch, pack_events=args.pack, pack_as=args.pack_as
        ),
    )
    bus = await open_bus(app, ServerUrls(url, None, None))
    synth = SyntheticProducerConfig(symbols=SYMBOLS, quote_ratio=args.quote_ratio)
    # Unpaced = a rate far above anything reachable, so the bucket never waits.
    provider = SyntheticProvider(synth, seed=args.seed, rate_per_s=rate or 1e9)
    publisher = make_publisher(app, bus, None)
    cpu_started = time.process_time()
    started = time.perf_counter()
    try:
        await pump(provider, publisher, asyncio.Event(), duration_s=duration_s)
    finally:
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
        await bus.aclose()
    achieved = publisher.published / elapsed
    return {
        "requested_per_s": rate,
        "published": publisher.published,
        "entries": publisher.entries,
        "elapsed_s": round(elapsed, 3),
        "achieved_per_s": round(achieved, 1),
        "ratio": round(achieved / rate, 4) if rate else None,
        "cpu_s": round(cpu_s, 3),
        "cpu_us_per_event": round(cpu_s / max(publisher.published, 1) * 1e6, 2),
    }


async def xadd_ceiling(
    url: str, stream: str, n: int, batch: int, codec: str, maxlen: int
) -> dict[str, Any]:
    """Bare publish of pre-encoded synthetic payloads (no event building, no encoding), ``batch``
    entries per call, with the producers' client method (``RedisBus.publish``: the publish
    script per stream: ``XADD`` per entry, one ``XTRIM ... MAXLEN ~`` per call)."""
    synth = SyntheticProducerConfig(symbols=SYMBOLS)
    items = [
        (e.symbol, encode_event(e, codec))  # type: ignore[arg-type]
        for e in SyntheticProvider(synth, seed=1, rate_per_s=1e6, count=n).generate()
    ]
    bus = await RedisBus.connect(url, BusConfig(maxlen=maxlen))
    try:
        started = time.perf_counter()
        for i in range(0, n, batch):
            await bus.publish(stream, items[i : i + batch])
        elapsed = time.perf_counter() - started
        await bus.client.delete(stream)
    finally:
        await bus.aclose()
    return {
        "events": n,
        "elapsed_s": round(elapsed, 3),
        "xadd_per_s": round(n / elapsed, 1),
        "payload_bytes": round(sum(len(p) for _, p in items) / n, 1),
        "method": bus.publish_method,
    }


async def _delete_shards(client: aredis.Redis, stream: str, partitions: int) -> None:
    names = [stream] if partitions <= 1 else [f"{stream}:{n}" for n in range(partitions)]
    await client.delete(*names)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server: EmbeddedRedis | None = None
    url = os.environ.get("REDIS_URI")
    if not url:
        server = EmbeddedRedis()
        server.start()
        url = server.url
    try:
        tag = datetime.now(UTC).strftime("%H%M%S")
        client = aredis.Redis.from_url(url)
        rows = []
        for rate in [float(r) for r in args.rates.split(",") if r]:
            stream = f"bench.producer.{tag}.{int(rate)}"
            row = await producer_run(url, stream, rate, args.duration_s, args)
            await _delete_shards(client, stream, args.partitions)
            rows.append(row)
            print(
                f"requested {rate:>9,.0f}/s  achieved {row['achieved_per_s']:>10,.0f}/s  "
                f"({row['ratio']:.1%}, {row['published']:,} events in {row['elapsed_s']}s)  "
                f"CPU {row['cpu_us_per_event']:.2f} us/event"
            )
        stream = f"bench.producer.{tag}.unpaced"
        unpaced = await producer_run(url, stream, None, args.duration_s, args)
        await _delete_shards(client, stream, args.partitions)
        print(
            f"unpaced producer (build+encode+publish) {unpaced['achieved_per_s']:>10,.0f}/s  "
            f"CPU {unpaced['cpu_us_per_event']:.2f} us/event"
        )
        ceiling = await xadd_ceiling(
            url, f"bench.xadd.{tag}", args.xadd_events, args.batch, args.codec, 1_000_000
        )
        print(
            f"bare XADD ceiling (batch {args.batch}, {ceiling['payload_bytes']:.0f} B payloads, "
            f"{ceiling['method']}) {ceiling['xadd_per_s']:>10,.0f}/s"
        )
        await client.aclose()
    finally:
        if server is not None:
            server.stop()
    return {
        "bench": "producer",
        "at": datetime.now(UTC).isoformat(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "server": "embedded valkey" if server is not None else "REDIS_URI",
        "codec": args.codec,
        "batch": args.batch,
        "pack": args.pack,
        "pack_as": args.pack_as,
        "quote_ratio": args.quote_ratio,
        "partitions": args.partitions,
        "seeded": args.seed is not None,
        "symbols": len(SYMBOLS),
        "paced": rows,
        "unpaced": unpaced,
        "xadd_ceiling": ceiling,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000,5000,20000,40000", help="comma-separated events/s")
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--codec", choices=["msgpack", "json"], default="msgpack")
    parser.add_argument("--pack", type=int, default=50, help="events per entry (mdp bench: 50)")
    parser.add_argument("--partitions", type=int, default=4, help="shards of the stream")
    parser.add_argument("--pack-as", choices=["rows", "columns"], default="rows")
    parser.add_argument(
        "--quote-ratio",
        type=float,
        default=0.0,
        help="share of the events that are quotes (synthetic quote_ratio; mdp bench --quote-ratio)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seeded: no ingest_ts stamps")
    parser.add_argument("--xadd-events", type=int, default=100_000)
    args = parser.parse_args()
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rates: not a comma-separated list of numbers: {args.rates!r}")
    if any(not r > 0 for r in rates):  # the unpaced run always comes after the paced ones
        parser.error(f"--rates: every rate must be > 0 (events/s), got {args.rates!r}")
    result = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"producer-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
