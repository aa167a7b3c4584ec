"""Runs that died are visible (issue 13, item 5).

A worker killed with ``kill -9`` used to leave its ``job_runs`` row ``running`` for ever. Each
running job now beats (``heartbeat_at`` every ``store.heartbeat_interval_ms``, with its counts);
a run silent for ``ABANDON_AFTER_HEARTBEATS`` intervals is marked ``abandoned`` by the next
start of any job and by ``mdp stream status``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from market_data_core.errors import StoreError
from market_data_core.protocols import ABANDON_AFTER_HEARTBEATS, JobRunTracker
from market_data_store import PgJobRunTracker, upgrade_schema
from tests.integration._store_db import create_database, drop_database
from tests.support.cli import run_mdp, start_mdp, stream_config, wait_until, write_config

INTERVAL_MS = 300


async def _row(url: str, run_id: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT *, now() - heartbeat_at > $2 * heartbeat_interval_ms * interval '1 ms' "
            "AS stale FROM job_runs WHERE id = $1",
            run_id,
            ABANDON_AFTER_HEARTBEATS,
        )
    finally:
        await conn.close()
    assert row is not None
    return dict(row)


async def _wait_stale(url: str, run_id: int) -> None:
    while not (await _row(url, run_id))["stale"]:
        await asyncio.sleep(0.05)


async def test_tracker_abandons_a_silent_run_and_a_beat_revives_it(store_url: str) -> None:
    tracker = await PgJobRunTracker.connect(store_url, pool_max=1)
    try:
        assert isinstance(tracker, JobRunTracker)
        quiet = await tracker.start("quiet", "h", heartbeat_interval_ms=100)
        alive = await tracker.start("alive", "h", heartbeat_interval_ms=60_000)
        first = (await _row(store_url, quiet))["heartbeat_at"]
        await tracker.heartbeat(quiet, events_in=5, rows_written=4, errors=1)
        row = await _row(store_url, quiet)
        assert row["heartbeat_at"] > first and (row["events_in"], row["errors"]) == (5, 1)

        await asyncio.wait_for(_wait_stale(store_url, quiet), 30)
        (gone,) = [r for r in await tracker.abandon_stale() if r.id in (quiet, alive)]
        assert (gone.id, gone.status, gone.events_in) == (quiet, "abandoned", 5)
        assert gone.finished_at == gone.heartbeat_at
        assert gone.detail is not None and "no heartbeat since" in gone.detail
        assert "expected every 100 ms" in gone.detail
        assert quiet not in {r.id for r in await tracker.abandon_stale()}  # reported once
        assert {r.id for r in await tracker.running()} >= {alive}

        # it was only stalled: its next beat makes it running again, finish closes it
        await tracker.heartbeat(quiet, events_in=6, rows_written=5, errors=1)
        assert (await _row(store_url, quiet))["status"] == "running"
        await tracker.finish(quiet, status="success", events_in=7, rows_written=6, errors=1)
        row = await _row(store_url, quiet)
        assert (row["status"], row["detail"], row["events_in"]) == ("success", None, 7)
        with pytest.raises(StoreError, match="no running run"):
            await tracker.heartbeat(quiet, events_in=0, rows_written=0, errors=0)
        await tracker.finish(alive, status="stopped", events_in=0, rows_written=0, errors=0)
    finally:
        await tracker.aclose()


@pytest.fixture
def db(database_url: str) -> Iterator[str]:
    url = asyncio.run(create_database(database_url, "mdp_jobs"))
    asyncio.run(upgrade_schema(url))
    yield url
    asyncio.run(drop_database(url))


def _job_rows(url: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            return [dict(r) for r in await conn.fetch("SELECT * FROM job_runs ORDER BY id")]
        finally:
            await conn.close()

    return asyncio.run(go())


def _beating(url: str, after: datetime | None = None) -> dict[str, Any] | None:
    """The running row once it has beaten (after its start, or after ``after``)."""
    rows = [r for r in _job_rows(url) if r["status"] == "running"]
    return next((r for r in rows if r["heartbeat_at"] > (after or r["started_at"])), None)


def test_a_worker_killed_with_kill_9_is_marked_abandoned(
    tmp_path: Path, redis_url: str, db: str, unique: str
) -> None:
    cfg = write_config(
        tmp_path / "jobs.yaml",
        stream_config(
            redis_url,
            db,
            unique,
            store={"heartbeat_interval_ms": INTERVAL_MS},
            telemetry={"log_level": "WARNING"},
        ),
    )
    produce = run_mdp(
        "stream", "produce", "--config", str(cfg), "--count", "2000", "--rate", "20000"
    )
    assert produce.returncode == 0, produce.stderr

    # 1. a worker beats while it runs; kill -9 leaves its row running ...
    worker = start_mdp("stream", "micro-batch", "--config", str(cfg), "--consumer", "mb-1")
    try:
        row = wait_until(lambda: _beating(db), 60, "a heartbeat of the worker", worker)
        beat_at: datetime = row["heartbeat_at"]
        wait_until(lambda: _beating(db, after=beat_at), 60, "a second heartbeat", worker)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=30)
    killed = row["id"]
    assert _job_rows(db)[-1]["status"] == "running"

    # 2. ... until `mdp stream status` sees it silent for 3 intervals and marks it abandoned
    def status_marks_it() -> dict[str, Any] | None:
        res = run_mdp("stream", "status", "--config", str(cfg), "--json")
        assert res.returncode == 0, res.stderr
        runs = json.loads(res.stdout)["job_runs"]
        return next((r for r in runs["abandoned_now"] if r["id"] == killed), None)

    shown = wait_until(status_marks_it, 60, "status to mark the killed run abandoned", every_s=0.2)
    assert shown["status"] == "abandoned" and shown["events_in"] > 0
    (final,) = [r for r in _job_rows(db) if r["id"] == killed]
    assert final["status"] == "abandoned" and final["finished_at"] == final["heartbeat_at"]
    assert "no heartbeat since" in final["detail"]
    table = run_mdp("stream", "status", "--config", str(cfg))
    assert table.returncode == 0 and "job runs: none running" in table.stdout

    # 3. the same name is free at once after kill -9; a later start marks a dead run abandoned
    second = start_mdp(
        "stream",
        "micro-batch",
        "--config",
        str(cfg),
        "--consumer",
        "mb-1",
        stderr_path=tmp_path / "second.err",
    )
    try:
        row = wait_until(lambda: _beating(db), 60, "a heartbeat of the second worker", second)
    finally:
        second.send_signal(signal.SIGKILL)
        second.communicate(timeout=30)
    asyncio.run(asyncio.wait_for(_wait_stale(db, row["id"]), 60))
    drained = run_mdp(
        "stream",
        "micro-batch",
        "--config",
        str(cfg),
        "--consumer",
        "mb-1",
        "--drain",
        "--idle-s",
        "0.5",
    )
    assert drained.returncode == 0, drained.stderr
    assert f"job run {row['id']} (micro-batch, started " in drained.stderr
    assert "marked abandoned: no heartbeat since" in drained.stderr
    statuses = {r["id"]: r["status"] for r in _job_rows(db)}
    assert statuses[killed] == statuses[row["id"]] == "abandoned"
    assert list(statuses.values())[-1] == "success"
