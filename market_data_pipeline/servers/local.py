"""Local servers that stay up between commands: ``mdp up`` / ``mdp down`` / ``mdp up --status``.

The embedded Valkey and PostgreSQL of :mod:`market_data_pipeline.servers`, started in the
background (a session of their own, no parent-death signal) with their data in the project's
state folder, so separate commands (produce, micro-batch, infer, tail, report) share one bus
and one database, and the data survives ``mdp down`` / ``mdp up`` and a reboot.

The state folder is ``$MDP_HOME`` when set, else ``.mdp/`` in the project folder: the folder
of the config file, or its parent when that folder is called ``configs`` (so the default
``configs/streaming.yaml`` puts it in the current directory, and ``-c /repo/configs/x.yaml``
from anywhere finds ``/repo/.mdp``). It holds::

    servers.json   name -> {port, pid, create_time, process, url} (pid null once stopped)
    valkey/        Valkey's directory: appendonlydir/ (AOF, fsync every second), dump.rdb,
                   server.log
    pgdata/        the PostgreSQL cluster (fsync on), server.log
    lock           held while ``up``/``down`` run (two at once wait for each other)

A recorded pid counts as running only if a process with that pid exists, runs the recorded
program and started at the recorded time (``psutil``); otherwise it is stale (the server was
killed, or the machine rebooted and the pid may now belong to something else) and ``up``
starts it again.
A stale ``postmaster.pid`` whose pid is not a PostgreSQL server is removed before starting.

Stopping: PostgreSQL gets SIGINT (fast shutdown: sessions end, a checkpoint is written);
Valkey gets SIGTERM (it fsyncs the AOF and writes a final RDB snapshot). Each gets
``stop_timeout_s``, then SIGKILL (data still recovers: WAL replay, AOF).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import psutil

from market_data_pipeline.servers.postgres import EmbeddedPostgres, world_traversable
from market_data_pipeline.servers.process import EmbeddedServerError, free_port
from market_data_pipeline.servers.valkey import EmbeddedRedis

__all__ = [
    "SERVER_NAMES",
    "LocalServers",
    "ServerState",
    "state_dir_for",
]

log = logging.getLogger(__name__)

SERVER_NAMES = ("valkey", "postgres")
ServerName = Literal["valkey", "postgres"]
_HOST = "127.0.0.1"
_DATABASE = "mdp"


def state_dir_for(config_path: Path, env: Mapping[str, str]) -> Path:
    """The state folder of the project ``config_path`` belongs to (see the module docstring);
    ``MDP_HOME`` in ``env`` wins. Absolute; it need not exist."""
    home = env.get("MDP_HOME")
    if home:
        return Path(home).expanduser().absolute()
    folder = config_path.expanduser().absolute().parent
    if folder.name == "configs":
        folder = folder.parent
    return folder / ".mdp"


@dataclass(frozen=True, slots=True)
class _Record:
    port: int
    pid: int | None = None
    create_time: float | None = None
    process: str | None = None  # the program's name, e.g. "postgres"


@dataclass(frozen=True, slots=True)
class ServerState:
    """One local server as ``status`` sees it.

    ``state``: ``running``; ``stopped`` (by ``mdp down``, or never started); ``stale`` (a pid
    is recorded but that process is gone or is another program: killed, or a reboot).
    """

    name: str
    state: Literal["running", "stopped", "stale"]
    port: int | None
    pid: int | None
    url: str | None

    @property
    def running(self) -> bool:
        return self.state == "running"


def _url(name: str, port: int) -> str:
    if name == "valkey":
        return f"redis://{_HOST}:{port}/0"
    return f"postgresql://postgres@{_HOST}:{port}/{_DATABASE}"


def _alive(rec: _Record) -> bool:
    """Is ``rec.pid`` still the process that was recorded (same program, same start time,
    not a zombie)?"""
    if rec.pid is None or rec.create_time is None:
        return False
    try:
        proc = psutil.Process(rec.pid)
        return bool(
            abs(proc.create_time() - rec.create_time) < 1.0  # boot time moves with clock steps
            and proc.name() == rec.process
            and proc.status() != psutil.STATUS_ZOMBIE
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _port_free(port: int) -> bool:
    """Could a server listen on ``port``? (SO_REUSEADDR like Valkey and PostgreSQL: the
    TIME_WAIT connections a server just stopped leaves behind do not count.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_HOST, port))
        except OSError:
            return False
    return True


