"""quotes, quote_bars, the window's quote bar on bar_changes, the bars_with_quotes view.

- ``quotes``: raw top-of-book quotes, a time-series table like ``ticks`` (same partitioning
  or hypertable and compression), keyed by (provider, symbol, ts, seq) = what ``event_id``
  encodes. Prices and sizes are ``double precision`` (the events' floats).
- ``quote_bars``: the top of book per window (see ``market_data_core.contracts.QuoteBar``),
  a time-series table like ``bars_ohlcv``.
- ``bar_changes``: a change is now a *window's*: its trade bar columns become nullable (a
  window with quotes only) and the window's quote bar is recorded beside them.
- ``bars_with_quotes``: ``bars_ohlcv`` with the window's ``spread_bps`` and ``imbalance``
  (null where the window has no book).

Downgrade drops them; change records of windows without a trade bar are deleted first (the
older schema cannot hold them; their series' ``pruned_seq`` is raised past them).

Revision ID: 0008_quotes
Revises: 0007_bar_changes
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from market_data_store._timeseries import create_timeseries_table

revision: str = "0008_quotes"
down_revision: str | None = "0007_bar_changes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TSTZ = sa.DateTime(timezone=True)

_QUOTE_BAR_COLUMNS = (
    ("bid", False),
    ("ask", False),
    ("bid_size", True),
    ("ask_size", True),
    ("mid", False),
)
_SPREAD_COLUMNS = (
    ("spread_bps", False),
    ("spread_bps_min", True),
    ("spread_bps_max", True),
    ("spread_bps_mean", True),
    ("imbalance", True),
    ("imbalance_close", True),
)
_TRADE_COLUMNS = ("o", "h", "l", "c", "revision")

BARS_WITH_QUOTES_SQL = """
CREATE VIEW bars_with_quotes AS
SELECT b.provider, b.symbol, b.interval, b.ts, b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count,
       b.revision, b.updated_at, q.spread_bps, q.imbalance
FROM bars_ohlcv b
LEFT JOIN quote_bars q
       ON (q.provider, q.symbol, q.interval, q.ts) = (b.provider, b.symbol, b.interval, b.ts)
"""


def _partition_kw(partitioned: bool) -> dict[str, Any]:
    return {"postgresql_partition_by": "RANGE (ts)"} if partitioned else {}


def _create_quotes(partitioned: bool) -> None:
    op.create_table(
        "quotes",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("ts", _TSTZ, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("bid", sa.Double(), nullable=False),
        sa.Column("ask", sa.Double(), nullable=False),
        sa.Column("bid_size", sa.Double(), nullable=True),
        sa.Column("ask_size", sa.Double(), nullable=True),
        sa.Column("ingest_ts", _TSTZ, nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("provider", "symbol", "ts", "seq", name=op.f("pk_quotes")),
        **_partition_kw(partitioned),
    )


def _create_quote_bars(partitioned: bool) -> None:
    op.create_table(
        "quote_bars",
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("interval", sa.Text(), nullable=False),
        sa.Column("ts", _TSTZ, nullable=False),
        *(sa.Column(n, sa.Double(), nullable=null) for n, null in _QUOTE_BAR_COLUMNS),
        sa.Column("quote_count", sa.Integer(), nullable=False),
        *(sa.Column(n, sa.Double(), nullable=null) for n, null in _SPREAD_COLUMNS),
        sa.Column("revision", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", _TSTZ, nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("provider", "symbol", "interval", "ts", name=op.f("pk_quote_bars")),
        **_partition_kw(partitioned),
    )


def upgrade() -> None:
    conn = op.get_bind()
    create_timeseries_table(conn, "quotes", _create_quotes, context.config.attributes)
    create_timeseries_table(conn, "quote_bars", _create_quote_bars, context.config.attributes)
    for name in _TRADE_COLUMNS:
        op.alter_column("bar_changes", name, nullable=True)
    for name, _ in _QUOTE_BAR_COLUMNS:
        op.add_column("bar_changes", sa.Column(name, sa.Double(), nullable=True))
    op.add_column("bar_changes", sa.Column("quote_count", sa.Integer(), nullable=True))
    for name, _ in _SPREAD_COLUMNS:
        op.add_column("bar_changes", sa.Column(name, sa.Double(), nullable=True))
    op.add_column("bar_changes", sa.Column("quote_revision", sa.Integer(), nullable=True))
    op.execute(BARS_WITH_QUOTES_SQL)


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS bars_with_quotes")
    # the older log cannot hold a window without a trade bar: drop those changes, marking
    # them pruned (so no checkpoint that a dropped change invalidated is trusted again)
    op.execute(
        "UPDATE bar_series s SET pruned_seq = greatest(s.pruned_seq, x.seq) "
        "FROM (SELECT provider, symbol, interval, max(seq) AS seq FROM bar_changes "
        "WHERE o IS NULL GROUP BY provider, symbol, interval) x "
        "WHERE (s.provider, s.symbol, s.interval) = (x.provider, x.symbol, x.interval)"
    )
    op.execute("DELETE FROM bar_changes WHERE o IS NULL")
    for name in ("quote_revision", *(n for n, _ in _SPREAD_COLUMNS), "quote_count"):
        op.drop_column("bar_changes", name)
    for name, _ in reversed(_QUOTE_BAR_COLUMNS):
        op.drop_column("bar_changes", name)
    for name in _TRADE_COLUMNS:
        op.alter_column("bar_changes", name, nullable=False)
    op.drop_table("quote_bars")
    op.drop_table("quotes")
