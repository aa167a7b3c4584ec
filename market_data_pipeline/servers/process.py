"""What every embedded server shares: a child process bound to 127.0.0.1 that dies with us
(``PR_SET_PDEATHSIG``) unless detached, waited for until its port answers, stopped by a signal
with a bound, then killed."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from market_data_core.errors import MDPError

__all__ = ["EmbeddedServerError", "Server", "die_with_parent", "free_port", "wait_port"]

_PR_SET_PDEATHSIG = 1


class EmbeddedServerError(MDPError):
    """An embedded server could not be found or started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def die_with_parent(
    sig: int, uid: int | None = None, gid: int | None = None, *, detached: bool = False
) -> Callable[[], None]:
    """A ``preexec_fn``: drop privileges (optional), then ask for ``sig`` when the parent dies.

    prctl comes after setuid because a credential change clears the parent-death signal.
    ``detached``: a session of its own and no parent-death signal (the server outlives us,
    e.g. ``mdp up``).
    """

    def preexec() -> None:
        if detached:
            os.setsid()
        else:
            os.setpgrp()
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setgroups([])
            os.setuid(uid)
        if not detached:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def wait_port(
    host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float, what: str, log_path: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise EmbeddedServerError(f"{what} exited with code {proc.returncode}: {tail.strip()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"{what} did not accept connections on {host}:{port} in {timeout_s}s")


class Server:
    """A server in a child process: ``start()``, ``stop()``, ``kill()``; a context manager."""

    proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _terminate(self, sig: int, timeout_s: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the server (for crash tests); data on disk stays."""
        self._terminate(signal.SIGKILL, 5)
