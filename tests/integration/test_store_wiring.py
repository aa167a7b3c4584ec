"""The composition root hands out core protocol types and validates store settings."""

from __future__ import annotations

import pytest

from market_data_core.config import parse_config
from market_data_core.errors import ConfigError
from market_data_core.protocols import JobRunTracker, SignalsStoreClient, StoreClient
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.wiring import (
    compress_after_ms,
    downgrade_schema,
    open_job_tracker,
    open_signals_store,
    open_store,
    upgrade_schema,
)
from market_data_store import head_revision
from tests.integration._store_db import fresh_database


async def test_open_clients_are_core_protocols(database_url: str) -> None:
    async with fresh_database(database_url) as url:
        cfg = parse_config({"store": {"dsn": url}})
        # Blocking call from inside a running event loop: runs on a worker thread.
        assert upgrade_schema(url, config=cfg) == head_revision()
        urls = ServerUrls(None, url, None)
        store = await open_store(cfg, urls)
        signals = await open_signals_store(cfg, urls)
        tracker = await open_job_tracker(cfg, urls)
        try:
            assert isinstance(store, StoreClient)
            assert isinstance(signals, SignalsStoreClient)
            assert isinstance(tracker, JobRunTracker)
            run_id = await tracker.start("wiring", "h")
            await tracker.finish(run_id, status="stopped", events_in=0, rows_written=0, errors=0)
        finally:
            await store.aclose()
            await signals.aclose()
            await tracker.aclose()
        assert downgrade_schema(url, "base") is None


def test_compress_after_must_exceed_the_correction_horizon() -> None:
    ok = parse_config({"store": {"compress_after": "2d"}})
    assert compress_after_ms(ok) == 2 * 86_400_000
    bad = parse_config(
        {"store": {"compress_after": "1m"}, "micro_batch": {"correction_horizon_ms": 300_000}}
    )
    with pytest.raises(ConfigError, match="correction_horizon"):
        compress_after_ms(bad)
    with pytest.raises(ConfigError, match=r"store\.compress_after"):
        compress_after_ms(parse_config({"store": {"compress_after": "soon"}}))


async def test_no_database_configured_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        await open_store(parse_config({}), ServerUrls(None, None, None))
