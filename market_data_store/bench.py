"""Bare ceilings for ``mdp bench``: what the server does with no mdp logic in the way."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from market_data_store._errors import translate_errors

__all__ = ["bare_copy_ticks_per_s"]


async def bare_copy_ticks_per_s(dsn: str, rows: int, batch: int = 5000) -> float:
    """COPY ``rows`` tick-shaped rows into a temporary table, ``batch`` rows per COPY, one
    transaction per batch (as the micro-batcher commits); returns rows/s."""
    with translate_errors("bare COPY benchmark"):
        conn = await asyncpg.connect(dsn)
        try:
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
        finally:
            await conn.close()
