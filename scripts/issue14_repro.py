"""Reproduce issue 14's figures with the mdp on ``sys.path`` (this branch, or an older checkout
put first with ``PYTHONPATH=<checkout>``): it uses only APIs both have.

    python scripts/issue14_repro.py bars      # item 1: Redis kill -9 + AOF restart mid-run
    python scripts/issue14_repro.py replay    # item 5: the same provider bars replayed twice
    python scripts/issue14_repro.py weekend   # item 3: a restart after a 2-day hole

Each starts its own embedded Valkey (AOF on) and PostgreSQL on free ports, with data in a
temporary folder, and stops them. Printed:

- ``bars``: committed bar revisions (sum of revision + 1 in ``bars_ohlcv``) against entries on
  ``mdp.bars``, after 9,999 real trades over 20 symbols at 1,000 events/s with Redis killed
  4 s in, while a window's commit is in flight, and restarted from its AOF 3.5 s later
  (before, at dc403ab: 200 of 240 revisions on mdp.bars, "could not publish 40 closed
  bars"; after: every revision, 220 of 220, "relaying bar changes ... failed ... retrying");
- ``replay``: entries on ``mdp.bars`` after the first and the second replay of 5,000 shipped
  1 m bars (before: 5,000 then 10,000; after: 5,000 then 5,000);
- ``weekend``: the shipped 1 m bars with two days cut out, ``mdp stream infer`` stopped at the
  hole and started again after it; the signals after the hole in the table against one
  continuous pass of the same engine over the same bars, features with EMA 50 and MACD
  (before: 11 missing, 8 extra, 42 with other feature values; after: 0, 0, 0).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pandas as pd
import redis.asyncio as aredis
import yaml

from market_data_core.codec import encode_event
from market_data_core.config import parse_config
from market_data_core.contracts import Bar, StreamEvent
from market_data_core.errors import BusError
from market_data_core.protocols import routing_key
from market_data_pipeline.consumers.inference_consumer import InferenceConsumer
from market_data_pipeline.consumers.micro_batcher import MicroBatcher
from market_data_pipeline.features import FeatureEngine
from market_data_pipeline.inference.engine import InferenceEngine, build_adapter
from market_data_pipeline.servers import EmbeddedPostgres, EmbeddedRedis, ServerUrls
from market_data_pipeline.streaming.bus import open_bus
from market_data_pipeline.wiring import open_signals_store, open_store, upgrade_schema


def _shipped(name: str) -> Path:
    """A shipped file, wherever this version keeps it (package data, or the repository)."""
    try:
        from market_data_pipeline.project import DEFAULTS_DIR  # type: ignore[attr-defined]

        base = Path(DEFAULTS_DIR)
    except ImportError:
        base = Path(__file__).resolve().parent.parent
    for candidate in (base / name, base / "datasets" / Path(name).name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(name)


TRADES = "datasets/binance-futures-btcusdt-trades-2020-02-22.csv"
BARS_1M = "datasets/ftx-btc-perp-1m-2022-01.csv"


def _config(redis_url: str, pg_url: str, tag: str, **extra: Any) -> Any:
    return parse_config(
        {
            "bus": {
                "block_ms": 50,
                "claim_idle_ms": 1000,
                "redis": {
                    "uri": redis_url,
                    "stream": f"r.{tag}.events",
                    "bars_stream": f"r.{tag}.bars",
                    "dlq_stream": f"r.{tag}.dlq",
                    "signals_stream": f"r.{tag}.signals",
                    "consumer_group": f"g.{tag}",
                    "lease_ttl_ms": 1000,
                },
            },
            "micro_batch": {"window_ms": 1000, "flush_timeout_ms": 200},
            "store": {"dsn": pg_url},
            "telemetry": {"metrics_port": 0},
            **extra,
        }
    )


def _bar_events(provider: str, start: int, stop: int) -> list[StreamEvent]:
    df = pd.read_csv(_shipped(BARS_1M), nrows=stop).iloc[start:]
    return [
        StreamEvent.create(
            provider=provider,
            symbol="BTC-PERP",
            kind="bar",
            interval="1m",
            src_ts=datetime.fromisoformat(r.timestamp).replace(tzinfo=UTC),
            o=r.open,
            h=r.high,
            l=r.low,
            c=r.close,
            v=r.volume,
            seq=0,
        )
        for r in df.itertuples()
    ]


async def _publish(bus: Any, cfg: Any, events: list[StreamEvent]) -> None:
    items = [(routing_key(e.provider, e.symbol), encode_event(e)) for e in events]
    for i in range(0, len(items), 1000):
        await bus.publish(cfg.bus.events_topic, items[i : i + 1000])


async def _drain_micro_batch(cfg: Any, urls: ServerUrls, bus: Any) -> None:
    store = await open_store(cfg, urls)
    try:
        await MicroBatcher(cfg, bus, store, consumer_name="mb").run(
            asyncio.Event(), drain=True, idle_s=0.5
        )
    finally:
        await store.aclose()


async def bars(redis: EmbeddedRedis, pg_url: str) -> None:
    cfg = _config(redis.url, pg_url, "a")
    urls = ServerUrls(redis.url, pg_url, None)
    rows = list(csv.DictReader(_shipped(TRADES).open()))
    t0 = datetime.now(UTC) + timedelta(seconds=1)
    events = [
        StreamEvent.create(
            provider="reproa",
            symbol=f"S{i % 20:02d}",
            kind="tick",
            src_ts=t0 + timedelta(seconds=i / 1000),
            ingest_ts=t0 + timedelta(seconds=i / 1000),
            c=float(r["price"]) * (1 + 0.01 * (i % 20)),
            v=float(r["amount"]),
            seq=i,
        )
        for i, r in enumerate(rows)
    ]
    bus = await open_bus(cfg, urls)
    store = await open_store(cfg, urls)
    drain_on = asyncio.Event()
    batcher = MicroBatcher(cfg, bus, store, consumer_name="mb-a")
    task = asyncio.create_task(batcher.run(asyncio.Event(), drain_on=drain_on, idle_s=1.0))

    async def produce() -> None:
        start = time.monotonic()
        i = 0
        while i < len(events):
            await asyncio.sleep(max(0.0, start + i / 1000 - time.monotonic()))
            chunk = events[i : i + 50]
            try:
                await bus.publish(
                    cfg.bus.events_topic,
                    [(routing_key(e.provider, e.symbol), encode_event(e)) for e in chunk],
                )
                i += len(chunk)
            except BusError:
                await asyncio.sleep(0.2)

    producer = asyncio.create_task(produce())
    await asyncio.sleep(4.0)
    # kill while a commit is in flight: event time runs 1 s ahead of the wall clock, so a
    # window [k, k+1) closes by watermark (allow_late 0.5 s) at wall time k + 0.5
    await asyncio.sleep((0.502 - time.time() % 1.0) % 1.0)
    redis.kill()
    await asyncio.sleep(3.5)
    redis.start()
    await producer
    drain_on.set()
    await asyncio.wait_for(task, 120)
    conn = await asyncpg.connect(pg_url)
    try:
        n_bars, revisions = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(revision + 1), 0) FROM bars_ohlcv "
            "WHERE provider = 'reproa'"
        )
    finally:
        await conn.close()
    client = aredis.Redis.from_url(redis.url)
    on_stream = await client.xlen(cfg.bus.bars_topic)
    await client.aclose()
    print(f"bars: {n_bars} bars, {revisions} committed revisions, {on_stream} entries on mdp.bars")
    await store.aclose()
    await bus.aclose()


async def replay(redis: EmbeddedRedis, pg_url: str) -> None:
    cfg = _config(redis.url, pg_url, "b")
    urls = ServerUrls(redis.url, pg_url, None)
    events = _bar_events("reprob", 0, 5000)
    bus = await open_bus(cfg, urls)
    client = aredis.Redis.from_url(redis.url)
    for n in (1, 2):
        await _publish(bus, cfg, events)
        await _drain_micro_batch(cfg, urls, bus)
        held = await client.xlen(cfg.bus.bars_topic)
        print(f"replay {n} of {len(events)} bars: mdp.bars holds {held}")
    await client.aclose()
    await bus.aclose()


async def weekend(redis: EmbeddedRedis, pg_url: str, tmp: Path) -> None:
    rules = [
        *yaml.safe_load(_shipped("configs/rules.yaml").read_text()),
        {"name": "macd_cross_up", "condition": "crosses_above(macd, macd_signal)",
         "signal": 1.0, "score": 0.6},
        {"name": "ema_trend_up", "condition": "close > ema_50", "signal": 1.0, "score": 0.4},
    ]  # fmt: skip
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules))
    shipped = yaml.safe_load(_shipped("configs/streaming.yaml").read_text())
    cfg = _config(
        redis.url,
        pg_url,
        "w",
        features={
            "windows": shipped["features"]["windows"]
            + [{"name": "ema_50", "periods": 50}, {"name": "macd", "periods": 26}],
            "interval": "1m",
            "warmup_bars": 500,
        },
        inference={"adapters": {"rules": {"file": str(tmp / "rules.yaml")}}},
    )
    urls = ServerUrls(redis.url, pg_url, None)

    def engine() -> InferenceEngine:
        f = FeatureEngine(cfg.features.windows, timed=False)
        return InferenceEngine(f, build_adapter(cfg, "rules", f.feature_names), interval="1m")

    parts = [_bar_events("wk", 0, 1440), _bar_events("wk", 1440 + 2880, 1440 + 2880 + 1440)]
    bus = await open_bus(cfg, urls)
    for part in parts:  # stop at the hole, start again after it
        await _publish(bus, cfg, part)
        await _drain_micro_batch(cfg, urls, bus)
        store = await open_store(cfg, urls)
        signals = await open_signals_store(cfg, urls)
        await InferenceConsumer(cfg, bus, store, signals, engine(), consumer_name="inf").run(
            asyncio.Event(), drain=True, idle_s=0.5
        )
        await signals.aclose()
        await store.aclose()
    await bus.aclose()
    continuous = engine()
    want = {}
    for e in parts[0] + parts[1]:
        assert e.o is not None and e.h is not None and e.l is not None and e.c is not None
        bar = Bar(e.provider, e.symbol, "1m", e.src_ts, e.o, e.h, e.l, e.c, e.v)
        for s in await continuous.on_bar(bar) or []:
            want[s.signal_id] = s
    signals = await open_signals_store(cfg, urls)
    rows = await signals.signals_range(
        datetime(2021, 1, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC)
    )
    await signals.aclose()
    got = {s.signal_id: s for s in rows if getattr(s, "state", "active") == "active"}
    after = [k for k in want if want[k].ts >= parts[1][0].src_ts]
    missing = [k for k in after if k not in got]
    extra = [k for k in got if k not in want]
    differ = [
        k
        for k in after
        if k in got
        and json.dumps(got[k].meta, sort_keys=True) != json.dumps(want[k].meta, sort_keys=True)
    ]
    print(
        f"weekend: {len(after)} signals after the hole in the continuous pass; the table: "
        f"{len(missing)} missing, {len(extra)} extra, {len(differ)} with other feature values"
    )


async def main(which: str) -> None:
    with tempfile.TemporaryDirectory(prefix="mdp-issue14-") as tmp:
        redis = EmbeddedRedis(data_dir=Path(tmp) / "redis", appendonly=True)
        pg = EmbeddedPostgres()  # its own temporary folder, readable by the server's user
        redis.start()
        pg.start()
        try:
            upgrade_schema(pg.url)
            if which == "bars":
                await bars(redis, pg.url)
            elif which == "replay":
                await replay(redis, pg.url)
            else:
                await weekend(redis, pg.url, Path(tmp))
        finally:
            redis.stop()
            pg.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["bars", "replay", "weekend"])
    asyncio.run(main(parser.parse_args().which))
