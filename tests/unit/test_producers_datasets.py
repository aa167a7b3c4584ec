"""Dataset registry and reader: the shipped files, column mapping, bad rows, registry errors."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from market_data_core.errors import ConfigError
from market_data_pipeline.producers.datasets import (
    RowError,
    count_rows,
    load_registry,
    lookup,
    read_dataset,
)
from tests.conftest import ROOT, SHARED_ORIGINAL

REGISTRY = ROOT / "configs" / "datasets.yaml"


def split(items: list[object]) -> tuple[list, list[RowError]]:  # type: ignore[type-arg]
    return [i for i in items if not isinstance(i, RowError)], [
        i for i in items if isinstance(i, RowError)
    ]


@pytest.mark.skipif(
    not SHARED_ORIGINAL.is_dir(), reason="../shared/data (the originals) is not beside this clone"
)
def test_shipped_files_match_the_shared_data() -> None:
    for name in (
        "binance-futures-btcusdt-trades-2020-02-22.csv",
        "eurusd-quotes-2020-01-01.csv",
        "ftx-btc-perp-1m-2022-01.csv",
    ):
        assert (ROOT / "datasets" / name).read_bytes() == (SHARED_ORIGINAL / name).read_bytes()


def test_trades_dataset_gives_9999_ticks_in_id_order() -> None:
    spec = load_registry(REGISTRY)["binance_btcusdt_trades"]
    events, errors = split(list(read_dataset(spec)))
    assert errors == []
    assert len(events) == 9999 == count_rows(spec)
    assert len({e.event_id for e in events}) == 9999
    first = events[0]
    assert (first.provider, first.symbol, first.kind) == ("binance-futures", "BTCUSDT", "tick")
    assert first.src_ts == datetime(2020, 2, 22, 0, 0, 2, 111000, tzinfo=UTC)
    assert (first.c, first.v, first.seq, first.trade_id, first.side) == (
        9682.0,
        0.132,
        42377944,
        "42377944",
        "buy",
    )
    shared_ts = 0
    for a, b in itertools.pairwise(events):
        assert (a.src_ts, a.seq) < (b.src_ts, b.seq)
        shared_ts += a.src_ts == b.src_ts
    assert shared_ts > 100  # the real quirk: many trades share a timestamp


def test_quotes_dataset_without_header_reads_as_utc() -> None:
    spec = load_registry(REGISTRY)["eurusd_quotes"]
    events, errors = split(list(read_dataset(spec)))
    assert errors == [] and len(events) == 9500
    q = events[0]
    assert (q.kind, q.symbol, q.bid, q.ask) == ("quote", "EUR/USD", 1.1212, 1.12172)
    assert q.src_ts == datetime(2020, 1, 1, 17, 0, 0, 65000, tzinfo=UTC)
    assert q.seq == 1  # no seq column: the line number


def test_bars_dataset_with_time_window() -> None:
    spec = load_registry(REGISTRY)["ftx_btc_perp_1m"]
    start = datetime(2022, 1, 3, tzinfo=UTC)
    end = datetime(2022, 1, 3, 1, tzinfo=UTC)
    events, errors = split(list(read_dataset(spec, start, end)))
    assert errors == [] and len(events) == 60
    assert events[0].src_ts == start and events[-1].src_ts < end
    assert all(e.kind == "bar" and e.interval == "1m" for e in events)


def write_registry(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "datasets.yaml"
    path.write_text(body)
    return path


QUOTES_REGISTRY = """
version: 1
datasets:
  q:
    path: q.csv
    header: true
    provider: test
    symbol: EUR/USD
    kind: quote
    timestamp: {column: ts, format: iso, zone: Europe/Berlin}
    columns: {bid: bid, ask: ask}
"""


def test_bad_rows_are_reported_with_line_and_reason(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text(
        "ts,bid,ask\n"
        "2020-01-01T10:00:00,1.10,1.11\n"
        "2020-01-01T10:00:01,abc,1.11\n"
        "2020-01-01T10:00:02,1.12,1.11\n"
        ",1.10,1.11\n"
        "2020-01-01T10:00:04,1.10\n"
        "\n"
        "not-a-time,1.10,1.11\n"
        "2020-01-01T10:00:05,1.10,1.11\n"
    )
    spec = load_registry(write_registry(tmp_path, QUOTES_REGISTRY))["q"]
    events, errors = split(list(read_dataset(spec)))
    assert [e.src_ts for e in events] == [
        datetime(2020, 1, 1, 9, 0, 0, tzinfo=UTC),  # Berlin is UTC+1 in January
        datetime(2020, 1, 1, 9, 0, 5, tzinfo=UTC),
    ]
    assert [(e.line, e.reason) for e in errors] == [
        (3, "parse"),
        (4, "validation"),
        (5, "parse"),
        (6, "parse"),
        (8, "parse"),
    ]
    assert "bad number in column 'bid'" in errors[0].detail
    assert "crossed quote" in errors[1].detail
    assert "missing timestamp" in errors[2].detail
    assert "expected 3 columns" in errors[3].detail
    assert errors[1].raw == b"2020-01-01T10:00:02,1.12,1.11"
    assert str(errors[0]).startswith(f"{tmp_path / 'q.csv'}:3: parse:")


def test_unknown_dataset_lists_the_registered_ones() -> None:
    registry = load_registry(REGISTRY)
    with pytest.raises(ConfigError) as info:
        lookup(registry, "nope", "configs/datasets.yaml")
    msg = str(info.value)
    assert "nope" in msg
    assert "binance_btcusdt_trades, eurusd_quotes, ftx_btc_perp_1m" in msg


def test_unreadable_file_is_one_clear_error(tmp_path: Path) -> None:
    spec = load_registry(write_registry(tmp_path, QUOTES_REGISTRY))["q"]
    with pytest.raises(ConfigError, match=r"cannot read dataset file .*q\.csv"):
        list(read_dataset(spec))


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (QUOTES_REGISTRY.replace("kind: quote", "kind: quote\n    colour: red"), "colour"),
        (QUOTES_REGISTRY.replace("{bid: bid, ask: ask}", "{bid: bid}"), "needs columns for ask"),
        (QUOTES_REGISTRY.replace("Europe/Berlin", "Mars/Olympus"), "unknown time zone"),
        (QUOTES_REGISTRY.replace("{bid: bid, ask: ask}", "{bid: bid, ask: a, px: p}"), "px"),
        ("datasets: [1, 2]", "'datasets' mapping"),
    ],
)
def test_registry_errors_name_the_key(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_registry(write_registry(tmp_path, body))
    assert needle in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_missing_registry(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_registry(tmp_path / "none.yaml")


def test_parquet_dataset(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "t": [1_600_000_000_000, 1_600_000_000_000, 1_600_000_001_000],
            "px": [10.0, 10.5, -1.0],
            "qty": [1.0, 2.0, 3.0],
            "tid": [7, 6, 8],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    body = """
datasets:
  t:
    path: t.parquet
    format: parquet
    provider: test
    symbol: XYZ
    kind: tick
    timestamp: {column: t, format: epoch_ms}
    columns: {c: px, v: qty, seq: tid}
"""
    spec = load_registry(write_registry(tmp_path, body))["t"]
    events, errors = split(list(read_dataset(spec)))
    assert [e.seq for e in events] == [6, 7]  # same timestamp: seq order
    assert events[0].src_ts == datetime(2020, 9, 13, 12, 26, 40, tzinfo=UTC)
    assert [(e.line, e.reason) for e in errors] == [(3, "validation")]
    assert count_rows(spec) == 3
