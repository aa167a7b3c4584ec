"""Passwords never reach a log or a terminal (issue 13, item 8): every line a real `mdp run`
(and the commands an operator runs beside it) prints, at DEBUG, in text and in JSON, against a
Redis with ``requirepass`` and a PostgreSQL user that must log in with a password."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from market_data_pipeline.servers import EmbeddedPostgres, EmbeddedRedis
from tests.support.cli import mdp_env, run_mdp, stream_config, write_config

REDIS_PW = "rd-Secret-4417"
PG_USER = "mdp_pw"
PG_PW = "pg-Secret-9023"


@pytest.fixture(scope="module")
def redis_with_password() -> Iterator[str]:
    server = EmbeddedRedis()
    server.start()
    client = redis.Redis(host=server.host, port=server.port)
    client.config_set("requirepass", REDIS_PW)
    client.close()
    yield f"redis://:{REDIS_PW}@{server.host}:{server.port}/0"
    server.stop()


@pytest.fixture(scope="module")
def pg_with_password() -> Iterator[str]:
    """A PostgreSQL whose user ``mdp_pw`` must give its password (scram-sha-256)."""
    server = EmbeddedPostgres(database="postgres")
    server.start()

    async def setup() -> None:
        conn = await asyncpg.connect(server.url)
        try:
            await conn.execute(f"CREATE ROLE {PG_USER} LOGIN PASSWORD '{PG_PW}'")
            await conn.execute(f"CREATE DATABASE secrets OWNER {PG_USER}")
            hba = server.data_dir / "pg_hba.conf"
            hba.write_text(f"host all {PG_USER} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    asyncio.run(setup())
    yield f"postgresql://{PG_USER}:{PG_PW}@{server.host}:{server.port}/secrets"
    server.cleanup()


def _assert_clean(*texts: str) -> None:
    for text in texts:
        assert REDIS_PW not in text and PG_PW not in text, text[-3000:]


def test_the_passwords_are_really_required(redis_with_password: str, pg_with_password: str) -> None:
    client = redis.Redis.from_url(redis_with_password.replace(f":{REDIS_PW}@", ""))
    with pytest.raises(redis.AuthenticationError):
        client.ping()
    client.close()

    async def wrong_password() -> None:
        await asyncpg.connect(pg_with_password.replace(PG_PW, "wrong"))

    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(wrong_password())


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_password_in_any_line_of_a_run(
    tmp_path: Path,
    redis_with_password: str,
    pg_with_password: str,
    unique: str,
    log_format: str,
) -> None:
    cfg = write_config(
        tmp_path / "secrets.yaml",
        stream_config(
            # the URLs come from the environment, as the shipped config reads them
            "${REDIS_URI}",
            "${DATABASE_URL}",
            unique,
            # the drain below takes over what the run left pending once it is idle this long
            bus={"claim_idle_ms": 1000},
            micro_batch={"window_ms": 1000},
            telemetry={"log_level": "DEBUG", "log_format": log_format},
        ),
    )
    env = mdp_env({"REDIS_URI": redis_with_password, "DATABASE_URL": pg_with_password})
    run = run_mdp("run", "--config", str(cfg), "--duration", "3s", "--rate", "500", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "events processed" in run.stdout and "redis=redis://:***@" in run.stderr
    assert f"postgres=postgresql://{PG_USER}:***@" in run.stderr
    _assert_clean(run.stdout, run.stderr)

    beside = [
        ("db", "upgrade"),
        ("stream", "status"),
        ("stream", "status", "--json"),
        ("stream", "tail", "--limit", "5"),
        ("stream", "dlq", "list"),
        ("stream", "produce", "--count", "100", "--rate", "10000"),
        ("stream", "micro-batch", "--drain", "--idle-s", "0.5", "--consumer", "mb-secret"),
    ]
    for argv in beside:
        res = run_mdp(*argv, "--config", str(cfg), env=env)
        assert res.returncode == 0, (argv, res.stderr[-3000:])
        _assert_clean(res.stdout, res.stderr)


def test_no_password_when_a_server_refuses_it(
    tmp_path: Path, redis_with_password: str, pg_with_password: str, unique: str
) -> None:
    cfg = write_config(
        tmp_path / "secrets.yaml",
        stream_config("${REDIS_URI}", "${DATABASE_URL}", unique, telemetry={"log_level": "DEBUG"}),
    )
    wrong_redis = redis_with_password.replace(REDIS_PW, PG_PW)  # a password, but not its own
    wrong_pg = pg_with_password.replace(PG_PW, REDIS_PW)
    for redis_url, pg_url in ((wrong_redis, pg_with_password), (redis_with_password, wrong_pg)):
        env = mdp_env({"REDIS_URI": redis_url, "DATABASE_URL": pg_url})
        res = run_mdp("run", "--config", str(cfg), "--duration", "2s", env=env)
        assert res.returncode == 1, res.stderr[-3000:]
        assert res.stderr.splitlines()[-1].startswith("mdp: error: ")
        _assert_clean(res.stdout, res.stderr)
