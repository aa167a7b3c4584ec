"""One line, never a traceback (issue 13, item 7), with `mdp` run as a separate process.

- a store write that fails for good inside `mdp run`'s task group (a table dropped mid-run)
  used to print a 119-line ``ExceptionGroup`` traceback: now one line ``mdp: error: ...``,
  exit 1, and the run's ``job_runs`` row says why;
- a malformed DSN parameter used to exit 1, sometimes with SQLAlchemy's second line
  ("Background on this error"): it is bad configuration, so one line and exit 2.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.integration._store_db import create_database, drop_database
from tests.support.cli import mdp_env, run_mdp, start_mdp, stream_config, wait_until, write_config


@pytest.fixture
def db(database_url: str) -> Iterator[str]:
    url = asyncio.run(create_database(database_url, "mdp_cli"))
    yield url
    asyncio.run(drop_database(url))


def _sql(url: str, sql: str) -> object:
    async def go() -> object:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(go())


def _ticks(url: str) -> int:
    try:
        return int(_sql(url, "SELECT count(*) FROM ticks"))  # type: ignore[call-overload]
    except asyncpg.UndefinedTableError:  # not migrated yet
        return 0


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("mdp: error:")]


def test_a_store_write_failing_for_good_in_mdp_run_is_one_line(
    tmp_path: Path, redis_url: str, db: str, unique: str
) -> None:
    cfg = write_config(
        tmp_path / "run.yaml",
        stream_config(redis_url, db, unique, micro_batch={"window_ms": 1000}),
    )
    err = tmp_path / "run.err"
    proc = start_mdp("run", "--config", str(cfg), "--rate", "1000", stderr_path=err)
    try:
        wait_until(lambda: _ticks(db) > 0, 120, "the first committed ticks", proc)
        _sql(db, "DROP TABLE ticks CASCADE")
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    stderr = err.read_text()
    assert proc.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr, stderr[-3000:]
    assert _error_lines(stderr) == [
        'mdp: error: ingest_events: relation "ticks" does not exist '
        "(is the schema migrated? run `mdp db upgrade`)"
    ]
    assert stderr.rstrip("\n").splitlines()[-1] == _error_lines(stderr)[0]
    status, detail = asyncio.run(_last_run(db))
    assert status == "failed" and detail.startswith(
        'ingest_events: relation "ticks" does not exist'
    )


async def _last_run(url: str) -> tuple[str, str]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT status, detail FROM job_runs ORDER BY id DESC LIMIT 1")
    finally:
        await conn.close()
    assert row is not None
    return row["status"], row["detail"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("bogus=1", 'the server refused a parameter: unrecognized configuration parameter "bogus"'),
        ("sslmode=bogus", "`sslmode` parameter must be one of: disable, allow, prefer"),
    ],
)
@pytest.mark.parametrize("command", ["run", "micro-batch", "db-upgrade"])
def test_a_malformed_dsn_is_one_line_exit_2(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    unique: str,
    query: str,
    expected: str,
    command: str,
) -> None:
    cfg = write_config(
        tmp_path / "cfg.yaml",
        stream_config(redis_url, database_url, unique, telemetry={"log_level": "WARNING"}),
    )
    dsn = f"{database_url}?{query}"
    argv = {
        "run": ["run", "--duration", "2s"],
        "micro-batch": ["stream", "micro-batch", "--drain"],
        "db-upgrade": ["db", "upgrade"],
    }[command]
    res = run_mdp(*argv, "--config", str(cfg), env=mdp_env({"DATABASE_URL": dsn}))
    assert res.returncode == 2, res.stderr
    # `mdp run` announces its servers once connected, so a refused DSN leaves only the error
    assert res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(
        "mdp: error: DATABASE_URL or store.dsn: malformed PostgreSQL DSN: "
    ), res.stderr
    assert expected in res.stderr and "Background on this error" not in res.stderr


def test_a_wrong_port_number_is_one_line_exit_2(
    tmp_path: Path, redis_url: str, database_url: str, unique: str
) -> None:
    cfg = write_config(
        tmp_path / "cfg.yaml",
        stream_config(redis_url, database_url, unique, telemetry={"log_level": "WARNING"}),
    )
    dsn = database_url.rsplit(":", 1)[0] + ":port/mdp"
    res = run_mdp("db", "upgrade", "--config", str(cfg), env=mdp_env({"DATABASE_URL": dsn}))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "malformed PostgreSQL DSN: invalid literal for int()" in res.stderr


@pytest.mark.parametrize(
    ("command", "dsn", "code", "says"),
    [
        # malformed: bad configuration, exit 2
        (["stream", "micro-batch"], "postgresql://127.0.0.1:notaport/mdp", 2, "malformed"),
        (["stream", "infer"], "postgresql://127.0.0.1:notaport/mdp", 2, "malformed"),
        # well formed, nothing listens on port 1: the store is down, exit 1
        (["stream", "micro-batch"], "postgresql://mdp@127.0.0.1:1/mdp", 1, "unreachable"),
        (["stream", "infer"], "postgresql://mdp@127.0.0.1:1/mdp", 1, "unreachable"),
    ],
)
def test_a_client_failing_to_open_closes_those_opened_before_it(
    tmp_path: Path,
    redis_url: str,
    unique: str,
    command: list[str],
    dsn: str,
    code: int,
    says: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bus opens first, then the store fails to: the bus's connection must be closed
    (before the fix it stayed open on the server until garbage collection, which then warned
    "unclosed Connection"), and the command says why in one line."""
    import gc
    import warnings

    import redis

    from market_data_pipeline.cli.app import main

    for name in ("REDIS_URI", "DATABASE_URL", "KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    cfg = write_config(tmp_path / "c.yaml", stream_config(redis_url, dsn, unique))
    watcher = redis.Redis.from_url(redis_url)
    try:
        before = len(watcher.client_list())
        assert main([*command, "--config", str(cfg), "--drain", "--idle-s", "0.5"]) == code
        # counted before any garbage collection: a leaked client still holds its connection
        assert len(watcher.client_list()) == before
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        unclosed = [str(w.message) for w in caught if "nclosed" in str(w.message)]
        assert unclosed == []
    finally:
        watcher.close()
    err = capsys.readouterr().err
    assert _error_lines(err) == err.strip().splitlines(), err
    assert len(_error_lines(err)) == 1 and says in _error_lines(err)[0], err
