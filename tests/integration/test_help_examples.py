"""Every example of every ``--help`` runs and ends by itself (issue 18, item 3).

``mdp --help`` once showed ``mdp stream produce --provider synthetic --count 10000``, which ran at
the default 3 events/s: 55 minutes. Here each example runs as a user would paste it (``bash -c``,
``mdp`` on the PATH) in a project of its own on the servers of ``mdp up`` (the embedded Valkey
and PostgreSQL), in an order where each finds what it needs (data before ``tail`` and
``report``, ``db downgrade`` before ``db upgrade``, ``mdp down`` last). Each must exit 0 on its
own; the bound per example only catches one that would not end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import command_names, examples, help_text

# The order the examples run in; every command with examples is here exactly once.
ORDER = [
    "mdp up",
    "mdp init",
    "mdp",
    "mdp stream produce",
    "mdp stream replay",
    "mdp stream micro-batch",
    "mdp stream infer",
    "mdp stream tail",
    "mdp stream status",
    "mdp stream dlq list",
    "mdp stream dlq replay",
    "mdp stream dlq purge",
    "mdp demo",
    "mdp run",
    "mdp report",
    "mdp alerts",
    "mdp bench",
    "mdp db downgrade",
    "mdp db upgrade",
    "mdp down",
]
BOUND_S = 300  # far above any example's run; a hung one fails here instead of hanging CI


def _all_examples() -> dict[str, list[str]]:
    return {name: found for name in command_names() if (found := examples(help_text(name)))}


@pytest.fixture
def project() -> Iterator[Path]:
    """``mdp init`` in a folder others may traverse (PostgreSQL runs as another user when the
    tests run as root), metrics on free ports; ``mdp down`` at the end whatever happened."""
    top = Path(tempfile.mkdtemp(prefix="mdp-test-examples-"))
    top.chmod(0o755)
    folder = top / "project"
    env = _env()
    subprocess.run(_mdp_cmd("init", str(folder)), env=env, check=True, capture_output=True)
    config = folder / "configs" / "streaming.yaml"
    text = config.read_text()
    assert "metrics_port: 9101" in text
    config.write_text(text.replace("metrics_port: 9101", "metrics_port: 0"))
    try:
        yield folder
    finally:
        subprocess.run(_mdp_cmd("down"), cwd=folder, env=env, capture_output=True, timeout=120)
        shutil.rmtree(top, ignore_errors=True)


def _mdp_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "market_data_pipeline.cli.app", *args]


def _env() -> dict[str, str]:
    """A user's shell: no server variables, ``mdp`` of this venv on the PATH."""
    drop = ("REDIS_URI", "DATABASE_URL", "KAFKA_BOOTSTRAP", "MDP_HOME", "COLUMNS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


# The examples run one after another, each bounded by BOUND_S: the suite's 300 s per test is
# for one of them, not their sum (310 s on a slow 2-core machine with a CI run beside).
@pytest.mark.timeout(3 * BOUND_S)
def test_every_help_example_runs_and_ends(project: Path) -> None:
    found = _all_examples()
    assert sorted(found) == sorted(ORDER), "a command's examples are not run here"
    env = _env()
    assert shutil.which("mdp", path=env["PATH"]), "the venv has no mdp script"
    ran: list[tuple[str, float]] = []
    failures: list[str] = []
    for name in ORDER:
        for example in found[name]:
            # `mdp init DIR` writes DIR: a folder of its own each time
            cwd = Path(tempfile.mkdtemp(dir=project.parent)) if "mdp init" in example else project
            started = time.monotonic()
            try:
                done = subprocess.run(
                    ["bash", "-c", example],
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=BOUND_S,
                )
            except subprocess.TimeoutExpired:
                failures.append(f"{example}: still running after {BOUND_S}s")
                continue
            elapsed = time.monotonic() - started
            ran.append((example, elapsed))
            if done.returncode != 0:
                failures.append(f"{example}: exit {done.returncode}: {done.stderr[-1500:]}")
    timing = "\n".join(f"{s:6.1f}s  {e}" for e, s in ran)
    assert failures == [], "\n".join(failures) + "\n" + timing
    assert len(ran) == sum(len(v) for v in found.values())
