"""The raw tables keyed ``(series_key, ts, seq, provider, symbol)``: an ``int8`` first.

``series_key`` is a stored generated column, PostgreSQL's 64-bit hash of ``(provider,
symbol)`` (:func:`market_data_store._schema_names.series_key`): writers send the same rows as
before, and every read of a series matches the key as well as ``provider`` and ``symbol``, so
the hash's collisions cannot mix two series. The old key ``(provider, symbol, ts, seq)`` led
by text columns made every index comparison go through the collation code: 29.7 % of
PostgreSQL's CPU at 200,000 ticks/s. Uniqueness is unchanged (the new key holds the old one's
columns and a function of them).

On TimescaleDB the hypertable's compression is switched off (its chunks decompressed) for the
change and switched on again with ``series_key`` leading ``segmentby``. The downgrade restores
the old key and drops the column.

Revision ID: 0012_raw_series_key
Revises: 0011_raw_tables_no_insert_vacuum
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import context, op

from market_data_store._schema_names import APPEND_ONLY_TABLES, SERIES_KEY_COLUMN, series_key
from market_data_store._timeseries import (
    disable_compression,
    enable_compression,
    is_hypertable,
    settings_from,
)

revision: str = "0012_raw_series_key"
down_revision: str | None = "0011_raw_tables_no_insert_vacuum"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_KEY = "provider, symbol, ts, seq"
_NEW_KEY = f"{SERIES_KEY_COLUMN}, ts, seq, provider, symbol"


def _rekey(table: str, *, add: bool) -> None:
    bind = op.get_bind()
    hyper = is_hypertable(bind, table)
    if hyper:
        disable_compression(bind, table)
    op.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "pk_{table}"')
    if add:
        op.execute(
            f'ALTER TABLE "{table}" ADD COLUMN {SERIES_KEY_COLUMN} bigint '
            f"GENERATED ALWAYS AS ({series_key('provider', 'symbol')}) STORED"
        )
        op.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "pk_{table}" PRIMARY KEY ({_NEW_KEY})')
    else:
        op.execute(f'ALTER TABLE "{table}" DROP COLUMN {SERIES_KEY_COLUMN}')
        op.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "pk_{table}" PRIMARY KEY ({_OLD_KEY})')
    if hyper:
        _partitioning, compress_after_ms = settings_from(context.config.attributes)
        enable_compression(
            bind,
            table,
            compress_after_ms=compress_after_ms,
            segment_by=None if add else "provider, symbol",
        )


def upgrade() -> None:
    for table in APPEND_ONLY_TABLES:
        _rekey(table, add=True)


def downgrade() -> None:
    for table in APPEND_ONLY_TABLES:
        _rekey(table, add=False)
