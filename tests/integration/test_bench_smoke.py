"""`mdp bench` runs the real path end to end and reports it exact (the figures themselves are
for the benchmark, not for tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_bench_runs_the_full_path_exactly(
    redis_url: str, database_url: str, tmp_path: Path
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
    assert full["exact"] is True
    assert full["published"] > 6000
    assert (
        full["published"] == full["events_in"] == full["ticks_inserted"] == full["bars_trade_count"]
    )
    assert full["bars_scored"] > 0
    # signals = reference: the run's signal rows equal a clean pass over its final bars
    assert full["signals_reference"] is True and full["reference_bars"] > 6 * 3
    assert full["bars_relayed"] >= full["reference_bars"]
    assert "signals = reference" in proc.stdout and "outbox relay" in proc.stdout
    assert record["params"]["workers"] == 2 and record["machine"]["cpus"]
