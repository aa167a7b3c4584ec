"""signals: inference outputs, idempotent by signal_id, a time-series table.

Revision ID: 0003_add_signals_table
Revises: 0002_job_runs
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from market_data_store._timeseries import create_timeseries_table

revision: str = "0003_add_signals_table"
down_revision: str | None = "0002_job_runs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TSTZ = sa.DateTime(timezone=True)


def _partition_kw(partitioned: bool) -> dict[str, Any]:
    return {"postgresql_partition_by": "RANGE (ts)"} if partitioned else {}


def _create(partitioned: bool) -> None:
    op.create_table(
        "signals",
        sa.Column("signal_id", sa.Text(), nullable=False),
        sa.Column("ts", _TSTZ, nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("adapter", sa.Text(), nullable=False),
        sa.Column(
            "meta",
            postgresql.JSONB(),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        sa.Column("ver", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("updated_at", _TSTZ, nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("signal_id", "ts", name=op.f("pk_signals")),
        **_partition_kw(partitioned),
    )
    op.create_index(op.f("ix_signals_symbol_ts"), "signals", ["symbol", "ts"])


def upgrade() -> None:
    create_timeseries_table(op.get_bind(), "signals", _create, context.config.attributes)


def downgrade() -> None:
    op.drop_table("signals")
