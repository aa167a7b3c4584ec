"""Automatic daily partitions for the natively partitioned time-series tables.

Before a client writes, it calls :meth:`PartitionManager.ensure` with the UTC days the batch
touches; missing partitions are created in their own short transaction (never inside the data
transaction, so a writer never holds a table lock while waiting for DDL), one table at a time,
under a transaction-scoped advisory lock so concurrent clients do not race on ``CREATE``.
On TimescaleDB (hypertables create their chunks themselves) every call is a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from market_data_store._schema_names import TIMESERIES_TABLES, partition_ddl, partition_name

__all__ = ["PARTITION_LOCK_KEY", "PartitionManager"]

# pg_advisory_xact_lock(int4, int4) key of partition DDL: (namespace, 0).
PARTITION_LOCK_KEY = (0x6D6470, 1)  # 'mdp', 1


class PartitionManager:
    """Knows which tables are natively partitioned and which daily partitions exist.

    Detection is lazy (first use) and cached for the life of the client; a partition
    created by anyone is found by ``CREATE TABLE IF NOT EXISTS`` anyway.
    """

    def __init__(self) -> None:
        self._partitioned: frozenset[str] | None = None
        self._known: set[str] = set()
        self._lock = asyncio.Lock()

    async def _detect(self, conn: Any) -> frozenset[str]:
        if self._partitioned is None:
            rows = await conn.fetch(
                "SELECT c.relname FROM pg_partitioned_table p "
                "JOIN pg_class c ON c.oid = p.partrelid "
                "WHERE c.relnamespace = current_schema()::regnamespace "
                "AND c.relname = ANY($1::text[])",
                list(TIMESERIES_TABLES),
            )
            parts = await conn.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE p.relnamespace = current_schema()::regnamespace "
                "AND p.relname = ANY($1::text[])",
                list(TIMESERIES_TABLES),
            )
            self._known.update(r["relname"] for r in parts)
            found = frozenset(r["relname"] for r in rows)
            migrated = await conn.fetchval("SELECT to_regclass('bars_ohlcv') IS NOT NULL")
            if not migrated:
                return found  # not cached: the schema may be migrated while we run
            self._partitioned = found
        return self._partitioned

    def forget(self) -> None:
        """Drop the cache (after a schema change, e.g. downgrade/upgrade in tests)."""
        self._partitioned = None
        self._known.clear()

    async def ensure(self, pool: Any, table: str, days: Iterable[date]) -> int:
        """Make sure ``table`` has a partition for each UTC day; returns how many were created."""
        wanted = sorted(set(days))
        if self._partitioned is not None and (
            table not in self._partitioned
            or all(partition_name(table, d) in self._known for d in wanted)
        ):
            return 0
        async with self._lock, pool.acquire() as conn:
            if table not in await self._detect(conn):
                return 0
            missing = [d for d in wanted if partition_name(table, d) not in self._known]
            if not missing:
                return 0
            created = 0
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", *PARTITION_LOCK_KEY)
                for day in missing:
                    exists = await conn.fetchval(
                        "SELECT to_regclass($1) IS NOT NULL", partition_name(table, day)
                    )
                    if not exists:
                        await conn.execute(partition_ddl(table, day))
                        created += 1
            self._known.update(partition_name(table, d) for d in missing)
            return created

    async def precreate(self, pool: Any, days_ahead: int = 2) -> int:
        """Create the partitions of today and the next ``days_ahead`` UTC days for every
        partitioned table (run at start-up and daily); returns how many were created."""
        today = datetime.now(UTC).date()
        days = [today + timedelta(days=i) for i in range(days_ahead + 1)]
        created = 0
        for table in TIMESERIES_TABLES:
            created += await self.ensure(pool, table, days)
        return created
