"""``PgJobRunTracker``: the ``job_runs`` audit trail (core ``JobRunTracker``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from market_data_core.errors import StoreError
from market_data_store._base import PgClientBase
from market_data_store._errors import translate_errors

__all__ = ["JobRun", "PgJobRunTracker"]


@dataclass(frozen=True, slots=True)
class JobRun:
    """One ``job_runs`` row."""

    id: int
    job: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    events_in: int
    rows_written: int
    errors: int
    config_hash: str
    detail: str | None


class PgJobRunTracker(PgClientBase):
    """One row per run: ``start`` inserts it as ``running``, ``finish`` closes it.

    Raises ``StoreUnavailableError`` when the store is unreachable, ``StoreError`` otherwise
    (including ``finish`` of an unknown run id).
    """

    async def start(self, job: str, config_hash: str) -> int:
        """Insert a ``running`` row; returns its id."""
        with translate_errors("job_runs.start"):
            run_id = await self._pool.fetchval(
                "INSERT INTO job_runs (job, config_hash) VALUES ($1, $2) RETURNING id",
                job,
                config_hash,
            )
        return int(run_id)

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
        """Set the final status and counts, and ``finished_at = now()``."""
        with translate_errors("job_runs.finish"):
            result = await self._pool.execute(
                "UPDATE job_runs SET finished_at = now(), status = $2, events_in = $3, "
                "rows_written = $4, errors = $5, detail = $6 WHERE id = $1",
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
                "SELECT id, job, started_at, finished_at, status, events_in, rows_written, "
                "errors, config_hash, detail FROM job_runs "
                "WHERE $1::text IS NULL OR job = $1 ORDER BY id DESC LIMIT $2",
                job,
                limit,
            )
        return [JobRun(**dict(r)) for r in rows]
