"""Features and signals are a pure function of the final bars (SPEC §9, issue 14).

Every scenario ends with ``assert_signals_equal_reference``: the active rows of the
``signals`` table equal, bit for bit (the features behind each signal included), what mdp's
own fault-free pass over the final ``bars_ohlcv`` rows gives on a fresh database; that pass's
features equal TA-Lib's on the same bars; and ``mdp.signals`` carries every row's state.

The features add EMA, MACD and Bollinger bands to the shipped ones, and the rules add MACD
and EMA rules to the shipped ones, so signals depend on recursive indicators that need the
whole series (a restart that lost state would show).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pandas as pd
import pytest
import redis.asyncio as aredis
import yaml

from market_data_core.codec import decode_bar, decode_signal, encode_bar, encode_event
from market_data_core.config import AppConfig, parse_config
from market_data_core.contracts import StreamEvent
from market_data_core.errors import BusError
from market_data_core.protocols import Bus, routing_key, shard_for
from market_data_pipeline.consumers.inference_consumer import InferenceConsumer, InferenceStats
from market_data_pipeline.consumers.micro_batcher import MicroBatcher, MicroBatchStats
from market_data_pipeline.inference.timeline import CHECKPOINT_EVERY, SNAP_EVERY
from market_data_pipeline.servers import EmbeddedPostgres, EmbeddedRedis
from market_data_pipeline.streaming.bus import open_bus
from market_data_pipeline.wiring import open_signals_store, open_store, upgrade_schema
from tests.conftest import DATA, SHIPPED_CONFIG, SHIPPED_RULES
from tests.support.pipeline import write_config
from tests.support.signals_reference import (
    assert_signals_equal_reference,
    final_bars,
    fresh_engine,
    table_signals,
    urls_of,
)
from tests.support.trades import trade_events

SHIPPED = yaml.safe_load(SHIPPED_CONFIG.read_text())
EXTRA_WINDOWS = [
    {"name": "ema_20", "periods": 20},
    {"name": "macd", "periods": 26, "fast_periods": 12, "signal_periods": 9},
    {"name": "bb_20", "periods": 20},
]
EXTRA_RULES = [
    {"name": "macd_cross_up", "condition": "crosses_above(macd, macd_signal)", "signal": 1.0,
     "score": 0.6},
    {"name": "macd_cross_down", "condition": "crosses_below(macd, macd_signal)", "signal": -1.0,
     "score": 0.6},
    {"name": "ema_trend_up", "condition": "close > ema_20 and close > bb_20", "signal": 1.0,
     "score": 0.4},
]  # fmt: skip


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    upgrade_schema(database_url)
    return database_url


def make_config(
    redis_url: str,
    database_url: str,
    unique: str,
    tmp_path: Path,
    *,
    interval: str,
    window_ms: int = 1000,
    partitions: int = 1,
    rules: list[dict[str, Any]] | None = None,
    windows: list[dict[str, Any]] | None = None,
    **mb: Any,
) -> AppConfig:
    rules_file = tmp_path / f"rules-{unique}.yaml"
    shipped_rules = yaml.safe_load(SHIPPED_RULES.read_text())
    rules_file.write_text(
        yaml.safe_dump(rules if rules is not None else shipped_rules + EXTRA_RULES)
    )
    return parse_config(
        {
            "bus": {
                "partitions": partitions,
                "block_ms": 50,
                "claim_idle_ms": 1000,
                "redis": {
                    "uri": redis_url,
                    "stream": f"t.{unique}.events",
                    "bars_stream": f"t.{unique}.bars",
                    "dlq_stream": f"t.{unique}.dlq",
                    "signals_stream": f"t.{unique}.signals",
                    "consumer_group": f"g.{unique}",
                    "lease_ttl_ms": 1000,
                },
            },
            "micro_batch": {
                "window_ms": window_ms,
                "allow_late_ms": 500,
                "flush_timeout_ms": 200,
                "correction_horizon_ms": 300_000,
                **mb,
            },
            "features": {
                "windows": windows
                if windows is not None
                else SHIPPED["features"]["windows"] + EXTRA_WINDOWS,
                "interval": interval,
            },
            "inference": {"adapters": {"rules": {"file": str(rules_file)}}},
            "store": {"dsn": database_url},
            "telemetry": {"metrics_port": 0},
        }
    )


def ftx_bar_events(provider: str, start: int, stop: int) -> list[StreamEvent]:
    df = pd.read_csv(DATA / "ftx-btc-perp-1m-2022-01.csv", nrows=stop).iloc[start:]
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


def interleave(*streams: list[StreamEvent]) -> list[StreamEvent]:
    out: list[StreamEvent] = []
    for group in zip(*streams, strict=False):
        out += group
    return out


async def publish(
    bus: Bus, cfg: AppConfig, events: Sequence[StreamEvent], chunk: int = 500
) -> None:
    items = [(routing_key(e.provider, e.symbol), encode_event(e, cfg.bus.codec)) for e in events]
    for i in range(0, len(items), chunk):
        await bus.publish(cfg.bus.events_topic, items[i : i + chunk])


async def paced_publish(
    bus: Bus, cfg: AppConfig, events: Sequence[StreamEvent], rate: float, chunk: int = 100
) -> None:
    """Publish at ``rate`` events/s; a failed publish is retried (as the producers do)."""
    items = [(routing_key(e.provider, e.symbol), encode_event(e, cfg.bus.codec)) for e in events]
    t0 = time.monotonic()
    i = 0
    while i < len(items):
        await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
        try:
            await bus.publish(cfg.bus.events_topic, items[i : i + chunk])
        except BusError:
            await asyncio.sleep(0.2)
            continue
        i += chunk


async def micro_batch(cfg: AppConfig, name: str = "mb-1") -> MicroBatchStats:
    bus = await open_bus(cfg, urls_of(cfg))
    store = await open_store(cfg, urls_of(cfg))
    try:
        return await MicroBatcher(cfg, bus, store, consumer_name=name).run(
            asyncio.Event(), drain=True, idle_s=0.5
        )
    finally:
        await store.aclose()
        await bus.aclose()


async def infer(cfg: AppConfig, name: str, stop: asyncio.Event | None = None) -> InferenceStats:
    """A fresh engine, as a new `mdp stream infer --drain` process would have."""
    bus = await open_bus(cfg, urls_of(cfg))
    store = await open_store(cfg, urls_of(cfg))
    signals = await open_signals_store(cfg, urls_of(cfg))
    engine = fresh_engine(cfg, cfg.features.interval or "1s")
    try:
        consumer = InferenceConsumer(cfg, bus, store, signals, engine, consumer_name=name)
        if stop is None:
            return await consumer.run(asyncio.Event(), drain=True, idle_s=0.5)
        return await consumer.run(stop)
    finally:
        await engine.aclose()
        await signals.aclose()
        await store.aclose()
        await bus.aclose()


async def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def finish(*tasks: asyncio.Task[Any]) -> None:
    """After a failed assertion: let stopped stages end before their clients close."""
    for task in tasks:
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 30)


async def revisions_on_stream(bus: Bus, cfg: AppConfig) -> set[tuple[str, str, int | None]]:
    return {
        (b.provider, b.symbol, b.change_seq)
        for b in (decode_bar(r.payload) for r in await bus.tail(cfg.bus.bars_topic, 10**7))
    }


async def committed_revisions(dsn: str, providers: Sequence[str]) -> set[tuple[str, str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT provider, symbol, seq FROM bar_changes WHERE provider = ANY($1::text[])",
            list(providers),
        )
    finally:
        await conn.close()
    return {(r["provider"], r["symbol"], r["seq"]) for r in rows}


@pytest.fixture
async def bus_for() -> AsyncIterator[Any]:
    opened: list[Bus] = []

    async def make(cfg: AppConfig) -> Bus:
        bus = await open_bus(cfg, urls_of(cfg))
        opened.append(bus)
        return bus

    yield make
    for bus in opened:
        await bus.aclose()


# ---------------------------------------------------------------------------------------------


async def test_redis_kill_9_and_aof_restart_mid_run(
    migrated: str, database_url: str, unique: str, tmp_path: Path, bus_for: Any
) -> None:
    """Redis dies (kill -9) while producer, micro-batcher and inference run, and comes back
    from its AOF 3.5 s later: every committed bar revision is on mdp.bars (the outbox relay
    retried instead of dropping) and the signals equal the reference."""
    server = EmbeddedRedis(data_dir=tmp_path / "redis", appendonly=True)
    server.start()
    try:

        async def always_fsync() -> None:
            # an acknowledged write survives kill -9: what is lost must be our fault
            client = aredis.Redis.from_url(server.url)
            await client.config_set("appendfsync", "always")
            await client.aclose()

        await always_fsync()
        cfg = make_config(server.url, migrated, unique, tmp_path, interval="1s")
        providers = [f"rk{unique}a", f"rk{unique}b"]
        events = interleave(*(trade_events(p) for p in providers))
        bus = await bus_for(cfg)
        store = await open_store(cfg, urls_of(cfg))
        signals_store = await open_signals_store(cfg, urls_of(cfg))
        mb_stop, mb_drain, inf_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        batcher = MicroBatcher(cfg, bus, store, consumer_name="mb-rk")
        inference = InferenceConsumer(
            cfg, bus, store, signals_store, fresh_engine(cfg, "1s"), consumer_name="inf-rk"
        )
        try:
            mb_task = asyncio.create_task(batcher.run(mb_stop, drain_on=mb_drain, idle_s=1.0))
            inf_task = asyncio.create_task(inference.run(inf_stop))
            producer = asyncio.create_task(paced_publish(bus, cfg, events, rate=2500))

            async def mid_run() -> bool:
                return batcher.stats.bars_relayed > 300 and inference.stats.bars_scored > 100

            await wait_for(mid_run, 60, "bars flowing")
            server.kill()
            await asyncio.sleep(3.5)
            server.start()
            await always_fsync()
            await asyncio.wait_for(producer, 120)
            mb_drain.set()
            await asyncio.wait_for(mb_task, 120)
            inf_stop.set()
            await asyncio.wait_for(inf_task, 60)
        finally:
            mb_stop.set()
            inf_stop.set()
            await signals_store.aclose()
            await store.aclose()
        await infer(cfg, "inf-rk")  # the same consumer finishes what it had read
        committed = await committed_revisions(migrated, providers)
        assert committed and committed <= await revisions_on_stream(bus, cfg)
        series = [(p, "BTCUSDT") for p in providers]
        counts = await assert_signals_equal_reference(
            cfg, bus, series, server_url=database_url, interval="1s", min_signals=100
        )
        assert counts["talib_checked"] == 2 * 7  # rsi, momentum, 2 sma, ema, macd, bbands
    finally:
        server.stop()


@pytest.fixture(scope="module")
def private_pg() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres()
    server.start()
    upgrade_schema(server.url)
    yield server
    server.cleanup()


async def test_postgres_down_15s_partial_bars_are_corrected_and_rescored(
    redis_url: str, unique: str, tmp_path: Path, private_pg: EmbeddedPostgres, bus_for: Any
) -> None:
    """PostgreSQL stops for 15 s mid-run. Before it, the trades pause in the middle of a
    1 s window: that window closes by wall clock with the ticks it has (a partial bar, scored);
    its other ticks arrive during the outage, so once the store is back the bar is corrected
    (revision 1) and its symbol re-scored. The signals equal the reference."""
    cfg = make_config(
        redis_url, private_pg.url, unique, tmp_path, interval="1s", max_batch_size=200
    )
    providers = [f"pg{unique}a", f"pg{unique}b"]
    a, b = (trade_events(p) for p in providers)
    # a cut between two trades of the same second, 60 % of the way in
    cut = next(
        i
        for i in range(len(a) * 3 // 5, len(a) - 1)
        if a[i].src_ts.replace(microsecond=0) == a[i + 1].src_ts.replace(microsecond=0)
    )
    before, after = interleave(a[: cut + 1], b[: cut + 1]), interleave(a[cut + 1 :], b[cut + 1 :])
    bus = await bus_for(cfg)
    store = await open_store(cfg, urls_of(cfg))
    signals_store = await open_signals_store(cfg, urls_of(cfg))
    mb_stop, mb_drain, inf_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    batcher = MicroBatcher(cfg, bus, store, consumer_name="mb-pg")
    inference = InferenceConsumer(
        cfg, bus, store, signals_store, fresh_engine(cfg, "1s"), consumer_name="inf-pg"
    )
    cut_window = a[cut].src_ts.replace(microsecond=0)

    bars_before = 2 * len({e.src_ts.replace(microsecond=0) for e in a[: cut + 1]})
    bars_total = 2 * len({e.src_ts.replace(microsecond=0) for e in a})

    async def partial_bar_scored() -> bool:
        bars = await store.bars_range(
            providers[0], "BTCUSDT", "1s", cut_window, cut_window + timedelta(seconds=1)
        )
        return bool(bars) and inference.stats.bars_scored >= bars_before

    mb_task = asyncio.create_task(batcher.run(mb_stop, drain_on=mb_drain, idle_s=1.0))
    inf_task = asyncio.create_task(inference.run(inf_stop))
    try:
        await paced_publish(bus, cfg, before, rate=2000)
        await wait_for(partial_bar_scored, 60, "the partial bar stored and scored")
        await asyncio.to_thread(private_pg.stop)
        down = time.monotonic()
        await paced_publish(bus, cfg, after, rate=2000)  # read and held: no store to write to
        await asyncio.sleep(max(0.0, 15 - (time.monotonic() - down)))
        assert not mb_task.done() and not inf_task.done()
        await asyncio.to_thread(private_pg.start)
        mb_drain.set()
        await asyncio.wait_for(mb_task, 180)

        async def rescored() -> bool:
            # every final bar evaluated, and the corrected ones once more
            return inference.stats.bars_scored > bars_total

        await wait_for(rescored, 60, "the corrected bars re-scored")
        inf_stop.set()
        await asyncio.wait_for(inf_task, 60)
    finally:
        mb_stop.set()
        inf_stop.set()
        await finish(mb_task, inf_task)
        await signals_store.aclose()
        await store.aclose()
    await infer(cfg, "inf-pg")
    assert batcher.stats.store_retries > 0
    conn = await asyncpg.connect(private_pg.url)
    try:
        corrected = await conn.fetchval(
            "SELECT count(*) FROM bars_ohlcv WHERE provider = ANY($1::text[]) AND revision > 0",
            providers,
        )
    finally:
        await conn.close()
    print(f"bars corrected after the outage: {corrected}; {inference.stats}")
    assert corrected >= 2  # the window of the cut, in both series
    await assert_signals_equal_reference(
        cfg,
        bus,
        [(p, "BTCUSDT") for p in providers],
        server_url=private_pg.url,
        interval="1s",
        min_signals=100,
    )


async def test_kill_9_of_mdp_stream_infer_three_times(
    redis_url: str, migrated: str, database_url: str, unique: str, tmp_path: Path, bus_for: Any
) -> None:
    """`mdp stream infer` is killed (SIGKILL) three times while bars flow, then runs to the
    end under the same consumer name: the signals equal the reference."""
    cfg = make_config(redis_url, migrated, unique, tmp_path, interval="1m")
    providers = [f"ki{unique}{k}" for k in "abc"]
    events = interleave(*(ftx_bar_events(p, 0, 2400) for p in providers))
    bus = await bus_for(cfg)
    path = write_config(tmp_path, cfg)
    cmd = [
        sys.executable, "-m", "market_data_pipeline.cli.app", "stream", "infer",
        "--config", str(path), "--drain", "--idle-s", "1", "--consumer", "inf-killed",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URI", "DATABASE_URL")}
    store = await open_store(cfg, urls_of(cfg))
    mb_stop, mb_drain = asyncio.Event(), asyncio.Event()
    batcher = MicroBatcher(cfg, bus, store, consumer_name="mb-ki")
    rng = random.Random(14)
    try:
        mb_task = asyncio.create_task(batcher.run(mb_stop, drain_on=mb_drain, idle_s=1.0))
        producer = asyncio.create_task(paced_publish(bus, cfg, events, rate=500))
        series = [(p, "BTC-PERP") for p in providers]
        for _ in range(3):
            before = len(await table_signals(cfg, series))
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            # killed mid-run: once this process has written signals (its start-up takes ~1 s
            # on a quiet machine, much longer on a loaded one), at a random moment after
            deadline = time.monotonic() + 120
            while len(await table_signals(cfg, series)) == before and proc.poll() is None:
                assert time.monotonic() < deadline, "mdp stream infer wrote no signal in 120 s"
                await asyncio.sleep(0.1)
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
        await asyncio.wait_for(producer, 120)
        mb_drain.set()
        await asyncio.wait_for(mb_task, 120)
    finally:
        mb_stop.set()
        await store.aclose()
    assert len(await table_signals(cfg, [(p, "BTC-PERP") for p in providers])) > 0
    done = await asyncio.to_thread(
        subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    await assert_signals_equal_reference(
        cfg,
        bus,
        [(p, "BTC-PERP") for p in providers],
        server_url=database_url,
        interval="1m",
        min_signals=100,
    )


async def test_three_micro_batchers_one_killed(
    redis_url: str, migrated: str, database_url: str, unique: str, tmp_path: Path, bus_for: Any
) -> None:
    """Three `mdp stream micro-batch` processes on four shards, one killed (SIGKILL) mid-run;
    the survivors take its shards over and rewrite what it left: the signals of the final
    bars equal the reference."""
    cfg = make_config(redis_url, migrated, unique, tmp_path, interval="1s", partitions=4)
    # the same real trades as six series whose symbols cover all four shards
    series = [(f"mk{unique}", f"BTCUSDT.{k}") for k in "abcdef"]
    assert {shard_for(routing_key(p, s), 4) for p, s in series} == {0, 1, 2, 3}
    bus = await bus_for(cfg)
    for p, s in series:
        await publish(bus, cfg, trade_events(p, symbol=s))
    path = write_config(tmp_path, cfg)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URI", "DATABASE_URL")}

    def worker(k: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "market_data_pipeline.cli.app",
                "stream",
                "micro-batch",
                "--config",
                str(path),
                "--drain",
                "--idle-s",
                "2",
                "--consumer",
                f"mb-{k}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    inf_stop = asyncio.Event()
    inf_task = asyncio.create_task(infer(cfg, "inf-mk", inf_stop))
    workers = [worker(k) for k in range(3)]
    try:
        await asyncio.sleep(3.0)
        workers[0].send_signal(signal.SIGKILL)
        for w in workers[1:]:
            _, err = await asyncio.to_thread(w.communicate, timeout=300)
            assert w.returncode == 0, err[-3000:]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait(10)
            if w.stderr is not None:
                w.stderr.close()
        inf_stop.set()
    live = await asyncio.wait_for(inf_task, 60)
    final = await infer(cfg, "inf-mk")
    print(f"live: {live}\nfinal: {final}")
    await assert_signals_equal_reference(
        cfg, bus, series, server_url=database_url, interval="1s", min_signals=100
    )


async def test_a_late_tick_inside_the_horizon_retracts_and_emits(
    redis_url: str, migrated: str, database_url: str, unique: str, tmp_path: Path, bus_for: Any
) -> None:
    """A tick arrives after its bar was closed, stored and scored: the bar is corrected
    (revision 1), its symbol re-scored from that bar, the signal that no longer holds is
    retracted (row state and an event on mdp.signals) and the new one emitted."""
    rules = [{"name": "above_100", "condition": "close > 100", "signal": 1.0, "score": 1.0}]
    windows = [{"name": "sma_3", "periods": 3}]
    cfg = make_config(
        redis_url, migrated, unique, tmp_path, interval="1s", rules=rules, windows=windows
    )
    p = f"lt{unique}"
    t0 = datetime(2021, 6, 1, 12, tzinfo=UTC)

    def tick(at_s: float, price: float, seq: int) -> StreamEvent:
        return StreamEvent.create(
            provider=p, symbol="X", kind="tick", src_ts=t0 + timedelta(seconds=at_s), c=price,
            v=1.0, seq=seq,
        )  # fmt: skip

    on_time = [tick(i + 0.1, 101.0 if i in (60, 61) else 99.0, i) for i in range(120)]
    late = tick(60.9, 98.0, 1000)  # bar 60 closes at 98 now: no signal there, one at bar 61
    bus = await bus_for(cfg)
    store = await open_store(cfg, urls_of(cfg))
    signals_store = await open_signals_store(cfg, urls_of(cfg))
    mb_stop, mb_drain, inf_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    batcher = MicroBatcher(cfg, bus, store, consumer_name="mb-lt")
    inference = InferenceConsumer(
        cfg, bus, store, signals_store, fresh_engine(cfg, "1s"), consumer_name="inf-lt"
    )
    sid = f"{p}|X|{{}}|above_100|rules"
    at60 = sid.format("2021-06-01T12:01:00.000000Z")
    at61 = sid.format("2021-06-01T12:01:01.000000Z")

    async def states() -> dict[str, str]:
        return {s.signal_id: s.state for s in await table_signals(cfg, [(p, "X")])}

    try:
        mb_task = asyncio.create_task(batcher.run(mb_stop, drain_on=mb_drain, idle_s=1.0))
        inf_task = asyncio.create_task(inference.run(inf_stop))
        await publish(bus, cfg, on_time)

        async def first_signal() -> bool:
            return (await states()).get(at60) == "active"

        await wait_for(first_signal, 30, "the signal at bar 60")
        await publish(bus, cfg, [late])

        async def corrected() -> bool:
            return await states() == {at60: "retracted", at61: "active"}

        await wait_for(corrected, 30, "the retraction at 60 and the signal at 61")
        mb_drain.set()
        await asyncio.wait_for(mb_task, 60)
        inf_stop.set()
        await asyncio.wait_for(inf_task, 60)
    finally:
        mb_stop.set()
        inf_stop.set()
        await signals_store.aclose()
        await store.aclose()
    assert batcher.stats.late_corrections == 1  # the late path, not a fresh worker's clock
    bar = next(b for b in await open_store_bars(cfg, p) if b.ts == t0 + timedelta(seconds=60))
    assert (bar.c, bar.revision, bar.trade_count) == (98.0, 1, 2)
    # re-scored from bar 60 only: the state before it, a few bars replayed at most
    assert inference.stats.bars_replayed < SNAP_EVERY
    events = [decode_signal(r.payload) for r in await bus.tail(cfg.bus.signals_topic, 1000)]
    assert [(s.signal_id, s.state) for s in events] == [
        (at60, "active"),
        (at61, "active"),
        (at60, "retracted"),
    ] or [(s.signal_id, s.state) for s in events] == [
        (at60, "active"),
        (at60, "retracted"),
        (at61, "active"),
    ]
    counts = await assert_signals_equal_reference(
        cfg, bus, [(p, "X")], server_url=database_url, interval="1s"
    )
    assert counts == {"bars": 120, "signals": 1, "retracted": 1, "talib_checked": 1}


async def open_store_bars(cfg: AppConfig, provider: str) -> list[Any]:
    store = await open_store(cfg, urls_of(cfg))
    try:
        return await store.bars_range(
            provider, "X", "1s", datetime(2021, 6, 1, tzinfo=UTC), datetime(2021, 6, 2, tzinfo=UTC)
        )
    finally:
        await store.aclose()


async def test_restart_after_a_two_day_hole_in_the_1m_bars(
    redis_url: str, migrated: str, database_url: str, unique: str, tmp_path: Path, bus_for: Any
) -> None:
    """The shipped 1 m bars with two days cut out: `mdp stream infer` runs up to the hole,
    stops, and a new process runs after it. It resumes from its checkpoint (in bars, not
    clock time) and ends exactly where one continuous pass over the final bars ends."""
    cfg = make_config(redis_url, migrated, unique, tmp_path, interval="1m")
    p = f"wk{unique}"
    before = ftx_bar_events(p, 0, 1440)  # 2021-12-31 23:01 .. 2022-01-01 23:00
    after = ftx_bar_events(p, 1440 + 2880, 1440 + 2880 + 1440)  # two days later
    assert after[0].src_ts - before[-1].src_ts == timedelta(days=2, minutes=1)
    bus = await bus_for(cfg)
    await publish(bus, cfg, before)
    await micro_batch(cfg)
    first = await infer(cfg, "inf-wk-1")
    assert first.resumes == 1 and first.bars_scored == len(before)
    await publish(bus, cfg, after)
    await micro_batch(cfg)
    second = await infer(cfg, "inf-wk-2")
    # from the first process's checkpoint: the bars after it, not the whole history
    assert second.resumes == 1
    assert len(after) <= second.bars_scored <= len(after) + CHECKPOINT_EVERY + SNAP_EVERY + 8
    await assert_signals_equal_reference(
        cfg, bus, [(p, "BTC-PERP")], server_url=database_url, interval="1m", min_signals=50
    )


async def test_a_second_replay_adds_nothing_anywhere(
    redis_url: str, migrated: str, database_url: str, unique: str, tmp_path: Path, bus_for: Any
) -> None:
    """The same provider bars and the same trades replayed a second time: 0 new entries on
    mdp.bars, 0 new signals on mdp.signals or in the table."""
    cfg = make_config(redis_url, migrated, unique, tmp_path, interval="1m")
    p = f"rp{unique}"
    bars = ftx_bar_events(p, 0, 1500)
    ticks = trade_events(f"{p}t")
    bus = await bus_for(cfg)
    await publish(bus, cfg, bars + ticks)
    await micro_batch(cfg)
    await infer(cfg, "inf-rp")
    lengths = (
        len(await bus.tail(cfg.bus.bars_topic, 10**6)),
        len(await bus.tail(cfg.bus.signals_topic, 10**6)),
        len(await table_signals(cfg, [(p, "BTC-PERP")])),
    )
    assert lengths[0] == 1500 + 2959 and lengths[1] == lengths[2] > 50

    await publish(bus, cfg, bars + ticks)
    again = await micro_batch(cfg)
    second = await infer(cfg, "inf-rp")
    assert again.bars_written == 0 and again.bars_relayed == 0
    assert second.bars_in == 0 and second.signals == 0
    assert (
        len(await bus.tail(cfg.bus.bars_topic, 10**6)),
        len(await bus.tail(cfg.bus.signals_topic, 10**6)),
        len(await table_signals(cfg, [(p, "BTC-PERP")])),
    ) == lengths
    await assert_signals_equal_reference(
        cfg, bus, [(p, "BTC-PERP")], server_url=database_url, interval="1m", min_signals=50
    )


async def test_bar_changes_lost_on_the_bus_are_found_in_the_store(
    redis_url: str, migrated: str, database_url: str, unique: str, tmp_path: Path, bus_for: Any
) -> None:
    """Entries of mdp.bars that never reach inference (a Redis that lost acknowledged writes,
    a trimmed stream): a new inference process reconciles with the change log and resumes
    the series from the store."""
    cfg = make_config(redis_url, migrated, unique, tmp_path, interval="1m")
    p = f"lb{unique}"
    bus = await bus_for(cfg)
    await publish(bus, cfg, ftx_bar_events(p, 0, 800))
    await micro_batch(cfg)
    await infer(cfg, "inf-lb")
    await publish(bus, cfg, ftx_bar_events(p, 800, 1200))
    await micro_batch(cfg)
    client = aredis.Redis.from_url(redis_url)
    try:
        lost = [r.entry_id for r in await bus.tail(cfg.bus.bars_topic, 400)]
        assert len(lost) == 400
        await client.xdel(cfg.bus.bars_topic, *lost)
    finally:
        await client.aclose()
    stats = await infer(cfg, "inf-lb")
    assert stats.bars_in == 0 and stats.resyncs == 1
    # a bar that is not from the change log (written to mdp.bars by hand, no change_seq):
    # the series is read from the store again, and the bar's own values count for nothing
    stored = (await final_bars(cfg, [(p, "BTC-PERP")], "1m"))[700]
    bogus = dataclasses.replace(stored, c=stored.c * 2, h=stored.h * 2, revision=9)
    await bus.publish(cfg.bus.bars_topic, [(routing_key(p, "BTC-PERP"), encode_bar(bogus))] * 3)
    stats = await infer(cfg, "inf-lb")
    assert (stats.bars_in, stats.resumes, stats.bars_stale, stats.signals) == (3, 1, 3, 0)
    await assert_signals_equal_reference(
        cfg, bus, [(p, "BTC-PERP")], server_url=database_url, interval="1m", min_signals=50
    )
