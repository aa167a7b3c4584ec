"""Bad input to produce/replay/tail: one line on stderr, exit 2, before any server starts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from market_data_pipeline.cli.app import main
from market_data_pipeline.cli.common import parse_when
from market_data_pipeline.producers.datasets import load_registry, read_dataset
from market_data_pipeline.ui.records import event_row
from tests.conftest import ROOT, SHIPPED_REGISTRY


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URI", raising=False)
    monkeypatch.chdir(ROOT)


def test_unknown_dataset_lists_registered_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["stream", "replay", "--dataset", "spy_1day"], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "unknown dataset 'spy_1day'" in err
    assert "binance_btcusdt_trades, eurusd_bid_1m, eurusd_quotes, ftx_btc_perp_1m" in err


def test_unreadable_dataset_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "d.yaml"
    registry.write_text(
        "datasets:\n  gone:\n    path: gone.csv\n    provider: p\n    symbol: S\n"
        "    kind: tick\n    timestamp: {column: t, format: epoch_us}\n"
        "    columns: {c: price, v: qty}\n"
    )
    code, err = run(["stream", "replay", "--datasets", str(registry), "--dataset", "gone"], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "cannot read dataset file" in err and "gone.csv" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["stream", "produce", "--duration", "soon"], "--duration"),
        (["stream", "produce", "--provider", "replay"], "--dataset"),
        (["stream", "produce", "--kind", "candle"], "candle"),
        (["stream", "replay", "--dataset", "eurusd_quotes", "--from", "yesterday"], "--from"),
        (
            [
                "stream",
                "replay",
                "--dataset",
                "eurusd_quotes",
                "--from",
                "2020-01-02",
                "--to",
                "2020-01-01",
            ],
            "--to must be after --from",
        ),
        (["stream", "tail", "--topic", "mdp.events"], "REDIS_URI"),
        (["stream", "tail", "--limit", "0"], "--limit"),
    ],
)
def test_bad_arguments(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(args, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1
    assert needle in err


def test_parse_when_treats_naive_as_utc() -> None:
    a = parse_when("2020-02-22", "--from")
    b = parse_when("2020-02-22T01:00:00+01:00", "--from")
    assert a is not None and b is not None and a == b
    assert parse_when(None, "--from") is None


def test_event_rows_show_prices_and_volume() -> None:
    registry = load_registry(SHIPPED_REGISTRY)
    trade = next(iter(read_dataset(registry["binance_btcusdt_trades"])))
    quote = next(iter(read_dataset(registry["eurusd_quotes"])))
    bar = next(iter(read_dataset(registry["ftx_btc_perp_1m"])))
    assert event_row(trade) == [  # type: ignore[arg-type]
        "2020-02-22T00:00:02.111000Z",
        "BTCUSDT",
        "tick",
        "9682",
        "0.132 buy",
        "binance-futures|BTCUSDT|2020-02-22T00:00:02.111000Z|42377944",
    ]
    assert event_row(quote)[2:4] == ["quote", "1.1212 / 1.12172"]  # type: ignore[arg-type]
    assert event_row(bar)[2:5] == [  # type: ignore[arg-type]
        "bar 1m",
        "o 46319 h 46385 l 46319 c 46377",
        "2300413.7295",
    ]


def test_tail_renders_signals_bars_and_bad_entries() -> None:
    from datetime import UTC, datetime

    from market_data_core.codec import encode_bar, encode_signal
    from market_data_core.config import AppConfig
    from market_data_core.contracts import Bar, QuoteBar, Signal
    from market_data_core.protocols import BusRecord
    from market_data_pipeline.ui.records import render_records

    cfg = AppConfig()
    ts = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)
    sig = Signal(provider="p", symbol="SPY", ts=ts, name="momentum_up", value=1.5, score=0.9)
    header, rows, lines = render_records(
        cfg, "mdp.signals", [BusRecord("mdp.signals", 0, "1-0", encode_signal(sig))]
    )
    assert header[:3] == ["time", "symbol", "name"]
    assert rows == [
        ["2026-01-02T14:30:00.000000Z", "SPY", "momentum_up", "1.5", "0.9", "rules", sig.signal_id]
    ]
    bar = Bar("p", "SPY", "2s", ts, 10.0, 11.0, 9.5, 10.5, 300.0, revision=1)
    _h, rows, lines = render_records(
        cfg, "mdp.bars", [BusRecord("mdp.bars", 0, "1-0", encode_bar(bar))]
    )
    assert rows[0][1:] == ["p|SPY", "2s", "bar", "o 10 h 11 l 9.5 c 10.5", "300", "", "", "1"]
    assert '"revision": 1' in lines[0]
    # a quote bar alone, and a bar with its window's quote bar: the book's spread and imbalance
    quote = QuoteBar("p", "SPY", "2s", ts, 10.0, 10.02, 300.0, 100.0, 10.01, 12, 19.98, 9.99,
                     29.97, 18.1, 0.41234, 0.5)  # fmt: skip
    _h, rows, lines = render_records(
        cfg,
        "mdp.bars",
        [
            BusRecord("mdp.bars", 0, "2-0", encode_bar(quote)),
            BusRecord("mdp.bars", 0, "3-0", encode_bar(replace(bar, quote=quote))),
        ],
    )
    assert rows[0][1:] == [
        "p|SPY", "2s", "quote bar", "bid 10 ask 10.02", "12 quotes", "19.980", "0.412", "0",
    ]  # fmt: skip
    assert rows[1][3:] == ["bar", "o 10 h 11 l 9.5 c 10.5", "300", "19.980", "0.412", "1"]
    assert json.loads(lines[0])["type"] == "quote_bar"
    assert json.loads(lines[1])["quote"]["quote_count"] == 12
    _h, rows, lines = render_records(
        cfg, "mdp.events", [BusRecord("mdp.events", 0, "7-0", b"\xc1garbage")]
    )
    assert rows[0][-1] == "7-0" and rows[0][3].startswith("<decode:")
    assert '"error"' in lines[0]
