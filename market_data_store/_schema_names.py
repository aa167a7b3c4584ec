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
    "SERIES_KEY_COLUMN",
    "TIMESERIES_TABLES",
    "VWAP_GUARD_DIGITS",
    "partition_ddl",
    "partition_name",
    "series_key",
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


SERIES_KEY_COLUMN = "series_key"
"""The raw tables' leading key column: ``int8``, the :func:`series_key` of ``(provider,
symbol)``, sent by the writers and held to it by a ``CHECK`` (migration ``0013``). Their
primary key is ``(series_key, ts, seq)``."""


def series_key(provider: str, symbol: str) -> str:
    """SQL: the ``int8`` series key of the text expressions ``provider`` and ``symbol``,
    ``hashtextextended(symbol, hashtextextended(provider, 0))``: PostgreSQL's 64-bit text hash
    (the one hash partitioning uses, so stable across versions and ``pg_upgrade``), with the
    database's deterministic collation hashing the bytes.

    Why: a B-tree led by text columns compares them through the collation machinery on every
    descent and every insert (29.7 % of PostgreSQL's CPU at 200,000 ticks/s in ``perf``); led
    by an ``int8`` with fixed-width columns after it, a key compares in a few instructions.
    COPY of 10,000-tick batches, server CPU per row (``/work/scratch/keybench.py``, three
    rounds): 3.2-3.7 µs with ``(provider, symbol, ts, seq)``, 2.3-2.7 µs with this key.

    Exact whatever the hash: ``raw_series`` gives each key one series and refuses a second
    (:class:`~market_data_store._series.SeriesRegistry`), so the key ``(series_key, ts, seq)``
    and the reads by ``series_key`` alone mean what ``(provider, symbol, ts, seq)`` meant. The
    hash only has to be the same function in the ``CHECK``, the registry and the reads, which
    is why all come from here."""
    return f"hashtextextended({symbol}, hashtextextended({provider}, 0))"


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
