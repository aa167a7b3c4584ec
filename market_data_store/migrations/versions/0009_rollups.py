"""Rollups: exact sums on bars, the session flag, book time on quote bars, trading sessions.

- ``bars_ohlcv.sum_pv`` / ``sum_v``: the exact ``numeric`` sums of ``price * size`` and of
  ``size`` behind a tick-derived bar (null for provider bars and bars written before this
  revision), so a rollup composes volume and vwap exactly from the bars below it.
- ``bars_ohlcv.in_session`` (and on ``bar_changes``): for a rollup bar of a symbol with a
  trading calendar, whether its window lies inside a session (a ``1d`` bar: whether it *is*
  a session); true for 24/7 symbols' rollups; null for micro-bars and provider bars.
- ``quote_bars.book_us`` / ``imbalance_us``: the microseconds the book (and a defined
  imbalance) stood inside the window: the weights of its time-weighted spread and imbalance,
  so rollups weight them exactly.
- ``trading_sessions``: the sessions of each configured calendar (from ``exchange_calendars``,
  written by the micro-batcher at start): the ``1d`` buckets of its symbols.

Revision ID: 0009_rollups
Revises: 0008_quotes
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_rollups"
down_revision: str | None = "0008_quotes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TSTZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("bars_ohlcv", sa.Column("sum_pv", sa.Numeric(), nullable=True))
    op.add_column("bars_ohlcv", sa.Column("sum_v", sa.Numeric(), nullable=True))
    op.add_column("bars_ohlcv", sa.Column("in_session", sa.Boolean(), nullable=True))
    op.add_column("bar_changes", sa.Column("in_session", sa.Boolean(), nullable=True))
    op.add_column("quote_bars", sa.Column("book_us", sa.Double(), nullable=True))
    op.add_column("quote_bars", sa.Column("imbalance_us", sa.Double(), nullable=True))
    op.create_table(
        "trading_sessions",
        sa.Column("calendar", sa.Text(), nullable=False),
        sa.Column("session", sa.Date(), nullable=False),
        sa.Column("open", _TSTZ, nullable=False),
        sa.Column("close", _TSTZ, nullable=False),
        sa.PrimaryKeyConstraint("calendar", "session", name=op.f("pk_trading_sessions")),
        sa.CheckConstraint("open < close", name=op.f("ck_trading_sessions_open_before_close")),
    )
    op.create_index(
        op.f("ix_trading_sessions_calendar_open"),
        "trading_sessions",
        ["calendar", "open"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_trading_sessions_calendar_open"), table_name="trading_sessions")
    op.drop_table("trading_sessions")
    op.drop_column("quote_bars", "imbalance_us")
    op.drop_column("quote_bars", "book_us")
    op.drop_column("bar_changes", "in_session")
    op.drop_column("bars_ohlcv", "in_session")
    op.drop_column("bars_ohlcv", "sum_v")
    op.drop_column("bars_ohlcv", "sum_pv")
