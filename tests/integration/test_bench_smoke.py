"""`mdp bench` runs the real path end to end and reports it exact (the figures themselves are
for the benchmark, not for tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("quote_ratio", [0.0, 0.5])
def test_bench_runs_the_full_path_exactly(
    redis_url: str, database_url: str, tmp_path: Path, quote_ratio: float
) -> None:
    env = {**os.environ, "REDIS_URI": redis_url, "DATABASE_URL": database_url}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "market_data_pipeline.cli.app",
            "bench",
            "--duration",
            "4s",
            "--rate",
            "3000",
            "--symbols",
            "6",
            "--window",
            "1s",
            "--pack",
            "10",
            "--workers",
            "2",
            "--producers",
            "1",
            "--no-ceiling",
            "--quote-ratio",
            str(quote_ratio),
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "full path: sustained" in proc.stdout
    (result,) = tmp_path.glob("bench-*.json")
    record = json.loads(result.read_text())
    full = record["full_path"]
    assert full["exact"] is True, proc.stdout
    assert full["published"] > 6000
    assert (
        full["published"]
        == full["events_in"]
        == full["ticks_inserted"] + full["quotes_inserted"]
        == full["bars_trade_count"] + full["quote_bars_quote_count"]
    )
    assert full["ticks_inserted"] == full["bars_trade_count"]
    # issue 15: --quote-ratio puts that share of quotes in the mix, each stored and in a bar
    assert full["quotes_inserted"] == pytest.approx(quote_ratio * full["published"], abs=6 * 2)
    assert (full["quote_bars_written"] > 0) == (quote_ratio > 0)
    assert record["params"]["quote_ratio"] == quote_ratio
    assert full["bars_scored"] > 0
    # signals = reference: the run's signal rows equal a clean pass over its final bars
    assert full["signals_reference"] is True and full["reference_bars"] > 6 * 3
    assert full["bars_relayed"] >= full["reference_bars"]
    assert "signals = reference" in proc.stdout and "outbox relay" in proc.stdout
    assert record["params"]["workers"] == 2 and record["machine"]["cpus"]
