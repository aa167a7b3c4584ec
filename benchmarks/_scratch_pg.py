"""What the store benchmarks share: a PostgreSQL server to measure on (``DATABASE_URL``, else
an embedded one), a scratch database per run on it, and a process's CPU time."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from market_data_pipeline.servers import EmbeddedPostgres


def proc_cpu_s(pid: int) -> float:
    """On-CPU seconds of one process's main thread (Linux schedstat: ns resolution, unlike
    the 10 ms ticks of /proc/<pid>/stat); a PostgreSQL backend is one thread."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def with_db(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name``."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


Server = tuple[str, asyncpg.Connection, EmbeddedPostgres | None]


@asynccontextmanager
async def scratch_server() -> AsyncIterator[Server]:
    """The server's URL, a connection to its ``postgres`` database, and the embedded server
    started for the benchmark (None with ``DATABASE_URL``), stopped and removed afterwards."""
    server_url = os.environ.get("DATABASE_URL")
    pg: EmbeddedPostgres | None = None
    if not server_url:
        pg = EmbeddedPostgres(database="postgres")
        pg.start()
        server_url = pg.url
    try:
        admin = await asyncpg.connect(with_db(server_url, "postgres"))
        try:
            yield server_url, admin, pg
        finally:
            await admin.close()
    finally:
        if pg is not None:
            pg.cleanup()


@asynccontextmanager
async def scratch_database(server_url: str, admin: asyncpg.Connection) -> AsyncIterator[str]:
    """A new empty database on the server (its URL), dropped afterwards."""
    name = f"mdp_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_db(server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
