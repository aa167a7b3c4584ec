"""Replay and produce against a real Redis, through the `mdp` CLI.

Done-when of issue 5: the shipped trades file replays as exactly 9,999 events with identical ids
on every run, and `mdp stream tail` shows them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from market_data_core.codec import decode_events, event_to_dict
from market_data_core.contracts import StreamEvent
from market_data_pipeline.cli.app import main
from tests.conftest import DATA, ROOT, SHIPPED_REGISTRY


def write_config(tmp_path: Path, unique: str, extra: str = "") -> Path:
    path = tmp_path / "streaming.yaml"
    path.write_text(
        f"""
version: 1
bus:
  redis:
    stream: "mdp.events.{unique}"
    dlq_stream: "mdp.dlq.{unique}"
    signals_stream: "mdp.signals.{unique}"
    bars_stream: "mdp.bars.{unique}"
producers:
  replay:
    datasets_file: "{SHIPPED_REGISTRY}"
{extra}
telemetry:
  metrics_port: 0
  log_level: WARNING
"""
    )
    return path


def stream_events(url: str, stream: str) -> tuple[int, list[StreamEvent]]:
    client = redis.Redis.from_url(url)
    try:
        entries = client.xrange(stream)
    finally:
        client.close()
    events = [e for _id, fields in entries for e in decode_events(fields[b"data"]).events]
    return len(entries), events


@pytest.fixture
def cli_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REDIS_URI", redis_url)
    monkeypatch.chdir(ROOT)
    return redis_url


def test_trades_replay_twice_gives_9999_identical_ids_and_tail_shows_them(
    cli_env: str, tmp_path: Path, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_config(tmp_path, unique))
    stream = f"mdp.events.{unique}"
    args = ["stream", "replay", "--config", config, "--dataset", "binance_btcusdt_trades"]

    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"replayed 9,999 events (dataset binance_btcusdt_trades) to {stream}" in out
    n, first = stream_events(cli_env, stream)
    assert n == len(first) == 9999

    assert main(args) == 0
    assert "replayed 9,999 events" in capsys.readouterr().out
    n, both = stream_events(cli_env, stream)
    assert n == 19_998
    second = both[9999:]
    assert [e.event_id for e in second] == [e.event_id for e in first]
    assert len({e.event_id for e in first}) == 9999
    assert first[0].event_id == "binance-futures|BTCUSDT|2020-02-22T00:00:02.111000Z|42377944"

    assert main(["stream", "tail", "--config", config, "--limit", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["time", "symbol", "kind", "prices", "volume", "id"]
    assert [line.split()[-1] for line in table[1:]] == [e.event_id for e in first[-3:]]
    assert all("BTCUSDT  tick" in line for line in table[1:])

    assert main(["stream", "tail", "--config", config, "--limit", "9999", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["event_id"] for line in lines] == [e.event_id for e in first]


def test_bad_rows_go_to_the_dlq_and_the_replay_goes_on(
    cli_env: str, tmp_path: Path, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "q.csv"
    data.write_text(
        "20200101 170000065,1.121200,1.121720,0\n"
        "20200101 170001000,1.1213x,1.121720,0\n"
        "20200101 170002000,1.121900,1.121720,0\n"
        "20200101 170003000,1.121300,1.121800,0\n"
    )
    registry = tmp_path / "datasets.yaml"
    registry.write_text(
        f"""
datasets:
  q:
    path: {data}
    header: false
    names: [ts, bid, ask, unused]
    provider: fx-sample
    symbol: EUR/USD
    kind: quote
    timestamp: {{column: ts, format: "%Y%m%d %H%M%S%f"}}
    columns: {{bid: bid, ask: ask}}
