"""Where a project's `mdp up` state lives, when a recorded server counts as running, and which
URLs a command takes from it (the environment and the config always win)."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from market_data_core.redaction import SecretUrl
from market_data_pipeline.cli.common import DEFAULT_CONFIG, load_app_config
from market_data_pipeline.servers import LocalServers, state_dir_for


def test_state_dir_is_beside_configs_or_mdp_home(tmp_path: Path) -> None:
    assert state_dir_for(DEFAULT_CONFIG, {}) == Path.cwd() / ".mdp"
    assert state_dir_for(tmp_path / "configs" / "x.yaml", {}) == tmp_path / ".mdp"
    assert state_dir_for(tmp_path / "ops" / "x.yaml", {}) == tmp_path / "ops" / ".mdp"
    assert state_dir_for(tmp_path / "x.yaml", {"MDP_HOME": str(tmp_path / "s")}) == tmp_path / "s"


def _record(state_dir: Path, **overrides: object) -> None:
    """servers.json naming this very process as both servers (alive, right start time)."""
    me = psutil.Process()
    entry = {"pid": me.pid, "create_time": me.create_time(), "process": me.name()}
    data = {
        "valkey": {"port": 6390, **entry, **overrides},
        "postgres": {"port": 5439, **entry, **overrides},
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "servers.json").write_text(json.dumps(data))


def test_a_recorded_pid_runs_only_as_the_same_program_started_at_the_same_time(
    tmp_path: Path,
) -> None:
    servers = LocalServers(tmp_path / ".mdp")
    assert servers.running_urls() == {}
    assert [s.state for s in servers.status()] == ["stopped", "stopped"]
    _record(tmp_path / ".mdp")
    assert servers.running_urls() == {
        "valkey": "redis://127.0.0.1:6390/0",
        "postgres": "postgresql://postgres@127.0.0.1:5439/mdp",
    }
    _record(tmp_path / ".mdp", create_time=psutil.Process().create_time() - 3600)  # a reboot
    assert [s.state for s in servers.status()] == ["stale", "stale"]
    assert servers.running_urls() == {}
    _record(tmp_path / ".mdp", process="postgres")  # the pid now runs another program
    assert [s.state for s in servers.status()] == ["stale", "stale"]
    _record(tmp_path / ".mdp", pid=None)  # `mdp down`
    assert [s.state for s in servers.status()] == ["stopped", "stopped"]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("REDIS_URI", "DATABASE_URL", "MDP_HOME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "configs").mkdir()
    _record(tmp_path / ".mdp")
    return tmp_path


def _write(project: Path, text: str) -> Path:
    path = project / "configs" / "streaming.yaml"
    path.write_text(text)
    return path


def test_commands_use_the_running_servers_and_say_so(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_app_config(_write(project, "version: 1\n"))
    assert cfg.bus.redis.uri == SecretUrl("redis://127.0.0.1:6390/0")
    assert cfg.store.dsn == SecretUrl("postgresql://postgres@127.0.0.1:5439/mdp")
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"mdp: using the servers of `mdp up` in {project / '.mdp'}: "
        "redis=redis://127.0.0.1:6390/0, postgres=postgresql://postgres@127.0.0.1:5439/mdp"
    ]
    untouched = load_app_config(_write(project, "version: 1\n"), local_servers=False)
    assert untouched.bus.redis.uri is None and untouched.store.dsn is None


def test_the_environment_and_the_config_win(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URI", "redis://10.0.0.1:6379/0")
    cfg = load_app_config(_write(project, "version: 1\n"))
    assert cfg.bus.redis.uri is None  # resolve_servers takes REDIS_URI from the environment
    assert cfg.store.dsn == SecretUrl("postgresql://postgres@127.0.0.1:5439/mdp")
    assert "redis=" not in capsys.readouterr().err

    monkeypatch.delenv("REDIS_URI")
    cfg = load_app_config(
        _write(project, "version: 1\nstore:\n  dsn: postgresql://me@db.example/mdp\n")
    )
    assert cfg.store.dsn == SecretUrl("postgresql://me@db.example/mdp")
    assert cfg.bus.redis.uri == SecretUrl("redis://127.0.0.1:6390/0")

    # a Kafka bus has no use for the local Valkey; both configured: nothing to say
    cfg = load_app_config(
        _write(project, "version: 1\nbus:\n  type: kafka\nstore:\n  dsn: postgresql://a@b/c\n")
    )
    assert cfg.bus.redis.uri is None
    assert capsys.readouterr().err.count("using the servers") == 1


def test_not_running_keeps_todays_behaviour(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / ".mdp" / "servers.json").unlink()
    cfg = load_app_config(_write(project, "version: 1\n"))
    assert cfg.bus.redis.uri is None and cfg.store.dsn is None
    assert capsys.readouterr().err == ""
