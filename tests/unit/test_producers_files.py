"""Compressed dataset files (gzip, bz2, xz, zstd) and one-line reasons for unreadable ones:
every compression for CSV and Parquet, by extension, by ``compression:`` and by magic bytes."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from market_data_core.contracts import StreamEvent
from market_data_core.errors import ConfigError
from market_data_pipeline.cli.app import main
from market_data_pipeline.producers.datasets import (
    RowError,
    count_rows,
    load_registry,
    read_dataset,
)
from tests.conftest import DATA, ROOT

TRADES = DATA / "binance-futures-btcusdt-trades-2020-02-22.csv"

COMPRESSORS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "gzip": (".gz", gzip.compress),
    "bz2": (".bz2", bz2.compress),
    "xz": (".xz", lzma.compress),
    "zstd": (".zst", zstandard.ZstdCompressor().compress),
}

REGISTRY = """
datasets:
  t:
    path: {path}
    format: {format}
    {extra}
    provider: binance-futures
    symbol: BTCUSDT
    kind: tick
    timestamp: {{column: timestamp, format: epoch_us}}
    columns: {{c: price, v: amount, seq: id, trade_id: id, side: side}}
"""


def registry(tmp_path: Path, path: Path, fmt: str = "csv", extra: str = "") -> Path:
    reg = tmp_path / "datasets.yaml"
    reg.write_text(REGISTRY.format(path=path, format=fmt, extra=extra))
    return reg


def events_of(reg: Path) -> list[StreamEvent]:
    items = list(read_dataset(load_registry(reg)["t"]))
    assert not [i for i in items if isinstance(i, RowError)]
    return [i for i in items if isinstance(i, StreamEvent)]


@pytest.fixture(scope="module")
def plain_events(tmp_path_factory: pytest.TempPathFactory) -> list[StreamEvent]:
    tmp = tmp_path_factory.mktemp("plain")
    return events_of(registry(tmp, TRADES))


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_compressed_csv_by_extension_gives_the_same_events(
    tmp_path: Path, compression: str, plain_events: list[StreamEvent]
) -> None:
    suffix, compress = COMPRESSORS[compression]
    path = tmp_path / f"trades.csv{suffix}"
    path.write_bytes(compress(TRADES.read_bytes()))
    reg = registry(tmp_path, path)
    assert events_of(reg) == plain_events
    assert len(plain_events) == 9999 == count_rows(load_registry(reg)["t"])


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_compression_key_and_magic_bytes_without_an_extension(
    tmp_path: Path, compression: str, plain_events: list[StreamEvent]
) -> None:
    _, compress = COMPRESSORS[compression]
    path = tmp_path / "trades.dat"
    path.write_bytes(compress(TRADES.read_bytes()))
    assert events_of(registry(tmp_path, path, extra=f"compression: {compression}")) == (
        plain_events
    )
    assert events_of(registry(tmp_path, path)) == plain_events  # auto: the magic bytes


def test_multi_member_files_are_read_whole(tmp_path: Path) -> None:
    head, body = TRADES.read_bytes().split(b"\n", 1)
    part1, part2 = body[: len(body) // 2], body[len(body) // 2 :]
    cut = part1.rindex(b"\n") + 1
    part1, part2 = part1[:cut], part1[cut:] + part2
    for compression, (suffix, compress) in COMPRESSORS.items():
        path = tmp_path / f"multi-{compression}.csv{suffix}"
        path.write_bytes(compress(head + b"\n" + part1) + compress(part2))
        assert len(events_of(registry(tmp_path, path))) == 9999, compression


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_compressed_parquet(tmp_path: Path, compression: str) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "timestamp": [1_582_329_602_111_000, 1_582_329_602_116_000],
            "price": [9682.0, 9682.5],
            "amount": [0.132, 0.412],
            "id": [1, 2],
            "side": ["buy", "sell"],
        }
    )
    raw = io.BytesIO()
    pq.write_table(table, raw)
    suffix, compress = COMPRESSORS[compression]
    path = tmp_path / f"t.parquet{suffix}"
    path.write_bytes(compress(raw.getvalue()))
    reg = registry(tmp_path, path, fmt="parquet")
    assert [(e.c, e.v, e.side) for e in events_of(reg)] == [
        (9682.0, 0.132, "buy"),
        (9682.5, 0.412, "sell"),
    ]
    assert count_rows(load_registry(reg)["t"]) == 2


def _truncated(compress: Callable[[bytes], bytes]) -> bytes:
    data = compress(TRADES.read_bytes())
    return data[: len(data) * 2 // 3]


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("trades.csv.gz", _truncated(gzip.compress), "not a readable gzip stream"),
        ("trades.csv.bz2", _truncated(bz2.compress), "not a readable bz2 stream"),
        ("trades.csv.xz", _truncated(lzma.compress), "not a readable xz stream"),
        ("trades.csv.zst", _truncated(COMPRESSORS["zstd"][1]), "not a readable zstd stream"),
        ("trades.csv.gz", b"timestamp,price\n1,2\n", "not a readable gzip stream"),
        ("trades.csv.zst", b"\x28\xb5\x2f\xfd" + b"\x00" * 40, "not a readable zstd stream"),
        ("trades.csv.xz", b"\xfd7zXZ\x00garbage", "not a readable xz stream"),
        ("trades.zip", b"PK\x03\x04" + b"\x00" * 40, "a zip archive"),
        ("trades.csv", b"\xff\xfeti\x00m\x00e\x00\n", "not UTF-8 text"),
        ("trades.parquet", b"timestamp,price\n", "not Parquet"),
    ],
)
def test_unreadable_files_are_one_line_naming_the_file(
    tmp_path: Path, name: str, content: bytes, why: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    fmt = "parquet" if name.endswith(".parquet") else "csv"
    spec = load_registry(registry(tmp_path, path, fmt=fmt))["t"]
    for attempt in (lambda: count_rows(spec), lambda: list(read_dataset(spec))):
        with pytest.raises(ConfigError) as info:
            attempt()
        message = str(info.value)
        assert f"cannot read dataset file {path}" in message and why in message
        assert "\n" not in message


def test_cli_replays_a_gzip_file_and_refuses_a_corrupt_one_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 16: a registered .csv.gz printed a UnicodeDecodeError traceback and exited 1.
    Now a corrupt one is one line and exit 2, before any server starts (no REDIS_URI)."""
    monkeypatch.delenv("REDIS_URI", raising=False)
    monkeypatch.chdir(ROOT)
    path = tmp_path / "trades.csv.gz"
    path.write_bytes(_truncated(gzip.compress))
    reg = registry(tmp_path, path)
    assert main(["stream", "replay", "--datasets", str(reg), "--dataset", "t"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"mdp: error: cannot read dataset file {path}: not a readable gzip")
    assert "Traceback" not in err
