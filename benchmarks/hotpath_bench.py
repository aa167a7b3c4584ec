"""Hot-path stages of the micro-batch worker, one at a time: CPU µs per event of each.

``mdp bench`` and ``worker_bench.py`` give whole-process figures, which on a machine shared
with other work swing by tens of percent. This times each stage of the worker's per-event
work in-process with ``time.process_time`` (CPU of this process only: other processes on the
machine slow it down little), as the best of ``--repeats`` runs over the same events:

* ``decode``: ``decode_events`` of every packed entry (decode + validation into events);
* ``window``: :meth:`MicroBatcher._ingest` (decode, window assignment, de-duplication by
  ``event_id``, entry accounting) less ``decode``;
* ``rows``: building the COPY records of ``PgStoreClient.ingest_ticks`` from the events
  (de-duplication by ``event_id`` and one tuple per tick; a copy of the shipped code);
* ``copy``: asyncpg's ``copy_records_to_table`` of those records into the staging table
  (binary COPY encoding in asyncpg's Cython codecs and the socket writes; the server's
  work is not in this figure);
* ``redis``: ``XREADGROUP`` of the entries and ``XACK`` of them through the bus consumer
  (reply parsing and ``BusRecord`` building).

and the same stages of the columnar path (column blocks): ``decode_cols`` (``decode_blocks``
of a poll's blocks), ``window_cols`` (``MicroBatcher._ingest`` of block entries less
``decode_cols``), ``rows_cols`` (the binary COPY stream of the tick rows built from the
arrays), ``copy_cols`` (sending it with ``copy_to_table``). ``window`` times the micro-batcher
as it is: before the columnar path it was the per-event loop; now it is the array code fed by
msgpack rows turned into columns.

Events: ``--events`` trades (and, with ``--quotes F``, that fraction replaced by quotes),
over ``--symbols`` symbols, one every 50 µs of event time, packed ``--pack`` per entry per
symbol as the producers pack them. Servers: ``--redis-port``/``--pg-port`` start an
embedded Valkey and PostgreSQL on those ports (``redis`` and ``copy`` stages only).

    .venv/bin/python benchmarks/hotpath_bench.py [--events 200000] [--stages decode,window]

Prints a table; ``--save`` writes ``benchmarks/results/hotpath-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from market_data_core.codec import decode_events, encode_events
from market_data_core.columnar import EventColumns, decode_blocks, encode_block
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import BusRecord, routing_key
from market_data_store._event_copy import TICKS

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("decode", "window", "rows", "copy", "redis")
# the columnar path's stages (column blocks, array operations, binary COPY from the arrays)
COLUMN_STAGES = ("decode_cols", "window_cols", "rows_cols", "copy_cols")
PROVIDER = "hbench"


def make_events(n: int, symbols: int, quotes: float) -> list[StreamEvent]:
    """``n`` events one every 50 µs round robin over ``symbols``; every event whose index
    falls in the ``quotes`` fraction (evenly spread) is a quote, the others trades."""
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    out = []
    quote_every = round(1 / quotes) if quotes > 0 else 0
    for i in range(n):
        ts = t0 + timedelta(microseconds=50 * i)
        common: dict[str, Any] = {
            "provider": PROVIDER,
            "symbol": f"S{i % symbols:03d}",
            "src_ts": ts,
            "ingest_ts": ts + timedelta(milliseconds=3),
            "seq": i,
        }
        price = round(100.0 + i * 7919 % 1000 / 100, 2)  # a price as a feed writes it
        if quote_every and i % quote_every == 0:
            out.append(
                StreamEvent.create(
                    kind="quote",
                    bid=price,
                    ask=round(price + 0.01, 2),
                    bid_size=float(i % 7 + 1),
                    ask_size=float(i % 5 + 1),
                    **common,
                )
            )
        else:
            out.append(
                StreamEvent.create(
                    kind="tick",
                    c=price,
                    v=float(i % 9 + 1),
                    trade_id=str(i),
                    side="buy" if i % 2 else "sell",
                    **common,
                )
            )
    return out


def pack(events: list[StreamEvent], per_entry: int) -> list[tuple[str, bytes]]:
    """(routing key, payload) per entry: ``per_entry`` events of one symbol each."""
    by_key: dict[str, list[StreamEvent]] = {}
    out: list[tuple[str, bytes]] = []
    for ev in events:
        key = routing_key(ev.provider, ev.symbol)
        buf = by_key.setdefault(key, [])
        buf.append(ev)
        if len(buf) == per_entry:
            out.append((key, encode_events(buf)))
            buf.clear()
    out += [(key, encode_events(buf)) for key, buf in by_key.items() if buf]
    return out


def best_us_per_event(fn: Callable[[], object], events: int, repeats: int) -> float:
    """Best of ``repeats`` runs of ``fn`` (which handles ``events`` events), µs CPU/event."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / events * 1e6


