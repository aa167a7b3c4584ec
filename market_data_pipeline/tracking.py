"""The ``job_runs`` row of a long command (``micro-batch``, ``infer``, ``run``, ``demo``).

:func:`tracked_run` first marks the runs that stopped beating ``abandoned`` (a worker killed
with ``kill -9`` never finishes its row), then starts this run's row, beats every
``store.heartbeat_interval_ms`` with the counts so far while the command works, and finishes
the row with the status the command set, its counts, and the one-line reason of a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from market_data_core.config import AppConfig, config_hash
from market_data_core.errors import MDPError, describe_error
from market_data_core.protocols import JobRun, JobRunTracker

__all__ = ["RunCounts", "TrackedRun", "abandon_stale_runs", "tracked_run"]

log = logging.getLogger("mdp.job_runs")


@dataclass(frozen=True, slots=True)
class RunCounts:
    """What a run did so far: events read, rows written, entries dead-lettered."""

    events_in: int = 0
    rows_written: int = 0
    errors: int = 0


@dataclass
class TrackedRun:
    """This run's row; the command sets ``status`` when it ends without an exception."""

    run_id: int
    status: Literal["success", "failed", "stopped"] = "failed"
    detail: str | None = None


async def abandon_stale_runs(tracker: JobRunTracker) -> list[JobRun]:
    """Mark the runs that stopped beating ``abandoned``; one warning line per run."""
    abandoned = await tracker.abandon_stale()
    for run in abandoned:
        log.warning(
            "job run %d (%s, started %s) marked abandoned: %s",
            run.id,
            run.job,
            run.started_at.isoformat(timespec="seconds"),
            run.detail,
        )
    return abandoned


async def _beat(
    tracker: JobRunTracker, run_id: int, interval_s: float, counts: Callable[[], RunCounts]
) -> None:
    while True:
        await asyncio.sleep(interval_s)
        now = counts()
        try:
            await tracker.heartbeat(
                run_id, events_in=now.events_in, rows_written=now.rows_written, errors=now.errors
            )
        except MDPError as exc:  # the audit trail must not stop the work; the next beat retries
            log.warning("job run %d: heartbeat failed (%s); next in %.0fs", run_id, exc, interval_s)


@contextlib.asynccontextmanager
async def tracked_run(
    tracker: JobRunTracker, job: str, config: AppConfig, counts: Callable[[], RunCounts]
) -> AsyncIterator[TrackedRun]:
    """The row of one run of ``job`` (see the module docstring).

    An exception leaving the block finishes the row ``failed`` with the error's one-line
    description and propagates; if the store cannot record that, a warning is logged and
    the original error still propagates. Without an exception, a failure to finish the row
    raises (``StoreError``)."""
    await abandon_stale_runs(tracker)
    interval_ms = config.store.heartbeat_interval_ms
    run = TrackedRun(
        await tracker.start(job, config_hash(config), heartbeat_interval_ms=interval_ms)
    )
    beat = asyncio.create_task(_beat(tracker, run.run_id, interval_ms / 1000, counts))
    failure: BaseException | None = None
    try:
        yield run
    except BaseException as exc:
        failure = exc
        run.status = "failed"
        run.detail = describe_error(exc)
        raise
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        final = counts()
        try:
            await tracker.finish(
                run.run_id,
                status=run.status,
                events_in=final.events_in,
                rows_written=final.rows_written,
                errors=final.errors,
                detail=run.detail,
            )
        except MDPError as exc:
            if failure is None:
                raise
            log.warning("job run %d: could not record its end (%s)", run.run_id, exc)
