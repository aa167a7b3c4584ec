"""SQLAlchemy 2 models of the mdp schema (the source of truth for names and types).

The migrations in ``market_data_store/migrations`` create exactly these tables; the
time-series tables (``bars_ohlcv``, ``ticks``, ``signals``) additionally become TimescaleDB
hypertables or natively range-partitioned tables (see :mod:`market_data_store._timeseries`).
Every constraint is named by :data:`NAMING_CONVENTION`, so migrations can refer to them.

Column types and exactness:

- ``ticks.price`` / ``ticks.size`` are ``numeric``: each float is stored as the shortest
  decimal that round-trips it (``Decimal(repr(x))``), so aggregation in SQL is exact.
- ``bars_ohlcv`` o/h/l/c/v/vwap are ``double precision``. Bars computed from ticks are
  aggregated in ``numeric`` (open/close by ``(ts, seq)``, high/low, exact ``sum(size)``) and
  converted once, correctly rounded, to float8 — the Python floats ``float(Decimal(...))`` of
  the exact decimals. ``vwap = sum(price*size) / sum(size)``: the dividend's scale is raised by
  :data:`VWAP_GUARD_DIGITS` first, so the ``numeric`` quotient has at least that many significant
  digits at any magnitude, and is then converted to float8. The stored vwap is therefore the
  float nearest the exact quotient (barring a tie within 1e-25 relative of a rounding boundary):
  relative error <= 2**-53 ~ 1.1e-16, and ``low <= vwap <= high`` always (both roundings are
  monotone and low/high are exact at that scale).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from market_data_store._schema_names import TIMESERIES_TABLES, VWAP_GUARD_DIGITS, series_key

__all__ = [
    "NAMING_CONVENTION",
    "TIMESERIES_TABLES",
    "VWAP_GUARD_DIGITS",
    "BarChangeRow",
    "BarRow",
    "BarSeriesRow",
    "Base",
    "FeatureCheckpointRow",
    "JobRunRow",
    "QuoteBarRow",
    "QuoteRow",
    "RawSeriesRow",
    "SignalRow",
    "TickRow",
    "TradingSessionRow",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_TSTZ = DateTime(timezone=True)


def _series_key_check() -> CheckConstraint:
    """``ck_<table>_series_key``: a raw row's ``series_key`` is the hash of its series
    (the writers send it: migration ``0013``)."""
    return CheckConstraint(f"series_key = {series_key('provider', 'symbol')}", name="series_key")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class BarRow(Base):
    """``bars_ohlcv``: one bar per (provider, symbol, interval, window start ``ts``)."""

    __tablename__ = "bars_ohlcv"
    __table_args__ = (
        PrimaryKeyConstraint("provider", "symbol", "interval", "ts"),
        {"postgresql_partition_by": "RANGE (ts)"},
    )

    provider: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    interval: Mapped[str] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(_TSTZ)
    o: Mapped[float] = mapped_column(Double)
    h: Mapped[float] = mapped_column(Double)
    l: Mapped[float] = mapped_column(Double)  # noqa: E741
    c: Mapped[float] = mapped_column(Double)
    v: Mapped[float | None] = mapped_column(Double, nullable=True)  # null: a bar without volume
    vwap: Mapped[float | None] = mapped_column(Double, nullable=True)
    trade_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revision: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(_TSTZ, server_default=text("now()"))
    # exact sums behind a tick-derived bar (micro-bar or rollup): what rollups compose
    sum_pv: Mapped[Decimal | None] = mapped_column(Numeric, nullable=True)
    sum_v: Mapped[Decimal | None] = mapped_column(Numeric, nullable=True)
    # rollups: inside a trading session (a 1d bar of a calendar: is a session); else null
    in_session: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class TradingSessionRow(Base):
    """``trading_sessions``: one session ``[open, close)`` of a trading calendar (from
    ``exchange_calendars``); the ``1d`` rollup buckets of the calendar's symbols."""

    __tablename__ = "trading_sessions"
    __table_args__ = (
        PrimaryKeyConstraint("calendar", "session"),
        CheckConstraint("open < close", name="open_before_close"),
        Index(None, "calendar", "open", unique=True),
    )

    calendar: Mapped[str] = mapped_column(Text)
    session: Mapped[date] = mapped_column(Date)
    open: Mapped[datetime] = mapped_column(_TSTZ)
    close: Mapped[datetime] = mapped_column(_TSTZ)


