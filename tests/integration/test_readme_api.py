"""The documented Python examples run as written: the README's Python API block and the
tutorial's (docs/tutorial.md) Python step and dataset registry, extracted from the files, in a
fresh process in an empty folder, on embedded servers of their own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from market_data_pipeline.producers.datasets import RowError, load_registry, read_dataset
from tests.conftest import DATA, ROOT

TUTORIAL = ROOT / "docs" / "tutorial.md"
SERVER_VARS = ("REDIS_URI", "DATABASE_URL", "KAFKA_BOOTSTRAP")


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, flags=re.S | re.M)


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + len(heading) + 2)
    return text[start : end if end > 0 else None]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = cwd / "example.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_the_readme_python_api_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (block,) = code_blocks(section(readme, "## Python API"), "python")
    out = run_python(block, tmp_path).stdout
    m = re.search(r"^(\d+) trades -> (\d+) bars, (\d+) signals$", out, flags=re.M)
    assert m is not None, out
    trades, bars, signals = map(int, m.groups())
    assert trades == 9_999 and bars > 2000 and signals > 10
    assert "vwap_1m" in out and "rsi" in out


def test_the_tutorial_python_step_runs_on_a_copy_of_the_csv(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    shutil.copy(
        DATA / "binance-futures-btcusdt-trades-2020-02-22.csv", tmp_path / "data" / "trades.csv"
    )
    (block,) = code_blocks(TUTORIAL.read_text(), "python")
    out = run_python(block, tmp_path).stdout
    m = re.search(r"^(\d+) bars, (\d+) signals, (\d+) dead letters; servers up in", out, flags=re.M)
    assert m is not None, out
    assert int(m.group(1)) > 2000 and int(m.group(2)) > 10 and int(m.group(3)) == 0


def test_the_tutorial_registry_reads_the_csv(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "configs").mkdir()
    shutil.copy(
        DATA / "binance-futures-btcusdt-trades-2020-02-22.csv", tmp_path / "data" / "trades.csv"
    )
    (registry,) = [b for b in code_blocks(TUTORIAL.read_text(), "yaml") if "datasets:" in b]
    assert yaml.safe_load(registry)["datasets"]["my_trades"]
    path = tmp_path / "configs" / "datasets.yaml"
    path.write_text(registry)
    spec = load_registry(path)["my_trades"]
    events = list(read_dataset(spec))
    assert not [e for e in events if isinstance(e, RowError)]
    assert len(events) == 9_999
