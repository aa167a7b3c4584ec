"""Embedded servers start, serve, and never outlive mdp (clean exit, SIGTERM, or kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
import redis

from market_data_core.config import AppConfig
from market_data_pipeline.servers import EmbeddedPostgres, resolve_servers

CHILD = """
import os, signal, sys, time
from market_data_core.config import AppConfig
from market_data_pipeline.cli.common import run_async
from market_data_pipeline.servers import resolve_servers

async def main(stop):
    with resolve_servers(AppConfig(), {}) as urls:
        import psutil
        kids = [p.pid for p in psutil.Process().children()]
        print(" ".join(map(str, kids)), flush=True)
        await stop.wait()

run_async(main)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _wait_dead(pids: list[int], timeout_s: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_configured_urls_win_over_embedded(redis_url: str, database_url: str) -> None:
    env = {"REDIS_URI": redis_url, "DATABASE_URL": database_url}
    with resolve_servers(AppConfig(), env) as urls:
        assert urls.embedded == ()
        assert urls.redis_url == redis_url
        assert redis.Redis.from_url(redis_url).ping()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_servers_die_with_mdp(sig: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    pids = [int(p) for p in line.split()]
    assert len(pids) >= 2, f"expected valkey and postgres children, got {line!r}"
    assert all(_alive(p) for p in pids)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert _wait_dead(pids) == []


PG15_BIN = Path("/usr/lib/postgresql/15/bin")


def test_postgres_from_another_install_runs_that_release() -> None:
    """``bin_dir``: the throwaway server from another install (Debian's PostgreSQL 15, as the
    peer benchmarks run it), fsync off as for the wheel's, stopped and removed by cleanup()."""
    if not (PG15_BIN / "postgres").exists():
        pytest.skip("PostgreSQL 15 is not installed: apt-get install postgresql-15")
    pg = EmbeddedPostgres(database="postgres", bin_dir=PG15_BIN)
    pg.start()
    try:
        assert pg.proc is not None
        pid = pg.proc.pid
        psql = [str(PG15_BIN / "psql"), "-h", pg.host, "-p", str(pg.port), "-U", "postgres"]
        out = subprocess.run(
            [
                *psql,
                "-tAc",
                "SELECT current_setting('server_version_num'), current_setting('fsync')",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        version, fsync = out.split("|")
        assert version.startswith("15") and fsync == "off"
    finally:
        pg.cleanup()
    assert _wait_dead([pid]) == []
    assert not pg.data_dir.exists()


async def test_postgres_compares_text_in_code_point_order_whatever_the_host_locale() -> None:
    """The wheel's PostgreSQL 18 is initialised with the builtin ``C.UTF-8`` locale: text keys
    compare byte by byte (no libc ``strcoll``), in Python's order, on every host."""
    pg = EmbeddedPostgres(database="postgres")
    pg.start()
    try:
        conn = await asyncpg.connect(pg.url)
        try:
            provider = await conn.fetchval(
                "SELECT datlocprovider FROM pg_database WHERE datname = current_database()"
            )
            words = ["b", "B", "a", "é", "Z", "ß", "aa", "A-1", "a_1"]
            ordered = await conn.fetchval(
                "SELECT array_agg(w ORDER BY w) FROM unnest($1::text[]) AS w", words
            )
        finally:
            await conn.close()
    finally:
        pg.cleanup()
    assert provider == b"b"
    assert ordered == sorted(words)
