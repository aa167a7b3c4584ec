"""End to end on real servers: the shipped 1 m bars -> events stream -> micro-batcher -> bars
stream -> inference -> signals stream + signals table (SPEC §9, issue 7).

The signals in the stream and in the table are the same set, equal to an offline run of the
same features and rules over the same bars; a restart in the middle (fresh engine, warm-up from
the store) changes nothing; a second replay adds nothing to either; a poison bar goes to the DLQ.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
import pytest

from market_data_core.codec import decode_signal, encode_bar, encode_event
from market_data_core.config import AppConfig, load_config, parse_config
from market_data_core.contracts import Bar, StreamEvent
from market_data_core.protocols import Bus, routing_key
from market_data_pipeline.cli.app import main as mdp_main
from market_data_pipeline.consumers.inference_consumer import InferenceConsumer, InferenceStats
from market_data_pipeline.consumers.micro_batcher import MicroBatcher
from market_data_pipeline.features import FeatureEngine
from market_data_pipeline.inference.adapters.rules import RulesAdapter, load_rules
from market_data_pipeline.inference.engine import InferenceEngine, build_adapter
from market_data_pipeline.inference.timeline import CHECKPOINT_EVERY, SNAP_EVERY
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.streaming.bus import open_bus
from market_data_pipeline.wiring import open_signals_store, open_store, upgrade_schema
from tests.conftest import DATA, ROOT, SHIPPED_CONFIG, SHIPPED_RULES

N_BARS = 2400
SYMBOL = "BTC-PERP"
T0 = datetime(2021, 12, 31, tzinfo=UTC)
T1 = datetime(2022, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    upgrade_schema(database_url)
    return database_url


def make_config(redis_url: str, database_url: str, unique: str) -> AppConfig:
    shipped = parse_config(__import__("yaml").safe_load(SHIPPED_CONFIG.read_text()), env={})
    return parse_config(
        {
            "bus": {
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
            "micro_batch": {"window_ms": 2000, "flush_timeout_ms": 200},
            "features": {
                **shipped.features.model_dump(mode="json"),
                "interval": "1m",
                "warmup_bars": 500,
            },
            "inference": {"adapters": {"rules": {"file": str(SHIPPED_RULES)}}},
            "store": {"dsn": database_url},
            "telemetry": {"metrics_port": 0},
        }
    )


def urls(cfg: AppConfig) -> ServerUrls:
    assert cfg.bus.redis.uri is not None and cfg.store.dsn is not None
    return ServerUrls(cfg.bus.redis.uri.get_secret_value(), cfg.store.dsn.get_secret_value(), None)


def bar_events(provider: str) -> list[StreamEvent]:
    df = pd.read_csv(DATA / "ftx-btc-perp-1m-2022-01.csv", nrows=N_BARS)
    return [
        StreamEvent.create(
            provider=provider,
            symbol=SYMBOL,
            kind="bar",
            interval="1m",
            src_ts=datetime.fromisoformat(r.timestamp).replace(tzinfo=UTC),
            o=r.open,
            h=r.high,
            l=r.low,
            c=r.close,
            v=r.volume,
            seq=i,
        )
        for i, r in enumerate(df.itertuples())
    ]


def offline_signal_ids(cfg: AppConfig, events: list[StreamEvent]) -> set[str]:
    engine = FeatureEngine(cfg.features.windows, timed=False)
    rules = RulesAdapter(load_rules(cfg.inference.adapters.rules.file, engine.feature_names))
    out: set[str] = set()
    for e in events:
        assert e.o is not None and e.h is not None and e.l is not None and e.c is not None
        assert e.v is not None and e.interval is not None
        snap = engine.update_bar(
            Bar(e.provider, e.symbol, e.interval, e.src_ts, e.o, e.h, e.l, e.c, e.v)
        )
        assert snap is not None
        out.update(s.signal_id for s in rules.evaluate_sync(snap))
    return out


async def publish_events(bus: Bus, cfg: AppConfig, events: list[StreamEvent]) -> None:
    items = [(routing_key(e.provider, e.symbol), encode_event(e, cfg.bus.codec)) for e in events]
    for i in range(0, len(items), 1000):
        await bus.publish(cfg.bus.events_topic, items[i : i + 1000])


async def micro_batch(cfg: AppConfig) -> None:
    bus = await open_bus(cfg, urls(cfg))
    store = await open_store(cfg, urls(cfg))
    try:
        await MicroBatcher(cfg, bus, store, consumer_name="mb-1").run(
            asyncio.Event(), drain=True, idle_s=0.5
        )
    finally:
        await store.aclose()
        await bus.aclose()


async def infer(
    cfg: AppConfig, name: str, kind: Literal["rules", "sklearn"] = "rules"
) -> InferenceStats:
    """A fresh engine each time: what a new `mdp stream infer` process would have."""
    features = FeatureEngine(cfg.features.windows)
    adapter = build_adapter(cfg, kind, features.feature_names, base_dir=ROOT)
    engine = InferenceEngine(features, adapter, interval="1m")
    bus = await open_bus(cfg, urls(cfg))
    store = await open_store(cfg, urls(cfg))
    signals = await open_signals_store(cfg, urls(cfg))
    try:
        consumer = InferenceConsumer(cfg, bus, store, signals, engine, consumer_name=name)
        return await consumer.run(asyncio.Event(), drain=True, idle_s=0.5)
    finally:
        await engine.aclose()
        await signals.aclose()
        await store.aclose()
        await bus.aclose()


async def stream_ids(bus: Bus, cfg: AppConfig) -> list[str]:
    return [
        decode_signal(r.payload).signal_id for r in await bus.tail(cfg.bus.signals_topic, 10**6)
    ]


async def table_ids(cfg: AppConfig, provider: str) -> list[str]:
    store = await open_signals_store(cfg, urls(cfg))
    try:
        rows = await store.signals_range(T0, T1, SYMBOL)
    finally:
        await store.aclose()
    return [s.signal_id for s in rows if s.provider == provider]


@pytest.fixture
async def setup(
    redis_url: str, migrated: str, unique: str
) -> AsyncIterator[tuple[AppConfig, Bus, str]]:
    cfg = make_config(redis_url, migrated, unique)
    bus = await open_bus(cfg, urls(cfg))
    try:
        yield cfg, bus, f"ftx{unique}"
    finally:
        await bus.aclose()


async def test_replay_micro_batch_infer_stream_equals_table_and_replay_adds_none(
    setup: tuple[AppConfig, Bus, str],
) -> None:
    cfg, bus, provider = setup
    events = bar_events(provider)
    expected = offline_signal_ids(cfg, events)
    assert len(expected) > 50

    # first half, then a restart (fresh engine: warm-up from the store), then the second half
    half = N_BARS // 2
    await publish_events(bus, cfg, events[:half])
    await micro_batch(cfg)
    first = await infer(cfg, "infer-a")
    assert first.bars_scored == half and first.dead_letters == 0
    zero = Bar(provider, SYMBOL, "1m", T1, 1.0, 1.0, 1.0, 0.0, 1.0)  # decodes, but c = 0
    await bus.publish(
        cfg.bus.bars_topic,
        [(f"{provider}|{SYMBOL}", b"\x00not a bar"), (f"{provider}|{SYMBOL}", encode_bar(zero))],
    )
    await publish_events(bus, cfg, events[half:])
    await micro_batch(cfg)
    second = await infer(cfg, "infer-b")
    # a fresh engine resumes from the first one's checkpoint (a final bar at most
    # CHECKPOINT_EVERY + SNAP_EVERY bars back plus the horizon), not from the first bar
    assert second.resumes == 1 and second.bars_replayed == 0
    assert N_BARS - half <= second.bars_scored <= N_BARS - half + CHECKPOINT_EVERY + SNAP_EVERY + 8
    assert second.dead_letters == 2
    dlq = [d for d in await bus.dlq_list(100) if d.component == "inference"]
    assert [d.reason for d in dlq] == ["decode", "validation"]
    assert dlq[0].payload == b"\x00not a bar" and "c=0.0" in dlq[1].detail

    in_stream = await stream_ids(bus, cfg)
    in_table = await table_ids(cfg, provider)
    assert len(in_stream) == len(set(in_stream))
    assert set(in_stream) == set(in_table) == expected

    # the same bars again, end to end: no bar changes, so nothing on mdp.bars, and nothing
    # new in the signals stream or the table
    bars_before = len(await bus.tail(cfg.bus.bars_topic, 10**6))
    await publish_events(bus, cfg, events)
    await micro_batch(cfg)
    assert len(await bus.tail(cfg.bus.bars_topic, 10**6)) == bars_before
    third = await infer(cfg, "infer-c")
    assert third.bars_in == 0 and third.signals == 0
    assert await stream_ids(bus, cfg) == in_stream
    assert sorted(await table_ids(cfg, provider)) == sorted(in_table)


async def test_mdp_stream_infer_drain_cli(
    setup: tuple[AppConfig, Bus, str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, bus, provider = setup
    events = bar_events(provider)[:300]
    await publish_events(bus, cfg, events)
    await micro_batch(cfg)
    path = tmp_path / "streaming.yaml"
    path.write_text(__import__("yaml").safe_dump(cfg.model_dump(mode="json")))
    monkeypatch.delenv("REDIS_URI", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code = await asyncio.to_thread(
        mdp_main,
        [
            "stream",
            "infer",
            "--config",
            str(path),
            "--adapter",
            "rules",
            "--drain",
            "--idle-s",
            "0.5",
        ],
    )
    assert code == 0
    expected = offline_signal_ids(cfg, events)
    assert set(await stream_ids(bus, cfg)) == set(await table_ids(cfg, provider)) == expected


async def test_sklearn_adapter_end_to_end_with_the_shipped_model(
    setup: tuple[AppConfig, Bus, str],
) -> None:
    cfg, bus, provider = setup
    shipped = load_config(SHIPPED_CONFIG, env={})  # its model path resolves beside it
    cfg = cfg.model_copy(
        update={
            "inference": shipped.inference.model_copy(
                update={
                    "adapters": shipped.inference.adapters.model_copy(
                        update={
                            "rules": cfg.inference.adapters.rules,
                            # generous: this test is about the path, not a loaded machine
                            "sklearn": shipped.inference.adapters.sklearn.model_copy(
                                update={"timeout_ms": 10_000}
                            ),
                        }
                    )
                }
            )
        }
    )
    await publish_events(bus, cfg, bar_events(provider)[:600])
    await micro_batch(cfg)
    stats = await infer(cfg, "infer-ml", "sklearn")
    assert stats.bars_scored == 600
    in_stream = [decode_signal(r.payload) for r in await bus.tail(cfg.bus.signals_topic, 10**6)]
    assert in_stream and {s.adapter for s in in_stream} == {"sklearn"}
    assert {s.name for s in in_stream} == {"model_signal"}
    assert {s.signal_id for s in in_stream} == set(await table_ids(cfg, provider))


class Crash(Exception):
    """Stands in for kill -9 between the commit and the ack."""


async def test_crash_before_ack_then_restart_under_the_same_name(
    setup: tuple[AppConfig, Bus, str],
) -> None:
    cfg, bus, provider = setup
    events = bar_events(provider)[:1200]
    expected = offline_signal_ids(cfg, events)
    await publish_events(bus, cfg, events[:600])
    await micro_batch(cfg)

    features = FeatureEngine(cfg.features.windows)
    engine = InferenceEngine(
        features, build_adapter(cfg, "rules", features.feature_names, base_dir=ROOT), interval="1m"
    )
    crash_bus = await open_bus(cfg, urls(cfg))
    store = await open_store(cfg, urls(cfg))
    signals = await open_signals_store(cfg, urls(cfg))
    try:
        consumer = InferenceConsumer(cfg, crash_bus, store, signals, engine, consumer_name="inf-x")
        acks = 0

        async def ack_then_crash(records: Any) -> None:
            nonlocal acks
            acks += 1
            if acks == 2:  # the second batch is committed but never acknowledged
                raise Crash
            if acks == 1:  # the rest of the bars arrive while this batch is being handled
                await publish_events(bus, cfg, events[600:])
                await micro_batch(cfg)
            await real_ack(records)

        real_ack = consumer._consumer.ack
        consumer._consumer.ack = ack_then_crash  # type: ignore[method-assign]
        with pytest.raises(Crash):
            await consumer.run(asyncio.Event(), drain=True, idle_s=0.5)
    finally:
        await engine.aclose()
        await signals.aclose()
        await store.aclose()
        await crash_bus.aclose()
    before = await stream_ids(bus, cfg)
    assert before and set(before) < expected

    # the restarted process re-reads its own pending entries first, resumes the series from
    # its checkpoint and the store, and ends with exactly the uninterrupted run's signals,
    # none twice (the committed ones are in the table already: not published again)
    again = await infer(cfg, "inf-x")
    assert again.resumes >= 1
    after = await stream_ids(bus, cfg)
    assert len(after) == len(set(after))
    assert set(after) == set(await table_ids(cfg, provider)) == expected
