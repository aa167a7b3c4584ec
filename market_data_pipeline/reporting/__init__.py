"""``mdp report``: one self-contained HTML page of what the store holds (candles with volume,
VWAP and signals, spread where quotes are stored, freshness and gaps, dead letters by reason,
throughput and window latency). Needs the ``report`` extra (plotly)."""

from market_data_pipeline.reporting.data import ReportData, SeriesView, candle_ms, gather_report
from market_data_pipeline.reporting.html import render_html

__all__ = ["ReportData", "SeriesView", "candle_ms", "gather_report", "render_html"]
