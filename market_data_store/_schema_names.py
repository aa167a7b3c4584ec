"""Names and constants of the schema the asyncpg clients need, without SQLAlchemy.

``models``, ``_timeseries`` and the migrations re-export them; the clients import them from
here, so a process that only reads and writes (a micro-batch worker, inference) does not load
SQLAlchemy and Alembic (~28 MiB of memory each).
"""

from __future__ import annotations

from datetime import date, timedelta

__all__ = [
    "APPEND_ONLY_RELOPTIONS",
    "APPEND_ONLY_TABLES",
    "TIMESERIES_TABLES",
    "VWAP_GUARD_DIGITS",
    "partition_ddl",
    "partition_name",
]

VWAP_GUARD_DIGITS = 25
"""Decimal places added to ``sum(price*size)``'s own scale before dividing by ``sum(size)``.

The dividend's scale is at least that of the window's lowest price (a sum of products of the
stored decimals), so the quotient, which is >= that price, keeps at least this many significant
digits (PostgreSQL's own division keeps 16 to 20, too few to round to float8 correctly).
"""

TIMESERIES_TABLES = ("bars_ohlcv", "ticks", "signals", "quotes", "quote_bars")
"""Tables partitioned by ``ts`` (hypertables on TimescaleDB, daily range partitions otherwise)."""


APPEND_ONLY_TABLES = ("ticks", "quotes")
"""The raw tables: rows are only ever added (``ON CONFLICT DO NOTHING``), never updated."""

APPEND_ONLY_RELOPTIONS = "autovacuum_vacuum_insert_threshold = -1"
"""Storage parameters of the raw tables' partitions: no autovacuum triggered by inserts
(PostgreSQL 13+), which scans and freezes a partition while it is being written (every 20 %
of growth): at 210,000 ticks/s on two cores it made the pipeline fall behind after ~80 s
(unread + pending entries 9k -> 46-57k, p95 window latency 15-17 s; off: flat, 1.9-2.2 s).
Dead rows (an aborted store, a conflict race) still trigger vacuum as in any table, and a
partition is frozen by the anti-wraparound vacuum (``autovacuum_freeze_max_age``) long after
its day, when it is no longer written. mdp reads raw rows through the heap, never by
index-only scans, so an unset visibility map costs it nothing."""


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def partition_ddl(table: str, day: date) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the partition of ``table`` holding UTC ``day``
    (with :data:`APPEND_ONLY_RELOPTIONS` for the raw tables)."""
    nxt = day + timedelta(days=1)
    return (
        f'CREATE TABLE IF NOT EXISTS "{partition_name(table, day)}" PARTITION OF "{table}" '
        f"FOR VALUES FROM ('{day.isoformat()} 00:00:00+00') TO ('{nxt.isoformat()} 00:00:00+00')"
        + (f" WITH ({APPEND_ONLY_RELOPTIONS})" if table in APPEND_ONLY_TABLES else "")
    )