class BarSeriesRow(Base):
    """``bar_series``: the head of each series' change log (``seq`` = revisions committed)."""

    __tablename__ = "bar_series"
    __table_args__ = (PrimaryKeyConstraint("provider", "symbol", "interval"),)

    provider: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    interval: Mapped[str] = mapped_column(Text)
    seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    pruned_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class BarChangeRow(Base):
    """``bar_changes``: the outbox and change log, one row per committed change of a window:
    its trade bar (o..revision; null for a window with quotes only) and its quote bar
    (bid..quote_revision; null for a window without a book), both as committed."""

    __tablename__ = "bar_changes"
    __table_args__ = (
        UniqueConstraint("provider", "symbol", "interval", "seq"),
        Index("ix_bar_changes_unrelayed", "id", postgresql_where=text("relayed_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    interval: Mapped[str] = mapped_column(Text)
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime] = mapped_column(_TSTZ)
    o: Mapped[float | None] = mapped_column(Double, nullable=True)
    h: Mapped[float | None] = mapped_column(Double, nullable=True)
    l: Mapped[float | None] = mapped_column(Double, nullable=True)  # noqa: E741
    c: Mapped[float | None] = mapped_column(Double, nullable=True)
    v: Mapped[float | None] = mapped_column(Double, nullable=True)
    vwap: Mapped[float | None] = mapped_column(Double, nullable=True)
    trade_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bid: Mapped[float | None] = mapped_column(Double, nullable=True)
    ask: Mapped[float | None] = mapped_column(Double, nullable=True)
    bid_size: Mapped[float | None] = mapped_column(Double, nullable=True)
    ask_size: Mapped[float | None] = mapped_column(Double, nullable=True)
    mid: Mapped[float | None] = mapped_column(Double, nullable=True)
    quote_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    spread_bps: Mapped[float | None] = mapped_column(Double, nullable=True)
    spread_bps_min: Mapped[float | None] = mapped_column(Double, nullable=True)
    spread_bps_max: Mapped[float | None] = mapped_column(Double, nullable=True)
    spread_bps_mean: Mapped[float | None] = mapped_column(Double, nullable=True)
    imbalance: Mapped[float | None] = mapped_column(Double, nullable=True)
    imbalance_close: Mapped[float | None] = mapped_column(Double, nullable=True)
    quote_revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    in_session: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    committed_at: Mapped[datetime] = mapped_column(_TSTZ, server_default=text("now()"))
    relayed_at: Mapped[datetime | None] = mapped_column(_TSTZ, nullable=True)


class FeatureCheckpointRow(Base):
    """``feature_checkpoints``: an inference engine's state of a series after bar ``ts``."""

    __tablename__ = "feature_checkpoints"
    __table_args__ = (PrimaryKeyConstraint("engine_key", "provider", "symbol", "interval", "ts"),)

    engine_key: Mapped[str] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    interval: Mapped[str] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(_TSTZ)
    as_of_seq: Mapped[int] = mapped_column(BigInteger)
    progress_seq: Mapped[int] = mapped_column(BigInteger)
    bars: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(_TSTZ, server_default=text("now()"))


class JobRunRow(Base):
    """``job_runs``: the audit trail, one row per run of a long job. A running job updates
    ``heartbeat_at`` every ``heartbeat_interval_ms``; one silent for 3 intervals is marked
    ``abandoned`` (see ``market_data_core.protocols.JobRunTracker``)."""

    __tablename__ = "job_runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('running', 'success', 'failed', 'stopped', 'abandoned')",
            name="status_known",
        ),
        Index(None, "job", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(_TSTZ, server_default=text("now()"))
    finished_at: Mapped[datetime | None] = mapped_column(_TSTZ, nullable=True)
    status: Mapped[str] = mapped_column(Text, server_default=text("'running'"))
    events_in: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    rows_written: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    errors: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    config_hash: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    heartbeat_at: Mapped[datetime] = mapped_column(_TSTZ, server_default=text("now()"))
    heartbeat_interval_ms: Mapped[int] = mapped_column(Integer, server_default=text("10000"))


class SignalRow(Base):
    """``signals``: inference outputs, idempotent by ``signal_id`` (which embeds ``ts``)."""

    __tablename__ = "signals"
    __table_args__ = (
        PrimaryKeyConstraint("signal_id", "ts"),
        Index(None, "symbol", "ts"),
        CheckConstraint("state IN ('active', 'retracted')", name="state_known"),
        {"postgresql_partition_by": "RANGE (ts)"},
    )

    signal_id: Mapped[str] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(_TSTZ)
    provider: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    value: Mapped[float] = mapped_column(Double)
    score: Mapped[float] = mapped_column(Double)
    adapter: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    ver: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    updated_at: Mapped[datetime] = mapped_column(_TSTZ, server_default=text("now()"))
    state: Mapped[str] = mapped_column(Text, server_default=text("'active'"))


class TickRow(Base):
    """``ticks``: raw trades, the micro-batcher's source of truth.

    The key ``(series_key, ts, seq)`` holds exactly what ``event_id`` encodes: ``series_key`` is
    the hash of ``provider`` and ``symbol`` (:func:`~market_data_store._schema_names.series_key`,
    sent by the writer and held to the hash by a ``CHECK``: migrations ``0012``, ``0013``), and
    ``raw_series`` gives each key one series. So it makes ticks idempotent by ``event_id``
    while containing the partition column ``ts``; the id itself is not stored (migration
    ``0010``): it is the key's text.
    """

    __tablename__ = "ticks"
    __table_args__ = (
        PrimaryKeyConstraint("series_key", "ts", "seq"),
        _series_key_check(),
        {"postgresql_partition_by": "RANGE (ts)"},
    )

    provider: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(_TSTZ)
    seq: Mapped[int] = mapped_column(BigInteger)
    price: Mapped[Decimal] = mapped_column(Numeric)
    size: Mapped[Decimal] = mapped_column(Numeric)
    side: Mapped[str | None] = mapped_column(Text, nullable=True)
    trade_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    ingest_ts: Mapped[datetime] = mapped_column(_TSTZ, server_default=text("now()"))
    series_key: Mapped[int] = mapped_column(BigInteger)


class QuoteRow(Base):
    """``quotes``: raw top-of-book quotes, the source of the quote bars.

    Keyed like ``ticks`` by ``(series_key, ts, seq)``, what ``event_id``
    encodes (so a quote is stored once however often it is delivered). Prices and sizes are
    the events' floats as ``double precision``: quote bars compute spreads and imbalances in
    float8 from them exactly as pandas does from the same floats. Sizes are null when the
    source has none.
    """

    __tablename__ = "quotes"
    __table_args__ = (
        PrimaryKeyConstraint("series_key", "ts", "seq"),
        _series_key_check(),
        {"postgresql_partition_by": "RANGE (ts)"},
    )

    provider: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(_TSTZ)
    seq: Mapped[int] = mapped_column(BigInteger)
    bid: Mapped[float] = mapped_column(Double)
    ask: Mapped[float] = mapped_column(Double)
    bid_size: Mapped[float | None] = mapped_column(Double, nullable=True)
    ask_size: Mapped[float | None] = mapped_column(Double, nullable=True)
    ingest_ts: Mapped[datetime] = mapped_column(_TSTZ, server_default=text("now()"))
    series_key: Mapped[int] = mapped_column(BigInteger)


class RawSeriesRow(Base):
    """``raw_series``: the one series (provider, symbol) of each ``series_key`` of the raw
    tables (both unique). Writers register a series before its first raw row
    (:class:`~market_data_store._series.SeriesRegistry`), so reads of a series by its key
    alone never see another series' rows."""

    __tablename__ = "raw_series"
    __table_args__ = (
        PrimaryKeyConstraint("series_key"),
        UniqueConstraint("provider", "symbol"),
    )

    series_key: Mapped[int] = mapped_column(BigInteger)
    provider: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)


class QuoteBarRow(Base):
    """``quote_bars``: the top of book per (provider, symbol, interval, window start ``ts``);
    the columns are those of :class:`market_data_core.contracts.QuoteBar`."""

    __tablename__ = "quote_bars"
    __table_args__ = (
        PrimaryKeyConstraint("provider", "symbol", "interval", "ts"),
        {"postgresql_partition_by": "RANGE (ts)"},
    )

    provider: Mapped[str] = mapped_column(Text)
    symbol: Mapped[str] = mapped_column(Text)
    interval: Mapped[str] = mapped_column(Text)
    ts: Mapped[datetime] = mapped_column(_TSTZ)
    bid: Mapped[float] = mapped_column(Double)
    ask: Mapped[float] = mapped_column(Double)
    bid_size: Mapped[float | None] = mapped_column(Double, nullable=True)
    ask_size: Mapped[float | None] = mapped_column(Double, nullable=True)
    mid: Mapped[float] = mapped_column(Double)
    quote_count: Mapped[int] = mapped_column(Integer)
    spread_bps: Mapped[float] = mapped_column(Double)
    spread_bps_min: Mapped[float | None] = mapped_column(Double, nullable=True)
    spread_bps_max: Mapped[float | None] = mapped_column(Double, nullable=True)
    spread_bps_mean: Mapped[float | None] = mapped_column(Double, nullable=True)
    imbalance: Mapped[float | None] = mapped_column(Double, nullable=True)
    imbalance_close: Mapped[float | None] = mapped_column(Double, nullable=True)
    revision: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(_TSTZ, server_default=text("now()"))
    # microseconds the book (a defined imbalance) stood in the window: the time weights
    book_us: Mapped[float | None] = mapped_column(Double, nullable=True)
    imbalance_us: Mapped[float | None] = mapped_column(Double, nullable=True)