"""
    )
    config = str(write_config(tmp_path, unique))
    code = main(
        ["stream", "replay", "--config", config, "--datasets", str(registry), "--dataset", "q"]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "replayed 2 events" in captured.out
    assert f"2 bad rows sent to mdp.dlq.{unique}" in captured.out
    assert f"mdp: bad row: {data}:2: parse: bad number in column 'bid'" in captured.err
    assert f"mdp: bad row: {data}:3: validation:" in captured.err

    _entries, events = stream_events(cli_env, f"mdp.events.{unique}")
    assert [e.seq for e in events] == [1, 4]

    client = redis.Redis.from_url(cli_env)
    try:
        letters = [fields for _id, fields in client.xrange(f"mdp.dlq.{unique}")]
    finally:
        client.close()
    assert [
        (f[b"component"], f[b"reason"], f[b"source_id"], f[b"source_topic"]) for f in letters
    ] == [
        (b"replay", b"parse", b"line 2", str(data).encode()),
        (b"replay", b"validation", b"line 3", str(data).encode()),
    ]
    assert letters[1][b"payload"] == b"20200101 170002000,1.121900,1.121720,0"
    assert b"crossed quote" in letters[1][b"detail"]

    assert main(["stream", "tail", "--config", config, "--topic", f"mdp.dlq.{unique}"]) == 0
    out = capsys.readouterr().out
    assert "replay" in out and "line 3" in out and "crossed quote" in out


@pytest.mark.parametrize("pack", [1, 50])
def test_seeded_synthetic_runs_are_identical(
    cli_env: str, tmp_path: Path, unique: str, pack: int, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = []
    for run in range(2):
        config = str(write_config(tmp_path, f"{unique}-{run}", extra=f"  pack_events: {pack}"))
        args = ["stream", "produce", "--config", config, "--seed", "7", "--count", "3000"]
        assert main([*args, "--rate", "30000", "--kind", "quote"]) == 0
        assert "published 3,000 events (synthetic quote)" in capsys.readouterr().out
        entries, events = stream_events(cli_env, f"mdp.events.{unique}-{run}")
        assert len(events) == 3000
        assert entries == 3000 if pack == 1 else entries < 3000
        runs.append(events)
    if pack == 1:
        assert runs[0] == runs[1]
    else:
        # Packs group one key's events; the interleaving of keys depends on batch timing.
        for sym in ("SPY", "AAPL", "MSFT"):
            assert [e for e in runs[0] if e.symbol == sym] == [
                e for e in runs[1] if e.symbol == sym
            ]


def test_sigterm_flushes_then_exits(cli_env: str, tmp_path: Path, unique: str) -> None:
    config = str(write_config(tmp_path, unique, extra="  publish_batch_size: 5000"))
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "market_data_pipeline.cli.app", "stream", "produce"),
            *("--config", config, "--rate", "3000"),
        ],
        cwd=ROOT,
        env={**os.environ, "REDIS_URI": cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    published = int(out.split("published ")[1].split(" events")[0].replace(",", ""))
    assert published > 1000
    _entries, events = stream_events(cli_env, f"mdp.events.{unique}")
    assert len(events) == published  # everything accepted was flushed before exit


def test_tail_follow_prints_new_entries(
    cli_env: str, tmp_path: Path, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_config(tmp_path, unique))
    produce = ["stream", "produce", "--config", config, "--seed", "3", "--rate", "10000"]
    assert main([*produce, "--count", "2"]) == 0
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "market_data_pipeline.cli.app", "stream", "tail"),
            *("--config", config, "--limit", "1", "--follow", "--json", "--poll-s", "0.1"),
        ],
        cwd=ROOT,
        env={**os.environ, "REDIS_URI": cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)
        client = redis.Redis.from_url(cli_env)
        try:
            # Another client appends three JSON entries (the seed's wire format) meanwhile.
            first = decode_events(client.xrange(f"mdp.events.{unique}")[0][1][b"data"]).events[0]
            for _ in range(3):
                client.xadd(f"mdp.events.{unique}", {"data": json.dumps(event_to_dict(first))})
        finally:
            client.close()
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    ids = [json.loads(line)["event_id"] for line in out.splitlines()]
    assert len(ids) == 4  # the last entry, then the three new ones
    assert ids[0].startswith("synthetic|AAPL|")  # the last of the two produced
    assert ids[1:] == [first.event_id] * 3


def _binance_file(tmp_path: Path, rows: int = 2001) -> Path:
    """A Binance trade file (`is_buyer_maker` true/false instead of a side) made from the
    shipped real trades: the aggressor sold when the buyer was the maker."""
    import csv

    src = DATA / "binance-futures-btcusdt-trades-2020-02-22.csv"
    with src.open() as f:
        trades = list(csv.DictReader(f))[:rows]
    path = tmp_path / "BTCUSDT-trades.csv.gz"
    import gzip

    with gzip.open(path, "wt", newline="") as out:
        w = csv.writer(out)
        w.writerow(["id", "price", "qty", "time", "is_buyer_maker"])
        for t in trades:
            maker = "true" if t["side"] == "sell" else "false"
            w.writerow([t["id"], t["price"], t["amount"], int(t["timestamp"]) // 1000, maker])
    return path


def _binance_registry(tmp_path: Path, data: Path, side: str) -> Path:
    registry = tmp_path / "datasets.yaml"
    registry.write_text(
        f"""
