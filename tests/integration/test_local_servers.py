"""`mdp up` / `mdp down`: background servers whose data outlives them, shared by separate
commands, found from the project folder, and recovered after a kill -9 or a reused pid."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from tests.conftest import ROOT, SHIPPED_CONFIG, SHIPPED_RULES

MDP = [sys.executable, "-m", "market_data_pipeline.cli.app"]


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URI", "DATABASE_URL", "KAFKA_BOOTSTRAP", "MDP_HOME")
    }
    return {**env, **extra}


def _mdp(
    *args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*MDP, *args],
        cwd=cwd,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    if check:
        assert proc.returncode == 0, f"mdp {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


def _state(state_dir: Path) -> dict[str, dict[str, object]]:
    return json.loads((state_dir / "servers.json").read_text())


def _psql(url: str, sql: str) -> str:
    psql = shutil.which("psql")
    assert psql is not None, "psql (postgresql-client) is needed"
    return subprocess.run(
        [psql, url, "-tAc", sql], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder others may traverse (pytest's are 0700): as root, mdp runs
    PostgreSQL as an unprivileged user, which must reach the data folder."""
    path = Path(tempfile.mkdtemp(prefix="mdp-test-project-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def project(open_tmp: Path) -> Iterator[Path]:
    """A project of its own: configs/ (metrics on a free port, the repo's rules) and nothing
    else; `mdp down` at the end whatever happened."""
    tmp_path = open_tmp / "project"
    (tmp_path / "configs").mkdir(parents=True)
    shutil.copy(SHIPPED_RULES, tmp_path / "configs" / "rules.yaml")
    text = SHIPPED_CONFIG.read_text()
    assert "metrics_port: 9101" in text
    (tmp_path / "configs" / "streaming.yaml").write_text(
        text.replace("metrics_port: 9101", "metrics_port: 0")
    )
    yield tmp_path
    _mdp("down", cwd=tmp_path, check=False)


def test_up_stages_down_up_keeps_the_data(project: Path) -> None:
    up = _mdp("up", cwd=project)
    exports = dict(re.findall(r"^export (\w+)=(\S+)$", up.stdout, re.M))
    assert set(exports) == {"REDIS_URI", "DATABASE_URL"}
    assert "127.0.0.1" in exports["REDIS_URI"] and "127.0.0.1" in exports["DATABASE_URL"]
    state_dir = project / ".mdp"
    assert (state_dir / "pgdata" / "PG_VERSION").exists()
    assert (state_dir / "valkey").is_dir()

    # idempotent: the same servers, the same exports
    pids = {name: entry["pid"] for name, entry in _state(state_dir).items()}
    assert _mdp("up", cwd=project).stdout == up.stdout
    assert {name: entry["pid"] for name, entry in _state(state_dir).items()} == pids
    assert _mdp("up", "--status", cwd=project).returncode == 0

    # three stages as separate processes, none with a server URL
    produce = _mdp(
        "stream", "produce", "--provider", "synthetic", "--seed", "7", "--rate", "20000",
        "--count", "3000", cwd=project,
    )  # fmt: skip
    assert "using the servers of `mdp up`" in produce.stderr
    assert produce.stderr.count("using the servers of `mdp up`") == 1
    _mdp("stream", "micro-batch", "--drain", "--idle-s", "1", cwd=project)
    _mdp("stream", "infer", "--drain", "--idle-s", "1", cwd=project)

    db = exports["DATABASE_URL"]
    ticks = int(_psql(db, "SELECT count(*) FROM ticks"))
    bars = int(_psql(db, "SELECT count(*) FROM bars_ohlcv"))
    assert ticks == 3000 and bars > 0
    r = redis.Redis.from_url(exports["REDIS_URI"])
    events, bars_stream = r.xlen("mdp.events"), r.xlen("mdp.bars")
    assert events == 3000 and bars_stream > 0
    r.close()

    down = _mdp("down", cwd=project)
    assert re.search(r"postgres: stopped \(pid \d+\)", down.stdout)
    assert re.search(r"valkey: stopped \(pid \d+\)", down.stdout)
    assert not any(psutil.pid_exists(int(p)) for p in pids.values())  # type: ignore[call-overload]
    pg_log = (state_dir / "pgdata" / "server.log").read_text()
    assert "received fast shutdown request" in pg_log
    valkey_log = (state_dir / "valkey" / "server.log").read_text()
    assert "DB saved on disk" in valkey_log
    status = _mdp("up", "--status", cwd=project, check=False)
    assert status.returncode == 3
    assert "stopped" in status.stdout
    assert _mdp("down", cwd=project).stdout.count("not running") == 2

    up_again = _mdp("up", cwd=project)
    assert up_again.stdout == up.stdout  # the same ports, so the same exports
    assert int(_psql(db, "SELECT count(*) FROM ticks")) == ticks
    assert int(_psql(db, "SELECT count(*) FROM bars_ohlcv")) == bars
    r = redis.Redis.from_url(exports["REDIS_URI"])
    assert (r.xlen("mdp.events"), r.xlen("mdp.bars")) == (events, bars_stream)
    r.close()
    # a command reading an existing bus finds it (it refuses an embedded, empty one)
    tail = _mdp("stream", "tail", "--topic", "mdp.bars", "--limit", "3", "--json", cwd=project)
    assert len(tail.stdout.splitlines()) == 3


def test_project_is_found_from_another_directory(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    up = _mdp("up", "-c", str(project / "configs" / "streaming.yaml"), cwd=elsewhere)
    assert (project / ".mdp" / "servers.json").exists()
    assert not (elsewhere / ".mdp").exists()
    db = dict(re.findall(r"^export (\w+)=(\S+)$", up.stdout, re.M))["DATABASE_URL"]

    # from the project's own folder, with the default config path: the same servers
    upgraded = _mdp("db", "upgrade", cwd=project)
    assert db.split("@")[1] in upgraded.stdout
    # from elsewhere without -c: not this project, so today's throwaway embedded server
    throwaway = _mdp("db", "upgrade", cwd=elsewhere)
    assert "embedded PostgreSQL was migrated" in throwaway.stderr
    assert db.split("@")[1] not in throwaway.stdout
    # MDP_HOME names the folder wherever the command runs
    via_home = _mdp("db", "upgrade", cwd=elsewhere, env=_env(MDP_HOME=str(project / ".mdp")))
    assert db.split("@")[1] in via_home.stdout
    # a URL in the environment wins over the servers of `mdp up`
    other = _mdp(
        "db", "upgrade", cwd=project, env=_env(DATABASE_URL="postgresql://x@127.0.0.1:1/x"),
        check=False,
    )  # fmt: skip
    assert other.returncode != 0
    assert "postgres=" not in other.stderr


def _wait_gone(pid: int, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still alive")


def test_stale_pids_after_kill_9_and_a_reused_pid(project: Path) -> None:
    up = _mdp("up", cwd=project)
    db = dict(re.findall(r"^export (\w+)=(\S+)$", up.stdout, re.M))["DATABASE_URL"]
    _psql(db, "CREATE TABLE kept AS SELECT 42 AS answer")
    state_dir = project / ".mdp"
    pids = {name: int(entry["pid"]) for name, entry in _state(state_dir).items()}  # type: ignore[call-overload]
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)

    status = _mdp("up", "--status", cwd=project, check=False)
    assert status.returncode == 3
    assert status.stdout.count("stale") == 2
    assert (state_dir / "pgdata" / "postmaster.pid").exists()  # left behind by the kill

    # a "reboot": the recorded pid and postmaster.pid's pid now belong to another program
    other = subprocess.Popen(["sleep", "120"])
    try:
        pid_file = state_dir / "pgdata" / "postmaster.pid"
        lines = pid_file.read_text().split("\n")
        pid_file.write_text("\n".join([str(other.pid), *lines[1:]]))
        state = _state(state_dir)
        state["postgres"]["pid"] = other.pid
        (state_dir / "servers.json").write_text(json.dumps(state))
        assert _mdp("up", "--status", cwd=project, check=False).stdout.count("stale") == 2

        again = _mdp("up", cwd=project)
        assert again.stdout == up.stdout
        assert other.poll() is None  # the other program was left alone
        assert _psql(db, "SELECT answer FROM kept") == "42"  # crash recovery kept the data
    finally:
        other.kill()
        other.wait()
    assert _mdp("down", cwd=project).stdout.count("stopped (pid") == 2


def test_demo_keep_leaves_its_data_for_tail(open_tmp: Path) -> None:
    home = open_tmp / "state"
    env = _env(MDP_HOME=str(home))
    try:
        demo = _mdp(
            "demo", "--keep", "--synthetic-s", "1", "--rate", "200", "--metrics-port", "0",
            cwd=ROOT, env=env,
        )  # fmt: skip
        assert "keep running" in demo.stdout
        assert "nothing left running" not in demo.stdout
        status = _mdp("up", "--status", cwd=ROOT, env=env)
        assert status.stdout.count("running") == 2
        signals = int(
            re.search(r"signals emitted\s+([\d,]+)", demo.stdout).group(1).replace(",", "")
        )  # type: ignore[union-attr]
        tail = _mdp(
            "stream",
            "tail",
            "--topic",
            "mdp.signals",
            "--limit",
            "100000",
            "--json",
            cwd=ROOT,
            env=env,
        )
        assert len(tail.stdout.splitlines()) == signals > 0
    finally:
        _mdp("down", cwd=ROOT, env=env, check=False)
