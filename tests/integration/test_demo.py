"""`mdp demo` (the README's first command) runs the whole pipeline on embedded servers, prints
its summary, and leaves nothing running."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import psutil

from tests.conftest import ROOT


def _listening(port: int) -> bool:
    return any(
        c.laddr.port == port and c.status == psutil.CONN_LISTEN
        for c in psutil.net_connections("tcp")
    )


def test_demo_runs_and_leaves_nothing_running() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URI", "DATABASE_URL", "KAFKA_BOOTSTRAP")
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "market_data_pipeline.cli.app",
            "demo",
            "--synthetic-s",
            "4",
            "--rate",
            "200",
            "--metrics-port",
            "0",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    published = int(re.search(r"events published\s+([\d,]+)", out).group(1).replace(",", ""))
    processed = int(re.search(r"events processed\s+([\d,]+)", out).group(1).replace(",", ""))
    ticks = int(re.search(r"raw ticks stored\s+([\d,]+)", out).group(1).replace(",", ""))
    quotes = int(re.search(r"raw quotes stored\s+([\d,]+)", out).group(1).replace(",", ""))
    # the real trades and quotes plus ~4 s of synthetic trades and quotes (half and half)
    assert published >= 9999 + 9500 + 400
    assert processed == published == ticks + quotes
    assert quotes >= 9500 + 300 and ticks >= 9999 + 300
    assert int(re.search(r"quote bars written\s+([\d,]+)", out).group(1).replace(",", "")) > 0
    assert re.search(r"quote  fx-sample/EUR/USD .* spread=[\d.]+ bps", out), out
    assert int(re.search(r"signals emitted\s+([\d,]+)", out).group(1).replace(",", "")) > 0
    assert re.search(r"dead letters\s+0 this run; 0 in mdp\.dlq", out)
    assert "binance-futures/BTCUSDT" in out
    assert "nothing left running" in out
    servers = next(
        line for line in proc.stderr.splitlines() if line.startswith("mdp demo: servers")
    )
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", servers.split("metrics")[0])]
    assert len(ports) == 2, proc.stderr[:2000]  # the embedded Valkey and PostgreSQL
    assert not any(_listening(p) for p in ports)