async def best_us_per_event_async(
    fn: Callable[[], Any], events: int, repeats: int, before: Callable[[], Any] | None = None
) -> float:
    best = float("inf")
    for _ in range(repeats):
        if before is not None:
            await before()
        gc.collect()
        t0 = time.process_time()
        await fn()
        best = min(best, time.process_time() - t0)
    return best / events * 1e6


def _records(entries: list[tuple[str, bytes]]) -> list[BusRecord]:
    return [
        BusRecord(topic="mdp.events", shard=0, entry_id=f"{i + 1}-0", payload=payload)
        for i, (_key, payload) in enumerate(entries)
    ]


def pack_blocks(events: list[StreamEvent], per_entry: int) -> list[bytes]:
    """Column-block payloads: ``per_entry`` events of one symbol each."""
    by_key: dict[str, list[StreamEvent]] = {}
    out: list[bytes] = []
    for ev in events:
        buf = by_key.setdefault(ev.symbol, [])
        buf.append(ev)
        if len(buf) == per_entry:
            out.append(encode_block(buf))
            buf.clear()
    out += [encode_block(buf) for buf in by_key.values() if buf]
    return out


POLL_ENTRIES = 100  # entries per poll at 50 events per entry: micro_batch.max_batch_size 5000


def stage_decode_cols(blocks: list[bytes], n: int, repeats: int) -> float:
    polls = [blocks[i : i + POLL_ENTRIES] for i in range(0, len(blocks), POLL_ENTRIES)]

    def run() -> None:
        for poll in polls:
            decode_blocks(poll)

    return best_us_per_event(run, n, repeats)


def tick_copy_stream(cols: EventColumns) -> bytes:
    """The ticks rows as the store COPYs them (binary, price and size as numeric; each
    series' ``series_key`` a stand-in: the bench's staging table has no ``CHECK``)."""
    return TICKS.copy(cols, {s: i for i, s in enumerate(cols.series)})


def _tick_chunks(blocks: list[bytes]) -> list[EventColumns]:
    cols = decode_blocks(blocks).columns
    ticks = cols.take(cols.kind == 0)
    return [ticks.take(np.arange(i, min(i + 5000, ticks.n))) for i in range(0, ticks.n, 5000)]


def stage_rows_cols(blocks: list[bytes], repeats: int) -> float:
    chunks = _tick_chunks(blocks)

    def run() -> None:
        for chunk in chunks:
            tick_copy_stream(chunk)

    return best_us_per_event(run, sum(c.n for c in chunks), repeats)


def stage_decode(entries: list[tuple[str, bytes]], n: int, repeats: int) -> float:
    payloads = [p for _k, p in entries]

    def run() -> None:
        for p in payloads:
            decode_events(p)

    return best_us_per_event(run, n, repeats)


def tick_records(events: list[StreamEvent]) -> list[tuple[Any, ...]]:
    """What ``PgStoreClient.ingest_ticks`` builds for COPY (a copy of the shipped code)."""
    unique = {e.event_id: e for e in events}
    return [
        (
            e.provider,
            e.symbol,
            e.src_ts,
            e.seq,
            e.event_id,
            repr(e.c),
            repr(e.v),
            e.side,
            e.trade_id,
            e.ingest_ts,
        )
        for e in unique.values()
    ]


