"""The benchmark's children die with it: a ``kill -9`` of ``mdp bench`` (a test timeout, an
OOM kill) once left two micro-batch workers retrying for 40 minutes against stopped servers.
Its set-up work in a process of its own (:func:`in_child`) returns what the call returned and
raises what it raised."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from market_data_core.errors import MDPError, StoreError
from market_data_pipeline.bench import in_child

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


async def _async_pid(offset: int) -> int:
    await asyncio.sleep(0)
    return os.getpid() + offset


def _raise_store_error(message: str) -> None:
    raise StoreError(message)


class _TwoArgError(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} and {b}")


def _raise_unpicklable() -> None:
    raise _TwoArgError("this", "that")


def _exit_3() -> None:
    os._exit(3)


def _sleep_after_pid(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


async def _collector_automatic() -> bool:
    return gc.isenabled()


async def test_in_child_runs_a_coroutine_with_the_collector_paced_as_mdp_does() -> None:
    # the bare ceiling runs there: with the default collector it measured 16-26 % lower
    assert await in_child(_collector_automatic) is False
    assert await in_child(gc.isenabled) is True  # a plain function: the child as it starts


async def test_in_child_returns_the_result_of_a_call_in_another_process() -> None:
    assert await in_child(os.getpid) != os.getpid()
    pid = await in_child(_async_pid, 1_000_000)  # a coroutine function is run to completion
    assert pid - 1_000_000 not in (os.getpid(), 0)
    assert await in_child(int, "ff", base=16) == 255  # keyword arguments


async def test_in_child_raises_the_childs_exception_or_says_how_it_died() -> None:
    with pytest.raises(StoreError, match=r"^boom$"):
        await in_child(_raise_store_error, "boom")
    # an exception the parent could not rebuild comes as an MDPError naming it
    with pytest.raises(MDPError, match=r"_raise_unpicklable failed: _TwoArgError: this and that"):
        await in_child(_raise_unpicklable)
    with pytest.raises(MDPError, match="_exit_3 exited with code 3"):
        await in_child(_exit_3)


async def test_in_child_stops_its_child_when_cancelled(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.create_task(in_child(_sleep_after_pid, str(pid_file)))
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    child_pid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while not _gone(child_pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _gone(child_pid)
