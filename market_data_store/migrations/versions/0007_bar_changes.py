"""bar_series, bar_changes, feature_checkpoints; signals.state.

- ``bar_series``: one row per (provider, symbol, interval) with ``seq``, the number of bar
  revisions ever committed for the series (its change log's head), and ``pruned_seq``: changes
  up to it may have been pruned from ``bar_changes``.
- ``bar_changes``: the transactional outbox and change log. Every committed bar revision is
  a row, written in the same transaction as the bar (``ingest_ticks``, ``upsert_bars``), with
  the series' ``seq``; the relay publishes rows to ``mdp.bars`` in ``id`` order and sets
  ``relayed_at`` after the publish succeeded; relayed rows are pruned after a retention.
- ``feature_checkpoints``: the inference stage's feature and adapter state of a series after
  a bar, valid while no change after ``as_of_seq`` touched a bar at or before ``ts``; and
  ``progress_seq``: the engine's signals reflected the series up to that change when saved.
- ``signals.state``: ``active`` or ``retracted`` (a re-scored bar no longer produces it).

Revision ID: 0007_bar_changes
Revises: 0006_job_runs_heartbeat
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_bar_changes"
down_revision: str | None = "0006_job_runs_heartbeat"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TSTZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "bar_series",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("interval", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("pruned_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("provider", "symbol", "interval", name=op.f("pk_bar_series")),
    )
    op.create_table(
        "bar_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("interval", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts", _TSTZ, nullable=False),
        sa.Column("o", sa.Double(), nullable=False),
        sa.Column("h", sa.Double(), nullable=False),
        sa.Column("l", sa.Double(), nullable=False),
        sa.Column("c", sa.Double(), nullable=False),
        sa.Column("v", sa.Double(), nullable=True),
        sa.Column("vwap", sa.Double(), nullable=True),
        sa.Column("trade_count", sa.Integer(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("committed_at", _TSTZ, nullable=False, server_default=sa.text("now()")),
        sa.Column("relayed_at", _TSTZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bar_changes")),
        sa.UniqueConstraint(
            "provider",
            "symbol",
            "interval",
            "seq",
            name=op.f("uq_bar_changes_provider_symbol_interval_seq"),
        ),
    )
    op.create_index(
        op.f("ix_bar_changes_unrelayed"),
        "bar_changes",
        ["id"],
        postgresql_where=sa.text("relayed_at IS NULL"),
    )
    op.create_table(
        "feature_checkpoints",
        sa.Column("engine_key", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("interval", sa.Text(), nullable=False),
        sa.Column("ts", _TSTZ, nullable=False),
        sa.Column("as_of_seq", sa.BigInteger(), nullable=False),
        sa.Column("progress_seq", sa.BigInteger(), nullable=False),
        sa.Column("bars", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _TSTZ, nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint(
            "engine_key",
            "provider",
            "symbol",
            "interval",
            "ts",
            name=op.f("pk_feature_checkpoints"),
        ),
    )
    op.add_column(
        "signals",
        sa.Column("state", sa.Text(), nullable=False, server_default=sa.text("'active'")),
    )
    op.create_check_constraint(
        op.f("ck_signals_state_known"), "signals", "state IN ('active', 'retracted')"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_signals_state_known"), "signals", type_="check")
    op.drop_column("signals", "state")
    op.drop_table("feature_checkpoints")
    op.drop_index(op.f("ix_bar_changes_unrelayed"), table_name="bar_changes")
    op.drop_table("bar_changes")
    op.drop_table("bar_series")
