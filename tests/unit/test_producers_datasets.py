"""Dataset registry and reader: the shipped files, column mapping, bad rows, registry errors."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

from market_data_core.errors import ConfigError
from market_data_pipeline.producers.datasets import (
    DatasetSpec,
    RowError,
    TimestampSpec,
    count_rows,
    load_registry,
    lookup,
    read_dataset,
)
from tests.conftest import DATA, SHARED_ORIGINAL, SHIPPED_REGISTRY

REGISTRY = SHIPPED_REGISTRY


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
        assert (DATA / name).read_bytes() == (SHARED_ORIGINAL / name).read_bytes()


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
    assert "binance_btcusdt_trades, eurusd_bid_1m, eurusd_quotes, ftx_btc_perp_1m" in msg


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


def tick_registry(
    tmp_path: Path, file: str, columns: str, ts: str, fmt: str = "csv"
) -> DatasetSpec:
    body = f"""
datasets:
  t:
    path: {file}
    format: {fmt}
    provider: test
    symbol: BTCUSDT
    kind: tick
    timestamp: {ts}
    columns: {columns}
"""
    return load_registry(write_registry(tmp_path, body))["t"]


BINANCE_MAP = (
    '{c: price, v: qty, seq: id, side: {column: is_buyer_maker, map: {"true": sell, "false": buy}}}'
)


def test_binance_is_buyer_maker_maps_to_side(tmp_path: Path) -> None:
    """issue 16: `is_buyer_maker` true/false could not become `side`; every row was rejected."""
    (tmp_path / "b.csv").write_text(
        "id,price,qty,quote_qty,time,is_buyer_maker\n"
        "1,9682.0,0.132,1278.0,1582329602111,true\n"
        "2,9682.5,0.412,3989.2,1582329602116,false\n"
        "3,9682.5,0.1,968.25,1582329602117,True\n"
        "4,9682.5,0.1,968.25,1582329602118,maybe\n"
    )
    spec = tick_registry(tmp_path, "b.csv", BINANCE_MAP, "{column: time, format: epoch_ms}")
    events, errors = split(list(read_dataset(spec)))
    assert [(e.seq, e.side) for e in events] == [(1, "sell"), (2, "buy"), (3, "sell")]
    [bad] = errors
    assert (bad.line, bad.reason) == (5, "parse")
    assert "value 'maybe' in column 'is_buyer_maker' (side) is not in its map" in bad.detail
    assert bad.cause == "value not in the map of column 'is_buyer_maker' (side)"


def test_yaml_boolean_map_keys_and_parquet_booleans(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(
        pa.table(
            {
                "time": [1_582_329_602_111, 1_582_329_602_116],
                "price": [9682.0, 9682.5],
                "qty": [0.132, 0.412],
                "id": [1, 2],
                "is_buyer_maker": [True, False],
            }
        ),
        tmp_path / "b.parquet",
    )
    columns = (
        "{c: price, v: qty, seq: id, side: {column: is_buyer_maker, map: {true: sell, false: buy}}}"
    )
    spec = tick_registry(
        tmp_path, "b.parquet", columns, "{column: time, format: epoch_ms}", fmt="parquet"
    )
    events, errors = split(list(read_dataset(spec)))
    assert errors == [] and [e.side for e in events] == ["sell", "buy"]


def test_scale_reads_integer_nanodollars_exactly(tmp_path: Path) -> None:
    (tmp_path / "n.csv").write_text(
        "ts,px,qty\n"
        "1600000000000,1234500000,3\n"
        "1600000000001,100000000000,1\n"
        "1600000000002,12345,1000000000\n"
    )
    columns = "{c: {column: px, scale: 1e-9}, v: {column: qty, scale: 0.5}}"
    spec = tick_registry(tmp_path, "n.csv", columns, "{column: ts, format: epoch_ms}")
    events, errors = split(list(read_dataset(spec)))
    assert errors == []
    # the float nearest the exact decimal, not 1234500000 * 1e-9 == 1.2345000000000002
    assert [(e.c, e.v) for e in events] == [(1.2345, 1.5), (100.0, 0.5), (1.2345e-05, 5e8)]


def test_scale_on_parquet_integers(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(
        pa.table({"ts": [1_600_000_000_000], "px": [1_234_500_000], "qty": [2.5]}),
        tmp_path / "n.parquet",
    )
    columns = "{c: {column: px, scale: 1.0e-9}, v: qty}"
    spec = tick_registry(
        tmp_path, "n.parquet", columns, "{column: ts, format: epoch_ms}", "parquet"
    )
    events, errors = split(list(read_dataset(spec)))
    assert errors == [] and [(e.c, e.v) for e in events] == [(1.2345, 2.5)]


@pytest.mark.parametrize(
    ("columns", "needle"),
    [
        ("{c: price, v: qty, side: {column: s, scale: 2}}", "scale applies to prices and sizes"),
        ("{c: {column: price, scale: 0}, v: qty}", "scale must be a finite number > 0"),
        ("{c: {column: price, scale: abc}, v: qty}", "scale"),
        ("{c: price, v: qty, side: {column: s, map: {b: buy, B: sell}}}", "given twice"),
        ("{c: price, v: qty, side: {column: s, mapping: {b: buy}}}", "mapping"),
    ],
)
def test_map_and_scale_errors_name_the_key(tmp_path: Path, columns: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        tick_registry(tmp_path, "x.csv", columns, "{column: t}")
    assert needle in str(info.value) and "datasets.t.columns" in str(info.value)


NY_FALL_BACK_ROWS = [
    "2020-11-01 01:30:00",  # EDT
    "2020-11-01 01:59:58",  # EDT
    "2020-11-01 01:00:00",  # EST
    "2020-11-01 01:30:00",  # EST
    "2020-11-01 02:00:00",  # EST
]
NY_SPRING_ROWS = ["2020-03-08 01:59:00", "2020-03-08 02:30:00", "2020-03-08 03:00:00"]


def _local_dataset(tmp_path: Path, walls: list[str], fmt: str, policy: str) -> DatasetSpec:
    """The same wall times as an ISO column, a strptime column, or a Parquet timestamp."""
    if fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        table = pa.table(
            {
                "time": pa.array([datetime.fromisoformat(w) for w in walls], pa.timestamp("us")),
                "price": [10.0 + i for i in range(len(walls))],
                "size": [1.0] * len(walls),
            }
        )
        pq.write_table(table, tmp_path / "ny.parquet")
        file, ts_format = "ny.parquet", "iso"
    else:
        text = [w.replace(" ", "T") if fmt == "iso" else w for w in walls]
        rows = [f"{t},{10 + i},1" for i, t in enumerate(text)]
        (tmp_path / "ny.csv").write_text("time,price,size\n" + "\n".join(rows) + "\n")
        file, ts_format = "ny.csv", "iso" if fmt == "iso" else '"%Y-%m-%d %H:%M:%S"'
    ts = f"{{column: time, format: {ts_format}, zone: America/New_York, {policy}}}"
    return tick_registry(
        tmp_path, file, "{c: price, v: size}", ts, "parquet" if fmt == "parquet" else "csv"
    )


def _pandas(walls: list[str], **policy: object) -> list[datetime]:
    pd = pytest.importorskip("pandas")
    s = pd.Series(pd.to_datetime(walls)).dt.tz_localize("America/New_York", **policy)
    return [t.to_pydatetime() for t in s.dt.tz_convert("UTC")]


@pytest.mark.parametrize("fmt", ["iso", "strptime", "parquet"])
@pytest.mark.parametrize(
    ("policy", "pandas_policy"),
    [
        ("ambiguous: infer", {"ambiguous": "infer"}),
        ("ambiguous: earliest", {"ambiguous": [True] * 5}),
        ("ambiguous: latest", {"ambiguous": [False] * 5}),
    ],
)
def test_fall_back_rows_land_where_pandas_puts_them(
    tmp_path: Path, fmt: str, policy: str, pandas_policy: dict[str, object]
) -> None:
    """issue 16: every ambiguous time was read as EDT (the real 06:00 and 06:30 UTC trades
    became 05:00 and 05:30)."""
    spec = _local_dataset(tmp_path, NY_FALL_BACK_ROWS, fmt, policy)
    events, errors = split(list(read_dataset(spec)))
    assert errors == []
    expected = _pandas(NY_FALL_BACK_ROWS, **pandas_policy)
    # events come in time order (rows sharing a timestamp in seq order); each keeps its line
    first = 1 if fmt == "parquet" else 2  # Parquet rows count from 1, CSV lines after the header
    assert sorted((e.seq, e.src_ts) for e in events) == list(
        zip(range(first, first + 5), expected, strict=True)
    )


@pytest.mark.parametrize("fmt", ["iso", "strptime", "parquet"])
def test_fall_back_default_raise_dead_letters_each_ambiguous_row(tmp_path: Path, fmt: str) -> None:
    spec = _local_dataset(tmp_path, NY_FALL_BACK_ROWS, fmt, "ambiguous: raise")
    events, errors = split(list(read_dataset(spec)))
    assert [e.src_ts for e in events] == [datetime(2020, 11, 1, 7, 0, tzinfo=UTC)]
    first = 1 if fmt == "parquet" else 2
    assert [(e.line, e.reason) for e in errors] == [(first + n, "ambiguous_time") for n in range(4)]
    assert "ambiguous local time 2020-11-01 01:59:58 in America/New_York" in errors[1].detail
    assert "rule ambiguous: raise" in errors[1].detail
    assert errors[1].cause == "ambiguous local time (rule ambiguous: raise)"


@pytest.mark.parametrize("fmt", ["iso", "strptime", "parquet"])
def test_spring_forward_rows(tmp_path: Path, fmt: str) -> None:
    """issue 16: 2020-03-08 02:30 (never on a New York clock) became 07:30 UTC silently."""
    spec = _local_dataset(tmp_path, NY_SPRING_ROWS, fmt, "nonexistent: raise")
    events, errors = split(list(read_dataset(spec)))
    first = 1 if fmt == "parquet" else 2
    assert [(e.line, e.reason) for e in errors] == [(first + 1, "nonexistent_time")]
    assert "local time 2020-03-08 02:30:00 does not exist in America/New_York" in errors[0].detail
    assert "rule nonexistent: raise" in errors[0].detail
    assert [e.src_ts for e in events] == [
        datetime(2020, 3, 8, 6, 59, tzinfo=UTC),
        datetime(2020, 3, 8, 7, 0, tzinfo=UTC),
    ]
    spec = _local_dataset(tmp_path, NY_SPRING_ROWS, fmt, "nonexistent: shift_forward")
    events, errors = split(list(read_dataset(spec)))
    assert errors == []
    assert sorted((e.seq, e.src_ts) for e in events) == list(
        zip(
            range(first, first + 3),
            _pandas(NY_SPRING_ROWS, nonexistent="shift_forward"),
            strict=True,
        )
    )


def test_epoch_and_offset_timestamps_ignore_the_zone_policies(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text(
        "t,iso,price,size\n1604212200000,2020-11-01T01:30:00-05:00,1,1\n"
    )
    for column, fmt in (("t", "epoch_ms"), ("iso", "iso")):
        spec = tick_registry(
            tmp_path,
            "e.csv",
            "{c: price, v: size}",
            f"{{column: {column}, format: {fmt}, zone: America/New_York}}",
        )
        events, errors = split(list(read_dataset(spec)))
        assert errors == [] and [e.src_ts for e in events] == [
            datetime(2020, 11, 1, 6, 30, tzinfo=UTC)
        ]


def test_default_policies_are_raise() -> None:
    ts = TimestampSpec(column="t", zone="America/New_York")
    assert (ts.ambiguous, ts.nonexistent) == ("raise", "raise")


def test_fx_bid_bars_without_volume() -> None:
    """The shipped FX bid bars (derived from the real EUR/USD quotes) carry no volume: they
    register as kind bar and replay with v=None (stored null, vwap null)."""
    spec = load_registry(REGISTRY)["eurusd_bid_1m"]
    assert not spec.has_volume
    events, errors = split(list(read_dataset(spec)))
    assert errors == [] and len(events) == 361 == count_rows(spec)
    first = events[0]
    assert (first.kind, first.interval, first.o, first.h, first.l, first.c, first.v) == (
        "bar",
        "1m",
        1.1212,
        1.12121,
        1.12117,
        1.1212,
        None,
    )
    assert first.src_ts == datetime(2020, 1, 1, 17, 0, tzinfo=UTC)


def test_bars_still_need_ohlc(tmp_path: Path) -> None:
    body = QUOTES_REGISTRY.replace("kind: quote", "kind: bar\n    interval: 1m").replace(
        "{bid: bid, ask: ask}", "{o: o, h: h, l: l}"
    )
    with pytest.raises(ConfigError, match="kind bar needs columns for c"):
        load_registry(write_registry(tmp_path, body))