class LocalServers:
    """The project's background Valkey and PostgreSQL (see the module docstring).

    Raises ``EmbeddedServerError`` when a server cannot be started (its log's tail in the
    message), or when a port asked for is taken.
    """

    def __init__(self, state_dir: Path, *, stop_timeout_s: float = 60.0) -> None:
        self.state_dir = state_dir
        self.stop_timeout_s = stop_timeout_s

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "servers.json"

    def _read(self) -> dict[str, _Record]:
        try:
            raw = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise EmbeddedServerError(f"cannot read {self._state_file}: {exc}") from None
        out = {}
        for name in SERVER_NAMES:
            entry = raw.get(name)
            if isinstance(entry, dict) and isinstance(entry.get("port"), int):
                out[name] = _Record(
                    entry["port"], entry.get("pid"), entry.get("create_time"), entry.get("process")
                )
        return out

    def _write(self, records: Mapping[str, _Record]) -> None:
        data = {name: {**asdict(rec), "url": _url(name, rec.port)} for name, rec in records.items()}
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self._state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / "lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def status(self) -> list[ServerState]:
        """Both servers, in :data:`SERVER_NAMES` order. Never starts or stops anything."""
        records = self._read()
        out = []
        for name in SERVER_NAMES:
            rec = records.get(name)
            if rec is None:
                out.append(ServerState(name, "stopped", None, None, None))
            elif _alive(rec):
                out.append(ServerState(name, "running", rec.port, rec.pid, _url(name, rec.port)))
            else:
                state: Literal["stopped", "stale"] = "stopped" if rec.pid is None else "stale"
                out.append(ServerState(name, state, rec.port, rec.pid, _url(name, rec.port)))
        return out

    def running_urls(self) -> dict[str, str]:
        """``{"valkey": redis://..., "postgres": postgresql://...}`` for the servers that run
        now (empty when the folder does not exist)."""
        if not self._state_file.exists():
            return {}
        return {s.name: s.url for s in self.status() if s.running and s.url}

    def up(self, ports: Mapping[str, int | None] | None = None) -> list[ServerState]:
        """Start whichever server is not running (idempotent). A server keeps the port it had
        before unless another program took it meanwhile (then a free one is chosen);
        ``ports`` asks for specific ones (an error if taken by another program)."""
        ports = ports or {}
        with self._locked():
            records = self._read()
            for name in SERVER_NAMES:
                rec = records.get(name)
                if rec is not None and _alive(rec):
                    wanted = ports.get(name)
                    if wanted is not None and wanted != rec.port:
                        raise EmbeddedServerError(
                            f"{name} already runs on port {rec.port}; `mdp down` first to "
                            f"move it to {wanted}"
                        )
                    continue
                port = self._choose_port(name, ports.get(name), rec)
                records[name] = self._start(name, port)
                self._write(records)
        return self.status()

    def _choose_port(self, name: str, wanted: int | None, rec: _Record | None) -> int:
        if wanted is not None:
            if not _port_free(wanted):
                raise EmbeddedServerError(f"port {wanted} for {name} is taken by another program")
            return wanted
        if rec is not None and _port_free(rec.port):
            return rec.port
        if rec is not None:
            log.warning("%s: port %s is taken by another program; using a new one", name, rec.port)
        return free_port(_HOST)

    def _start(self, name: str, port: int) -> _Record:
        if name == "valkey":
            server: EmbeddedRedis | EmbeddedPostgres = EmbeddedRedis(
                port=port, data_dir=self.state_dir / "valkey", durable=True, detached=True
            )
        else:
            if os.geteuid() == 0 and not world_traversable(self.state_dir):
                raise EmbeddedServerError(
                    f"PostgreSQL runs as an unprivileged user when mdp runs as root and cannot "
                    f"reach {self.state_dir}: make its folders world-readable or set MDP_HOME "
                    "to a folder that is"
                )
            data_dir = self.state_dir / "pgdata"
            _remove_stale_postmaster_pid(data_dir)
            server = EmbeddedPostgres(
                port=port, data_dir=data_dir, database=_DATABASE, durable=True, detached=True
            )
        server.start()
        proc = server.proc
        assert proc is not None
        info = psutil.Process(proc.pid)
        # The server runs on in its own session; this process no longer waits for it.
        server.proc = None
        return _Record(port, proc.pid, info.create_time(), info.name())

    def down(self) -> list[tuple[str, str]]:
        """Stop both servers (PostgreSQL first: a fast shutdown; then Valkey, which saves).
        Returns ``(name, what happened)`` per server. Idempotent."""
        done: list[tuple[str, str]] = []
        with self._locked():
            records = self._read()
            for name in ("postgres", "valkey"):
                rec = records.get(name)
                if rec is None or rec.pid is None:
                    done.append((name, "not running"))
                    continue
                if not _alive(rec):
                    done.append((name, f"was not running (stale pid {rec.pid})"))
                else:
                    sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
                    done.append((name, self._stop(rec.pid, sig)))
                records[name] = _Record(rec.port)
                self._write(records)
        return done

    def _stop(self, pid: int, sig: int) -> str:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=self.stop_timeout_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return f"killed (pid {pid}) after {self.stop_timeout_s:g}s without stopping"
        return f"stopped (pid {pid})"


def _remove_stale_postmaster_pid(data_dir: Path) -> None:
    """A ``postmaster.pid`` left by a kill -9 or a reboot whose pid now belongs to another
    program makes PostgreSQL refuse to start; remove it unless a postgres really runs there."""
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        proc = psutil.Process(pid)
        if proc.name() == "postgres" and str(data_dir) in " ".join(proc.cmdline()):
            raise EmbeddedServerError(
                f"a PostgreSQL server (pid {pid}) already runs on {data_dir} without being "
                f"recorded in servers.json; stop it with `kill -INT {pid}` and run `mdp up` again"
            )
    log.info("removing the stale %s (pid %s is not a PostgreSQL server)", pid_file, pid)
    pid_file.unlink(missing_ok=True)
