"""bars_ohlcv: OHLCV bars keyed by (provider, symbol, interval, ts), a time-series table.

Revision ID: 0001_bars_ohlcv
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from market_data_store._timeseries import create_timeseries_table

revision: str = "0001_bars_ohlcv"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TSTZ = sa.DateTime(timezone=True)


def _partition_kw(partitioned: bool) -> dict[str, Any]:
    return {"postgresql_partition_by": "RANGE (ts)"} if partitioned else {}


def _create(partitioned: bool) -> None:
    op.create_table(
        "bars_ohlcv",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("interval", sa.Text(), nullable=False),
        sa.Column("ts", _TSTZ, nullable=False),
        sa.Column("o", sa.Double(), nullable=False),
        sa.Column("h", sa.Double(), nullable=False),
        sa.Column("l", sa.Double(), nullable=False),
        sa.Column("c", sa.Double(), nullable=False),
        sa.Column("v", sa.Double(), nullable=False),
        sa.Column("vwap", sa.Double(), nullable=True),
        sa.Column("trade_count", sa.Integer(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", _TSTZ, nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("provider", "symbol", "interval", "ts", name=op.f("pk_bars_ohlcv")),
        **_partition_kw(partitioned),
    )


def upgrade() -> None:
    create_timeseries_table(op.get_bind(), "bars_ohlcv", _create, context.config.attributes)


def downgrade() -> None:
    op.drop_table("bars_ohlcv")
