"""Rollups through the micro-batcher (issue 20): the shipped Binance trades published on the
bus, a late tick inside the correction horizon, a second replay; every level against the
pandas resample, the late tick's bars revised once at 2 s, 1 m and 1 h and relayed to
``mdp.bars`` like any bar, and nothing at all from the replay."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from market_data_core.codec import decode_window
from market_data_core.config import AppConfig, parse_config
from market_data_core.contracts import Bar
from market_data_core.timeutil import parse_duration_ms
from market_data_pipeline.consumers.micro_batcher import MicroBatcher, MicroBatchStats
from market_data_pipeline.streaming.bus import open_bus
from market_data_pipeline.wiring import open_store, upgrade_schema
from tests.support.cli import mdp_env, run_mdp
from tests.support.pipeline import make_config, publish, urls, write_config
from tests.support.signals_reference import assert_signals_equal_reference, table_signals
from tests.support.trades import SYMBOL, assert_bars_equal_reference, trade_events

T0 = datetime(2020, 2, 22, tzinfo=UTC)
T1 = T0 + timedelta(days=1)
LEVELS = ["1m", "1h"]


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    upgrade_schema(database_url)
    return database_url


async def drain(cfg: AppConfig) -> MicroBatchStats:
    bus = await open_bus(cfg, urls(cfg))
    store = await open_store(cfg, urls(cfg))
    try:
        return await MicroBatcher(cfg, bus, store, consumer_name="mb-r").run(
            asyncio.Event(), drain=True, idle_s=0.5
        )
    finally:
        await store.aclose()
        await bus.aclose()


async def stored(cfg: AppConfig, provider: str, interval: str) -> list[Bar]:
    store = await open_store(cfg, urls(cfg))
    try:
        return await store.bars_range(provider, SYMBOL, interval, T0, T1)
    finally:
        await store.aclose()


def bucket(ts: datetime, interval: str) -> datetime:
    unit = parse_duration_ms(interval) * 1000
    us = (ts - T0) // timedelta(microseconds=1)
    return T0 + timedelta(microseconds=us - us % unit)


async def test_a_late_tick_revises_2s_1m_and_1h_and_a_replay_changes_nothing(
    redis_url: str, migrated: str, unique: str, tmp_path: Path
) -> None:
    cfg = make_config(redis_url, migrated, unique, 2000, rollups={"intervals": LEVELS})
    provider = f"rp{unique}"
    events = trade_events(provider)
    late = events[6000]
    bus = await open_bus(cfg, urls(cfg))
    try:
        await publish(bus, cfg, events[:6000] + events[6001:])
        first = await drain(cfg)
        assert first.ticks_inserted == 9998 and first.rollup_bars_written > 0
        before: dict[tuple[str, datetime], Bar] = {}
        for interval in ["2s", *LEVELS]:
            before.update({(interval, b.ts): b for b in await stored(cfg, provider, interval)})
        relayed_before = len(await bus.tail(cfg.bus.bars_topic, 100_000))

        await publish(bus, cfg, [late])
        second = await drain(cfg)
        assert second.ticks_inserted == 1 and second.late_corrections == 1
        assert (second.rollup_bars_written, second.rollup_revisions) == (2, 2)
        for interval in ["2s", *LEVELS]:
            bars = await stored(cfg, provider, interval)
            assert_bars_equal_reference(bars, parse_duration_ms(interval))
            key = (interval, bucket(late.src_ts, interval))
            now = {b.ts: b for b in bars}[key[1]]
            assert now.revision == before[key].revision + 1, interval
            assert now.trade_count == (before[key].trade_count or 0) + 1
            others = [b for b in bars if b.ts != key[1]]
            assert all(b.revision == before[(interval, b.ts)].revision for b in others)
        # the three revisions were relayed to mdp.bars, with their change_seq
        entries = await bus.tail(cfg.bus.bars_topic, 100_000)
        new = [decode_window(e.payload) for e in entries[relayed_before:]]
        assert sorted((b.interval, b.ts) for b in new) == sorted(
            (i, bucket(late.src_ts, i)) for i in ["2s", *LEVELS]
        )
        assert all(isinstance(b, Bar) and b.change_seq for b in new)
        assert {b.interval: b.in_session for b in new if isinstance(b, Bar)} == {
            "2s": None,
            "1m": True,
            "1h": True,
        }

        # a second replay of everything: nothing written, nothing relayed
        await publish(bus, cfg, events)
        third = await drain(cfg)
        assert (third.ticks_inserted, third.bars_written, third.rollup_bars_written) == (0, 0, 0)
        assert len(await bus.tail(cfg.bus.bars_topic, 100_000)) == len(entries)
        for interval in LEVELS:
            assert_bars_equal_reference(
                await stored(cfg, provider, interval), parse_duration_ms(interval)
            )
        # mdp stream tail shows one level of mdp.bars
        out = run_mdp(
            "stream", "tail", "-c", str(write_config(tmp_path, cfg)), "--topic", "mdp.bars",
            "--interval", "1h", "--limit", "1000", "--json", env=mdp_env(),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        shown = [json.loads(line) for line in out.stdout.splitlines()]
        hourly = [b for b in (decode_window(e.payload) for e in entries) if b.interval == "1h"]
        assert len(shown) == len(hourly) > 0
        assert {b["interval"] for b in shown} == {"1h"}
    finally:
        await bus.aclose()


def test_a_rollup_that_is_not_a_multiple_of_the_window_is_a_config_error(
    redis_url: str, unique: str
) -> None:
    from market_data_core.errors import ConfigError

    with pytest.raises(ConfigError, match="not a multiple of the micro-batch window"):
        make_config(
            redis_url, "postgresql://x@127.0.0.1/x", unique, 1500, rollups={"intervals": ["5s"]}
        )


async def test_one_infer_process_scores_1m_and_5m_rollups_each_with_its_own_state(
    redis_url: str, migrated: str, unique: str, tmp_path: Path
) -> None:
    """``mdp stream infer --interval 1m --interval 5m --drain``: the signals of each level
    equal a fresh engine's clean pass over that level's final bars (named ``<rule>@<level>``),
    features against TA-Lib, every row on mdp.signals."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            [
                {"name": "above_sma", "condition": "close > sma_3", "signal": 1.0, "score": 0.5},
                {"name": "below_svwap", "condition": "close < svwap", "signal": -1.0, "score": 0.5},
            ]
        )
    )
    cfg = make_config(redis_url, migrated, unique, 2000, rollups={"intervals": ["1m", "5m"]})
    cfg = parse_config(
        {
            **cfg.model_dump(mode="json"),
            "features": {"windows": [{"name": "sma_3", "periods": 3}, {"name": "svwap"}]},
            "inference": {"adapters": {"rules": {"file": str(rules)}}},
        }
    )
    provider = f"ri{unique}"
    bus = await open_bus(cfg, urls(cfg))
    try:
        await publish(bus, cfg, trade_events(provider))
        await drain(cfg)
        config_file = write_config(tmp_path, cfg)
        out = run_mdp(
            "stream", "infer", "-c", str(config_file), "--interval", "1m", "--interval", "5m",
            "--drain", "--idle-s", "1", "--metrics-port", "0", env=mdp_env(),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        lines = [x for x in out.stdout.splitlines() if x.startswith("infer ")]
        assert len(lines) == 2 and "1m bars" in lines[0] and "5m bars" in lines[1]
        for level, n_bars in (("1m", 126), ("5m", 26)):
            counts = await assert_signals_equal_reference(
                cfg,
                bus,
                [(provider, SYMBOL)],
                server_url=migrated,
                interval=level,
                only_interval=True,
            )
            assert counts["bars"] == n_bars
            rows = await table_signals(cfg, [(provider, SYMBOL)])
            assert all(r.name.endswith(("@1m", "@5m")) for r in rows)
            assert {r.meta["interval"] for r in rows} == {"1m", "5m"}
    finally:
        await bus.aclose()
