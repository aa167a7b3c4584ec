"""Bare ceilings for ``mdp bench``: what the server does with no mdp logic in the way."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from market_data_core.errors import StoreError
from market_data_store._errors import translate_errors

__all__ = ["StatementStat", "bare_copy_ticks_per_s", "reset_statement_stats", "top_statements"]


@asynccontextmanager
async def _connection(dsn: str, what: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection of its own for ``what``, its errors as ``StoreError``."""
    with translate_errors(what):
        conn = await asyncpg.connect(dsn)
        try:
            yield conn
        finally:
            await conn.close()


async def bare_copy_ticks_per_s(dsn: str, rows: int, batch: int = 5000) -> float:
    """COPY ``rows`` tick-shaped rows into a temporary table, ``batch`` rows per COPY, one
    transaction per batch (as the micro-batcher commits); returns rows/s."""
    async with _connection(dsn, "bare COPY benchmark") as conn:
        await conn.execute(
            "CREATE TEMP TABLE bench_ticks (provider text, symbol text, ts timestamptz, "
            "seq bigint, price numeric, size numeric)"
        )
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        records = [
            (
                "bench",
                f"S{i % 20}",
                t0 + timedelta(microseconds=i),
                i,
                Decimal("100.25"),
                Decimal("1.5"),
            )
            for i in range(rows)
        ]
        started = time.perf_counter()
        for i in range(0, rows, batch):
            async with conn.transaction():
                await conn.copy_records_to_table("bench_ticks", records=records[i : i + batch])
        return rows / (time.perf_counter() - started)


@dataclass(frozen=True)
class StatementStat:
    """One normalised statement of ``pg_stat_statements`` since the last reset: ``calls``,
    ``rows`` (returned or affected), ``total_ms`` of execution (wall time in the server:
    waiting for locks and for a COPY's data included, planning not), ``query`` as the
    server normalised it (constants as ``$n``). ``plans`` and ``plan_ms``: how many times the
    planner ran for it and its total planning time in ms (a prepared statement on a generic
    plan is planned once per connection and again after a change to a table it reads), or
    None when the server does not count planning (``pg_stat_statements.track_planning``
    off, its default; the embedded server of ``mdp bench --pg-stats`` turns it on)."""

    query: str
    calls: int
    rows: int
    total_ms: float
    plans: int | None = None
    plan_ms: float | None = None


_NOT_LOADED = (
    "this PostgreSQL does not load pg_stat_statements: add it to shared_preload_libraries "
    "and restart it, or let mdp bench start a server of its own, which loads it (neither "
    "DATABASE_URL nor store.dsn set)"
)


async def reset_statement_stats(dsn: str) -> None:
    """Create the ``pg_stat_statements`` extension if missing and empty its counters (the
    start of a measured run). Raises ``StoreError`` when the server does not load the library
    (``shared_preload_libraries``) or the role may not create the extension or reset."""
    async with _connection(dsn, "reset pg_stat_statements") as conn:
        loaded = await conn.fetchval(
            "SELECT 'pg_stat_statements' = ANY(string_to_array("
            "replace(current_setting('shared_preload_libraries'), ' ', ''), ','))"
        )
        if not loaded:
            raise StoreError(_NOT_LOADED)
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")


async def top_statements(dsn: str, limit: int) -> list[StatementStat]:
    """The ``limit`` statements of this database with the most execution time since
    :func:`reset_statement_stats` (``pg_stat_statements``: ``total_exec_time``, ``calls``,
    ``rows``), most first; the extension's own statements left out. Raises ``StoreError``
    when the extension is missing."""
    async with _connection(dsn, "read pg_stat_statements") as conn:
        planning = await conn.fetchval(
            "SELECT current_setting('pg_stat_statements.track_planning', true) = 'on'"
        )
        rows = await conn.fetch(
            "SELECT query, calls, rows, total_exec_time, plans, total_plan_time "
            "FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND query NOT LIKE '%pg_stat_statements%' "
            "ORDER BY total_exec_time DESC LIMIT $1",
            limit,
        )
    return [
        StatementStat(
            query=" ".join(r["query"].split()),
            calls=r["calls"],
            rows=r["rows"],
            total_ms=float(r["total_exec_time"]),
            plans=r["plans"] if planning else None,
            plan_ms=float(r["total_plan_time"]) if planning else None,
        )
        for r in rows
    ]
