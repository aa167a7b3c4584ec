"""What every asyncpg client shares: the pool, partitions, redaction, error translation."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Awaitable, Callable, Iterable
from datetime import date
from typing import Any, Self, TypeVar

import asyncpg

from market_data_core.redaction import redact_url
from market_data_store._errors import translate_errors
from market_data_store._pool import StagingJanitor, create_pool
from market_data_store._series import SeriesRegistry
from market_data_store.partitions import PartitionManager

__all__ = ["PgClientBase", "series_lock_keys"]

T = TypeVar("T")

# pg_advisory_xact_lock(int4, int4) namespace of per-(provider, symbol) write locks.
SERIES_LOCK_NAMESPACE = 0x6D6471


def series_lock_keys(series: Iterable[tuple[str, str]]) -> list[int]:
    """Sorted, unique int4 lock keys of (provider, symbol) pairs: taking them in this order
    in every transaction makes lock-order deadlocks impossible. Collisions only serialise."""
    keys = {zlib.crc32(f"{p}|{s}".encode()) - 0x80000000 for p, s in series}
    return sorted(keys)


LOCK_SQL = "SELECT pg_advisory_xact_lock($1::int4, k) FROM unnest($2::int4[]) AS k"


def lock_sql_literal(keys: Iterable[int]) -> str:
    """:data:`LOCK_SQL` for ``keys`` (from :func:`series_lock_keys`) as a statement with no
    parameters (their ints written out), to go in one simple-protocol round trip with the
    statements after it."""
    listed = ",".join(str(int(k)) for k in keys)
    return (
        f"SELECT pg_advisory_xact_lock({SERIES_LOCK_NAMESPACE}, k) "
        f"FROM unnest('{{{listed}}}'::int4[]) AS k"
    )


class PgClientBase:
    """A pool plus the partition cache; ``repr`` shows the DSN without its password."""

    def __init__(self, pool: Any, dsn: str) -> None:
        self._pool = pool
        self._dsn_redacted = redact_url(dsn)
        self._partitions = PartitionManager()
        self._series = SeriesRegistry()
        self._janitor = StagingJanitor()
        self._closed = False

    @classmethod
    async def connect(cls, dsn: str, *, pool_min: int = 1, pool_max: int = 4) -> Self:
        """Open a pool to ``dsn``. Raises ``StoreUnavailableError`` if unreachable."""
        pool = await create_pool(dsn, min_size=pool_min, max_size=pool_max)
        return cls(pool, dsn)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dsn={self._dsn_redacted!r})"

    async def _write(
        self,
        partitions: Iterable[tuple[str, Iterable[date]]],
        write: Callable[[], Awaitable[T]],
        *,
        series: Iterable[tuple[str, str]] = (),
    ) -> T:
        """Ensure the partitions a write needs and the registration of the ``series`` it
        writes raw rows of (:class:`~market_data_store._series.SeriesRegistry`), then run it.
        If a partition vanished under us (dropped by retention while cached), forget the
        cache and try once more."""
        await self._series.ensure(self._pool, series)
        wanted = [(table, list(days)) for table, days in partitions]
        for attempt in (1, 2):
            for table, days in wanted:
                await self._partitions.ensure(self._pool, table, days)
            try:
                return await write()
            except asyncpg.CheckViolationError as exc:
                if attempt == 2 or "no partition" not in str(exc):
                    raise
                self._partitions.forget()
        raise AssertionError("unreachable")

    async def ensure_partitions(self, days_ahead: int = 2) -> int:
        """Pre-create today's and the next ``days_ahead`` days' partitions (native layout);
        returns how many were created. A no-op on TimescaleDB."""
        with translate_errors("ensure_partitions"):
            return await self._partitions.precreate(self._pool, days_ahead)

    async def aclose(self) -> None:
        """Close the pool (gracefully within 5 s, then forcibly). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), timeout=5)
        except (TimeoutError, OSError):
            with contextlib.suppress(Exception):
                self._pool.terminate()