datasets:
  b:
    path: {data}
    provider: binance
    symbol: BTCUSDT
    kind: tick
    timestamp: {{column: time, format: epoch_ms}}
    columns: {{c: price, v: qty, seq: id, trade_id: id, side: {side}}}
"""
    )
    return registry


def test_replay_with_every_row_rejected_says_why_and_exits_1(
    cli_env: str, tmp_path: Path, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """issue 16: all 2,001 rows went to the DLQ and `mdp stream replay` exited 0."""
    data = _binance_file(tmp_path)
    registry = _binance_registry(tmp_path, data, "is_buyer_maker")
    config = str(write_config(tmp_path, unique))
    args = ["stream", "replay", "--config", config, "--datasets", str(registry), "--dataset", "b"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert f"rows: 2,001 read, 0 accepted, 2,001 rejected (100.0%) -> mdp.dlq.{unique}" in (
        captured.out
    )
    assert "rejected by reason: validation: side: Input should be 'buy' or 'sell' (2,001)" in (
        captured.out
    )
    assert captured.err.strip().splitlines()[-1] == (
        "mdp: error: every row of dataset b was rejected (2,001); see `mdp stream dlq list`"
    )


def test_replay_with_a_value_map_accepts_every_row(
    cli_env: str, tmp_path: Path, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _binance_file(tmp_path)
    side = '{column: is_buyer_maker, map: {"true": sell, "false": buy}}'
    registry = _binance_registry(tmp_path, data, side)
    config = str(write_config(tmp_path, unique))
    args = ["stream", "replay", "--config", config, "--datasets", str(registry), "--dataset", "b"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "replayed 2,001 events (dataset b)" in out
    assert "rows: 2,001 read, 2,001 accepted, 0 rejected (0.0%)" in out
    _entries, events = stream_events(cli_env, f"mdp.events.{unique}")
    sides = [e.side for e in events]
    assert len(events) == 2001 and set(sides) == {"buy", "sell"}
    # the same sides as the shipped file (whose side column is the aggressor's)
    shipped = load_shipped_sides(2001)
    assert sides == shipped


def load_shipped_sides(rows: int) -> list[str]:
    import csv

    src = DATA / "binance-futures-btcusdt-trades-2020-02-22.csv"
    with src.open() as f:
        trades = sorted(
            list(csv.DictReader(f))[:rows],
            key=lambda t: (int(t["timestamp"]) // 1000, int(t["id"])),
        )
    return [t["side"] for t in trades]


def test_max_rejected_share_fails_a_replay_with_too_many_bad_rows(
    cli_env: str, tmp_path: Path, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "t.csv"
    data.write_text("t,p,q\n1,10,1\n2,x,1\n3,11,-1\n4,12,1\n5,13,1\n")
    registry = tmp_path / "datasets.yaml"
    registry.write_text(
        f"datasets:\n  t:\n    path: {data}\n    provider: p\n    symbol: S\n    kind: tick\n"
        "    timestamp: {column: t, format: epoch_s}\n    columns: {c: p, v: q}\n"
    )
    config = str(write_config(tmp_path, unique))
    args = ["stream", "replay", "--config", config, "--datasets", str(registry), "--dataset", "t"]
    assert main(args) == 0  # 2 of 5: fine by default (only all rejected fails)
    out = capsys.readouterr().out
    assert "rows: 5 read, 3 accepted, 2 rejected (40.0%)" in out
    assert "parse: bad number in column 'p' (c) (1)" in out
    assert "validation: v must be >= 0 (1)" in out
    assert main([*args, "--max-rejected-share", "0.25"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "mdp: error: 2 of 5 rows of dataset t were rejected (40.0%), more than "
        "producers.replay.max_rejected_share (25.0%); see `mdp stream dlq list`"
    )
    assert main([*args, "--max-rejected-share", "0.5"]) == 0
