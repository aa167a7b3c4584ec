"""ticks without ``event_id``: the id is what the key ``(provider, symbol, ts, seq)`` encodes.

``event_id`` is ``provider|symbol|ts (ISO-8601, µs, Z)|seq``
(:func:`~market_data_core.contracts.make_event_id`), so the stored text repeated the primary
key: about a third of a tick row's bytes, written, logged and copied for every tick. ``quotes``
never stored it. Idempotency is unchanged (the key is the same); readers that want the id
build it from the key. The downgrade adds the column back, filled from the key.

Revision ID: 0010_ticks_without_event_id
Revises: 0009_rollups
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_ticks_without_event_id"
down_revision: str | None = "0009_rollups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# make_event_id in SQL: the timestamp in UTC with microseconds and a Z
_EVENT_ID_SQL = (
    "provider || '|' || symbol || '|' || "
    """to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '|' || seq"""
)


def upgrade() -> None:
    op.drop_column("ticks", "event_id")


def downgrade() -> None:
    op.add_column("ticks", sa.Column("event_id", sa.Text(), nullable=True))
    op.execute(f"UPDATE ticks SET event_id = {_EVENT_ID_SQL}")
    op.alter_column("ticks", "event_id", nullable=False)
