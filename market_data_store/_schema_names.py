"""Names and constants of the schema the asyncpg clients need, without SQLAlchemy.

``models``, ``_timeseries`` and the migrations re-export them; the clients import them from
here, so a process that only reads and writes (a micro-batch worker, inference) does not load
SQLAlchemy and Alembic (~28 MiB of memory each).
"""

from __future__ import annotations

from datetime import date, timedelta

__all__ = ["TIMESERIES_TABLES", "VWAP_GUARD_DIGITS", "partition_ddl", "partition_name"]

VWAP_GUARD_DIGITS = 25
"""Decimal places added to ``sum(price*size)``'s own scale before dividing by ``sum(size)``.

The dividend's scale is at least that of the window's lowest price (a sum of products of the
stored decimals), so the quotient, which is >= that price, keeps at least this many significant
digits (PostgreSQL's own division keeps 16 to 20, too few to round to float8 correctly).
"""

TIMESERIES_TABLES = ("bars_ohlcv", "ticks", "signals", "quotes", "quote_bars")
"""Tables partitioned by ``ts`` (hypertables on TimescaleDB, daily range partitions otherwise)."""


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def partition_ddl(table: str, day: date) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the partition of ``table`` holding UTC ``day``."""
    nxt = day + timedelta(days=1)
    return (
        f'CREATE TABLE IF NOT EXISTS "{partition_name(table, day)}" PARTITION OF "{table}" '
        f"FOR VALUES FROM ('{day.isoformat()} 00:00:00+00') TO ('{nxt.isoformat()} 00:00:00+00')"
    )
