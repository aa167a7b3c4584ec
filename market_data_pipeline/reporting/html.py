"""``render_html``: a :class:`ReportData` as one self-contained HTML page.

Charts are plotly figures; plotly.js is inlined once in the page's head, so the file opens
without a network. Every text that came from data (symbols, signal names, DLQ reasons) is
HTML-escaped; plotly escapes what it embeds in its JSON.
"""

from __future__ import annotations

import html
from bisect import bisect_right
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from market_data_core.timeutil import parse_duration_ms
from market_data_pipeline.reporting.data import DLQ_READ_MAX, ReportData, SeriesView

__all__ = ["render_html"]

_UP, _DOWN, _FLAT = "#26a69a", "#ef5350", "#ff9800"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 0 24px 48px; color: #1f2933; background: #fff; }
h1 { font-size: 1.6rem; margin: 24px 0 4px; }
h2 { font-size: 1.2rem; margin: 32px 0 8px; border-bottom: 1px solid #d9dee3; }
h3 { font-size: 1rem; margin: 20px 0 4px; }
p.meta, p.note { color: #52606d; margin: 4px 0; font-size: 0.9rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 8px 0; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 4px 8px; text-align: left; }
td { white-space: nowrap; }
th { background: #f5f7fa; vertical-align: bottom; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
div.scroll { overflow-x: auto; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _naive(ts: datetime) -> datetime:
    """UTC wall time without a zone: plotly.js has no time zones and would shift aware
    times to the viewer's zone."""
    return ts.astimezone(UTC).replace(tzinfo=None)


def _when(ts: datetime | None) -> str:
    return "-" if ts is None else ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86400:,.1f} days"


def _label_ms(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _div(fig: Any) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False, config=_PLOT_CONFIG))


def _series_chart(view: SeriesView, min_gap_ms: int) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = view.summary
    has_spread = bool(view.spreads)
    rows = 3 if has_spread else 2
    heights = [0.6, 0.18, 0.22] if has_spread else [0.75, 0.25]
    fig = make_subplots(
        rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.04, row_heights=heights
    )
    c = view.candles
    xs = [_naive(b.ts) for b in c]
    fig.add_trace(
        go.Candlestick(
            x=xs,
            open=[b.o for b in c],
            high=[b.h for b in c],
            low=[b.l for b in c],
            close=[b.c for b in c],
            name="OHLC",
            increasing_line_color=_UP,
            decreasing_line_color=_DOWN,
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[b.vwap for b in c],
            mode="lines",
            name="VWAP",
            line={"color": "#3949ab", "width": 1.3},
            connectgaps=False,
        ),
        row=1,
        col=1,
    )
    starts = [b.ts for b in c]
    by_name: dict[str, list[tuple[datetime, float, str, float]]] = {}
    for sig in view.signals:
        i = bisect_right(starts, sig.ts) - 1
        if i < 0:
            continue
        text = f"{sig.name}<br>value {sig.value:g}, score {sig.score:g} ({sig.adapter})"
        by_name.setdefault(sig.name, []).append((_naive(sig.ts), c[i].c, _esc(text), sig.value))
    for name, points in sorted(by_name.items()):
        value = points[0][3]
        symbol, color = (
            ("triangle-up", _UP) if value > 0 else ("triangle-down", _DOWN)
            if value < 0 else ("diamond", _FLAT)
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                mode="markers",
                name=_esc(f"signal: {name}"),
                marker={"symbol": symbol, "size": 10, "color": color, "line": {"width": 1}},
                hovertext=[p[2] for p in points],
                hoverinfo="text+x",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Bar(
            x=xs,
            y=[b.v for b in c],
            name="volume",
            marker_color=[_UP if b.c >= b.o else _DOWN for b in c],
            showlegend=False,
        ),
        row=2,
        col=1,
    )
    if view.spreads:
        sx = [_naive(p.ts) for p in view.spreads]
        fig.add_trace(
            go.Scatter(x=sx, y=[p.mean_bps for p in view.spreads], name="mean spread (bps)"),
            row=3,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=sx,
                y=[p.max_bps for p in view.spreads],
                name="max spread (bps)",
                line={"dash": "dot"},
            ),
            row=3,
            col=1,
        )
    for gap in view.gaps[:200]:
        fig.add_vrect(
            x0=_naive(gap.start),
            x1=_naive(gap.end),
            fillcolor="#9aa5b1",
            opacity=0.25,
            line_width=0,
            layer="below",
            row=1,
            col=1,
        )
    fig.update_layout(
        height=620 if has_spread else 520,
        margin={"l": 70, "r": 20, "t": 50, "b": 30},
        xaxis_rangeslider_visible=False,
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
        template="plotly_white",
        hovermode="x",
    )
    fig.update_xaxes(title_text="event time (UTC)", row=rows, col=1)
    fig.update_yaxes(title_text="price", row=1, col=1)
    fig.update_yaxes(title_text="volume", row=2, col=1)
    if has_spread:
        fig.update_yaxes(title_text="spread (bps)", row=3, col=1)
    spread_note = ""
    if view.spreads is None:
        spread_note = "no quotes stored"
    elif not view.spreads:
        spread_note = "no quotes in this range"
    heading = (
        f"<h3>{_esc(s.provider)}/{_esc(s.symbol)} — {_esc(s.interval)} bars"
        f" drawn as {_label_ms(view.candle_ms)} candles, {_when(view.start)} to "
        f"{_when(view.end)} UTC</h3>"
    )
    notes = [
        f"candles: {len(view.candles):,}, signals: {len(view.signals):,}, gaps of at least "
        f"{_label_ms(max(min_gap_ms, 1))} (shaded): {len(view.gaps):,}"
    ]
    if spread_note:
        notes.append(f"spread: {spread_note}")
    return heading + f'<p class="note">{"; ".join(notes)}</p>' + _div(fig)


def _freshness(data: ReportData) -> str:
    rows = []
    for v in data.series:
        s = v.summary
        window_end = s.last_ts + timedelta(milliseconds=parse_duration_ms(s.interval))
        age_s = (data.generated_at - window_end).total_seconds()
        largest = max(v.gaps, key=lambda g: g.end - g.start, default=None)
        rows.append(
            [
                _esc(s.provider),
                _esc(s.symbol),
                _esc(s.interval),
                f"{s.bars:,}",
                _when(s.first_ts),
                _when(window_end),
                _duration(age_s) + (" ago" if age_s >= 0 else " ahead"),
                _when(s.last_written),
                f"{len(v.gaps):,}",
                f"{sum(g.missing_windows for g in v.gaps):,}",
                "-"
                if largest is None
                else _duration((largest.end - largest.start).total_seconds()),
            ]
        )
    for s in data.not_shown:
        window_end = s.last_ts + timedelta(milliseconds=parse_duration_ms(s.interval))
        age_s = (data.generated_at - window_end).total_seconds()
        rows.append(
            [
                _esc(s.provider),
                _esc(s.symbol),
                _esc(s.interval),
                f"{s.bars:,}",
                _when(s.first_ts),
                _when(window_end),
                _duration(age_s) + " ago",
                _when(s.last_written),
                "not drawn",
                "",
                "",
            ]
        )
    if not rows:
        return '<p class="note">no bars stored</p>'
    header = [
        "provider",
        "symbol",
        "interval",
        "bars",
        "first bar",
        "newest bar ends",
        "age",
        "last written",
        "gaps",
        "missing windows",
        "largest gap",
    ]
    return _table(header, rows, {3, 8, 9})


def _dead_letters(data: ReportData) -> str:
    import plotly.graph_objects as go

    dl = data.dead_letters
    if dl.counts is None:
        return f'<p class="note">dead letters not read: {_esc(dl.note)}</p>'
    if not dl.counts:
        return '<p class="note">no dead letters on the DLQ stream</p>'
    counts = dl.counts
    by_reason: dict[str, int] = {}
    for (reason, _), n in counts.items():
        by_reason[reason] = by_reason.get(reason, 0) + n
    reasons = sorted(by_reason, key=lambda r: (-by_reason[r], r))
    fig = go.Figure()
    for component in sorted({c for _, c in counts}):
        fig.add_trace(
            go.Bar(
                y=[_esc(r) for r in reasons],
                x=[counts.get((r, component), 0) for r in reasons],
                name=_esc(component),
                orientation="h",
                showlegend=True,
            )
        )
    fig.update_layout(
        barmode="stack",
        height=max(220, 60 + 28 * len(reasons)),
        margin={"l": 160, "r": 20, "t": 20, "b": 40},
        template="plotly_white",
        xaxis={
            "title": {"text": "dead letters"},
            "tickformat": ",d",
            "rangemode": "tozero",
            **({"dtick": 1} if max(by_reason.values()) <= 10 else {}),
        },
        legend_title_text="component",
        yaxis={"autorange": "reversed"},
    )
    capped = f" (the oldest {DLQ_READ_MAX:,})" if dl.total >= DLQ_READ_MAX else ""
    return f'<p class="note">{dl.total:,} dead letters{capped} by reason</p>' + _div(fig)


def _runs(data: ReportData) -> str:
    import plotly.graph_objects as go

    if not data.runs:
        return '<p class="note">no runs in job_runs</p>'
    labels, rates, colors, rows = [], [], [], []
    palette = {"success": _UP, "running": "#42a5f5", "stopped": _FLAT, "failed": _DOWN}
    for r in data.runs:
        end = r.finished_at or data.generated_at
        seconds = max((end - r.started_at).total_seconds(), 1e-3)
        rate = r.events_in / seconds
        labels.append(f"#{r.id} {r.job}")
        rates.append(rate)
        colors.append(palette.get(r.status, "#9aa5b1"))
        rows.append(
            [
                str(r.id),
                _esc(r.job),
                _esc(r.status),
                _when(r.started_at),
                _duration(seconds),
                f"{r.events_in:,}",
                f"{rate:,.0f}",
                f"{r.rows_written:,}",
                f"{r.errors:,}",
            ]
        )
    fig = go.Figure(
        go.Bar(
            x=[_esc(x) for x in labels],
            y=rates,
            marker_color=colors,
            hovertext=[f"{_esc(row[2])}, {row[5]} events in {row[4]}" for row in rows],
        )
    )
    fig.update_layout(
        height=300,
        margin={"l": 60, "r": 20, "t": 20, "b": 80},
        template="plotly_white",
        yaxis_title="events / s (events_in / run time)",
    )
    header = [
        "id",
        "job",
        "status",
        "started (UTC)",
        "ran",
        "events in",
        "events/s",
        "rows",
        "errors",
    ]
    return _div(fig) + _table(header, rows[::-1], {0, 5, 6, 7, 8})


def _latency(data: ReportData) -> str:
    import plotly.graph_objects as go

    if not any(data.latency.values()):
        return (
            '<p class="note">no live windows: latency counts bars written within an hour of '
            "their window end (replayed history has none)</p>"
        )
    fig = go.Figure()
    for interval, buckets in data.latency.items():
        if not buckets:
            continue
        xs = [_naive(b.ts) for b in buckets]
        for label, ys, dash in (
            ("p50", [b.p50_ms for b in buckets], "solid"),
            ("p95", [b.p95_ms for b in buckets], "dash"),
        ):
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=_esc(f"{interval} windows {label}"),
                    line={"dash": dash},
                    hovertext=[f"{b.windows:,} windows, max {b.max_ms:,.0f} ms" for b in buckets],
                )
            )
    fig.update_layout(
        height=300,
        margin={"l": 60, "r": 20, "t": 20, "b": 40},
        template="plotly_white",
        yaxis_title="window end → bar written (ms)",
        xaxis_title="written at (UTC)",
    )
    return _div(fig)


