"""`mdp report` on the shipped datasets run through the real stages (replay -> micro-batch ->
infer, two poison entries dead-lettered): the page renders in Debian's headless Chromium with
no console error and no network request, its screenshot is a picture (not one colour), and the
store's aggregations equal pandas over the stored bars."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis

from market_data_core.reads import StoreReader
from market_data_store import PgStoreClient, PgStoreReader
from tests.conftest import DATA, ROOT, SHIPPED_CONFIG
from tests.support.chromium import chromium_binary, render

MDP = [sys.executable, "-m", "market_data_pipeline.cli.app"]
STAGE_TIMEOUT_S = 300


def _config(tmp: Path, unique: str) -> Path:
    text = SHIPPED_CONFIG.read_text()
    for name in ("events", "signals", "bars", "dlq"):
        text = text.replace(f'"mdp.{name}"', f'"t.{unique}.{name}"')
    text = text.replace('consumer_group: "mdp-consumers"', f'consumer_group: "g.{unique}"')
    assert "metrics_port: 9101" in text and f"t.{unique}.dlq" in text
    path = tmp / "streaming.yaml"
    path.write_text(text.replace("metrics_port: 9101", "metrics_port: 0"))
    return path


@pytest.fixture(scope="module")
def stored(
    redis_url: str, store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, str], Path, str]]:
    """The three shipped datasets replayed and processed by separate `mdp` processes."""
    unique = os.urandom(4).hex()
    tmp = tmp_path_factory.mktemp("report")
    config = _config(tmp, unique)
    env = {
        **{k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"},
        "REDIS_URI": redis_url,
        "DATABASE_URL": store_url,
    }

    def mdp(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*MDP, *args, "-c", str(config)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=STAGE_TIMEOUT_S,
        )
        assert proc.returncode == 0, f"mdp {' '.join(args)}: {proc.stderr[-3000:]}"
        return proc

    for dataset in ("binance_btcusdt_trades", "ftx_btc_perp_1m", "eurusd_quotes"):
        mdp("stream", "replay", "--dataset", dataset)
    r = redis.Redis.from_url(redis_url)
    r.xadd(f"t.{unique}.events", {"data": b"\xc1 not msgpack, not json"})
    r.xadd(
        f"t.{unique}.events",
        {"data": json.dumps({"ver": 1, "kind": "tick", "provider": "x", "symbol": "Y"})},
    )
    r.close()
    mdp("stream", "micro-batch", "--drain", "--idle-s", "1")
    mdp("stream", "infer", "--drain", "--idle-s", "1")
    yield env, config, unique
    r = redis.Redis.from_url(redis_url)
    r.delete(*(f"t.{unique}.{n}" for n in ("events", "signals", "bars", "dlq")))
    r.close()


@pytest.fixture(scope="module")
def report_file(
    stored: tuple[dict[str, str], Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    env, config, _ = stored
    out = tmp_path_factory.mktemp("html") / "report.html"
    proc = subprocess.run(
        [*MDP, "report", "-c", str(config), "-o", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=STAGE_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.fullmatch(rf"wrote {re.escape(str(out))} \(2 symbols, \d+\.\d MB\)\n", proc.stdout)
    return out


def test_the_report_holds_every_panel(report_file: Path) -> None:
    page = report_file.read_text()
    for heading in (
        "binance-futures/BTCUSDT — 2s bars",
        "ftx/BTC-PERP — 1m bars",
        "Freshness and gaps",
        "Dead letters by reason",
        "Throughput (job_runs)",
        "Window latency",
    ):
        assert heading in page, heading
    # the store keeps quotes; the two series drawn have none (the EUR/USD quotes have no
    # trade bars, and the report draws series of trade bars)
    assert "quotes stored" in page and "quotes not stored" not in page
    assert page.count("spread: no quotes in this range") == 2
    assert "2 dead letters" in page
    assert "micro-batch" in page and "infer-rules" in page  # runs from job_runs
    # self-contained: plotly.js inlined, no script or stylesheet from elsewhere
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=", page)


@pytest.mark.skipif(
    chromium_binary() is None, reason="chromium is not installed (.ci/run installs it)"
)
def test_chromium_renders_it_without_errors_or_network(report_file: Path) -> None:
    from PIL import Image

    # 2 market charts + dead letters + throughput (no live windows: no latency chart), each
    # drawn by plotly.js
    ready = (
        "(() => { const d = [...document.querySelectorAll('.plotly-graph-div')];"
        " return d.length === 4 && d.every(x => x.classList.contains('js-plotly-plot')"
        " && x.querySelector('.cartesianlayer .trace') !== null); })()"
    )
    shot = asyncio.run(render(report_file, ready_js=ready))
    assert shot.errors == []
    assert shot.requests == [report_file.resolve().as_uri()]
    image = Image.open(io.BytesIO(shot.png)).convert("RGB")
    assert image.width == 1280 and image.height > 2000
    colours = image.getcolors(maxcolors=1 << 24)
    assert colours is not None and len(colours) > 100  # a picture, not a blank page
    # the first chart's plot area is drawn, not left white
    chart = image.crop((0, 150, image.width, 650)).getcolors(maxcolors=1 << 24)
    assert chart is not None and len(chart) > 50
    target = os.environ.get("MDP_REPORT_SCREENSHOT")
    if target:  # how docs/report.png is made
        image.save(target, optimize=True)


async def test_store_aggregations_equal_pandas(stored: tuple[dict[str, str], Path, str]) -> None:
    env = stored[0]
    dsn = env["DATABASE_URL"]
    reader: StoreReader = await PgStoreReader.connect(dsn)
    client = await PgStoreClient.connect(dsn)
    try:
        series = {(s.provider, s.symbol, s.interval): s for s in await reader.series()}
        assert set(series) == {("binance-futures", "BTCUSDT", "2s"), ("ftx", "BTC-PERP", "1m")}
        t0, t1 = datetime(2020, 2, 22, tzinfo=UTC), datetime(2020, 2, 23, tzinfo=UTC)
        bars = await client.bars_range("binance-futures", "BTCUSDT", "2s", t0, t1)
        assert series["binance-futures", "BTCUSDT", "2s"].bars == len(bars)
        df = pd.DataFrame(
            {
                "o": b.o,
                "h": b.h,
                "l": b.l,
                "c": b.c,
                "v": b.v,
                "pv": b.vwap * b.v,
                "n": b.trade_count,
            }
            for b in bars
        ).set_index(pd.DatetimeIndex([b.ts for b in bars]))
        ref = df.resample("30s", origin="epoch").agg(
            {"o": "first", "h": "max", "l": "min", "c": "last", "v": "sum", "pv": "sum", "n": "sum"}
        )
        ref = ref[ref["n"] > 0]
        got = await reader.bars_rollup("binance-futures", "BTCUSDT", "2s", 30_000, t0, t1)
        assert [b.ts for b in got] == list(ref.index.to_pydatetime())
        assert [(b.o, b.h, b.l, b.c, b.trade_count) for b in got] == list(
            zip(ref.o, ref.h, ref.l, ref.c, ref.n.astype(int), strict=True)
        )
        assert [b.v for b in got] == pytest.approx(list(ref.v), rel=1e-12)
        assert [b.vwap for b in got] == pytest.approx(list(ref.pv / ref.v), rel=1e-12)

        gaps = await reader.bar_gaps("binance-futures", "BTCUSDT", "2s", t0, t1, 10_000)
        ts = pd.Series(df.index)
        after = ts + timedelta(seconds=2)
        hole = ts.shift(-1) - after
        expected = [
            (a.to_pydatetime(), b.to_pydatetime())
            for a, b, h in zip(after, ts.shift(-1), hole, strict=True)
            if pd.notna(h) and h >= timedelta(seconds=10)
        ]
        assert [(g.start, g.end) for g in gaps] == expected
        assert [g.missing_windows for g in gaps] == [
            (b - a) // timedelta(seconds=2) for a, b in expected
        ]

        # the stored EUR/USD quotes' spreads per minute, as pandas computes them
        q = pd.read_csv(
            DATA / "eurusd-quotes-2020-01-01.csv", header=None, names=["ts", "bid", "ask", "x"]
        )
        q.index = pd.to_datetime(q.ts, format="%Y%m%d %H%M%S%f", utc=True)
        q["bps"] = (q.ask - q.bid) / ((q.ask + q.bid) / 2) * 1e4
        spread = q.bps.resample("1min", origin="epoch").agg(["mean", "max", "count"])
        spread = spread[spread["count"] > 0]
        day = datetime(2020, 1, 1, tzinfo=UTC)
        points = await reader.quote_spreads(
            "fx-sample", "EUR/USD", day, day + timedelta(days=1), 60_000
        )
        assert [p.ts for p in points] == list(spread.index.to_pydatetime())
        assert [p.quotes for p in points] == list(spread["count"])
        assert [p.max_bps for p in points] == list(spread["max"])  # the same float formula
        assert [p.mean_bps for p in points] == pytest.approx(list(spread["mean"]), rel=1e-12)

        runs = await reader.job_runs(10)
        assert [r.job for r in runs][-2:] == ["micro-batch", "infer-rules"]
        # every decoded event of the three files in, the two poison entries as errors
        assert (runs[-2].events_in, runs[-2].errors) == (9_999 + 45_031 + 9_500, 2)
        # replayed history only: no bar was written within an hour of its window end
        assert await reader.window_latency("2s", t0, t1, 60_000) == []
    finally:
        await reader.aclose()
        await client.aclose()


async def test_window_latency_of_live_bars_equals_a_recount(database_url: str) -> None:
    """Bars written now for windows that just closed: latency = updated_at - window end."""
    from market_data_store import upgrade_schema
    from tests.integration._store_db import fresh_database

    async with fresh_database(database_url) as url:
        await upgrade_schema(url)
        await _live_latency(url)


async def _live_latency(url: str) -> None:
    from market_data_core.contracts import Bar

    client = await PgStoreClient.connect(url)
    reader = await PgStoreReader.connect(url)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        bars = [
            Bar(provider="live", symbol="L", interval="1s", ts=now - timedelta(seconds=s),
                o=1, h=1, l=1, c=1, v=1, vwap=1, trade_count=1)
            for s in range(3, 30)
        ]  # fmt: skip
        await client.upsert_bars(bars)
        got = await reader.window_latency(
            "1s", now - timedelta(minutes=1), now + timedelta(minutes=1), 3_600_000
        )
        stored = await client.bars_range("live", "L", "1s", now - timedelta(minutes=1), now)
        assert len(stored) == 27
        assert len(got) == 1 and got[0].windows == 27
        # every bar of one upsert carries the same updated_at; recount from the window ends
        lat = sorted((now - (b.ts + timedelta(seconds=1))).total_seconds() * 1000 for b in stored)
        assert got[0].max_ms >= lat[-1] and got[0].p50_ms >= lat[13] and got[0].p95_ms >= lat[25]
        assert got[0].max_ms - got[0].p50_ms == pytest.approx(lat[-1] - lat[13], abs=1e-3)
        assert got[0].max_ms - got[0].p95_ms == pytest.approx(lat[-1] - lat[25], abs=1e-3)
    finally:
        await client.aclose()
        await reader.aclose()
