"""The micro-batcher's quote bars equal the offline reference (issue 15) on the real EUR/USD
quotes (with sizes) and trades in between (windows whose book is carried), at 0.5 s, 1 s, 2 s
and 5 s, whatever happens: replays, shuffles, duplicates, kill -9, several workers."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from market_data_core.codec import decode_window
from market_data_core.config import AppConfig
from market_data_core.contracts import Bar, QuoteBar, StreamEvent
from market_data_core.protocols import routing_key, shard_for
from market_data_core.timeutil import format_duration_ms
from market_data_pipeline.consumers.micro_batcher import MicroBatcher, MicroBatchStats
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
from tests.support.quotes import (
    assert_quote_bars_equal_reference,
    quote_events,
    reference_quote_bars,
    spy_on_folds,
)

WINDOWS = [500, 1000, 2000, 5000]
T0 = datetime(2020, 1, 1, tzinfo=UTC)
T1 = datetime(2020, 1, 2, tzinfo=UTC)
CARRY_MS = 60_000  # the default micro_batch.quote_carry_ms


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    upgrade_schema(database_url)
    return database_url


@pytest.fixture
async def env(redis_url: str, migrated: str, unique: str) -> AsyncIterator[dict[str, Any]]:
    yield {"redis_url": redis_url, "database_url": migrated, "unique": unique}


def mixed(provider: str, symbol: str = "EUR/USD") -> tuple[list[StreamEvent], list[StreamEvent]]:
    """(quotes, trades): the real quotes with sizes, and a trade every 7.3 s of their span."""
    quotes = quote_events(provider, sizes=True, symbol=symbol)
    trades = []
    t, k = quotes[0].src_ts, 0
    while t < quotes[-1].src_ts:
        trades.append(
            StreamEvent.create(
                provider=provider, symbol=symbol, kind="tick", src_ts=t, c=1.12, v=1.0, seq=k
            )
        )
        t += timedelta(milliseconds=7300)
        k += 1
    return quotes, trades


def in_time_order(events: list[StreamEvent]) -> list[StreamEvent]:
    return sorted(events, key=lambda e: (e.src_ts, e.kind, e.seq))


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


async def assert_exact(
    cfg: AppConfig,
    provider: str,
    window_ms: int,
    quotes: list[StreamEvent],
    trades: list[StreamEvent],
    symbol: str = "EUR/USD",
) -> None:
    store = await open_store(cfg, urls(cfg))
    interval = format_duration_ms(window_ms)
    try:
        qbars = await store.quote_bars_range(provider, symbol, interval, T0, T1)
        bars = await store.bars_range(provider, symbol, interval, T0, T1)
    finally:
        await store.aclose()
    reference = reference_quote_bars(quotes, window_ms, CARRY_MS, [t.src_ts for t in trades])
    assert_quote_bars_equal_reference(qbars, reference)
    assert sum(b.trade_count or 0 for b in bars) == len(trades)
    # the trade bars carry their window's quote bar
    by_ts = {q.ts: q for q in qbars}
    assert all(b.quote == by_ts.get(b.ts) for b in bars)
    assert sum(b.quote is not None for b in bars) > len(bars) // 2


async def publish_all(cfg: AppConfig, events: list[StreamEvent], wire: Wire = "rows") -> None:
    bus = await open_bus(cfg, urls(cfg))
    try:
        await publish(bus, cfg, events, wire)
    finally:
        await bus.aclose()


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("window_ms", WINDOWS)
async def test_replay_once_then_twice_changes_nothing(
    env: dict[str, Any], window_ms: int, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(
        env["redis_url"], env["database_url"], env["unique"], window_ms, **wire_options(wire)
    )
    p = f"fx{env['unique']}"
    quotes, trades = mixed(p)
    events = in_time_order(quotes + trades)
    await publish_all(cfg, events, wire)
    folds = spy_on_folds(monkeypatch)
    first = await drain(cfg)
    assert (first.events_in, first.quotes_inserted, first.ticks_inserted) == (
        len(events),
        len(quotes),
        len(trades),
    )
    assert first.dead_letters == 0 and first.quote_bars_written > 0
    # in small batches, events of open windows are stored before they close (windows of
    # 2 s and more hold more than 16 events here)
    assert (first.stored_early > 0) == (wire == "blocks" and window_ms >= 2000)
    # ... and their quote bars folded at the close from the quotes the worker kept
    assert (sum(folds.early) > 0) == (first.stored_early > 0)
    # in order, each quote bar is written once: no correction of its own making
    assert first.late_corrections == 0
    await assert_exact(cfg, p, window_ms, quotes, trades)
    await publish_all(cfg, events, wire)
    second = await drain(cfg)
    assert second.events_in == len(events)
    assert (
        second.ticks_inserted,
        second.quotes_inserted,
        second.bars_written,
        second.quote_bars_written,
    ) == (0, 0, 0, 0)
    await assert_exact(cfg, p, window_ms, quotes, trades)
    # every window reached mdp.bars, quote-only windows as quote bars
    bus = await open_bus(cfg, urls(cfg))
    try:
        published = [decode_window(r.payload) for r in await bus.tail(cfg.bus.bars_topic, 10**6)]
    finally:
        await bus.aclose()
    kinds = {type(w) for w in published if w.provider == p}
    assert kinds == {Bar, QuoteBar}


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("window_ms", WINDOWS)
async def test_shuffled_within_allowed_lateness(
    env: dict[str, Any], window_ms: int, wire: Wire
) -> None:
    cfg = make_config(
        env["redis_url"], env["database_url"], env["unique"], window_ms, **wire_options(wire)
    )
    p = f"sh{env['unique']}"
    quotes, trades = mixed(p)
    rng = random.Random(window_ms)
    # displace each event by a random delay < allow_late_ms (400 ms) and sort by that key
    shuffled = sorted(
        quotes + trades, key=lambda e: e.src_ts + timedelta(milliseconds=rng.uniform(0, 400))
    )
    assert shuffled != in_time_order(quotes + trades)
    await publish_all(cfg, shuffled, wire)
    stats = await drain(cfg)
    assert stats.too_late == 0 and stats.dead_letters == 0
    await assert_exact(cfg, p, window_ms, quotes, trades)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("window_ms", WINDOWS)
async def test_one_percent_duplicates(env: dict[str, Any], window_ms: int, wire: Wire) -> None:
    cfg = make_config(
        env["redis_url"], env["database_url"], env["unique"], window_ms, **wire_options(wire)
    )
    p = f"du{env['unique']}"
    quotes, trades = mixed(p)
    events = in_time_order(quotes + trades)
    rng = random.Random(7)
    stream = list(events)
    for i in rng.sample(range(len(events)), len(events) // 100):
        stream.insert(min(len(stream), i + rng.randint(1, 50)), events[i])
    await publish_all(cfg, stream, wire)
    stats = await drain(cfg)
    assert stats.events_in == len(stream)
    assert (stats.quotes_inserted, stats.ticks_inserted) == (len(quotes), len(trades))
    assert stats.duplicates == len(stream) - len(events)
    await assert_exact(cfg, p, window_ms, quotes, trades)


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
    # the same quotes and trades as six series over all 4 shards
    series = [(f"tw{env['unique']}{k}", f"EURUSD.{k}") for k in "abcdef"]
    assert {shard_for(routing_key(p, s), 4) for p, s in series} == {0, 1, 2, 3}
    data = {ps: mixed(*ps) for ps in series}
    await publish_all(cfg, [e for q, t in data.values() for e in in_time_order(q + t)], wire)
    results = await asyncio.gather(*(drain(cfg, name=f"mb-{i}", idle_s=1.5) for i in range(3)))
    assert sum(r.quotes_inserted for r in results) == sum(len(q) for q, _ in data.values())
    for (p, s), (quotes, trades) in data.items():
        await assert_exact(cfg, p, window_ms, quotes, trades, symbol=s)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("window_ms", [500, 2000])
async def test_kill_9_three_times_then_restart(
    env: dict[str, Any], window_ms: int, tmp_path: Path, wire: Wire
) -> None:
    cfg = make_config(
        env["redis_url"], env["database_url"], env["unique"], window_ms, max_batch_size=100
    )
    p = f"k9{env['unique']}"
    quotes, trades = mixed(p)
    await publish_all(cfg, in_time_order(quotes + trades), wire)
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
    await assert_exact(cfg, p, window_ms, quotes, trades)
