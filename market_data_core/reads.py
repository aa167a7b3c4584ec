"""What ``mdp report`` reads from the store: the types and the ``StoreReader`` protocol.

Times are UTC-aware datetimes; a bar's ``ts`` is its window start (event time) and its window
end is ``ts + interval``. The store implements these in SQL (``market_data_store``); the
pipeline only sees these frozen types.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from market_data_core.contracts import Bar

__all__ = [
    "BarGap",
    "LatencyBucket",
    "QuoteSpreadReader",
    "RunRecord",
    "SeriesSummary",
    "SpreadPoint",
    "StoreReader",
]


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """One (provider, symbol, interval) of ``bars_ohlcv``: its bar count, the window starts
    of its oldest and newest bars, and when a bar of it was last written (``updated_at``)."""

    provider: str
    symbol: str
    interval: str
    bars: int
    first_ts: datetime
    last_ts: datetime
    last_written: datetime


@dataclass(frozen=True, slots=True)
class BarGap:
    """Event time with no bar between two bars of a series: from the end of the bar before
    (``start``) to the start of the bar after (``end``); ``missing_windows`` of the interval."""

    provider: str
    symbol: str
    interval: str
    start: datetime
    end: datetime
    missing_windows: int


@dataclass(frozen=True, slots=True)
class LatencyBucket:
    """Window latency (window end -> bar written, ms) of the live windows written in
    ``[ts, ts + bucket)``: count, median, 95th percentile and maximum."""

    ts: datetime
    windows: int
    p50_ms: float
    p95_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One ``job_runs`` row; ``finished_at`` is None while it runs."""

    id: int
    job: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    events_in: int
    rows_written: int
    errors: int


@dataclass(frozen=True, slots=True)
class SpreadPoint:
    """Top of book over ``[ts, ts + bucket)``: mean and maximum spread in basis points
    (``(ask - bid) / mid * 1e4``) and the number of quotes."""

    ts: datetime
    mean_bps: float
    max_bps: float
    quotes: int


class StoreReader(Protocol):
    """Read helpers for reports. Raises ``StoreUnavailableError`` when the store cannot be
    reached and ``StoreError`` otherwise (e.g. the schema is missing)."""

    async def series(self) -> list[SeriesSummary]:
        """Every (provider, symbol, interval) with at least one bar, by provider, symbol."""
        ...

    async def bars_rollup(
        self,
        provider: str,
        symbol: str,
        interval: str,
        bucket_ms: int,
        start: datetime,
        end: datetime,
    ) -> list[Bar]:
        """The bars of ``interval`` with ``start <= ts < end`` merged into buckets of
        ``bucket_ms`` (a multiple of the interval, aligned to the epoch), oldest first: open
        of the first bar, max high, min low, close of the last, summed volume and trade
        count, volume-weighted ``vwap`` (None if no bar had one). ``Bar.interval`` is the
        bucket's length (``30s``, ``5m``)."""
        ...

    async def bar_gaps(
        self,
        provider: str,
        symbol: str,
        interval: str,
        start: datetime,
        end: datetime,
        min_gap_ms: int,
    ) -> list[BarGap]:
        """Gaps of at least ``min_gap_ms`` between consecutive bars in ``[start, end)``,
        oldest first."""
        ...

    async def window_latency(
        self, interval: str, start: datetime, end: datetime, bucket_ms: int
    ) -> list[LatencyBucket]:
        """Latency of the bars of ``interval`` with ``start <= ts < end`` that were written
        within an hour of their window end (live data; a replay's are excluded), bucketed by
        write time, oldest first."""
        ...

    async def job_runs(self, limit: int) -> list[RunRecord]:
        """The newest ``limit`` runs, oldest first."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class QuoteSpreadReader(Protocol):
    """A store that keeps quotes also offers this; ``mdp report`` then draws a spread panel
    (else it says "no quotes stored")."""

    async def quote_spreads(
        self, provider: str, symbol: str, start: datetime, end: datetime, bucket_ms: int
    ) -> list[SpreadPoint]:
        """Spread of the quotes with ``start <= ts < end`` per bucket, oldest first."""
        ...
