"""``PgJobRunTracker``: the ``job_runs`` audit trail (core ``JobRunTracker``)."""

from __future__ import annotations

from typing import Any, Literal

from market_data_core.errors import StoreError
from market_data_core.protocols import ABANDON_AFTER_HEARTBEATS, JobRun
from market_data_store._base import PgClientBase
from market_data_store._errors import translate_errors

__all__ = ["JobRun", "PgJobRunTracker"]

_COLUMNS = (
    "id, job, started_at, finished_at, status, events_in, rows_written, errors, config_hash, "
    "detail, heartbeat_at, heartbeat_interval_ms"
)

# One statement: rows are claimed by the UPDATE itself, so two processes abandoning at the
# same time never report the same run twice.
_ABANDON_SQL = f"""
UPDATE job_runs SET
    status = 'abandoned',
    finished_at = heartbeat_at,
    detail = format(
        'no heartbeat since %s (expected every %s ms; abandoned after %s missed)',
        to_char(heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        heartbeat_interval_ms, $1::int)
WHERE status = 'running'
  AND heartbeat_at < now() - $1::int * heartbeat_interval_ms * interval '1 millisecond'
RETURNING {_COLUMNS}
"""


def _run(row: Any) -> JobRun:
    return JobRun(**dict(row))


class PgJobRunTracker(PgClientBase):
    """One row per run: ``start`` inserts it as ``running``, ``heartbeat`` keeps it alive,
    ``finish`` closes it, ``abandon_stale`` closes the rows of runs that died.

    Raises ``StoreUnavailableError`` when the store is unreachable, ``StoreError`` otherwise
    (including ``finish`` or ``heartbeat`` of an unknown run id).
    """

    async def start(
        self, job: str, config_hash: str, *, heartbeat_interval_ms: int = 10_000
    ) -> int:
        """Insert a ``running`` row (``heartbeat_at = now()``); returns its id."""
        with translate_errors("job_runs.start"):
            run_id = await self._pool.fetchval(
                "INSERT INTO job_runs (job, config_hash, heartbeat_interval_ms) "
                "VALUES ($1, $2, $3) RETURNING id",
                job,
                config_hash,
                heartbeat_interval_ms,
            )
        return int(run_id)

    async def heartbeat(
        self, run_id: int, *, events_in: int, rows_written: int, errors: int
    ) -> None:
        """``heartbeat_at = now()`` and the counts so far; a run marked ``abandoned`` while it
        was only stalled is ``running`` again."""
        with translate_errors("job_runs.heartbeat"):
            result = await self._pool.execute(
                "UPDATE job_runs SET heartbeat_at = now(), status = 'running', "
                "finished_at = NULL, detail = NULL, events_in = $2, rows_written = $3, "
                "errors = $4 WHERE id = $1 AND status IN ('running', 'abandoned')",
                run_id,
                events_in,
                rows_written,
                errors,
            )
        if result != "UPDATE 1":
            raise StoreError(f"job_runs.heartbeat: no running run with id {run_id}")

    async def abandon_stale(self) -> list[JobRun]:
        """Mark ``running`` rows with no heartbeat for ``ABANDON_AFTER_HEARTBEATS`` of their
        intervals ``abandoned`` (``finished_at`` = the last heartbeat); returns them."""
        with translate_errors("job_runs.abandon_stale"):
            rows = await self._pool.fetch(_ABANDON_SQL, ABANDON_AFTER_HEARTBEATS)
        return sorted((_run(r) for r in rows), key=lambda r: r.id)

    async def finish(
        self,
        run_id: int,
        *,
        status: Literal["success", "failed", "stopped"],
        events_in: int,
        rows_written: int,
        errors: int,
        detail: str | None = None,
    ) -> None:
        """Set the final status and counts, and ``finished_at = heartbeat_at = now()`` (also
        over an ``abandoned`` mark: the process lived to say how it ended)."""
        with translate_errors("job_runs.finish"):
            result = await self._pool.execute(
                "UPDATE job_runs SET finished_at = now(), heartbeat_at = now(), status = $2, "
                "events_in = $3, rows_written = $4, errors = $5, detail = $6 WHERE id = $1",
                run_id,
                status,
                events_in,
                rows_written,
                errors,
                detail,
            )
        if result != "UPDATE 1":
            raise StoreError(f"job_runs.finish: no run with id {run_id}")

    async def recent(self, limit: int = 20, job: str | None = None) -> list[JobRun]:
        """The newest runs first (of ``job`` if given)."""
        with translate_errors("job_runs.recent"):
            rows = await self._pool.fetch(
                f"SELECT {_COLUMNS} FROM job_runs "
                "WHERE $1::text IS NULL OR job = $1 ORDER BY id DESC LIMIT $2",
                job,
                limit,
            )
        return [_run(r) for r in rows]

    async def running(self) -> list[JobRun]:
        """Every ``running`` run, oldest first."""
        with translate_errors("job_runs.running"):
            rows = await self._pool.fetch(
                f"SELECT {_COLUMNS} FROM job_runs WHERE status = 'running' ORDER BY id"
            )
        return [_run(r) for r in rows]
