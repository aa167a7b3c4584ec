"""How time-series tables are partitioned: TimescaleDB hypertables, or native daily ranges.

The migrations call :func:`choose_backend` once per time-series table and then
:func:`make_timeseries`. The schema and every query are the same either way; only the
physical layout differs:

- ``timescale``: ``create_hypertable(table, by_range('ts', 1 day))`` (TimescaleDB >= 2.13),
  compression segmented by the series key and ordered by ``ts DESC``, and a compression
  policy ``compress_after`` (which must exceed the micro-batcher's correction horizon, so
  corrections never touch compressed chunks in the common case).
- ``native``: ``PARTITION BY RANGE (ts)`` with one partition per UTC day named
  ``<table>_pYYYYMMDD``; the clients create the partitions a batch needs before writing
  (:mod:`market_data_store.partitions`), so data of any age (replays of 2020) lands.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.engine import Connection

from market_data_core.errors import StoreError
from market_data_store._schema_names import (
    APPEND_ONLY_RELOPTIONS,
    APPEND_ONLY_TABLES,
    partition_ddl,
    partition_name,
)

__all__ = [
    "ORDER_BY",
    "SEGMENT_BY",
    "Backend",
    "choose_backend",
    "create_timeseries_table",
    "disable_compression",
    "enable_compression",
    "is_hypertable",
    "make_timeseries",
    "partition_ddl",
    "partition_name",
    "settings_from",
]

log = logging.getLogger(__name__)

Backend = Literal["timescale", "native"]

# Compression layout: every primary-key column is in segmentby or orderby (TimescaleDB warns
# otherwise, and the unique check on compressed chunks needs them); ``interval`` is a keyword.
SEGMENT_BY: dict[str, str] = {
    "bars_ohlcv": 'provider, symbol, "interval"',
    "ticks": "series_key, provider, symbol",
    "signals": "symbol",
    "quotes": "series_key, provider, symbol",
    "quote_bars": 'provider, symbol, "interval"',
}
ORDER_BY: dict[str, str] = {
    "bars_ohlcv": "ts DESC",
    "ticks": "ts DESC, seq DESC",
    "signals": "ts DESC, signal_id",
    "quotes": "ts DESC, seq DESC",
    "quote_bars": "ts DESC",
}


def _scalar(conn: Connection, sql: str, **params: Any) -> Any:
    return conn.execute(text(sql), params).scalar()


def choose_backend(conn: Connection, partitioning: str) -> Backend:
    """Decide (and stick to) the layout of the time-series tables.

    An existing ``bars_ohlcv`` decides for the later tables, so one database never mixes
    layouts. Otherwise ``partitioning="auto"`` uses TimescaleDB when the extension is
    installed or can be created (listed in ``pg_available_extensions`` and preloaded), else
    native partitioning. ``"timescale"`` without the extension raises ``StoreError``.
    """
    existing = _scalar(
        conn,
        "SELECT c.relkind::text FROM pg_class c "
        "WHERE c.relname = 'bars_ohlcv' AND c.relnamespace = current_schema()::regnamespace",
    )
    if existing == "p":
        return "native"
    if existing is not None and is_hypertable(conn, "bars_ohlcv"):
        return "timescale"
    if partitioning == "native":
        return "native"
    if _timescale_installed(conn):
        return "timescale"
    available = _scalar(
        conn, "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    if available:
        # Listed but maybe not in shared_preload_libraries: try inside a savepoint.
        try:
            with conn.begin_nested():
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
            return "timescale"
        except Exception as exc:  # the failure reason is logged; fallback is the contract
            if partitioning == "timescale":
                raise StoreError(f"cannot create the timescaledb extension: {exc}") from exc
            log.warning("timescaledb is available but cannot be created (%s); native", exc)
            return "native"
    if partitioning == "timescale":
        raise StoreError(
            "store.partitioning is 'timescale' but the timescaledb extension is not available"
        )
    return "native"


def _timescale_installed(conn: Connection) -> bool:
    return bool(_scalar(conn, "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"))


def make_timeseries(
    conn: Connection,
    table: str,
    backend: Backend,
    *,
    compress_after_ms: int,
    precreate_days: int = 2,
) -> None:
    """Turn a freshly created ``table`` (partitioned by ``RANGE (ts)`` when ``native``, a
    plain table when ``timescale``) into its time-series layout."""
    if backend == "timescale":
        conn.execute(
            text(
                "SELECT create_hypertable(CAST(:t AS regclass), by_range('ts', INTERVAL '1 day'),"
                " if_not_exists => TRUE)"
            ),
            {"t": table},
        )
        enable_compression(conn, table, compress_after_ms=compress_after_ms)
        if table in APPEND_ONLY_TABLES:  # the hypertable's, copied to each new chunk
            conn.execute(text(f'ALTER TABLE "{table}" SET ({APPEND_ONLY_RELOPTIONS})'))
        return
    today = datetime.now(UTC).date()
    for offset in range(-1, precreate_days + 1):
        conn.execute(text(partition_ddl(table, today + timedelta(days=offset))))


def enable_compression(
    conn: Connection, table: str, *, compress_after_ms: int, segment_by: str | None = None
) -> None:
    """TimescaleDB: compress the hypertable ``table``'s chunks by :data:`SEGMENT_BY` (or
    ``segment_by``) and :data:`ORDER_BY`, older than ``compress_after_ms`` (a background
    policy)."""
    conn.execute(
        text(
            f'ALTER TABLE "{table}" SET (timescaledb.compress, '
            f"timescaledb.compress_segmentby = '{segment_by or SEGMENT_BY[table]}', "
            f"timescaledb.compress_orderby = '{ORDER_BY[table]}')"
        )
    )
    conn.execute(
        text(
            "SELECT add_compression_policy(CAST(:t AS regclass), "
            "compress_after => make_interval(secs => :secs), if_not_exists => TRUE)"
        ),
        {"t": table, "secs": compress_after_ms / 1000.0},
    )


def disable_compression(conn: Connection, table: str) -> None:
    """TimescaleDB: decompress every chunk of the hypertable ``table``, drop its compression
    policy and setting (a compressed hypertable's key and columns cannot be altered)."""
    conn.execute(
        text(
            "SELECT decompress_chunk(c, if_compressed => TRUE) "
            "FROM show_chunks(CAST(:t AS regclass)) c"
        ),
        {"t": table},
    )
    conn.execute(
        text("SELECT remove_compression_policy(CAST(:t AS regclass), if_exists => TRUE)"),
        {"t": table},
    )
    conn.execute(text(f'ALTER TABLE "{table}" SET (timescaledb.compress = false)'))


def is_hypertable(conn: Connection, table: str) -> bool:
    """Is ``table`` a TimescaleDB hypertable (False without the extension)?"""
    return _timescale_installed(conn) and bool(
        _scalar(
            conn,
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = :t",
            t=table,
        )
    )


def settings_from(attributes: dict[str, Any]) -> tuple[str, int]:
    """``(partitioning, compress_after_ms)`` passed by :mod:`market_data_store.migrate`
    (defaults: ``auto``, 7 days)."""
    partitioning = str(attributes.get("partitioning", "auto"))
    compress_after_ms = int(attributes.get("compress_after_ms", 7 * 86_400_000))
    return partitioning, compress_after_ms


def create_timeseries_table(
    conn: Connection,
    table: str,
    create: Any,
    attributes: dict[str, Any],
) -> Backend:
    """Choose the layout, call ``create(partitioned: bool)`` to create the table, then apply
    the layout. Returns the backend used."""
    partitioning, compress_after_ms = settings_from(attributes)
    backend = choose_backend(conn, partitioning)
    create(backend == "native")
    make_timeseries(conn, table, backend, compress_after_ms=compress_after_ms)
    log.debug("%s: %s layout", table, backend)  # a detail of the migration: `mdp -v`
    return backend
