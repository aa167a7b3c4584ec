"""The benchmark's children die with it: a ``kill -9`` of ``mdp bench`` (a test timeout, an
OOM kill) once left two micro-batch workers retrying for 40 minutes against stopped servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

_PARENT = """
import os, sys, time
from pathlib import Path
from market_data_pipeline.bench.full_path import popen_child
child = popen_child([sys.executable, "-c", "import time; time.sleep(120)"], dict(os.environ),
               Path(sys.argv[1]))
print(child.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_benchmark_child_gets_sigterm_when_the_benchmark_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path / "child.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert not _gone(child_pid)
    assert os.getpgid(child_pid) == child_pid  # its own group: a Ctrl-C reaches the bench only
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while not _gone(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child_pid)