def stage_rows(events: list[StreamEvent], repeats: int) -> float:
    ticks = [e for e in events if e.kind == "tick"]
    chunk = 5000  # micro_batch.max_batch_size: ingest_ticks is called per chunk

    def run() -> None:
        for i in range(0, len(ticks), chunk):
            tick_records(ticks[i : i + chunk])

    return best_us_per_event(run, len(ticks), repeats)


async def _servers_stages(
    args: argparse.Namespace,
    entries: list[tuple[str, bytes]],
    events: list[StreamEvent],
    stages: set[str],
) -> dict[str, float]:
    from market_data_pipeline.cli.common import DEFAULT_CONFIG, load_app_config
    from market_data_pipeline.consumers.micro_batcher import MicroBatcher
    from market_data_pipeline.servers import EmbeddedPostgres, EmbeddedRedis, ServerUrls
    from market_data_pipeline.streaming.bus import open_bus
    from market_data_pipeline.wiring import open_store, upgrade_schema

    out: dict[str, float] = {}
    tag = uuid.uuid4().hex[:6]
    n = len(events)
    redis = EmbeddedRedis(port=args.redis_port)
    pg = EmbeddedPostgres(port=args.pg_port)
    with redis, pg:
        urls = ServerUrls(redis_url=redis.url, database_url=pg.url, kafka_bootstrap=None)
        cfg = load_app_config(
            DEFAULT_CONFIG,
            {
                "bus.redis.stream": f"mdp.hb.{tag}.events",
                "bus.redis.bars_stream": f"mdp.hb.{tag}.bars",
                "bus.redis.dlq_stream": f"mdp.hb.{tag}.dlq",
                "bus.redis.consumer_group": f"hb-{tag}",
            },
        )
        await asyncio.to_thread(upgrade_schema, pg.url, config=cfg)
        bus = await open_bus(cfg, urls)
        store = await open_store(cfg, urls)
        try:
            if "window" in stages:
                records = _records(entries)

                async def ingest() -> None:
                    worker = MicroBatcher(cfg, bus, store, consumer_name=f"w{uuid.uuid4().hex}")
                    for i in range(0, len(records), 100):
                        await worker._ingest(records[i : i + 100])

                out["window+decode"] = await best_us_per_event_async(ingest, n, args.repeats)
            if "window_cols" in stages:
                block_records = [
                    BusRecord(topic="mdp.events", shard=0, entry_id=f"{i + 1}-0", payload=p)
                    for i, p in enumerate(pack_blocks(events, args.pack))
                ]

                async def ingest_blocks() -> None:
                    worker = MicroBatcher(cfg, bus, store, consumer_name=f"w{uuid.uuid4().hex}")
                    for i in range(0, len(block_records), 100):
                        await worker._ingest(block_records[i : i + 100])

                out["window_cols+decode"] = await best_us_per_event_async(
                    ingest_blocks, n, args.repeats
                )
            if "redis" in stages:
                total = 0.0
                best = float("inf")
                for r in range(args.repeats):
                    topic = f"mdp.hb.{tag}.r{r}"
                    for i in range(0, len(entries), 500):
                        await bus.publish(topic, entries[i : i + 500])
                    consumer = bus.consumer(topic, f"g{r}", "c")
                    t0 = time.process_time()
                    got = 0
                    while got < len(entries):
                        recs = await consumer.poll(100, 100)
                        got += len(recs)
                        await consumer.ack(recs)
                    total = time.process_time() - t0
                    best = min(best, total)
                    await consumer.aclose()
                out["redis"] = best / n * 1e6
            if "copy" in stages:
                ticks = [e for e in events if e.kind == "tick"]
                chunks = [tick_records(ticks[i : i + 5000]) for i in range(0, len(ticks), 5000)]
                pool = store._pool  # type: ignore[attr-defined]
                # the staging table of the record path (prices as text, cast to numeric later)
                text_ddl = (
                    "CREATE TEMP TABLE IF NOT EXISTS hb_stage_text (provider text, symbol text, "
                    "ts timestamptz, seq bigint, event_id text, price text, size text, "
                    "side text, trade_id text, ingest_ts timestamptz)"
                )
                text_columns = (
                    "provider",
                    "symbol",
                    "ts",
                    "seq",
                    "event_id",
                    "price",
                    "size",
                    "side",
                    "trade_id",
                    "ingest_ts",
                )

                async def copy() -> None:
                    async with pool.acquire() as conn:
                        await conn.execute(text_ddl)
                        for recs in chunks:
                            await conn.copy_records_to_table(
                                "hb_stage_text", records=recs, columns=text_columns
                            )
                        await conn.execute("TRUNCATE hb_stage_text")

                out["copy"] = await best_us_per_event_async(copy, len(ticks), args.repeats)
            if "copy_cols" in stages:
                streams = [tick_copy_stream(c) for c in _tick_chunks(pack_blocks(events, 50))]
                n_ticks = sum(1 for e in events if e.kind == "tick")
                pool = store._pool  # type: ignore[attr-defined]
                ddl = (
                    "CREATE TEMP TABLE IF NOT EXISTS hb_stage_ticks (provider text, symbol text, "
                    "ts timestamptz, seq bigint, series_key bigint, price numeric, size numeric, "
                    "side text, trade_id text, ingest_ts timestamptz)"
                )

                async def copy_cols() -> None:
                    async with pool.acquire() as conn:
                        await conn.execute(ddl)
                        for stream in streams:
                            await conn.copy_to_table(
                                "hb_stage_ticks",
                                source=memoryview(stream),  # as the store sends it
                                columns=TICKS.columns,
                                format="binary",
                            )
                        await conn.execute("TRUNCATE hb_stage_ticks")

                out["copy_cols"] = await best_us_per_event_async(copy_cols, n_ticks, args.repeats)
        finally:
            await store.aclose()
            await bus.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--pack", type=int, default=50)
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--quotes", type=float, default=0.0, help="fraction of quotes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stages", default=",".join(STAGES + COLUMN_STAGES))
    parser.add_argument("--redis-port", type=int, default=None)
    parser.add_argument("--pg-port", type=int, default=None)
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    stages = set(args.stages.split(","))
    # as the streaming stages run (market_data_pipeline.gc_pacing): no automatic collection
    gc.disable()
    events = make_events(args.events, args.symbols, args.quotes)
    entries = pack(events, args.pack)
    figures: dict[str, float] = {}
    if "decode" in stages or "window" in stages:
        figures["decode"] = stage_decode(entries, len(events), args.repeats)
    if "rows" in stages:
        figures["rows"] = stage_rows(events, args.repeats)
    if stages & set(COLUMN_STAGES):
        blocks = pack_blocks(events, args.pack)
        if "decode_cols" in stages or "window_cols" in stages:
            figures["decode_cols"] = stage_decode_cols(blocks, len(events), args.repeats)
        if "rows_cols" in stages:
            figures["rows_cols"] = stage_rows_cols(blocks, args.repeats)
    if stages & {"window", "copy", "redis", "copy_cols", "window_cols"}:
        figures.update(asyncio.run(_servers_stages(args, entries, events, stages)))
    if "window+decode" in figures:
        figures["window"] = figures.pop("window+decode") - figures["decode"]
    if "window_cols+decode" in figures:
        figures["window_cols"] = figures.pop("window_cols+decode") - figures["decode_cols"]
    for name in STAGES + COLUMN_STAGES:
        if name in figures:
            print(f"  {name:<8} {figures[name]:7.3f} µs/event")
    if args.save:
        run = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        result = {
            "run": run,
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "params": vars(args),
            "us_per_event": {k: round(v, 3) for k, v in figures.items()},
        }
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"hotpath-{run}.json"
        out.write_text(json.dumps(result, indent=2))
        print(f"results: {out}")


if __name__ == "__main__":
    main()
