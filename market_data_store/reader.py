"""``PgStoreReader``: the read helpers of ``mdp report`` (core ``StoreReader``).

Aggregation happens in SQL so a report reads about a thousand rows per chart however many
bars are stored. ``series()`` scans ``bars_ohlcv`` once (a GROUP BY over every bar).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from market_data_core.contracts import Bar
from market_data_core.reads import BarGap, LatencyBucket, RunRecord, SeriesSummary, SpreadPoint
from market_data_core.timeutil import format_duration_ms, parse_duration_ms
from market_data_store._base import PgClientBase
from market_data_store._errors import translate_errors
from market_data_store._schema_names import series_key

__all__ = ["LIVE_LATENCY_MAX_MS", "PgStoreReader"]

LIVE_LATENCY_MAX_MS = 3_600_000
"""A bar written later than this after its window end is replayed data, not a live window
(the micro-batcher's own latency metric uses the same bound)."""

_EPOCH = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"

_SERIES_SQL = """
SELECT provider, symbol, interval, count(*) AS bars, min(ts) AS first_ts, max(ts) AS last_ts,
       max(updated_at) AS last_written
FROM bars_ohlcv
GROUP BY provider, symbol, interval
ORDER BY provider, symbol, interval
"""

_ROLLUP_SQL = f"""
SELECT date_bin($5::interval, ts, {_EPOCH}) AS bucket,
       (array_agg(o ORDER BY ts))[1] AS o, max(h) AS h, min(l) AS l,
       (array_agg(c ORDER BY ts DESC))[1] AS c, sum(v) AS v,
       sum(vwap * v) FILTER (WHERE vwap IS NOT NULL)
           / NULLIF(sum(v) FILTER (WHERE vwap IS NOT NULL), 0) AS vwap,
       sum(trade_count) AS trade_count
FROM bars_ohlcv
WHERE provider = $1 AND symbol = $2 AND interval = $3 AND ts >= $4 AND ts < $6
GROUP BY bucket
ORDER BY bucket
"""

_GAPS_SQL = """
SELECT prev_ts + $6::interval AS gap_start, ts AS gap_end
FROM (
    SELECT ts, lag(ts) OVER (ORDER BY ts) AS prev_ts
    FROM bars_ohlcv
    WHERE provider = $1 AND symbol = $2 AND interval = $3 AND ts >= $4 AND ts < $5
) AS s
WHERE ts - (prev_ts + $6::interval) >= $7::interval
ORDER BY ts
"""

_LATENCY_SQL = f"""
WITH lat AS (
    SELECT updated_at, extract(epoch FROM updated_at - (ts + $2::interval)) * 1000 AS ms
    FROM bars_ohlcv
    WHERE interval = $1 AND ts >= $3 AND ts < $4
)
SELECT date_bin($5::interval, updated_at, {_EPOCH}) AS bucket, count(*) AS windows,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY ms) AS p95,
       max(ms) AS max_ms
FROM lat
WHERE ms >= 0 AND ms <= $6
GROUP BY bucket
ORDER BY bucket
"""

# Every stored quote's spread, (ask - bid) / mid * 1e4 as the quote bars compute it, per
# bucket: one index range scan of the series on quotes' primary key (led by series_key).
_SPREADS_SQL = f"""
SELECT date_bin($5::interval, ts, {_EPOCH}) AS bucket,
       avg((ask - bid) / ((ask + bid) / 2) * 10000) AS mean_bps,
       max((ask - bid) / ((ask + bid) / 2) * 10000) AS max_bps,
       count(*) AS quotes
FROM quotes
WHERE series_key = {series_key("$1::text", "$2::text")}
  AND provider = $1 AND symbol = $2 AND ts >= $3 AND ts < $4
GROUP BY bucket
ORDER BY bucket
"""

_RUNS_SQL = """
SELECT id, job, status, started_at, finished_at, events_in, rows_written, errors
FROM job_runs ORDER BY id DESC LIMIT $1
"""


class PgStoreReader(PgClientBase):
    """Reads for ``mdp report`` (see :class:`market_data_core.reads.StoreReader`; also a
    :class:`market_data_core.reads.QuoteSpreadReader`: the store keeps quotes)."""

    async def quote_spreads(
        self, provider: str, symbol: str, start: datetime, end: datetime, bucket_ms: int
    ) -> list[SpreadPoint]:
        """Per bucket of ``bucket_ms`` (aligned to the epoch) with stored quotes of the series
        in ``[start, end)``: the mean and maximum of the quotes' spreads in bps
        (``(ask - bid) / ((ask + bid) / 2) * 1e4``) and their count, oldest first."""
        with translate_errors("quote_spreads"):
            rows = await self._pool.fetch(
                _SPREADS_SQL, provider, symbol, start, end, timedelta(milliseconds=bucket_ms)
            )
        return [
            SpreadPoint(r["bucket"], r["mean_bps"], r["max_bps"], int(r["quotes"])) for r in rows
        ]

    async def series(self) -> list[SeriesSummary]:
        with translate_errors("series"):
            rows = await self._pool.fetch(_SERIES_SQL)
        return [SeriesSummary(**dict(r)) for r in rows]

    async def bars_rollup(
        self,
        provider: str,
        symbol: str,
        interval: str,
        bucket_ms: int,
        start: datetime,
        end: datetime,
    ) -> list[Bar]:
        bucket = timedelta(milliseconds=bucket_ms)
        with translate_errors("bars_rollup"):
            rows = await self._pool.fetch(
                _ROLLUP_SQL, provider, symbol, interval, start, bucket, end
            )
        label = format_duration_ms(bucket_ms)
        return [
            Bar(
                provider=provider,
                symbol=symbol,
                interval=label,
                ts=r["bucket"],
                o=r["o"],
                h=r["h"],
                l=r["l"],
                c=r["c"],
                v=r["v"],
                vwap=r["vwap"],
                trade_count=None if r["trade_count"] is None else int(r["trade_count"]),
            )
            for r in rows
        ]

    async def bar_gaps(
        self,
        provider: str,
        symbol: str,
        interval: str,
        start: datetime,
        end: datetime,
        min_gap_ms: int,
    ) -> list[BarGap]:
        interval_ms = parse_duration_ms(interval)
        with translate_errors("bar_gaps"):
            rows = await self._pool.fetch(
                _GAPS_SQL,
                provider,
                symbol,
                interval,
                start,
                end,
                timedelta(milliseconds=interval_ms),
                timedelta(milliseconds=min_gap_ms),
            )
        return [
            BarGap(
                provider=provider,
                symbol=symbol,
                interval=interval,
                start=r["gap_start"],
                end=r["gap_end"],
                missing_windows=(r["gap_end"] - r["gap_start"])
                // timedelta(milliseconds=interval_ms),
            )
            for r in rows
        ]

    async def window_latency(
        self, interval: str, start: datetime, end: datetime, bucket_ms: int
    ) -> list[LatencyBucket]:
        interval_ms = parse_duration_ms(interval)
        with translate_errors("window_latency"):
            rows = await self._pool.fetch(
                _LATENCY_SQL,
                interval,
                timedelta(milliseconds=interval_ms),
                start,
                end,
                timedelta(milliseconds=bucket_ms),
                LIVE_LATENCY_MAX_MS,
            )
        return [
            LatencyBucket(
                ts=r["bucket"],
                windows=int(r["windows"]),
                p50_ms=float(r["p50"]),
                p95_ms=float(r["p95"]),
                max_ms=float(r["max_ms"]),
            )
            for r in rows
        ]

    async def job_runs(self, limit: int) -> list[RunRecord]:
        with translate_errors("job_runs"):
            rows = await self._pool.fetch(_RUNS_SQL, limit)
        return [RunRecord(**dict(r)) for r in reversed(rows)]
