"""One live process per consumer name, on this host.

On Redis a consumer name owns state in the group: its pending entries and its shard leases
(:mod:`market_data_pipeline.streaming.leases`). A process restarted under the same name takes
both back at once, which is what a stable name is for (``mdp run`` after a stop re-reads its
own pending entries first instead of waiting ``bus.claim_idle_ms`` for them). Two *live*
processes under one name would read each other's entries and share each other's leases, so
:func:`hold_consumer_name` takes an exclusive ``flock`` on a file named after (server, group,
consumer) for the life of the process: a second ``mdp`` on this host with the same name fails
at once with one line. The kernel drops the lock when the holder dies, even by ``kill -9``,
so a restart never waits for it.

Scope: one host and one user (the lock files live in ``<tmp>/mdp-<uid>/``). Processes on
different hosts have different default names; a name given with ``--consumer`` on several
hosts at once is not detected (README, "Shard ownership").
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from market_data_core.errors import ConfigError
from market_data_core.redaction import redact_url

__all__ = ["hold_consumer_name", "hold_consumers", "lock_dir", "redis_server_id"]


def lock_dir() -> Path:
    """Where the lock files live (per user: ``<tmp>/mdp-<uid>``)."""
    return Path(tempfile.gettempdir()) / f"mdp-{os.getuid()}"


def _host_id(host: str, port: int) -> str:
    """The address ``host`` resolves to (the lowest, if several), or ``localhost`` for any
    loopback one: ``localhost``, ``127.0.0.1`` and ``::1`` name the same server."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:  # unresolvable here: the connection fails next, with its own message
        return host.lower()
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    if not addresses:
        return host.lower()
    if any(a.is_loopback for a in addresses):
        return "localhost"
    return str(min(addresses, key=lambda a: (a.version, int(a))))


def redis_server_id(url: str) -> str:
    """``host:port/db`` (or ``unix:<path>/db``) of a Redis URL, without credentials: two
    spellings of one server and database (``redis://localhost`` and
    ``redis://:pw@127.0.0.1:6379/0``) give the same id."""
    parts = urlsplit(url)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    if parts.scheme == "unix":
        return f"unix:{parts.path}/{query.get('db', '0')}"
    db = parts.path.strip("/") or query.get("db", "0")
    try:
        port = parts.port or 6379
    except ValueError:  # not a number: redis-py refuses the URL first; keep it distinct
        return redact_url(url)
    return f"{_host_id(parts.hostname or 'localhost', port)}:{port}/{db}"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {int(info['pid'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


@contextlib.contextmanager
def hold_consumer_name(
    name: str, *, group: str, server: str, flag: str = "--consumer"
) -> Iterator[Path]:
    """Hold the consumer name ``name`` of ``group`` on ``server`` (a :func:`redis_server_id`)
    until the block exits; yields the lock file.

    Raises ``ConfigError`` (one line, exit 2) when another live process on this host holds it.
    """
    directory = lock_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = hashlib.sha256(f"{server}\0{group}\0{name}".encode()).hexdigest()[:24]
    path = directory / f"consumer-{key}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"consumer {name!r} of group {group!r} on {server} is in use by another live "
                f"mdp process on this host ({_holder(path)}); stop that one, or give this one "
                f"another {flag} NAME",
                source=flag,
            ) from None
        # The previous holder unlinks the file when it lets go: a lock taken on an unlinked
        # file protects nothing, so make sure the path still names the locked file.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "name": name, "group": group}).encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


@contextlib.contextmanager
def hold_consumers(
    bus_type: str,
    redis_url: str | None,
    members: list[tuple[str, str]],
    *,
    flag: str = "--consumer",
) -> Iterator[None]:
    """:func:`hold_consumer_name` for every ``(group, name)`` of ``members`` on a Redis bus;
    nothing on Kafka, where a consumer name is only a client id (the broker assigns members
    their own ids, and a restart re-reads from the group's committed offsets)."""
    if bus_type != "redis" or not redis_url:
        yield
        return
    server = redis_server_id(redis_url)
    with contextlib.ExitStack() as stack:
        for group, name in members:
            stack.enter_context(hold_consumer_name(name, group=group, server=server, flag=flag))
        yield
