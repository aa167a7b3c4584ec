"""job_runs heartbeat: runs that died are visible (status ``abandoned``).

``heartbeat_at`` is a running job's last sign of life, ``heartbeat_interval_ms`` how often it
promised one; a ``running`` row silent for ``ABANDON_AFTER_HEARTBEATS`` (3) intervals is
marked ``abandoned``. Existing rows get their ``finished_at`` (else ``started_at``) as last
heartbeat and the default 10 s interval, so a row left ``running`` by a killed worker before
this revision is marked abandoned by the next start.

Downgrade turns ``abandoned`` rows into ``failed`` (keeping the reason in ``detail``), then
drops the columns.

Revision ID: 0006_job_runs_heartbeat
Revises: 0005_bars_volume_optional
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_job_runs_heartbeat"
down_revision: str | None = "0005_bars_volume_optional"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TSTZ = sa.DateTime(timezone=True)
_STATUS_CK = "ck_job_runs_status_known"


def upgrade() -> None:
    op.add_column("job_runs", sa.Column("heartbeat_at", _TSTZ, nullable=True))
    op.add_column(
        "job_runs",
        sa.Column(
            "heartbeat_interval_ms",
            sa.Integer(),
            nullable=False,
            server_default=sa.text("10000"),
        ),
    )
    op.execute("UPDATE job_runs SET heartbeat_at = coalesce(finished_at, started_at)")
    op.alter_column("job_runs", "heartbeat_at", nullable=False, server_default=sa.text("now()"))
    op.drop_constraint(op.f(_STATUS_CK), "job_runs", type_="check")
    op.create_check_constraint(
        op.f(_STATUS_CK),
        "job_runs",
        "status IN ('running', 'success', 'failed', 'stopped', 'abandoned')",
    )


def downgrade() -> None:
    op.execute(
        "UPDATE job_runs SET status = 'failed', "
        "detail = 'abandoned: ' || coalesce(detail, 'no heartbeat') WHERE status = 'abandoned'"
    )
    op.drop_constraint(op.f(_STATUS_CK), "job_runs", type_="check")
    op.create_check_constraint(
        op.f(_STATUS_CK), "job_runs", "status IN ('running', 'success', 'failed', 'stopped')"
    )
    op.drop_column("job_runs", "heartbeat_interval_ms")
    op.drop_column("job_runs", "heartbeat_at")
