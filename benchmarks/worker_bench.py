"""Micro-batch worker cost: CPU per event of one worker draining a pre-filled events stream
(decode + validate + window + ingest_ticks + bar recompute + ack), and of PostgreSQL.

Unlike ``mdp bench`` no producer runs at the same time, so the figures are the worker's and
the store's own, not shared with the load generator.

    .venv/bin/python benchmarks/worker_bench.py [--events 400000] [--pack 50] [--symbols 20]
        [--wire rows|blocks] [--quote-ratio 0.5] [--max-batch-size 5000] [--days 60]
        [--pg-stats 12]

Starts an embedded Valkey and PostgreSQL (``REDIS_URI``/``DATABASE_URL`` are ignored: the
server CPU is read from our own children). Prints a table and writes
``benchmarks/results/worker-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from market_data_core.codec import encode_event, encode_events
from market_data_core.columnar import encode_block
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import routing_key
from market_data_pipeline.cli.common import DEFAULT_CONFIG, load_app_config
from market_data_pipeline.consumers.micro_batcher import MicroBatcher
from market_data_pipeline.gc_pacing import paced_gc
from market_data_pipeline.servers import EmbeddedPostgres, EmbeddedRedis, ServerUrls
from market_data_pipeline.streaming.bus import open_bus
from market_data_pipeline.wiring import open_store, upgrade_schema
from market_data_store.bench import reset_statement_stats, top_statements

RESULTS = Path(__file__).resolve().parent / "results"


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its living descendants."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def _entries(
    n: int, symbols: int, pack: int, wire: str = "rows", quote_ratio: float = 0.0
) -> list[tuple[str, bytes]]:
    """``n`` ticks, one every 50 µs of event time round robin over ``symbols``, packed
    ``pack`` per entry per symbol (as the synthetic producer packs them): msgpack arrays
    (``rows``; one event: a map) or column blocks (``blocks``). ``quote_ratio``: that share
    of the rounds of the symbols are top-of-book quotes instead of trades, spread evenly as
    the synthetic producer spreads them (round ``r`` is a quote round when
    ``floor((r + 1) * ratio) > floor(r * ratio)``)."""

    def encode(events: list[StreamEvent]) -> bytes:
        if wire == "blocks":
            return encode_block(events)
        # one event: a map, as the producers write it (market_data_pipeline.producers.publisher)
        return encode_event(events[0]) if len(events) == 1 else encode_events(events)

    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    per_symbol: dict[str, list[StreamEvent]] = {}
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        symbol = f"S{i % symbols:03d}"
        ts = t0 + timedelta(microseconds=50 * i)
        r = i // symbols
        if math.floor((r + 1) * quote_ratio) > math.floor(r * quote_ratio):
            bid = 100.0 + i * 7919 % 1000 / 100
            ev = StreamEvent.create(
                provider="wbench",
                symbol=symbol,
                kind="quote",
                src_ts=ts,
                ingest_ts=ts,
                bid=bid,
                ask=bid + (i % 3 + 1) / 100,
                bid_size=float(i % 20 + 1) * 100,
                ask_size=float(i * 7 % 20 + 1) * 100,
                seq=i,
            )
        else:
            ev = StreamEvent.create(
                provider="wbench",
                symbol=symbol,
                kind="tick",
                src_ts=ts,
                ingest_ts=ts,
                c=100.0 + i * 7919 % 1000 / 100,
                v=(i % 9 + 1) / 1000,
                seq=i,
            )
        buf = per_symbol.setdefault(symbol, [])
        buf.append(ev)
        if len(buf) == pack:
            out.append((routing_key("wbench", symbol), encode(buf)))
            buf.clear()
    for symbol, buf in per_symbol.items():
        if buf:
            out.append((routing_key("wbench", symbol), encode(buf)))
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    redis = EmbeddedRedis()
    pg = EmbeddedPostgres(preload=("pg_stat_statements",) if args.pg_stats else ())
    with redis, pg:
        assert redis.proc is not None and pg.proc is not None
        urls = ServerUrls(redis_url=redis.url, database_url=pg.url, kafka_bootstrap=None)
        cfg = load_app_config(
            DEFAULT_CONFIG,
            {
                "bus.partitions": args.partitions,
                "bus.redis.stream": f"mdp.wbench.{tag}.events",
                "bus.redis.bars_stream": f"mdp.wbench.{tag}.bars",
                "bus.redis.dlq_stream": f"mdp.wbench.{tag}.dlq",
                "bus.redis.consumer_group": f"wbench-{tag}",
                "micro_batch.window_ms": args.window_ms,
                "micro_batch.max_batch_size": args.max_batch_size,
            },
        )
        await asyncio.to_thread(upgrade_schema, pg.url, config=cfg)
        bus = await open_bus(cfg, urls)
        store = await open_store(cfg, urls)
        try:
            t0 = datetime.now(UTC) - timedelta(hours=2)
            for day in range(1, args.days + 1):
                old = [
                    StreamEvent.create(
                        provider="old",
                        symbol="S",
                        kind="tick",
                        src_ts=t0 - timedelta(days=day),
                        c=1.0,
                        v=1.0,
                        seq=0,
                    ),
                    StreamEvent.create(
                        provider="old",
                        symbol="S",
                        kind="quote",
                        src_ts=t0 - timedelta(days=day),
                        bid=1.0,
                        ask=1.01,
                        seq=1,
                    ),
                ]
                await store.ingest_events(
                    old,
                    interval=f"{args.window_ms}ms",
                    quote_carry_ms=cfg.micro_batch.quote_carry_ms,
                )
            entries = _entries(args.events, args.symbols, args.pack, args.wire, args.quote_ratio)
            for i in range(0, len(entries), 500):
                await bus.publish(cfg.bus.events_topic, entries[i : i + 500])
            worker = MicroBatcher(cfg, bus, store, consumer_name="wbench")
            if args.pg_stats:
                await reset_statement_stats(pg.url)
            me = psutil.Process()
            # as every mdp command runs (cli.common.run_async); its start-up collection is
            # left out of the figures
            async with paced_gc():
                cpu0 = me.cpu_times()
                pg0, redis0 = _tree_cpu_s(pg.proc.pid), _tree_cpu_s(redis.proc.pid)
                started = time.perf_counter()
                stats = await worker.run(asyncio.Event(), drain=True, idle_s=0.5)
                wall_s = time.perf_counter() - started - 0.5  # less the idle wait ending the drain
                cpu1 = me.cpu_times()
            worker_s = cpu1.user + cpu1.system - cpu0.user - cpu0.system
            pg_s = _tree_cpu_s(pg.proc.pid) - pg0
            redis_s = _tree_cpu_s(redis.proc.pid) - redis0
            statements = await top_statements(pg.url, args.pg_stats) if args.pg_stats else []
        finally:
            await store.aclose()
            await bus.aclose()
    n = stats.events_in
    stored = stats.ticks_inserted + stats.quotes_inserted
    assert n == args.events == stored, (n, stats.ticks_inserted, stats.quotes_inserted)
    return {
        "run": datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
        "machine": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "params": vars(args),
        "events": n,
        "wall_s": round(wall_s, 2),
        "events_per_s": round(n / wall_s),
        "worker_us_per_event": round(worker_s * 1e6 / n, 2),
        "postgres_us_per_event": round(pg_s * 1e6 / n, 2),
        "redis_us_per_event": round(redis_s * 1e6 / n, 2),
        "pg_statements": [
            {
                "query": st.query,
                "calls": st.calls,
                "rows": st.rows,
                "exec_ms": round(st.total_ms, 1),
                "exec_us_per_event": round(st.total_ms * 1e3 / n, 3),
                "plans": st.plans,
                "plan_ms": None if st.plan_ms is None else round(st.plan_ms, 1),
            }
            for st in statements
        ],
    }


def _non_negative(text: str) -> int:
    """An argparse type: a whole number >= 0 (argparse prints the error and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--pack", type=int, default=50)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--window-ms", type=int, default=2000)
    parser.add_argument("--wire", choices=["rows", "blocks"], default="rows")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=5000,
        help="micro_batch.max_batch_size: an open window holding more unstored events is "
        "stored early in parts (default 5000, the shipped config's)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=0,
        help="first store a tick and a quote on each of that many earlier days (as many "
        "more daily partitions, like a database holding weeks of data). Each store "
        "connection plans the bar recompute once over all of them, ~70 ms at 60 days: "
        "in a short drain that one-off planning is a large part of PostgreSQL's CPU "
        "(400,000 events: 5.5-5.7 µs per event at 0 days, 6.8-8.3 at 60)",
    )
    parser.add_argument(
        "--quote-ratio", type=float, default=0.0, help="share of the events that are quotes"
    )
    parser.add_argument(
        "--pg-stats",
        type=_non_negative,
        default=0,
        metavar="N",
        help="also print the N statements with the most execution time (pg_stat_statements, "
        "planning counted too): calls, exec ms and µs per drained event, plans, plan ms",
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    for key in (
        "events",
        "wall_s",
        "events_per_s",
        "worker_us_per_event",
        "postgres_us_per_event",
        "redis_us_per_event",
    ):
        print(f"  {key:<24} {result[key]:,}")
    for st in result["pg_statements"]:
        print(
            f"  {st['calls']:>6} calls {st['exec_ms']:>9,.1f} ms {st['exec_us_per_event']:>7.3f} "
            f"µs/ev  plans {st['plans']} ({st['plan_ms']} ms)  {st['query'][:110]}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"worker-{result['run']}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
