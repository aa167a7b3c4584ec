"""The composition root: the only pipeline module that imports ``market_data_store``.

Everything here returns core protocol types (``StoreClient``, ``SignalsStoreClient``,
``JobRunTracker``); the rest of the pipeline never sees SQL or a connection.
:func:`open_clients` is the one place that opens a command's clients and closes them all,
also when a later one fails to open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from market_data_core.config import AppConfig
from market_data_core.errors import ConfigError
from market_data_core.protocols import Bus, JobRunTracker, SignalsStoreClient, StoreClient
from market_data_core.reads import StoreReader
from market_data_core.timeutil import parse_duration_ms
from market_data_pipeline.servers import ServerUrls
from market_data_store import (
    PgJobRunTracker,
    PgSignalsStore,
    PgStoreClient,
    PgStoreReader,
)
from market_data_store.bench import (
    StatementStat,
    bare_copy_ticks_per_s,
    reset_statement_stats,
    top_statements,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

__all__ = [
    "Clients",
    "StatementStat",
    "bare_copy_ticks_per_s",
    "compress_after_ms",
    "downgrade_schema",
    "open_clients",
    "open_job_tracker",
    "open_signals_store",
    "open_store",
    "open_store_reader",
    "reset_statement_stats",
    "run_blocking",
    "top_statements",
    "upgrade_schema",
]


def _dsn(urls: ServerUrls) -> str:
    if not urls.database_url:
        raise ConfigError(
            "no PostgreSQL configured: set DATABASE_URL or store.dsn", key_path="store.dsn"
        )
    return urls.database_url


def compress_after_ms(config: AppConfig) -> int:
    """``store.compress_after`` in ms; it must exceed ``micro_batch.correction_horizon_ms``
    (a correction must never have to rewrite a compressed chunk). Raises ``ConfigError``."""
    try:
        ms = parse_duration_ms(config.store.compress_after)
    except ValueError as exc:
        raise ConfigError(str(exc), key_path="store.compress_after") from None
    horizon_ms = config.micro_batch.correction_horizon_ms
    if ms <= horizon_ms:
        raise ConfigError(
            f"must exceed micro_batch.correction_horizon_ms ({horizon_ms} ms), "
            f"got {config.store.compress_after}",
            key_path="store.compress_after",
        )
    return ms


async def open_store(config: AppConfig, urls: ServerUrls) -> StoreClient:
    """A connected ``StoreClient`` (pool sized by ``store.pool_min/pool_max``); today's and
    the next two days' partitions are created. Raises ``StoreUnavailableError`` when the
    server cannot be reached, ``StoreError`` when the schema is missing."""
    client = await PgStoreClient.connect(
        _dsn(urls), pool_min=config.store.pool_min, pool_max=config.store.pool_max
    )
    try:
        await client.ensure_partitions(days_ahead=2)
    except BaseException:
        await client.aclose()
        raise
    return client


async def open_signals_store(config: AppConfig, urls: ServerUrls) -> SignalsStoreClient:
    """A connected ``SignalsStoreClient``. Raises like :func:`open_store`."""
    return await PgSignalsStore.connect(
        _dsn(urls), pool_min=1, pool_max=max(1, min(2, config.store.pool_max))
    )


async def open_job_tracker(config: AppConfig, urls: ServerUrls) -> JobRunTracker:
    """A ``JobRunTracker`` on its own single connection (close with ``aclose()``)."""
    return await PgJobRunTracker.connect(_dsn(urls), pool_min=1, pool_max=1)


async def open_store_reader(urls: ServerUrls) -> StoreReader:
    """A ``StoreReader`` (``mdp report``) on a small pool. Raises like :func:`open_store`."""
    return await PgStoreReader.connect(_dsn(urls), pool_min=1, pool_max=2)


@dataclass
class Clients:
    """The clients :func:`open_clients` opened; asking for one it was not asked to open is a
    bug (``RuntimeError``)."""

    opened: dict[str, Any]

    def _get(self, name: str) -> Any:
        try:
            return self.opened[name]
        except KeyError:
            raise RuntimeError(f"open_clients(..., {name}=True) was not asked for") from None

    @property
    def bus(self) -> Bus:
        bus: Bus = self._get("bus")
        return bus

    @property
    def store(self) -> StoreClient:
        store: StoreClient = self._get("store")
        return store

    @property
    def signals(self) -> SignalsStoreClient:
        signals: SignalsStoreClient = self._get("signals")
        return signals

    @property
    def tracker(self) -> JobRunTracker:
        tracker: JobRunTracker = self._get("tracker")
        return tracker

    @property
    def reader(self) -> StoreReader:
        reader: StoreReader = self._get("reader")
        return reader


@contextlib.asynccontextmanager
async def open_clients(
    config: AppConfig,
    urls: ServerUrls,
    *,
    bus: bool = True,
    store: bool = False,
    signals: bool = False,
    tracker: bool = False,
    reader: bool = False,
) -> AsyncIterator[Clients]:
    """Open the clients asked for, in this order: the bus (:func:`~market_data_pipeline.
    streaming.open_bus`), the store (:func:`open_store`), the signals store, the job-run
    tracker, the report reader; yield them; close every one that opened, in reverse order.

    Whatever fails (a later client that cannot open, the block itself), every client opened
    before is closed and the error propagates unchanged: a close that fails meanwhile is
    logged, never raised in its place. Raises like each opener (``ConfigError``,
    ``BusError``, ``StoreUnavailableError``, ``StoreError``)."""
    from market_data_pipeline.streaming.bus import open_bus

    openers: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("bus", lambda: open_bus(config, urls)),
        ("store", lambda: open_store(config, urls)),
        ("signals", lambda: open_signals_store(config, urls)),
        ("tracker", lambda: open_job_tracker(config, urls)),
        ("reader", lambda: open_store_reader(urls)),
    ]
    wanted = {"bus": bus, "store": store, "signals": signals, "tracker": tracker, "reader": reader}
    async with contextlib.AsyncExitStack() as stack:
        clients = Clients({})
        for name, opener in openers:
            if wanted[name]:
                client = await opener()
                stack.push_async_callback(_close_quietly, name, client.aclose)
                clients.opened[name] = client
        yield clients


async def _close_quietly(name: str, aclose: Callable[[], Awaitable[None]]) -> None:
    try:
        await aclose()
    except Exception as exc:  # closing is best effort: the server may be the thing that failed
        log.warning("closing the %s client failed (%s)", name, exc)


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code; from inside a running event loop it runs
    on a fresh loop in a worker thread (a migration blocks its caller either way)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def upgrade_schema(
    dsn: str, revision: str = "head", *, config: AppConfig | None = None
) -> str | None:
    """Migrate ``dsn`` up to ``revision`` (blocking) with the config's partitioning settings
    (defaults when ``config`` is None); returns the revision the database is at.
    Raises ``StoreUnavailableError`` (unreachable), ``ConfigError`` (unknown revision),
    ``StoreError`` (the migration failed; rolled back)."""
    from market_data_store import upgrade_schema as _upgrade_schema  # SQLAlchemy: only here

    config = config or AppConfig()
    return run_blocking(
        _upgrade_schema(
            dsn,
            revision,
            partitioning=config.store.partitioning,
            compress_after_ms=compress_after_ms(config),
        )
    )


def downgrade_schema(dsn: str, revision: str) -> str | None:
    """Migrate ``dsn`` down to ``revision`` (blocking; ``base`` = no mdp tables)."""
    from market_data_store import downgrade_schema as _downgrade_schema

    return run_blocking(_downgrade_schema(dsn, revision))
