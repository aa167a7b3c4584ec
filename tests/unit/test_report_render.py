"""`mdp report`'s page: candle sizing, the spread panel when quotes are stored (fed the real
EUR/USD quotes, aggregated by pandas), "no quotes stored" otherwise, and escaping of text that
came from data."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from market_data_core.contracts import Bar, Signal
from market_data_core.reads import BarGap, RunRecord, SeriesSummary, SpreadPoint
from market_data_pipeline.reporting import ReportData, SeriesView, candle_ms, render_html
from market_data_pipeline.reporting.data import DeadLetterCounts
from tests.conftest import DATA


@pytest.mark.parametrize(
    ("interval_ms", "span_ms", "expected"),
    [
        (2000, 2000 * 1200, 2000),  # fits: the bars themselves
        (2000, 2000 * 1201, 5000 * 2),  # 5 s is not a multiple of 2 s: 10 s
        (2000, 7_560_000, 10_000),  # the shipped BTCUSDT trades (2 h 6 min)
        (60_000, 31 * 86_400_000, 3_600_000),  # a month of 1 m bars: hourly candles
        (500, 60_000, 500),
        (86_400_000, 10_000 * 86_400_000, 9 * 86_400_000),  # past the ladder: whole days
    ],
)
def test_candle_ms(interval_ms: int, span_ms: int, expected: int) -> None:
    got = candle_ms(interval_ms, span_ms)
    assert got == expected
    assert got % interval_ms == 0 and span_ms / got <= 1200


def _eurusd() -> tuple[list[Bar], list[SpreadPoint]]:
    """1-minute mid candles and spreads of the shipped EUR/USD quotes (pandas)."""
    q = pd.read_csv(
        DATA / "eurusd-quotes-2020-01-01.csv", header=None, names=["ts", "bid", "ask", "x"]
    )
    q.index = pd.to_datetime(q.ts, format="%Y%m%d %H%M%S%f", utc=True)
    mid = (q.bid + q.ask) / 2
    q["bps"] = (q.ask - q.bid) / mid * 1e4
    ohlc = mid.resample("1min").ohlc().dropna()
    count = q.bid.resample("1min").count()
    spread = q.bps.resample("1min").agg(["mean", "max"]).dropna()
    candles = [
        Bar(provider="fx-sample", symbol="EUR/USD", interval="1m", ts=ts.to_pydatetime(),
            o=r.open, h=r.high, l=r.low, c=r.close, v=float(count[ts]), trade_count=int(count[ts]))
        for ts, r in ohlc.iterrows()
    ]  # fmt: skip
    spreads = [
        SpreadPoint(ts.to_pydatetime(), float(r["mean"]), float(r["max"]), int(count[ts]))
        for ts, r in spread.iterrows()
    ]
    return candles, spreads


def _data(*, quotes: bool, reason: str = "decode") -> ReportData:
    candles, points = _eurusd()
    first, last = candles[0].ts, candles[-1].ts
    summary = SeriesSummary("fx-sample", "EUR/USD", "1m", len(candles), first, last, last)
    gap = BarGap("fx-sample", "EUR/USD", "1m", first + timedelta(minutes=5),
                 first + timedelta(minutes=9), 4)  # fmt: skip
    signal = Signal(provider="fx-sample", symbol="EUR/USD", ts=candles[10].ts,
                    name="<b>wide</b>", value=-1.0, score=0.5)  # fmt: skip
    view = SeriesView(summary, first, last + timedelta(minutes=1), 60_000, candles, [signal],
                      [gap], points if quotes else None)  # fmt: skip
    now = datetime(2020, 1, 2, tzinfo=UTC)
    run = RunRecord(1, "micro-batch", "success", now - timedelta(seconds=10), now, 9500, 400, 0)
    return ReportData(
        generated_at=now,
        source="postgres=postgresql://u@h/db",
        series=[view],
        not_shown=[],
        min_gap_ms=60_000,
        quotes_stored=quotes,
        latency={},
        runs=[run],
        dead_letters=DeadLetterCounts({(reason, "micro-batcher"): 3}, total=3),
    )


def test_spread_panel_when_the_store_keeps_quotes() -> None:
    page = render_html(_data(quotes=True))
    assert '"title":{"text":"spread (bps)"}' in page
    assert "mean spread (bps)" in page and "max spread (bps)" in page
    assert "no quotes stored" not in page
    assert "quotes stored" in page


def test_no_quotes_stored_otherwise() -> None:
    page = render_html(_data(quotes=False))
    assert "spread: no quotes stored" in page
    assert "spread (bps)" not in page
    assert "signals: 1, gaps of at least 1 min (shaded): 1" in page


def test_text_from_data_is_escaped_and_the_page_is_self_contained() -> None:
    page = render_html(_data(quotes=False, reason="<script>alert(1)</script>"))
    assert "<script>alert(1)</script>" not in page
    assert "<b>wide</b>" not in page
    assert len(re.findall(r"<script", page)) == 1 + 3  # plotly.js + one per figure
    assert not re.search(r"<script[^>]+src=", page)
    assert "Plotly.newPlot" in page and len(page) > 3_000_000  # plotly.js inlined