def render_html(data: ReportData) -> str:
    """The whole page (UTF-8 text, ~5 MB of which plotly.js is ~4.8 MB)."""
    from plotly.offline import get_plotlyjs

    charts = [_series_chart(v, data.min_gap_ms) for v in data.series]
    if not charts:
        charts = ['<p class="note">no bars to draw</p>']
    notes = "".join(f'<p class="note">{_esc(n)}</p>' for n in data.notes)
    not_shown = ""
    if data.not_shown:
        names = ", ".join(_esc(f"{s.provider}/{s.symbol}") for s in data.not_shown)
        not_shown = f'<p class="note">not drawn (pass --symbol or --max-series): {names}</p>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mdp report {_when(data.generated_at)} UTC</title>
<style>{_CSS}</style>
<script>{get_plotlyjs()}</script>
</head>
<body>
<h1>mdp report</h1>
<p class="meta">generated {_when(data.generated_at)} UTC from {_esc(data.source)};
quotes {"stored" if data.quotes_stored else "not stored"}</p>
{notes}
<h2>Market</h2>
{"".join(charts)}
{not_shown}
<h2>Freshness and gaps</h2>
{_freshness(data)}
<h2>Dead letters by reason</h2>
{_dead_letters(data)}
<h2>Throughput (job_runs)</h2>
{_runs(data)}
<h2>Window latency</h2>
{_latency(data)}
</body>
</html>
"""
