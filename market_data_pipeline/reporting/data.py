"""What a report shows, read from the store (and the bus's dead-letter stream) in one pass.

``gather_report`` picks the series, the time range and the candle size; the store does the
aggregation (:class:`market_data_core.reads.StoreReader`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from market_data_core.contracts import Bar, Signal
from market_data_core.protocols import Bus, SignalsStoreClient
from market_data_core.reads import (
    BarGap,
    LatencyBucket,
    QuoteSpreadReader,
    RunRecord,
    SeriesSummary,
    SpreadPoint,
    StoreReader,
)
from market_data_core.timeutil import parse_duration_ms

__all__ = [
    "DLQ_READ_MAX",
    "MAX_CANDLES",
    "DeadLetterCounts",
    "ReportData",
    "SeriesView",
    "candle_ms",
    "gather_report",
]

MAX_CANDLES = 1200
"""At most this many candles per chart: finer bars are merged into longer candles."""

# Candle lengths a chart may use (ms), shortest first; one that is a multiple of the bars'
# interval and yields at most MAX_CANDLES candles is chosen.
_CANDLE_LADDER_MS = (
    1000, 2000, 5000, 10_000, 15_000, 30_000,
    60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000,
    3_600_000, 7_200_000, 14_400_000, 21_600_000, 43_200_000, 86_400_000,
)  # fmt: skip
LATENCY_POINTS = 300
"""At most this many points on the window-latency chart."""
DLQ_READ_MAX = 100_000
"""Dead letters counted at most (the oldest ones)."""


def candle_ms(interval_ms: int, span_ms: int, max_candles: int = MAX_CANDLES) -> int:
    """The shortest candle length that is a whole number of ``interval_ms`` bars and draws
    ``span_ms`` in at most ``max_candles`` candles (the bars' own interval if they fit)."""
    if span_ms <= interval_ms * max_candles:
        return interval_ms
    for ms in _CANDLE_LADDER_MS:
        if ms % interval_ms == 0 and span_ms <= ms * max_candles:
            return ms
    return interval_ms * math.ceil(span_ms / (interval_ms * max_candles))


@dataclass(frozen=True, slots=True)
class SeriesView:
    """One chart: a series over ``[start, end)`` drawn as ``candle_ms`` candles.

    ``spreads`` is None when the store keeps no quotes."""

    summary: SeriesSummary
    start: datetime
    end: datetime
    candle_ms: int
    candles: list[Bar]
    signals: list[Signal]
    gaps: list[BarGap]
    spreads: list[SpreadPoint] | None


@dataclass(frozen=True, slots=True)
class DeadLetterCounts:
    """Letters on the DLQ by (reason, component); ``note`` says why there are none to count
    (no bus configured, unreachable) when ``counts`` is None."""

    counts: dict[tuple[str, str], int] | None
    total: int = 0
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything ``render_html`` draws; times are UTC."""

    generated_at: datetime
    source: str
    series: list[SeriesView]
    not_shown: list[SeriesSummary]
    min_gap_ms: int
    quotes_stored: bool
    latency: dict[str, list[LatencyBucket]]
    runs: list[RunRecord]
    dead_letters: DeadLetterCounts
    notes: list[str] = field(default_factory=list)


def _written_live(s: SeriesSummary) -> bool:
    """Was the newest bar written within the live-latency bound of its window end?"""
    window_end = s.last_ts + timedelta(milliseconds=parse_duration_ms(s.interval))
    return timedelta(0) <= s.last_written - window_end <= timedelta(hours=1)


def _pick_series(
    all_series: Sequence[SeriesSummary],
    symbols: Sequence[str],
    interval: str | None,
    preferred_interval: str | None,
) -> list[SeriesSummary]:
    """One interval per (provider, symbol): ``interval`` if given, else the preferred one
    (the micro-batch window) when stored, else the finest stored."""
    wanted = set(symbols)
    by_pair: dict[tuple[str, str], list[SeriesSummary]] = {}
    for s in all_series:
        if wanted and s.symbol not in wanted and f"{s.provider}/{s.symbol}" not in wanted:
            continue
        if interval is not None and s.interval != interval:
            continue
        by_pair.setdefault((s.provider, s.symbol), []).append(s)
    out = []
    for _, candidates in sorted(by_pair.items()):
        chosen = next((s for s in candidates if s.interval == preferred_interval), None)
        out.append(chosen or min(candidates, key=lambda s: parse_duration_ms(s.interval)))
    return out


async def _dead_letters(bus: Bus | None, dlq_note: str | None) -> DeadLetterCounts:
    if bus is None:
        return DeadLetterCounts(None, note=dlq_note or "no bus configured")
    letters = await bus.dlq_list(DLQ_READ_MAX)
    counts = Counter((letter.reason, letter.component) for letter in letters)
    return DeadLetterCounts(dict(counts), total=len(letters))


async def gather_report(
    reader: StoreReader,
    signals: SignalsStoreClient,
    bus: Bus | None,
    *,
    now: datetime,
    source: str,
    symbols: Sequence[str] = (),
    interval: str | None = None,
    preferred_interval: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    last_ms: int = 6 * 3_600_000,
    min_gap_ms: int = 60_000,
    max_series: int = 12,
    run_limit: int = 50,
    dlq_note: str | None = None,
) -> ReportData:
    """Read a report's data. Without ``start``/``end`` each series shows its newest
    ``last_ms`` of bars; ``symbols`` (``SYM`` or ``provider/SYM``) and ``interval`` narrow
    the series; past ``max_series`` the rest are listed, not drawn. ``bus`` None: the
    dead-letter panel says ``dlq_note``. Raises the store's and the bus's errors."""
    chosen = _pick_series(await reader.series(), symbols, interval, preferred_interval)
    notes = []
    if symbols and not chosen:
        notes.append(f"no stored bars for {', '.join(symbols)}")
    shown, not_shown = chosen[:max_series], chosen[max_series:]
    quotes = isinstance(reader, QuoteSpreadReader)
    views = []
    for s in shown:
        interval_ms = parse_duration_ms(s.interval)
        s_end = end or s.last_ts + timedelta(milliseconds=interval_ms)
        s_start = start or max(s.first_ts, s_end - timedelta(milliseconds=last_ms))
        span_ms = max(int((s_end - s_start).total_seconds() * 1000), interval_ms)
        size = candle_ms(interval_ms, span_ms)
        candles = await reader.bars_rollup(s.provider, s.symbol, s.interval, size, s_start, s_end)
        fired = [
            sig
            for sig in await signals.signals_range(s_start, s_end, s.symbol)
            if sig.provider == s.provider and sig.state == "active"  # not the retracted
        ]
        gaps = await reader.bar_gaps(
            s.provider, s.symbol, s.interval, s_start, s_end, max(min_gap_ms, interval_ms)
        )
        spreads = None
        if isinstance(reader, QuoteSpreadReader):
            spreads = await reader.quote_spreads(s.provider, s.symbol, s_start, s_end, size)
        views.append(SeriesView(s, s_start, s_end, size, candles, fired, gaps, spreads))

    # Latency is bucketed by write time; only series written live have any (their write
    # times track their event times, so their event-time span sizes the buckets).
    latency: dict[str, list[LatencyBucket]] = {}
    live = [v for v in views if _written_live(v.summary)]
    for iv in sorted({v.summary.interval for v in live}, key=parse_duration_ms):
        of_iv = [v for v in live if v.summary.interval == iv]
        lo, hi = min(v.start for v in of_iv), max(v.end for v in of_iv)
        span_ms = int((hi - lo).total_seconds() * 1000)
        latency[iv] = await reader.window_latency(
            iv, lo, hi, candle_ms(1000, span_ms, LATENCY_POINTS)
        )
    return ReportData(
        generated_at=now,
        source=source,
        series=views,
        not_shown=not_shown,
        min_gap_ms=min_gap_ms,
        quotes_stored=quotes,
        latency=latency,
        runs=await reader.job_runs(run_limit),
        dead_letters=await _dead_letters(bus, dlq_note),
        notes=notes,
    )
