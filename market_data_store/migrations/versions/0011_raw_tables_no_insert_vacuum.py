"""The raw tables (``ticks``, ``quotes``) without autovacuum triggered by inserts.

PostgreSQL 13+ vacuums a table after every 20 % of growth by inserts alone, which scans and
freezes a raw partition while it is being written: at 210,000 ticks/s on two cores the
pipeline fell behind from ~80 s into a run (see
:data:`market_data_store._schema_names.APPEND_ONLY_RELOPTIONS`). New partitions get the storage
parameter from ``partition_ddl`` (and on TimescaleDB new chunks from their hypertable); this
revision sets it on the partitions (chunks) that exist, and on a hypertable itself. The
downgrade resets it.

Revision ID: 0011_raw_tables_no_insert_vacuum
Revises: 0010_ticks_without_event_id
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from market_data_store._schema_names import APPEND_ONLY_RELOPTIONS, APPEND_ONLY_TABLES

revision: str = "0011_raw_tables_no_insert_vacuum"
down_revision: str | None = "0010_ticks_without_event_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _relations(table: str) -> list[str]:
    """``table``'s partitions (or chunks: children by inheritance), and ``table`` itself when
    it holds rows (a hypertable) rather than only routing them (a partitioned table)."""
    bind = op.get_bind()
    children = bind.execute(
        sa.text(
            "SELECT i.inhrelid::regclass::text FROM pg_inherits i "
            "WHERE i.inhparent = CAST(:t AS regclass) ORDER BY 1"
        ),
        {"t": table},
    ).scalars()
    kind = bind.execute(
        sa.text("SELECT relkind::text FROM pg_class WHERE oid = CAST(:t AS regclass)"),
        {"t": table},
    ).scalar_one()
    return [*children, *([f'"{table}"'] if kind == "r" else [])]


def upgrade() -> None:
    for table in APPEND_ONLY_TABLES:
        for relation in _relations(table):
            op.execute(f"ALTER TABLE {relation} SET ({APPEND_ONLY_RELOPTIONS})")


def downgrade() -> None:
    name = APPEND_ONLY_RELOPTIONS.partition("=")[0].strip()
    for table in APPEND_ONLY_TABLES:
        for relation in _relations(table):
            op.execute(f"ALTER TABLE {relation} RESET ({name})")
