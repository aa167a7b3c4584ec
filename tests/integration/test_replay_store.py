"""`mdp stream replay --source store`: bars already in PostgreSQL back onto the bus, with the
same event ids as the same bars replayed from the dataset file."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from market_data_core.codec import decode_events
from market_data_core.contracts import Bar, StreamEvent
from market_data_pipeline.cli.app import main
from market_data_pipeline.producers.datasets import load_registry, read_dataset
from market_data_store import PgStoreClient, upgrade_schema
from tests.conftest import ROOT, SHIPPED_REGISTRY
from tests.integration._store_db import fresh_database
from tests.integration.test_replay_datasets import write_config

START = datetime(2022, 1, 3, tzinfo=UTC)
END = datetime(2022, 1, 3, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
async def store_url(database_url: str) -> AsyncIterator[str]:
    async with fresh_database(database_url, prefix="mdp_replay") as url:
        await upgrade_schema(url)
        yield url


def file_bars() -> list[StreamEvent]:
    spec = load_registry(SHIPPED_REGISTRY)["ftx_btc_perp_1m"]
    return [e for e in read_dataset(spec, START, END) if isinstance(e, StreamEvent)]


async def seed_store(url: str, events: list[StreamEvent]) -> None:
    store = await PgStoreClient.connect(url)
    try:
        await store.upsert_bars(
            [
                Bar(e.provider, e.symbol, "1m", e.src_ts, e.o, e.h, e.l, e.c, e.v)  # type: ignore[arg-type]
                for e in events
            ]
        )
    finally:
        await store.aclose()


def test_store_bars_replay_with_the_file_ids(
    store_url: str,
    redis_url: str,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = file_bars()
    assert len(expected) == 120
    # The CLI runs its own event loop, so this test is sync and seeds from a worker thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, seed_store(store_url, expected)).result()

    monkeypatch.setenv("REDIS_URI", redis_url)
    monkeypatch.setenv("DATABASE_URL", store_url)
    monkeypatch.chdir(ROOT)
    config = str(write_config(tmp_path, unique))
    args = ["stream", "replay", "--config", config, "--dataset", "ftx_btc_perp_1m"]
    code = main([*args, "--source", "store", "--from", "2022-01-03", "--to", "2022-01-03T02:00"])
    assert code == 0
    assert "replayed 120 events (dataset ftx_btc_perp_1m from the store)" in capsys.readouterr().out

    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange(f"mdp.events.{unique}")
    finally:
        client.close()
    got = [e for _id, f in entries for e in decode_events(f[b"data"]).events]
    assert [e.event_id for e in got] == [e.event_id for e in expected]
    assert [(e.o, e.h, e.l, e.c, e.v) for e in got] == [(e.o, e.h, e.l, e.c, e.v) for e in expected]


def test_store_source_needs_a_window(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("REDIS_URI", "redis://127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://127.0.0.1:1/x")
    code = main(["stream", "replay", "--dataset", "ftx_btc_perp_1m", "--source", "store"])
    assert code == 2
    assert "--source store needs --from and --to" in capsys.readouterr().err
