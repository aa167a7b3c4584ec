"""The micro-batcher's bars equal the offline reference exactly (SPEC §6, issue 6), on the real
trades, at 0.5 s, 1 s, 2 s and 5 s, whatever happens: replays, shuffles, duplicates, kill -9,
several workers, PostgreSQL down; with one event per entry and with column blocks (the columnar
path, ``wire="blocks"``)."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from market_data_core.codec import decode_bar
from market_data_core.config import AppConfig
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import routing_key, shard_for
from market_data_pipeline.consumers.micro_batcher import MicroBatcher, MicroBatchStats
from market_data_pipeline.servers import EmbeddedPostgres
from market_data_pipeline.streaming.bus import open_bus
from market_data_pipeline.wiring import open_store, upgrade_schema
from tests.support.cli import MDP, mdp_env
from tests.support.pipeline import (
    WIRES,
    Wire,
    make_config,
    publish,
    urls,
    wire_options,
    write_config,
)
from tests.support.trades import SYMBOL, assert_bars_equal_reference, trade_events

WINDOWS = [500, 1000, 2000, 5000]
T0 = datetime(2020, 2, 22, tzinfo=UTC)
T1 = datetime(2020, 2, 23, tzinfo=UTC)


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    upgrade_schema(database_url)
    return database_url


async def drain(cfg: AppConfig, name: str = "mb-1", idle_s: float = 0.5) -> MicroBatchStats:
    bus = await open_bus(cfg, urls(cfg))
    store = await open_store(cfg, urls(cfg))
    try:
        return await MicroBatcher(cfg, bus, store, consumer_name=name).run(
            asyncio.Event(), drain=True, idle_s=idle_s
        )
    finally:
        await store.aclose()
        await bus.aclose()


async def stored(cfg: AppConfig, provider: str, window_ms: int, symbol: str = SYMBOL) -> list[Any]:
    from market_data_core.timeutil import format_duration_ms

    store = await open_store(cfg, urls(cfg))
    try:
        return await store.bars_range(provider, symbol, format_duration_ms(window_ms), T0, T1)
    finally:
        await store.aclose()


@pytest.fixture
async def env(redis_url: str, migrated: str, unique: str) -> AsyncIterator[dict[str, Any]]:
    yield {
        "redis_url": redis_url,
        "database_url": migrated,
        "unique": unique,
        "provider": f"bn{unique}",
    }


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("window_ms", WINDOWS)
async def test_replay_once_then_twice_changes_nothing(
    env: dict[str, Any], window_ms: int, wire: Wire
) -> None:
    cfg = make_config(
        env["redis_url"], env["database_url"], env["unique"], window_ms, **wire_options(wire)
    )
    events = trade_events(env["provider"])
    bus = await open_bus(cfg, urls(cfg))
    try:
        await publish(bus, cfg, events, wire)
        first = await drain(cfg)
        assert first.events_in == 9999 and first.ticks_inserted == 9999
        # in small batches, events of open windows are stored before they close
        assert (first.stored_early > 0) == (wire == "blocks")
        assert_bars_equal_reference(await stored(cfg, env["provider"], window_ms), window_ms)
        await publish(bus, cfg, events, wire)
        second = await drain(cfg)
        assert second.events_in == 9999
        assert (second.ticks_inserted, second.bars_written) == (0, 0)
        assert_bars_equal_reference(await stored(cfg, env["provider"], window_ms), window_ms)
        # every closed bar was published for inference
        bars = [decode_bar(r.payload) for r in await bus.tail(cfg.bus.bars_topic, 100_000)]
        assert {b.ts for b in bars} >= {b.ts for b in await stored(cfg, env["provider"], window_ms)}
    finally:
        await bus.aclose()


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("window_ms", WINDOWS)
async def test_shuffled_within_allowed_lateness(
    env: dict[str, Any], window_ms: int, wire: Wire
) -> None:
    cfg = make_config(
        env["redis_url"], env["database_url"], env["unique"], window_ms, **wire_options(wire)
    )
    events = trade_events(env["provider"])
    rng = random.Random(window_ms)
    # displace each event by a random delay < allow_late_ms (400 ms) and sort by that key
    shuffled = sorted(events, key=lambda e: e.src_ts + timedelta(milliseconds=rng.uniform(0, 400)))
    assert shuffled != events
    bus = await open_bus(cfg, urls(cfg))
    try:
        await publish(bus, cfg, shuffled, wire)
    finally:
        await bus.aclose()
    stats = await drain(cfg)
    assert stats.too_late == 0 and stats.dead_letters == 0
    assert_bars_equal_reference(await stored(cfg, env["provider"], window_ms), window_ms)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("window_ms", WINDOWS)
async def test_one_percent_duplicates(env: dict[str, Any], window_ms: int, wire: Wire) -> None:
    cfg = make_config(
        env["redis_url"], env["database_url"], env["unique"], window_ms, **wire_options(wire)
    )
    events = trade_events(env["provider"])
    rng = random.Random(7)
    dupes = rng.sample(range(len(events)), len(events) // 100)
    stream = list(events)
    for i in dupes:  # re-insert a copy a little later in the stream
        stream.insert(min(len(stream), i + rng.randint(1, 50)), events[i])
    bus = await open_bus(cfg, urls(cfg))
    try:
        await publish(bus, cfg, stream, wire)
    finally:
        await bus.aclose()
    stats = await drain(cfg)
    assert stats.events_in == len(stream) and stats.ticks_inserted == 9999
    assert_bars_equal_reference(await stored(cfg, env["provider"], window_ms), window_ms)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("window_ms", WINDOWS)
async def test_three_micro_batchers_at_once(
    env: dict[str, Any], window_ms: int, wire: Wire
) -> None:
    cfg = make_config(
        env["redis_url"],
        env["database_url"],
        env["unique"],
        window_ms,
        partitions=4,
        **wire_options(wire),
    )
    # the same real trades as six series; a shard is decided by the symbol, and these six
    # symbols cover all 4 shards
    series = [(f"{env['provider']}{k}", f"{SYMBOL}.{k}") for k in "abcdef"]
    assert {shard_for(routing_key(p, s), 4) for p, s in series} == {0, 1, 2, 3}
    bus = await open_bus(cfg, urls(cfg))
    try:
        for p, s in series:
            await publish(bus, cfg, trade_events(p, symbol=s), wire)
    finally:
        await bus.aclose()
    results = await asyncio.gather(*(drain(cfg, name=f"mb-{i}", idle_s=1.5) for i in range(3)))
    print([(r.events_in, r.ticks_inserted, r.bars_written, r.flushes) for r in results])
    assert sum(r.events_in for r in results) >= 6 * 9999
    for p, s in series:
        assert_bars_equal_reference(await stored(cfg, p, window_ms, s), window_ms)
    assert sum(r.ticks_inserted for r in results) == 6 * 9999
    for p, s in series:
        assert_bars_equal_reference(await stored(cfg, p, window_ms, s), window_ms)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("window_ms", [500, 2000])
async def test_kill_9_three_times_then_restart(
    env: dict[str, Any], window_ms: int, tmp_path: Path, wire: Wire
) -> None:
    cfg = make_config(
        env["redis_url"], env["database_url"], env["unique"], window_ms, max_batch_size=100
    )
    bus = await open_bus(cfg, urls(cfg))
    try:
        await publish(bus, cfg, trade_events(env["provider"]), wire)
    finally:
        await bus.aclose()
    path = write_config(tmp_path, cfg)
    options = ["--drain", "--idle-s", "1", "--consumer", "mb-crashy"]
    cmd = [*MDP, "stream", "micro-batch", "--config", str(path), *options]
    rng = random.Random(window_ms)
    environ = mdp_env()
    for _ in range(3):
        proc = subprocess.Popen(
            cmd, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await asyncio.sleep(rng.uniform(1.5, 3.5))  # start-up takes ~1 s; then it is mid-run
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    done = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_bars_equal_reference(await stored(cfg, env["provider"], window_ms), window_ms)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres()
    server.start()
    upgrade_schema(server.url)
    yield server
    server.cleanup()


async def test_postgres_down_for_10s_loses_nothing(
    redis_url: str, unique: str, private_pg: EmbeddedPostgres
) -> None:
    window_ms = 2000
    # max_deliveries=1: an entry held through the outage (10 s, ten times claim_idle_ms) and
    # delivered to its holder again would go straight to the DLQ (issue 13).
    cfg = make_config(
        redis_url, private_pg.url, unique, window_ms, max_batch_size=500, max_deliveries=1
    )
    provider = f"pg{unique}"
    events = trade_events(provider)
    bus = await open_bus(cfg, urls(cfg))
    store = await open_store(cfg, urls(cfg))
    stop = asyncio.Event()
    batcher = MicroBatcher(cfg, bus, store, consumer_name="mb-pg")
    try:
        await publish(bus, cfg, events[:5000])
        task = asyncio.create_task(batcher.run(stop, drain=True, idle_s=1.0))
        while batcher.stats.ticks_inserted == 0:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(private_pg.stop)
        await publish(bus, cfg, events[5000:])
        down_since = time.monotonic()
        await asyncio.sleep(10)
        assert not task.done(), "the micro-batcher must wait for the store, not exit"
        await asyncio.to_thread(private_pg.start)
        stats = await asyncio.wait_for(task, timeout=120)
        assert time.monotonic() - down_since >= 10
        assert stats.store_retries > 0
        assert stats.dead_letters == 0 and await bus.dlq_list(10) == []
    finally:
        stop.set()
        await store.aclose()
        await bus.aclose()
    assert_bars_equal_reference(await stored(cfg, provider, window_ms), window_ms)


@pytest.mark.parametrize("wire", WIRES)
async def test_late_beyond_horizon_goes_to_dlq_with_reason(env: dict[str, Any], wire: Wire) -> None:
    cfg = make_config(
        env["redis_url"],
        env["database_url"],
        env["unique"],
        1000,
        correction_horizon_ms=10_000,
        **wire_options(wire),
    )
    p = env["provider"]
    t = datetime(2021, 6, 1, 12, tzinfo=UTC)

    def tick(offset_s: float, seq: int) -> StreamEvent:
        return StreamEvent.create(
            provider=p,
            symbol="X",
            kind="tick",
            src_ts=t + timedelta(seconds=offset_s),
            c=10.0 + seq,
            v=1.0,
            seq=seq,
        )

    on_time = [tick(i, i) for i in range(60)]
    late_ok = tick(55.5, 1000)  # window closed, within the 10 s horizon -> corrects a bar
    too_late = tick(5.2, 1001)  # 54 s behind the watermark -> dead letter
    bus = await open_bus(cfg, urls(cfg))
    store = await open_store(cfg, urls(cfg))
    batcher = MicroBatcher(cfg, bus, store, consumer_name="mb-late")
    try:
        await publish(bus, cfg, on_time, wire)
        task = asyncio.create_task(batcher.run(asyncio.Event(), drain=True, idle_s=1.0))
        while batcher.stats.ticks_inserted < 59:  # all but the windows inside allow_late
            await asyncio.sleep(0.05)
        await publish(bus, cfg, [late_ok, too_late], wire)
        stats = await asyncio.wait_for(task, 30)
        assert stats.too_late == 1 and stats.late_corrections == 1
        letters = await bus.dlq_list(100)
        assert len(letters) == 1
        assert (
            letters[0].reason == "late"
            and "beyond correction_horizon_ms=10000" in letters[0].detail
        )
        assert too_late.event_id.encode() in letters[0].payload
        bars = await store.bars_range(p, "X", "1s", t, t + timedelta(minutes=2))
        by_ts = {b.ts: b for b in bars}
        corrected = by_ts[t + timedelta(seconds=55)]
        assert corrected.trade_count == 2 and corrected.revision == 1
        assert by_ts[t + timedelta(seconds=5)].trade_count == 1  # the too-late tick is not in it
    finally:
        await store.aclose()
        await bus.aclose()


@pytest.mark.parametrize("wire", WIRES)
async def test_a_worker_behind_a_backlog_writes_each_bar_once(
    env: dict[str, Any], wire: Wire
) -> None:
    """A slow worker (here: 300 ms of wall time pass at every look at the clock, more than
    the 200 ms flush timeout) reading a backlog (polls of 16 events, every one full) must
    not take its symbol for quiet: its windows close by the watermark, each bar written
    once. Before, each poll's windows closed by the timeout and every later part of them
    revised the bar (the 60 s bench at 260,000 ev/s with 6 s of lag: 711 bar writes for 620
    windows)."""
    cfg = make_config(env["redis_url"], env["database_url"], env["unique"], 1000, max_batch_size=16)
    events = trade_events(env["provider"])
    t = [time.time_ns() // 1000]

    def slow_wall_us() -> int:
        t[0] += 300_000
        return t[0]

    bus = await open_bus(cfg, urls(cfg))
    store = await open_store(cfg, urls(cfg))
    try:
        await publish(bus, cfg, events, wire, pack=8)
        stats = await MicroBatcher(
            cfg, bus, store, consumer_name="mb-slow", wall_clock_us=slow_wall_us
        ).run(asyncio.Event(), drain=True, idle_s=0.5)
        bars = await stored(cfg, env["provider"], 1000)
        assert stats.events_in == len(events) and stats.too_late == 0
        assert stats.late_corrections == 0
        assert stats.bars_written == len(bars)
        assert all(b.revision == 0 for b in bars)
        assert_bars_equal_reference(bars, 1000)
    finally:
        await store.aclose()
        await bus.aclose()


async def test_quiet_symbol_closes_by_wall_clock(env: dict[str, Any]) -> None:
    cfg = make_config(env["redis_url"], env["database_url"], env["unique"], 500)
    p = env["provider"]
    now = datetime.now(UTC)
    # all three in one 500 ms window (20 ms after an arbitrary instant straddle two 4 % of
    # the time): 100 ms into the current one
    start = now.replace(microsecond=now.microsecond // 500_000 * 500_000)
    ticks = [
        StreamEvent.create(
            provider=p,
            symbol="QUIET",
            kind="tick",
            src_ts=start + timedelta(milliseconds=100 + 10 * i),
            ingest_ts=now,
            c=5.0,
            v=1.0,
            seq=i,
        )
        for i in range(3)
    ]
    bus = await open_bus(cfg, urls(cfg))
    store = await open_store(cfg, urls(cfg))
    stop = asyncio.Event()
    batcher = MicroBatcher(cfg, bus, store, consumer_name="mb-quiet")
    try:
        await publish(bus, cfg, ticks)
        task = asyncio.create_task(batcher.run(stop))  # live mode: no --drain, no later events
        deadline = time.monotonic() + 10
        bars: list[Any] = []
        while time.monotonic() < deadline and not bars:
            await asyncio.sleep(0.1)
            bars = await store.bars_range(
                p, "QUIET", "500ms", now - timedelta(seconds=1), now + timedelta(seconds=5)
            )
        closed_after_s = (datetime.now(UTC) - now).total_seconds()
        stop.set()
        await asyncio.wait_for(task, 10)
        assert len(bars) == 1 and bars[0].trade_count == 3
        # end (<=0.5 s) + allow_late 0.5 s + flush_timeout 0.2 s, plus polling slack
        assert closed_after_s < 4.0
        assert batcher.stats.window_latencies_ms
    finally:
        stop.set()
        await store.aclose()
        await bus.aclose()


@pytest.mark.parametrize("wire", WIRES)
async def test_provider_bars_land_unchanged(env: dict[str, Any], wire: Wire) -> None:
    import csv

    from tests.conftest import DATA

    cfg = make_config(env["redis_url"], env["database_url"], env["unique"], 2000)
    p = env["provider"]
    with (DATA / "ftx-btc-perp-1m-2022-01.csv").open() as f:
        rows = list(csv.DictReader(f))[:5000]
    events = [
        StreamEvent.create(
            provider=p,
            symbol="BTC-PERP",
            kind="bar",
            interval="1m",
            src_ts=datetime.fromisoformat(r["timestamp"]).replace(tzinfo=UTC),
            o=float(r["open"]),
            h=float(r["high"]),
            l=float(r["low"]),
            c=float(r["close"]),
            v=float(r["volume"]),
            seq=0,
        )
        for r in rows
    ]
    bus = await open_bus(cfg, urls(cfg))
    try:
        await publish(bus, cfg, events, wire)
    finally:
        await bus.aclose()
    stats = await drain(cfg)
    assert stats.provider_bars == 5000
    store = await open_store(cfg, urls(cfg))
    try:
        bars = await store.bars_range(
            p, "BTC-PERP", "1m", datetime(2021, 12, 1, tzinfo=UTC), datetime(2022, 3, 1, tzinfo=UTC)
        )
    finally:
        await store.aclose()
    assert [(b.ts, b.o, b.h, b.l, b.c, b.v) for b in bars] == [
        (e.src_ts, e.o, e.h, e.l, e.c, e.v) for e in events
    ]
    bus = await open_bus(cfg, urls(cfg))
    try:
        await publish(bus, cfg, events, wire)  # replayed: the upsert changes nothing
    finally:
        await bus.aclose()
    again = await drain(cfg)
    assert again.provider_bars == 5000 and again.bars_written == 0


async def test_fx_bid_bars_without_volume_land_with_null_volume(env: dict[str, Any]) -> None:
    """issue 16: FX 1-minute bid bars (open/high/low/close, no volume) were refused as kind
    bar. The shipped ones (derived from the real EUR/USD quotes) go through the bus and the
    micro-batcher into the store with volume and vwap null, and out on mdp.bars the same."""
    from market_data_pipeline.producers.datasets import load_registry, read_dataset
    from tests.conftest import SHIPPED_REGISTRY

    cfg = make_config(env["redis_url"], env["database_url"], env["unique"], 2000)
    spec = load_registry(SHIPPED_REGISTRY)["eurusd_bid_1m"]
    p = env["provider"]
    events = [
        e.model_copy(update={"provider": p, "event_id": e.event_id.replace(e.provider, p, 1)})
        for e in read_dataset(spec)
        if isinstance(e, StreamEvent)
    ]
    assert len(events) == 361 and all(e.v is None for e in events)
    bus = await open_bus(cfg, urls(cfg))
    try:
        await publish(bus, cfg, events)
    finally:
        await bus.aclose()
    stats = await drain(cfg)
    assert stats.provider_bars == 361
    store = await open_store(cfg, urls(cfg))
    try:
        bars = await store.bars_range(
            p, "EUR/USD", "1m", datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 1, 2, tzinfo=UTC)
        )
    finally:
        await store.aclose()
    assert [(b.ts, b.o, b.h, b.l, b.c, b.v, b.vwap) for b in bars] == [
        (e.src_ts, e.o, e.h, e.l, e.c, None, None) for e in events
    ]
    bus = await open_bus(cfg, urls(cfg))
    try:
        published = [decode_bar(r.payload) for r in await bus.tail(cfg.bus.bars_topic, 1000)]
        await publish(bus, cfg, events)  # replayed: nothing changes
    finally:
        await bus.aclose()
    assert [(b.ts, b.v, b.vwap) for b in published if b.provider == p] == [
        (e.src_ts, None, None) for e in events
    ]
    again = await drain(cfg)
    assert again.provider_bars == 361 and again.bars_written == 0


async def test_new_york_fall_back_trades_make_five_bars(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """issue 16: a naive New York trade file over the 2020-11-01 fall-back (01:30 EDT,
    01:59:58 EDT, 01:00 EST, 01:30 EST, 02:00 EST) gave 3 bars: every ambiguous time was read
    as EDT. With `ambiguous: infer` the five trades are five 2 s bars at their real UTC times;
    with the default (raise) the four ambiguous rows are refused, not misplaced."""
    from market_data_pipeline.producers.datasets import RowError, load_registry, read_dataset

    p = env["provider"]
    (tmp_path / "ny.csv").write_text(
        "time,price,size\n2020-11-01 01:30:00,10,1\n2020-11-01 01:59:58,11,1\n"
        "2020-11-01 01:00:00,12,1\n2020-11-01 01:30:00,13,1\n2020-11-01 02:00:00,14,1\n"
    )
    results = {}
    for policy in ("infer", "raise"):
        (tmp_path / "d.yaml").write_text(
            f"datasets:\n  ny:\n    path: ny.csv\n    provider: {p}{policy}\n    symbol: {SYMBOL}\n"
            "    kind: tick\n    columns: {c: price, v: size}\n    timestamp: {column: time, "
            f'format: "%Y-%m-%d %H:%M:%S", zone: America/New_York, ambiguous: {policy}}}\n'
        )
        items = list(read_dataset(load_registry(tmp_path / "d.yaml")["ny"]))
        events = [e for e in items if isinstance(e, StreamEvent)]
        cfg = make_config(env["redis_url"], env["database_url"], f"{env['unique']}{policy}", 2000)
        bus = await open_bus(cfg, urls(cfg))
        try:
            await publish(bus, cfg, events)
        finally:
            await bus.aclose()
        await drain(cfg)
        store = await open_store(cfg, urls(cfg))
        try:
            bars = await store.bars_range(
                f"{p}{policy}",
                SYMBOL,
                "2s",
                datetime(2020, 11, 1, tzinfo=UTC),
                T1.replace(year=2021),
            )
        finally:
            await store.aclose()
        results[policy] = (
            [(b.ts, b.c) for b in bars],
            [e for e in items if isinstance(e, RowError)],
        )
    utc = [
        datetime(2020, 11, 1, h, m, s, tzinfo=UTC)
        for h, m, s in [(5, 30, 0), (5, 59, 58), (6, 0, 0), (6, 30, 0), (7, 0, 0)]
    ]
    assert results["infer"] == (list(zip(utc, [10.0, 11.0, 12.0, 13.0, 14.0], strict=True)), [])
    bars, rejected = results["raise"]
    assert bars == [(utc[4], 14.0)]
    assert [(r.line, r.reason) for r in rejected] == [(n, "ambiguous_time") for n in (2, 3, 4, 5)]
