"""bars_ohlcv.v may be null: provider bars without volume (FX bid bars) are stored as they are.

Tick-derived bars always carry their volume; a bar without one also has a null ``vwap``.
Downgrading refuses while such bars exist (a NOT NULL column cannot hold them).

Revision ID: 0005_bars_volume_optional
Revises: 0004_ticks
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_bars_volume_optional"
down_revision: str | None = "0004_ticks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # on a partitioned table or a hypertable this reaches every partition/chunk
    op.alter_column("bars_ohlcv", "v", existing_type=sa.Double(), nullable=True)


def downgrade() -> None:
    op.alter_column("bars_ohlcv", "v", existing_type=sa.Double(), nullable=False)
