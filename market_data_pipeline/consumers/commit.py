"""The micro-batcher's commit path: a :class:`FlushJob` -> the store, exactly once in effect.

:class:`WindowCommitter` writes a job's closed windows in chunks of whole (provider, symbol,
window) units of at most ``max_batch_size`` events, a few chunks at once
(:meth:`StoreClient.ingest_columns`: raw ticks and quotes stored idempotently by ``event_id``,
every touched bar, quote bar and rollup recomputed from all stored events of its window, in one
transaction per chunk), then the provider bars (:meth:`StoreClient.upsert_bars`), then the
events of its open windows, in as many calls as there are store slots
(:meth:`StoreClient.store_raw`: raw rows, no bar; their duplicates counted then). A chunk
holding a series' quotes commits after the earlier chunks holding quotes of that series (the
carried book). Transient store failures (:class:`StoreUnavailableError`) are retried with
capped backoff for as long as they last, only the parts that failed; any other
:class:`StoreError` after ``STORE_ATTEMPTS_NON_TRANSIENT`` attempts propagates. Acking the
entries is the caller's: :meth:`WindowCommitter.write` says whether the job is committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np

from market_data_core.columnar import KIND_CODES, EventColumns, window_marks
from market_data_core.config import AppConfig
from market_data_core.contracts import Bar, StreamEvent
from market_data_core.errors import StoppedError, StoreUnavailableError
from market_data_core.protocols import StoreClient, UpsertResult
from market_data_core.timeutil import format_duration_ms
from market_data_pipeline import telemetry
from market_data_pipeline.consumers.batch_state import (
    BufferedBar,
    FlushJob,
    MicroBatchStats,
    OpenWindow,
)
from market_data_pipeline.retry import next_step, retry_store
from market_data_pipeline.sessions import load_sessions, rollup_plan

__all__ = ["WindowCommitter"]

log = logging.getLogger(__name__)

_COMPONENT = "microbatch"
_LIVE_LATENCY_WINDOW_US = 3600 * 1_000_000  # latency is only meaningful for live data


class WindowCommitter:
    """Writes a micro-batcher's flush jobs to the store and counts what the store did in
    ``stats`` (the worker's :class:`MicroBatchStats`). ``on_commit`` is called after each
    committed job (the outbox relay's wake-up); ``wall_clock_us`` gives the window latency
    (window end -> its bar committed)."""

    def __init__(
        self,
        config: AppConfig,
        store: StoreClient,
        stats: MicroBatchStats,
        *,
        window_ms: int,
        on_commit: Callable[[], None],
        wall_clock_us: Callable[[], int],
    ) -> None:
        mb = config.micro_batch
        self._store = store
        self.stats = stats
        self.window_ms = window_ms
        self.interval = format_duration_ms(window_ms)
        self._window_label = str(window_ms)
        self._max_batch = mb.max_batch_size
        self._quote_carry_ms = mb.quote_carry_ms
        self._rollups = rollup_plan(mb, window_ms=window_ms)
        self._sessions_synced = self._rollups is None or not self._rollups.calendars
        # concurrent store calls per commit: the pool's size less one for everything else
        self._store_slots_n = max(1, config.store.pool_max - 1)
        self._store_slots = asyncio.Semaphore(self._store_slots_n)
        self._on_commit = on_commit
        self._wall = wall_clock_us

    @property
    def rollup_intervals(self) -> tuple[str, ...]:
        return () if self._rollups is None else self._rollups.intervals

    async def write(self, stop: asyncio.Event, job: FlushJob) -> bool:
        """Commit ``job``; True once committed. Retries transient failures with capped
        backoff until committed (or until ``stop`` during a retry, returning False).

        A closed window first waits for an early store of its own still in flight (another
        job's): the close reads what it stored, or stores its events itself if it failed.
        Events of early stores that did not go through (given up on ``stop``, or failed for
        good) go back to their windows, whose entries are acked only with their close."""
        storing = {w.storing for w in job.units.values() if w.storing is not None}
        if storing:
            await asyncio.wait(storing)
        bars = job.bars
        chunks = list(_chunks(job.units, self._max_batch))
        after = _quote_order(chunks)
        pending_chunks = list(range(len(chunks)))
        bars_pending = bool(bars)
        pending_early = list(job.early)

        async def attempt() -> None:
            nonlocal pending_chunks, bars_pending, pending_early
            if pending_chunks:
                # Chunks hold whole (symbol, window) units and every store call locks its
                # series, so they commit independently: run a few at once (window ends
                # arrive in bursts), a chunk after the earlier ones holding quotes of its
                # series (see _quote_order), and retry only the ones that failed.
                finished = {i: asyncio.Event() for i in pending_chunks}
                results = await asyncio.gather(
                    *(
                        self._write_chunk_after(chunks[i], after[i], finished, i)
                        for i in pending_chunks
                    ),
                    return_exceptions=True,
                )
                failed: list[BaseException] = []
                still: list[int] = []
                for i, res in zip(pending_chunks, results, strict=True):
                    if isinstance(res, BaseException):
                        failed.append(res)
                        still.append(i)
                pending_chunks = still
                for exc in failed:
                    if not isinstance(exc, Exception):
                        raise exc  # cancellation and the like: never swallowed
                if failed:
                    raise failed[0]
            if bars_pending:
                await self._write_bars(bars)
                bars_pending = False
            if pending_early:
                # after the closed windows, whose latency they would otherwise add to (a job's
                # early windows are open ones: none of them closes in this job); in as many
                # store calls as there are store slots (see _early_groups)
                groups = _early_groups(pending_early, self._store_slots_n)
                results = await asyncio.gather(
                    *(self._store_early(group) for group in groups), return_exceptions=True
                )
                failed_early = [r for r in results if isinstance(r, BaseException)]
                pending_early = [
                    item
                    for group, r in zip(groups, results, strict=True)
                    if isinstance(r, BaseException)
                    for item in group
                ]
                for exc in failed_early:
                    if not isinstance(exc, Exception):
                        raise exc
                if failed_early:
                    raise failed_early[0]

        def report(exc: BaseException, delay_s: float | None) -> None:
            if isinstance(exc, StoreUnavailableError):
                self.stats.store_retries += 1
                telemetry.RETRIES.labels(component=_COMPONENT).inc()
                telemetry.ERRORS.labels(component=_COMPONENT, reason="store_unavailable").inc()
                log.warning("store unavailable (%s); %s, nothing acked", exc, next_step(delay_s))
            else:
                telemetry.ERRORS.labels(component=_COMPONENT, reason="store_error").inc()
                log.error("store write failed (%s); %s", exc, next_step(delay_s))

        try:
            await retry_store(attempt, stop=stop, on_failure=report)
        except StoppedError:
            _give_back(pending_early)
            return False
        except BaseException:
            _give_back(pending_early)
            raise
        # what changed is in the store's outbox, committed with it: the relay publishes it
        self._on_commit()
        self.stats.flushes += 1
        return True

    async def _write_chunk_after(
        self, chunk: list[OpenWindow], after: list[int], finished: dict[int, asyncio.Event], i: int
    ) -> None:
        """Write a chunk once the chunks it comes after (see :func:`_quote_order`) are done
        (committed or failed: a failed one is retried later, and the store's recompute makes
        either order exact)."""
        try:
            for j in after:
                if j in finished:
                    await finished[j].wait()
            async with self._store_slots:
                await self._write_ticks(chunk)
        finally:
            finished[i].set()

    async def _sync_sessions(self) -> None:
        """Put the calendars' sessions in the store before the first write that needs them
        (retried by the caller's store retry like any write)."""
        if self._sessions_synced or self._rollups is None:
            return
        for name in sorted(set(self._rollups.calendars.values())):
            await self._store.sync_sessions(name, load_sessions(name))
        self._sessions_synced = True

    async def _store_early(self, early: list[tuple[OpenWindow, list[EventColumns]]]) -> None:
        """Store the events of open windows (no bar yet) in one store call; remember, per
        window, the first and last of them for the window's close. Their duplicates are
        counted now (the close counts those of the rest)."""
        events = EventColumns.concat([part for _window, parts in early for part in parts])
        # each window's rows are a run of ``events``: its parts become a view of that run (the
        # parts' memory goes now, not after the store; a failed store gives the view back)
        runs = []
        lo = 0
        for _window, parts in early:
            hi = lo + sum(part.n for part in parts)
            parts[:] = [events.slice(lo, hi)]
            runs.append((lo, hi))
            lo = hi
        async with self._store_slots:
            t0 = time.perf_counter()
            result = await self._store.store_raw(events)
            telemetry.STORE_WRITE_DURATION.labels(table="ticks").observe(time.perf_counter() - t0)
        new = result.ticks_inserted + result.quotes_inserted
        marks = window_marks(events, self.window_ms * 1000)
        quote_rows = np.flatnonzero(events.kind == KIND_CODES["quote"])
        # every quote went in as new: each window's are kept for its close (see OpenWindow)
        all_new = result.quotes_inserted == len(quote_rows)
        for (window, _parts), (lo, hi) in zip(early, runs, strict=True):
            window.stored.append(events.take(marks[(marks >= lo) & (marks < hi)]))
            window.stored_n += hi - lo
            mine = quote_rows[(quote_rows >= lo) & (quote_rows < hi)]
            if window.early_quotes is None or not len(mine):
                continue
            if all_new:
                window.early_quotes.append(events.quote_books(mine))
            else:
                window.early_quotes = None
        self.stats.stored_early += events.n
        self.stats.duplicates += events.n - new
        self.stats.ticks_inserted += result.ticks_inserted
        self.stats.quotes_inserted += result.quotes_inserted
        telemetry.STORE_ROWS.labels(table="ticks", op="inserted").inc(result.ticks_inserted)
        telemetry.STORE_ROWS.labels(table="quotes", op="inserted").inc(result.quotes_inserted)
        telemetry.MICROBATCH_FLUSH_ROWS.labels(window_ms=self._window_label).inc(new)

    async def _write_ticks(self, chunk: list[OpenWindow]) -> None:
        events = EventColumns.concat([part for window in chunk for part in window.parts])
        marks = [m for window in chunk for m in window.stored]
        early_quotes = [q for window in chunk if window.early_quotes for q in window.early_quotes]
        await self._sync_sessions()
        t0 = time.perf_counter()
        result = await self._store.ingest_columns(
            events,
            interval=self.interval,
            quote_carry_ms=self._quote_carry_ms,
            rollups=self._rollups,
            stored=EventColumns.concat(marks) if marks else None,
            early_quotes=EventColumns.concat(early_quotes) if early_quotes else None,
        )
        telemetry.STORE_WRITE_DURATION.labels(table="ticks").observe(time.perf_counter() - t0)
        telemetry.MICROBATCH_BATCH_SIZE.observe(events.n)
        stats = self.stats
        new = result.ticks_inserted + result.quotes_inserted
        stats.ticks_inserted += result.ticks_inserted
        stats.quotes_inserted += result.quotes_inserted
        stats.duplicates += sum(w.received - w.stored_n for w in chunk) - new
        stats.bars_written += len(result.bars)
        stats.quote_bars_written += len(result.quote_bars)
        stats.late_corrections += result.bars_result.updated + result.quote_bars_result.updated
        stats.rollup_bars_written += result.rollups_result.changed
        stats.rollup_revisions += result.rollups_result.updated
        _count_upsert("bars_ohlcv", result.rollups_result)
        telemetry.STORE_ROWS.labels(table="ticks", op="inserted").inc(result.ticks_inserted)
        telemetry.STORE_ROWS.labels(table="quotes", op="inserted").inc(result.quotes_inserted)
        _count_upsert("bars_ohlcv", result.bars_result)
        _count_upsert("quote_bars", result.quote_bars_result)
        telemetry.MICROBATCH_FLUSH_ROWS.labels(window_ms=self._window_label).inc(
            new + len(result.bars) + len(result.quote_bars)
        )
        for symbol in {w.series[1] for w in chunk}:
            telemetry.MICROBATCH_FLUSH_TOTAL.labels(
                window_ms=self._window_label, symbol=symbol
            ).inc()
        # window latency = window end -> its bar committed (this chunk's transaction)
        now = self._wall()
        for window in chunk:
            if 0 <= now - window.end_us <= _LIVE_LATENCY_WINDOW_US:
                latency_ms = (now - window.end_us) / 1000
                telemetry.MICROBATCH_WINDOW_LATENCY.observe(latency_ms)
                self.stats.window_latencies_ms.append(latency_ms)
                self.stats.window_close_ms.append((window.taken_us - window.end_us) / 1000)

    async def _write_bars(self, bars: list[BufferedBar]) -> None:
        rows = [_provider_bar(b.event) for b in bars]
        t0 = time.perf_counter()
        result = await self._store.upsert_bars(rows)
        telemetry.STORE_WRITE_DURATION.labels(table="bars_ohlcv").observe(time.perf_counter() - t0)
        self.stats.provider_bars += len(rows)
        self.stats.bars_written += result.changed
        self.stats.late_corrections += result.updated
        _count_upsert("bars_ohlcv", result)
        telemetry.MICROBATCH_FLUSH_ROWS.labels(window_ms=self._window_label).inc(result.changed)


def _give_back(early: list[tuple[OpenWindow, list[EventColumns]]]) -> None:
    """Early stores that did not go through go back to their windows, ahead of what arrived
    since (arrival order: the store keeps the first of each ``event_id``): a window's entries
    are acked with its close, which must then store them too."""
    for window, parts in early:
        window.parts[0:0] = parts
        window.pending += sum(part.n for part in parts)


def _early_groups(
    early: list[tuple[OpenWindow, list[EventColumns]]], slots: int
) -> list[list[tuple[OpenWindow, list[EventColumns]]]]:
    """Split a job's early windows into at most ``slots`` groups of about equal event counts
    (largest first, each to the lightest group), a store call each. PostgreSQL's COPY sets up
    its insert buffers per call (~1,000 tuple slots, a resource-owner entry apiece: 4-8 % of
    the server's CPU in perf with a call per window of a few thousand rows), while one call
    for all of them would leave the other store slots idle and the open windows buffering
    meanwhile (measured: +70 MiB in the workers at 210k events/s)."""
    n = min(slots, len(early))
    if n <= 1:
        return [early] if early else []
    groups: list[list[tuple[OpenWindow, list[EventColumns]]]] = [[] for _ in range(n)]
    sizes = [0] * n
    for item, size in sorted(
        ((item, sum(part.n for part in item[1])) for item in early), key=lambda t: -t[1]
    ):
        lightest = sizes.index(min(sizes))
        groups[lightest].append(item)
        sizes[lightest] += size
    return groups


def _chunks(
    units: dict[tuple[str, str, int], OpenWindow], max_events: int
) -> Iterable[list[OpenWindow]]:
    """Pack whole (symbol, window) units into chunks of at most ``max_events`` (a larger unit
    stands alone), interleaving symbols so a hot symbol cannot starve the others."""
    by_symbol: dict[tuple[str, str], list[OpenWindow]] = defaultdict(list)
    for (provider, symbol, _start), window in sorted(units.items(), key=lambda kv: kv[0]):
        by_symbol[(provider, symbol)].append(window)
    order: list[OpenWindow] = []
    queues = list(by_symbol.values())
    while queues:
        order += [q.pop(0) for q in queues]
        queues = [q for q in queues if q]
    chunk: list[OpenWindow] = []
    size = 0
    for unit in order:
        if chunk and size + unit.pending > max_events:
            yield chunk
            chunk, size = [], 0
        chunk.append(unit)
        size += unit.pending
    if chunk:
        yield chunk


def _quote_order(chunks: list[list[OpenWindow]]) -> list[list[int]]:
    """For each chunk, the earlier chunks it must commit after: those holding quotes of a
    series it holds (a window's carried book comes from the quotes before it). Chunks list a
    series' windows in window order (see :func:`_chunks`), so this keeps a backlog's quote
    bars from being written before the quotes they carry are stored (which the store would
    correct with a second revision); chunks without a common series still run at once."""
    last_with_quotes: dict[tuple[str, str], int] = {}
    after: list[list[int]] = []
    for i, chunk in enumerate(chunks):
        series = {w.series for w in chunk}
        after.append(sorted({last_with_quotes[s] for s in series if s in last_with_quotes}))
        for w in chunk:
            if w.quotes:
                last_with_quotes[w.series] = i
    return after


def _count_upsert(table: str, result: UpsertResult) -> None:
    for op, n in (
        ("inserted", result.inserted),
        ("updated", result.updated),
        ("unchanged", result.unchanged),
    ):
        if n:
            telemetry.STORE_ROWS.labels(table=table, op=op).inc(n)


def _provider_bar(ev: StreamEvent) -> Bar:
    assert ev.interval is not None
    assert ev.o is not None and ev.h is not None and ev.l is not None
    assert ev.c is not None
    return Bar(ev.provider, ev.symbol, ev.interval, ev.src_ts, ev.o, ev.h, ev.l, ev.c, ev.v)
