"""Transient failures are typed and recoverable; passwords never leak."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from market_data_core.contracts import StreamEvent
from market_data_core.errors import StoreUnavailableError
from market_data_pipeline.servers import EmbeddedPostgres, free_port
from market_data_store import PgJobRunTracker, PgStoreClient, upgrade_schema


@pytest.fixture(scope="module")
def own_pg() -> Iterator[EmbeddedPostgres]:
    """A server of our own: stopping the session's one would break other tests."""
    server = EmbeddedPostgres(database="outage")
    server.start()
    yield server
    server.cleanup()


def ticks(start_seq: int, n: int) -> list[StreamEvent]:
    t0 = datetime(2022, 1, 3, tzinfo=UTC)
    return [
        StreamEvent.create(
            provider="outage",
            symbol="X",
            kind="tick",
            src_ts=t0 + timedelta(milliseconds=250 * i),
            c=50.0 + i % 3,
            v=1.0,
            seq=i,
        )
        for i in range(start_seq, start_seq + n)
    ]


async def test_unavailable_while_stopped_then_recovers(own_pg: EmbeddedPostgres) -> None:
    await upgrade_schema(own_pg.url)
    client = await PgStoreClient.connect(own_pg.url, pool_min=2, pool_max=2)
    tracker = await PgJobRunTracker.connect(own_pg.url, pool_max=1)
    try:
        assert (await client.ingest_ticks(ticks(0, 100), interval="1s")).ticks_inserted == 100
        own_pg.stop()
        try:
            for _ in range(3):  # every call fails the same typed way, none hangs
                with pytest.raises(StoreUnavailableError):
                    await client.ingest_ticks(ticks(100, 100), interval="1s")
            with pytest.raises(StoreUnavailableError):
                await client.latest_bars("1s", 5)
            with pytest.raises(StoreUnavailableError):
                await tracker.start("job", "h")
        finally:
            own_pg.start()
        res = await client.ingest_ticks(ticks(100, 100), interval="1s")
        assert res.ticks_inserted == 100
        assert await client.count_rows("ticks") == 200
        assert await tracker.start("job", "h") > 0
    finally:
        await client.aclose()
        await tracker.aclose()


async def test_connect_to_a_dead_server_is_unavailable() -> None:
    dsn = f"postgresql://mdp:hunter2secret@127.0.0.1:{free_port()}/mdp"
    with pytest.raises(StoreUnavailableError) as info:
        await PgStoreClient.connect(dsn)
    assert "hunter2secret" not in str(info.value)


async def test_password_never_in_repr_or_logs(
    own_pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    # The embedded server trusts local connections, so any password is accepted.
    dsn = own_pg.url.replace("postgres@", "postgres:hunter2secret@")
    caplog.set_level(logging.DEBUG)
    await upgrade_schema(dsn)
    client = await PgStoreClient.connect(dsn)
    try:
        await client.ingest_ticks(ticks(0, 10), interval="1s")
        assert "hunter2secret" not in repr(client)
        assert "postgres:***@" in repr(client)
    finally:
        await client.aclose()
    assert "hunter2secret" not in caplog.text


async def test_pool_retries_during_an_outage_are_one_line_each(
    own_pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg logs each failed attempt to restore a pool's ``min_size`` with a traceback
    (measured: 10 tracebacks in a 15 s outage); each is one line with its reason now."""
    await upgrade_schema(own_pg.url)
    client = await PgStoreClient.connect(own_pg.url, pool_min=2, pool_max=2)
    caplog.set_level(logging.WARNING, logger="asyncpg.pool")
    try:
        own_pg.stop()
        try:
            with pytest.raises(StoreUnavailableError):
                await client.ingest_ticks(ticks(0, 10), interval="1s")

            def retries() -> list[logging.LogRecord]:
                return [r for r in caplog.records if r.name == "asyncpg.pool"]

            async def two_retries() -> None:
                while len(retries()) < 2:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(two_retries(), 30)
        finally:
            own_pg.start()
    finally:
        await client.aclose()
    for record in retries():
        assert record.exc_info is None and record.exc_text is None
        message = record.getMessage()
        assert "\n" not in message
        assert message.startswith("Failed to restore the pool connection floor; retrying (")
        assert "Error: " in message  # the reason, e.g. ConnectionRefusedError: [Errno 111] ...
    assert "Traceback" not in caplog.text
