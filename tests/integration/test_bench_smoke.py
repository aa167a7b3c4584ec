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


def _bench(env: dict[str, str], out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A short ``mdp bench`` (no ceiling, 3,000 ev/s in 10-event entries, 1 s windows, one
    producer) writing its JSON to ``out``; ``args`` come last (a later flag wins)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "market_data_pipeline.cli.app",
            "bench",
            "--duration",
            "3s",
            "--rate",
            "3000",
            "--symbols",
            "4",
            "--window",
            "1s",
            "--pack",
            "10",
            "--workers",
            "1",
            "--producers",
            "1",
            "--no-ceiling",
            "--out",
            str(out),
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize("quote_ratio", [0.0, 0.5])
def test_bench_runs_the_full_path_exactly(
    redis_url: str, database_url: str, tmp_path: Path, quote_ratio: float
) -> None:
    env = {**os.environ, "REDIS_URI": redis_url, "DATABASE_URL": database_url}
    proc = _bench(
        env,
        tmp_path,
        "--duration",
        "4s",
        "--symbols",
        "6",
        "--workers",
        "2",
        "--quote-ratio",
        str(quote_ratio),
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


def test_bench_pg_stats_lists_the_statements_of_the_full_path(
    redis_url: str, tmp_path: Path
) -> None:
    # no DATABASE_URL (and a state folder of its own): the bench starts an embedded
    # PostgreSQL, which loads pg_stat_statements for --pg-stats
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"REDIS_URI": redis_url, "MDP_HOME": str(tmp_path / "home")}
    proc = _bench(env, tmp_path / "out", "--pg-stats", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PostgreSQL statements with the most execution time" in proc.stdout
    (result,) = (tmp_path / "out").glob("bench-*.json")
    record = json.loads(result.read_text())
    statements = record["pg_statements"]
    assert 1 <= len(statements) <= 4
    totals = [st["total_ms"] for st in statements]
    assert totals == sorted(totals, reverse=True) and all(st["calls"] > 0 for st in statements)
    # the raw ticks go in by COPY: among the top statements, with every event as a row
    (copy,) = [st for st in statements if st["query"].startswith('COPY "ticks"')]
    assert copy["rows"] == record["full_path"]["ticks_inserted"] > 0
    assert not any("pg_stat_statements" in st["query"] for st in statements)
    # planning counted too (the embedded server tracks it): a COPY is never planned, a
    # query at least once per connection (and may be planned more often than it ran: at
    # its sixth run PostgreSQL plans a statement generically, then maybe custom again)
    assert copy["plans"] == 0 and copy["plan_ms"] == 0
    queries = [st for st in statements if st["query"].startswith(("SELECT", "WITH"))]
    assert all(st["plans"] >= 1 and st["plan_ms"] > 0 for st in queries)
    assert "plan ms" in proc.stdout


def test_bench_pg_stats_on_a_server_without_the_library_fails_before_measuring(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "REDIS_URI": redis_url, "DATABASE_URL": database_url}
    proc = _bench(env, tmp_path / "out", "--pg-stats", "4")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mdp: error:")]
    assert len(errors) == 1 and "shared_preload_libraries" in errors[0], proc.stderr
    assert proc.stderr.strip().endswith(errors[0])  # one line, the last, no traceback
    assert not (tmp_path / "out").exists()
