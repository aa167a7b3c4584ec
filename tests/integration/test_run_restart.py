"""`mdp run` restarts where it stopped (issue 13, item 4).

`mdp run` used to name its consumer ``micro-batch-run-<pid>``: every run was a new group member,
so what the last run left pending (the entries of its still-open windows) waited
``bus.claim_idle_ms`` before anyone took it (measured: the rerun processed nothing for 16 s,
p95 27 s). Now the name is ``run-<host>`` by default (or ``--consumer``): the rerun re-reads its
own pending entries at once, and a second live `mdp run` under the same name is refused.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

from tests.integration._store_db import create_database, drop_database
from tests.support.cli import (
    mdp_env,
    run_mdp,
    start_mdp,
    stop_mdp,
    stream_config,
    wait_until,
    write_config,
)

CLAIM_IDLE_MS = 60_000
PARTITIONS = 4


@pytest.fixture
def db(database_url: str) -> Iterator[str]:
    url = asyncio.run(create_database(database_url, "mdp_run"))
    yield url
    asyncio.run(drop_database(url))


def _config(
    tmp_path: Path, redis_url: str, db: str, unique: str, provider: str = "synthetic"
) -> Path:
    data = stream_config(
        redis_url,
        db,
        unique,
        bus={"claim_idle_ms": CLAIM_IDLE_MS, "partitions": PARTITIONS},
        micro_batch={"window_ms": 1000, "flush_timeout_ms": 500},
        telemetry={"log_level": "WARNING"},
    )
    data["bus"]["redis"]["lease_ttl_ms"] = 5000
    data["producers"]["synthetic"]["symbols"] = [f"S{i}" for i in range(10)]
    data["producers"]["synthetic"]["provider"] = provider
    return write_config(tmp_path / f"run-{provider}.yaml", data)


def _pending(client: redis.Redis, unique: str) -> dict[str, set[str]]:
    """Pending entry ids of the micro-batch group, by consumer."""
    out: dict[str, set[str]] = {}
    for shard in range(PARTITIONS):
        rows = client.xpending_range(f"t.{unique}.events:{shard}", f"g.{unique}", "-", "+", 100_000)
        for row in rows:
            out.setdefault(row["consumer"].decode(), set()).add(
                f"{shard}/{row['message_id'].decode()}"
            )
    return out


def _count(url: str, sql: str) -> int:
    async def go() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval(sql))
        finally:
            await conn.close()

    return asyncio.run(go())


def _published(stdout: str) -> int:
    found = re.search(r"events published\s+([\d,]+)", stdout)
    assert found, stdout
    return int(found.group(1).replace(",", ""))


def test_rerun_takes_over_what_the_last_run_left_pending_at_once(
    tmp_path: Path, redis_url: str, db: str, unique: str
) -> None:
    cfg = _config(tmp_path, redis_url, db, unique)
    name = f"run-{socket.gethostname()}"
    first = run_mdp("run", "--config", str(cfg), "--duration", "3s", "--rate", "2000")
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"consumer {name};" in first.stderr
    published = _published(first.stdout)

    client = redis.Redis.from_url(redis_url)
    try:
        left = _pending(client, unique)
        # a clean stop leaves the entries of still-open windows pending, under the run's name
        assert set(left) == {name} and left[name], left
        leftovers = left[name]
        assert _count(db, "SELECT count(*) FROM ticks WHERE provider = 'synthetic'") < published

        # the rerun's own ticks come from another provider, so every `synthetic` tick it
        # stores is a leftover of the first run
        rerun_cfg = _config(tmp_path, redis_url, db, unique, provider="synthetic-rerun")
        t0 = time.monotonic()
        rerun = start_mdp(
            "run", "--config", str(rerun_cfg), "--rate", "50", stderr_path=tmp_path / "rerun.err"
        )
        try:
            wait_until(
                lambda: not (_pending(client, unique).get(name, set()) & leftovers),
                timeout_s=CLAIM_IDLE_MS / 1000 / 2,
                what="the leftovers of the first run to be committed and acked",
                proc=rerun,
            )
            took_s = time.monotonic() - t0
        finally:
            stop_mdp(rerun)
        assert rerun.returncode == 0, (tmp_path / "rerun.err").read_text()[-3000:]
    finally:
        client.close()
    # well below claim_idle_ms (process start included): nobody waited for them to go idle
    assert took_s < CLAIM_IDLE_MS / 1000 / 3, took_s
    assert _count(db, "SELECT count(*) FROM ticks WHERE provider = 'synthetic'") == published
    assert _count(db, "SELECT count(*) FROM job_runs WHERE job = 'run' AND status = 'stopped'") == 2


def test_a_second_live_run_under_the_same_name_is_refused(
    tmp_path: Path, redis_url: str, db: str, unique: str
) -> None:
    cfg = _config(tmp_path, redis_url, db, unique)
    name = f"run-{socket.gethostname()}"
    err = tmp_path / "first.err"
    first = start_mdp("run", "--config", str(cfg), "--rate", "200", stderr_path=err)
    try:
        wait_until(lambda: f"consumer {name};" in err.read_text(), 60, "the first run", first)
        # the same server spelled another way is the same server
        other_spelling = redis_url.replace("127.0.0.1", "localhost")
        second = run_mdp(
            "run",
            "--config",
            str(cfg),
            "--duration",
            "1s",
            env=mdp_env({"REDIS_URI": other_spelling}),
        )
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1, second.stderr
        assert second.stderr.startswith(f"mdp: error: --consumer: consumer '{name}' of group ")
        assert f"(pid {first.pid})" in second.stderr and "another --consumer NAME" in second.stderr
        # under a name of its own it runs beside the first one
        third = run_mdp("run", "--config", str(cfg), "--duration", "1s", "--consumer", "other")
        assert third.returncode == 0, third.stderr[-3000:]
        assert "consumer other;" in third.stderr
    finally:
        stop_mdp(first)
    assert first.returncode == 0, err.read_text()[-3000:]


def test_the_name_is_free_again_after_kill_9(
    tmp_path: Path, redis_url: str, db: str, unique: str
) -> None:
    cfg = _config(tmp_path, redis_url, db, unique)
    name = f"run-{socket.gethostname()}"
    err = tmp_path / "first.err"
    first = start_mdp("run", "--config", str(cfg), "--rate", "200", stderr_path=err)
    try:
        wait_until(lambda: f"consumer {name};" in err.read_text(), 60, "the first run", first)
    finally:
        first.kill()
        first.communicate(timeout=30)
    again = run_mdp("run", "--config", str(cfg), "--duration", "1s")
    assert again.returncode == 0, again.stderr[-3000:]
