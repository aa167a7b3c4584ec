"""ticks: raw trade ticks, the micro-batcher's source of truth, a time-series table.

Prices and sizes are ``numeric`` so bars recomputed from ticks are exact.
The key (provider, symbol, ts, seq) is what ``event_id`` encodes.

Revision ID: 0004_ticks
Revises: 0003_add_signals_table
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from market_data_store._timeseries import create_timeseries_table

revision: str = "0004_ticks"
down_revision: str | None = "0003_add_signals_table"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TSTZ = sa.DateTime(timezone=True)


def _partition_kw(partitioned: bool) -> dict[str, Any]:
    return {"postgresql_partition_by": "RANGE (ts)"} if partitioned else {}


def _create(partitioned: bool) -> None:
    op.create_table(
        "ticks",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("ts", _TSTZ, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("price", sa.Numeric(), nullable=False),
        sa.Column("size", sa.Numeric(), nullable=False),
        sa.Column("side", sa.Text(), nullable=True),
        sa.Column("trade_id", sa.Text(), nullable=True),
        sa.Column("ingest_ts", _TSTZ, nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("provider", "symbol", "ts", "seq", name=op.f("pk_ticks")),
        **_partition_kw(partitioned),
    )


def upgrade() -> None:
    create_timeseries_table(op.get_bind(), "ticks", _create, context.config.attributes)


def downgrade() -> None:
    op.drop_table("ticks")
