"""Running ``mdp`` as a separate process, as an operator does, against the test servers."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.conftest import ROOT, SHIPPED_CONFIG, SHIPPED_RULES

T = TypeVar("T")

MDP = [sys.executable, "-m", "market_data_pipeline.cli.app"]
SERVER_VARS = ("REDIS_URI", "DATABASE_URL", "KAFKA_BOOTSTRAP")


def mdp_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without server variables (the config names the servers)."""
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    env.update(extra or {})
    return env


def shipped_config() -> dict[str, Any]:
    """``configs/streaming.yaml`` as parsed YAML (its features match ``configs/rules.yaml``)."""
    data: dict[str, Any] = yaml.safe_load(SHIPPED_CONFIG.read_text())
    return data


def stream_config(
    redis_url: str, database_url: str, unique: str, **sections: dict[str, Any]
) -> dict[str, Any]:
    """The shipped config on our servers with streams and group of their own; ``sections``
    are merged into the top-level sections (``bus={"claim_idle_ms": 60000}``)."""
    data = shipped_config()
    data["bus"]["redis"] = {
        **data["bus"]["redis"],
        "uri": redis_url,
        "stream": f"t.{unique}.events",
        "bars_stream": f"t.{unique}.bars",
        "signals_stream": f"t.{unique}.signals",
        "dlq_stream": f"t.{unique}.dlq",
        "consumer_group": f"g.{unique}",
        "lease_ttl_ms": 1000,
    }
    data["bus"]["block_ms"] = 50
    data["store"] = {**data.get("store", {}), "dsn": database_url}
    data["telemetry"] = {**data.get("telemetry", {}), "metrics_port": 0}
    data["inference"]["adapters"]["rules"]["file"] = str(SHIPPED_RULES)
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


def run_mdp(*args: str, env: Mapping[str, str] | None = None, timeout_s: float = 120) -> Any:
    """``mdp ARGS`` to completion; returns the ``CompletedProcess`` (text)."""
    return subprocess.run(
        [*MDP, *args],
        cwd=ROOT,
        env=dict(env) if env is not None else mdp_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def start_mdp(
    *args: str, env: Mapping[str, str] | None = None, stderr_path: Path | None = None
) -> subprocess.Popen[str]:
    """``mdp ARGS`` in the background; stderr goes to ``stderr_path`` (a file, so a chatty
    process never blocks on a full pipe)."""
    stderr = open(stderr_path, "w") if stderr_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [*MDP, *args],
            cwd=ROOT,
            env=dict(env) if env is not None else mdp_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    finally:
        if stderr_path is not None:
            stderr.close()  # type: ignore[union-attr]


def wait_until(
    probe: Callable[[], T | None],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[str] | None = None,
    every_s: float = 0.05,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout_s`` (or as soon
    as ``proc`` has exited)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"mdp exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(every_s)


def stop_mdp(proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    """SIGTERM, as an operator stops a command, and wait for it to exit. One that does not
    exit within ``timeout_s`` is killed (never left behind) and the test fails."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=30)
        raise AssertionError(f"mdp (pid {proc.pid}) did not exit {timeout_s}s after SIGTERM")


def command_names() -> dict[str, Any]:
    """Every command of ``mdp`` by its full name (``"mdp stream dlq replay"``), groups too."""
    import typer

    from market_data_pipeline.cli.app import app

    def walk(command: Any, path: tuple[str, ...]) -> dict[str, Any]:
        out = {" ".join(path): command}
        for name, sub in getattr(command, "commands", {}).items():
            out.update(walk(sub, (*path, name)))
        return out

    return walk(typer.main.get_command(app), ("mdp",))


def help_text(name: str, width: int = 100) -> str:
    """``NAME --help`` as a terminal of ``width`` columns shows it (in this process)."""
    from market_data_pipeline.cli.app import main

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main([*name.split()[1:], "--help"])
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    assert code == 0, f"{name} --help exited {code}"
    return out.getvalue()


def examples(text: str) -> list[str]:
    """The example command lines of a help text: the indented lines under ``Examples:``."""
    if "Examples:" not in text:
        return []
    out: list[str] = []
    for line in text.split("Examples:", 1)[1].splitlines()[1:]:
        if not line.strip():
            if out:
                break
            continue
        if not line.startswith("    "):
            break
        out.append(line.strip())
    return out
