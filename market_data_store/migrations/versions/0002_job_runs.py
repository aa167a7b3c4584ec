"""job_runs: the audit trail of long jobs (one row per run).

Revision ID: 0002_job_runs
Revises: 0001_bars_ohlcv
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_job_runs"
down_revision: str | None = "0001_bars_ohlcv"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TSTZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("started_at", _TSTZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("finished_at", _TSTZ, nullable=True),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'running'")),
        sa.Column("events_in", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("rows_written", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("errors", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("config_hash", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
        sa.CheckConstraint(
            "status IN ('running', 'success', 'failed', 'stopped')",
            name=op.f("ck_job_runs_status_known"),
        ),
    )
    op.create_index(op.f("ix_job_runs_job_started_at"), "job_runs", ["job", "started_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_job_runs_job_started_at"), table_name="job_runs")
    op.drop_table("job_runs")
