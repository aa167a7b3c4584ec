"""The raw tables keyed ``(series_key, ts, seq)``, ``series_key`` sent by the writers.

Two costs of every raw row PostgreSQL paid at 200,000 ticks/s (``perf`` of the server
backends during ``mdp bench --rate 200000 --pack 50``: the ``COPY`` into ``ticks`` is 86 % of
their CPU, inserting into the primary key 47 %):

- ``series_key`` was a stored generated column: PostgreSQL materialised every row, copied its
  values and formed it again to add the key (8.7 % of the backends' CPU). It is now a plain
  ``int8`` the writer sends (:class:`~market_data_store._series.SeriesRegistry` has the key of
  each series it registers, from PostgreSQL), held to the same hash by a ``CHECK``
  (``ck_<table>_series_key``), which evaluates on the row as received: a wrong or missing key
  is refused, never stored.
- The key's ``provider`` and ``symbol`` made every index entry ~52 bytes instead of 36, and the
  index splits every leaf page half and half (a series' ticks arrive in order, inside the
  index: the left half is never written again), so ~98 bytes of index per row instead of ~68.
  The key is now ``(series_key, ts, seq)``: unique exactly as before, because ``raw_series``
  (migration ``0012``) already refuses a second series with a registered key, and every read
  of a series matches ``series_key`` alone.

Server CPU per row of 10,000-row binary ``COPY`` batches into a day partition (4,000,000 rows
per table, 20 series, 10 interleaved rounds, median of rounds 1-9; scratch ``keybench.py``):
3.95 µs with the old key and generated column, 3.53 with this one (lower in 9 of 10 rounds);
primary key 394 MB -> 272 MB.

The ``CHECK`` is validated here (a scan of the stored rows, on top of the key's rebuild), not
added ``NOT VALID``: SQLAlchemy's reflection (2.1) of a ``NOT VALID`` check constraint warns
"Can't validate argument 'dialect_options'", so Alembic's autogenerate comparison of the models
with the schema would warn on every run (and fails the tests, where warnings are errors).

On TimescaleDB compression is switched off for the change and on again, as in ``0012``. The
downgrade restores the generated column (a rewrite of the tables) and the old key.

Revision ID: 0013_raw_key_from_writers
Revises: 0012_raw_series_key
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

revision: str = "0013_raw_key_from_writers"
down_revision: str | None = "0012_raw_series_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_KEY = f"{SERIES_KEY_COLUMN}, ts, seq, provider, symbol"
_NEW_KEY = f"{SERIES_KEY_COLUMN}, ts, seq"


def _rekey(table: str, *, upgrade: bool) -> None:
    bind = op.get_bind()
    hyper = is_hypertable(bind, table)
    if hyper:
        disable_compression(bind, table)
    op.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "pk_{table}"')
    if upgrade:
        op.execute(f'ALTER TABLE "{table}" ALTER COLUMN {SERIES_KEY_COLUMN} DROP EXPRESSION')
        op.execute(
            f'ALTER TABLE "{table}" ADD CONSTRAINT "ck_{table}_{SERIES_KEY_COLUMN}" '
            f"CHECK ({SERIES_KEY_COLUMN} = {series_key('provider', 'symbol')})"
        )
        op.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "pk_{table}" PRIMARY KEY ({_NEW_KEY})')
    else:
        op.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "ck_{table}_{SERIES_KEY_COLUMN}"')
        op.execute(f'ALTER TABLE "{table}" DROP COLUMN {SERIES_KEY_COLUMN}')
        op.execute(
            f'ALTER TABLE "{table}" ADD COLUMN {SERIES_KEY_COLUMN} bigint '
            f"GENERATED ALWAYS AS ({series_key('provider', 'symbol')}) STORED"
        )
        op.execute(f'ALTER TABLE "{table}" ADD CONSTRAINT "pk_{table}" PRIMARY KEY ({_OLD_KEY})')
    if hyper:
        _partitioning, compress_after_ms = settings_from(context.config.attributes)
        enable_compression(bind, table, compress_after_ms=compress_after_ms)


def upgrade() -> None:
    for table in APPEND_ONLY_TABLES:
        _rekey(table, upgrade=True)


def downgrade() -> None:
    for table in APPEND_ONLY_TABLES:
        _rekey(table, upgrade=False)
