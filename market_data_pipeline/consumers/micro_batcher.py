"""The micro-batcher: events from the bus -> exact event-time bars in the store.

Per poll (after a short one, ``micro_batch.poll_linger_ms`` later, so that entries are read in
batches) it decodes entries (bad ones -> dead letters; a poll's column blocks at once, so are
its entries of one event each, other payloads and what those two do not vouch for one by one,
all of them then as columns: :mod:`market_data_core.columnar`), assigns
trade ticks and quotes to epoch-aligned windows per (provider, symbol) on arrays (see
:mod:`.windowing` for when a window closes and what is late), and flushes closed windows through
:meth:`StoreClient.ingest_columns`, which stores the raw ticks and quotes (idempotent by
``event_id``) and recomputes, in the same transaction,
every touched trade bar from all stored ticks of its window and every touched quote bar (top of
book: bid/ask at close, spread and imbalance, time-weighted; see
:class:`~market_data_core.contracts.QuoteBar`) from all stored quotes, the book carried into a
window from a quote at most ``micro_batch.quote_carry_ms`` before it. Provider bars are upserted
as they are. An open window holding ``max_batch_size`` events not yet stored has them stored at
once (:meth:`StoreClient.store_raw`: raw rows, no bar), so the store's work is spread over the
window rather than bunched at its end; its bars are recomputed from all its stored events when
it closes (``ingest_columns(..., stored=...)``), and its entries are acknowledged only then.

This module is the poll -> decode -> buffer -> ack side; the commit path (a flush job to the
store, retries, what the store did) is :class:`~.commit.WindowCommitter`, the outbox relay
:class:`~.relay.BarRelay`, and the state they share (open windows, held entries, the counts)
:mod:`.batch_state`.

Guarantees:

* **Ack only after commit.** An entry is acknowledged once every event it carried is committed.
  On a crash, unacknowledged entries are delivered again (to this consumer after a restart, or to
  another one) and re-flushed; the store's idempotency makes that exact.
* **Exact whatever the order.** Because bars and quote bars are recomputed from the stored raw
  ticks and quotes, duplicates, replays, shuffles, late events inside the correction horizon,
  crashes and several workers at once all converge to the same rows. A bar that changes after it
  was first written gets ``revision + 1``. Windows of one series that hold quotes commit in
  window order (a window's carried book comes from the windows before it), so that a backlog
  flushed in several chunks writes each quote bar once.
* **Store down -> no ack, retry** with capped exponential backoff; buffers are kept; nothing is
  lost. A non-transient store error stops the worker after a few attempts (entries stay pending).
* **Open windows are not flushed on shutdown**: their entries stay pending and are re-read on
  restart, so a restart never splits a bar into revisions (raw events of an open window stored
  early are stored again as duplicates, a no-op; no bar is written before the window closes).
  On a clean stop they are handed back with :meth:`BusConsumer.release`, so that re-read does
  not count toward ``bus.max_deliveries``; after a failure (a crash, a store error that stops
  the worker) it does, so a poison entry still ends in the dead-letter stream.
* **Held entries are renewed.** Entries buffered in open windows or waiting for the store are
  renewed with :meth:`BusConsumer.in_progress` before each poll (at most every
  ``claim_idle_ms / 4``), so they are never delivered again nor counted while held, however
  long the backlog or the store outage.
* **Every committed bar revision reaches** ``mdp.bars``: the store records each inserted or
  changed bar in its outbox in the same transaction (an unchanged bar records nothing), and
  this worker's relay (:meth:`StoreClient.relay_bar_changes`, one relay at a time across all
  workers) publishes the records in order and marks them only after the publish succeeded.
  The relay runs after each commit and every ``_RELAY_POLL_S`` (changes a dead worker left);
  a bus or store error is retried with capped backoff, the changes staying in the outbox;
  ``--drain`` exits only once the outbox is empty.

The counts in :class:`MicroBatchStats` are what the store and the DLQ show: ``late_corrections``
are bars and quote bars whose ``revision`` the store bumped, ``duplicates`` the committed ticks
and quotes it already had,
``dead_letters`` every letter written for this worker's entries, including those the bus layer
wrote (``max_deliveries``, ``trimmed``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import numpy as np
import numpy.typing as npt

from market_data_core.codec import decode_events, encode_event
from market_data_core.columnar import (
    BLOCK_MAGIC,
    KIND_CODES,
    EventColumns,
    columns_from_events,
    decode_blocks,
    decode_maps,
)
from market_data_core.config import AppConfig
from market_data_core.contracts import StreamEvent
from market_data_core.errors import BusError
from market_data_core.protocols import (
    Bus,
    BusConsumer,
    BusRecord,
    RecordBatch,
    StoreClient,
)
from market_data_core.timeutil import (
    format_duration_ms,
    from_epoch_us,
    isoformat_us,
)
from market_data_pipeline import telemetry
from market_data_pipeline.consumers.batch_state import (
    BufferedBar,
    FlushJob,
    HeldEntries,
    Hold,
    MicroBatchStats,
    OpenWindow,
    PolledEntries,
)
from market_data_pipeline.consumers.commit import WindowCommitter
from market_data_pipeline.consumers.relay import BarRelay
from market_data_pipeline.consumers.windowing import (
    LATE_CODE,
    ON_TIME_CODE,
    TOO_LATE_CODE,
    EventClock,
    classify_rows,
    running_max_before,
)
from market_data_pipeline.retry import Backoff, retry, sleep_or_stop
from market_data_pipeline.streaming.dlq import letter_from_record

__all__ = ["MicroBatchStats", "MicroBatcher"]

log = logging.getLogger(__name__)

_COMPONENT = "microbatch"
_HEARTBEAT_MAX_AGE_S = 30.0
# Buffered events (open windows included) beyond which ingestion waits for the commit in
# flight, in units of max_batch_size: 40 x 5,000 = 200k events, ~250 MB of Python objects.
_BUFFER_CAP_BATCHES = 40
_BUS_RETRY_S = 30.0
# ticks.seq and quotes.seq are bigint
_MAX_SEQ = 2**63 - 1


def _wall_us() -> int:
    return time.time_ns() // 1000


class MicroBatcher:
    """One micro-batch worker: a member of the events topic's consumer group."""

    def __init__(
        self,
        config: AppConfig,
        bus: Bus,
        store: StoreClient,
        *,
        consumer_name: str,
        window_ms: int | None = None,
        wall_clock_us: Callable[[], int] = _wall_us,
    ) -> None:
        mb = config.micro_batch
        self.config = config
        self.window_ms = window_ms or mb.window_ms
        self.interval = format_duration_ms(self.window_ms)
        self._bus = bus
        self._store = store
        self._consumer: BusConsumer = bus.consumer(
            config.bus.events_topic, config.bus.group, consumer_name
        )
        self._wall = wall_clock_us
        # the wall time of the last poll that came back short (read all there was): a
        # symbol's quiet for the flush timeout is judged as of then (see windowing)
        self._read_wall_us = 0
        self._max_batch = mb.max_batch_size
        self._linger_s = mb.poll_linger_ms / 1000
        self._clock_args = (
            self.window_ms,
            mb.allow_late_ms,
            mb.flush_timeout_ms,
            mb.correction_horizon_ms,
        )
        self._clocks: dict[tuple[str, str], EventClock] = {}
        self._windows: dict[tuple[str, str, int], OpenWindow] = {}
        self._bars: dict[tuple[str, str, str, datetime], BufferedBar] = {}
        self._held = HeldEntries()
        # the two commit lanes: closed windows (one commit at a time, in order) and early
        # stores of open windows (one at a time), so that a close never waits for an
        # early store of other windows
        self._inflight: asyncio.Task[None] | None = None
        self._early_inflight: asyncio.Task[None] | None = None
        self.last_lag_ms = 0.0
        self._events_per_entry: float | None = None
        self._consumed = telemetry.EVENTS_CONSUMED.labels(
            topic=config.bus.events_topic, group=config.bus.group
        )
        telemetry.init_error_series(_COMPONENT, "bus")
        telemetry.MICROBATCH_WINDOW.labels(group=config.bus.group).set(self.window_ms / 1000)
        self._stage_letters: dict[str, int] = {}
        self._renew_every_s = config.bus.claim_idle_ms / 4000
        self._next_renew = 0.0
        self.stats = MicroBatchStats()
        self._relay = BarRelay(config, bus, store, self.stats)
        self._committer = WindowCommitter(
            config,
            store,
            self.stats,
            window_ms=self.window_ms,
            on_commit=self._relay.wake,
            wall_clock_us=wall_clock_us,
        )

    @property
    def rollup_intervals(self) -> tuple[str, ...]:
        return self._committer.rollup_intervals

    @property
    def consumer_name(self) -> str:
        return self._consumer.name

    def _clock(self, provider: str, symbol: str) -> EventClock:
        clock = self._clocks.get((provider, symbol))
        if clock is None:
            clock = self._clocks[(provider, symbol)] = EventClock.from_ms(*self._clock_args)
        return clock

    @property
    def buffered_events(self) -> int:
        """Events held in open windows (stored early or not) and provider bars."""
        return sum(w.received for w in self._windows.values()) + len(self._bars)

    @property
    def _unstored_events(self) -> int:
        """Events in memory: of open windows, those not stored yet; and provider bars."""
        return sum(w.pending for w in self._windows.values()) + len(self._bars)

    async def run(
        self,
        stop: asyncio.Event,
        *,
        drain: bool = False,
        idle_s: float = 3.0,
        drain_on: asyncio.Event | None = None,
    ) -> MicroBatchStats:
        """Consume until ``stop`` is set (or, with ``drain``, until the input has been idle for
        ``idle_s`` seconds and everything is flushed and acknowledged). ``drain_on`` switches
        to drain mode when it is set (``mdp run``/``demo``: once the producers are done)."""
        live_drain = drain
        idle_since: float | None = None
        bus_backoff = Backoff(0.1, 5.0)
        # /healthz turns 503 when this loop stops turning (e.g. blocked on a dead store with a
        # full buffer)
        heartbeat = telemetry.Heartbeat(max_age_s=_HEARTBEAT_MAX_AGE_S)
        check_name = f"micro-batch:{self.consumer_name}"
        telemetry.register_health_check(check_name, heartbeat)
        clean = False
        relay_stop = asyncio.Event()
        relay = asyncio.create_task(self._relay.run(relay_stop))
        try:
            while not stop.is_set():
                heartbeat.beat()
                if relay.done():
                    relay.result()  # the relay only ends by itself on an unexpected error
                drain = live_drain or (drain_on is not None and drain_on.is_set())
                try:
                    await self._renew_held()
                    asked = self._poll_entries()
                    records = await self._consumer.poll(asked, self.config.bus.block_ms)
                    if len(records) < asked:  # nothing left behind it: quiet is seen now
                        self._read_wall_us = self._wall()
                    self._count_letters()
                    bus_backoff.reset()
                except BusError as exc:
                    telemetry.ERRORS.labels(component=_COMPONENT, reason="bus").inc()
                    delay_s = bus_backoff.next_delay_s()
                    log.warning("bus poll failed (%s); retrying in %.1fs", exc, delay_s)
                    await sleep_or_stop(stop, delay_s)
                    continue
                if records:
                    idle_since = None
                    await self._ingest(records)
                else:
                    idle_since = idle_since if idle_since is not None else time.monotonic()
                    self._set_lag(0.0)
                await self._schedule_flush(stop, force=drain and not records)
                if records and len(records) * 4 < asked and self._linger_s:
                    # a short poll: let entries gather before the next one
                    await sleep_or_stop(stop, self._linger_s)
                if (
                    drain
                    and idle_since is not None
                    and self._inflight is None
                    and self._early_inflight is None
                    and not self._held
                    and self.buffered_events == 0
                    and time.monotonic() - idle_since >= idle_s
                ):
                    if await self._group_drained() and await self._relay.outbox_empty():
                        break
                    idle_since = time.monotonic() - idle_s / 2  # look again a little later
            # Stopping: finish the commit in flight, then commit what is already closed; open
            # windows stay pending for a restart.
            await self._await_inflight()
            await self._await_early()
            job = self._take_closed(force=False)
            if job is not None:
                await self._commit(stop, job)
            relay_stop.set()
            self._relay.wake()
            await relay
            await self._relay.final()
            clean = True
        finally:
            telemetry.unregister_health_check(check_name)
            relay_stop.set()
            if not relay.done():
                relay.cancel()
            for task in (self._inflight, self._early_inflight):
                if task is not None:
                    task.cancel()
            if clean:
                await self._release_held()
            await self._consumer.aclose()
            self._count_letters()
        return self.stats

    async def _renew_held(self) -> None:
        """Renew the hold on every entry still buffered or being committed (see the module
        docstring), at most every ``claim_idle_ms / 4`` and always before a poll that comes
        after a longer pause (a commit waited for, a store outage)."""
        now = time.monotonic()
        if self._held and now >= self._next_renew:
            await self._consumer.in_progress(self._held.records())
            self._next_renew = now + self._renew_every_s

    async def _release_held(self) -> None:
        """On a clean stop, hand the entries of open windows back uncounted."""
        if not self._held:
            return
        try:
            await self._consumer.release(self._held.records())
        except BusError as exc:
            # They stay pending all the same; only their next delivery counts as a redelivery.
            log.warning("could not hand back %d pending entries (%s)", len(self._held), exc)

    def _count_letters(self) -> None:
        """Dead letters of this run: this stage's and those the bus layer wrote."""
        reasons = dict(self._stage_letters)
        for reason, n in self._consumer.bus_dead_letters.items():
            reasons[reason] = reasons.get(reason, 0) + n
        self.stats.dead_letter_reasons = reasons
        self.stats.dead_letters = sum(reasons.values())

    def _poll_entries(self) -> int:
        """Entries per poll so that a poll carries about ``max_batch_size`` events, whether
        entries hold one event or a packed array (running average of events per entry)."""
        if self._events_per_entry is None:
            return min(self._max_batch, 256)  # first poll: learn the packing before asking more
        return max(1, min(self._max_batch, int(self._max_batch / self._events_per_entry)))

    async def _schedule_flush(self, stop: asyncio.Event, *, force: bool) -> None:
        """Start committing closed windows in the background, one commit at a time, so that
        decoding the next entries overlaps the store's work; beside it, store the events of
        open windows holding ``max_batch_size`` or more not yet stored (the early lane, one
        store job at a time: see :meth:`_take_early`). Backpressure: wait for the commit
        in flight when ``4 * max_batch_size`` events of closed windows wait behind it (the
        store is falling behind), or when everything buffered, open windows included,
        reaches ``_BUFFER_CAP_BATCHES * max_batch_size`` events. Open windows alone are not
        a backlog: at 30k events/s a 2 s window holds 60k of them."""
        if self._early_inflight is not None and self._early_inflight.done():
            await self._await_early()  # re-raises a non-transient store failure
        if self._early_inflight is None:
            early = self._take_early(force)
            if early:
                task = asyncio.create_task(self._commit(stop, FlushJob({}, [], early)))
                for window, _parts in early:
                    window.storing = task
                self._early_inflight = task
        if self._inflight is not None:
            if not self._inflight.done():
                buffered = self._unstored_events
                if buffered < 4 * self._max_batch:
                    return
                if buffered < _BUFFER_CAP_BATCHES * self._max_batch and (
                    self._closed_events(force) < 4 * self._max_batch
                ):
                    return
            await self._await_inflight()
        job = self._take_closed(force)
        if job is not None:
            self._inflight = asyncio.create_task(self._commit(stop, job))

    async def _await_inflight(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            await task  # re-raises a non-transient store failure

    async def _await_early(self) -> None:
        task, self._early_inflight = self._early_inflight, None
        if task is not None:
            await task

    async def _group_drained(self) -> bool:
        """With several workers, one being idle does not mean the group is done: a shard it
        does not hold may still have unread or pending entries (its owner busy, or gone and
        its lease about to move here). Done = no lag and nothing pending on any shard, as
        the bus reads them: on Redis the lag is counted from the entries after each shard's
        last-delivered id, never taken from XINFO alone (its counter can be stale after a
        restart from the AOF, and a drain that trusted it never ended)."""
        try:
            statuses = await self._bus.status(self.config.bus.events_topic, self.config.bus.group)
        except BusError:
            return False
        for st in statuses:
            if st.group is None:
                if st.length:
                    return False
            elif st.pending > 0 or (st.lag is None and st.length) or (st.lag or 0) > 0:
                return False
        return True

    async def _decode(self, records: RecordBatch) -> tuple[EventColumns, npt.NDArray[np.intp]]:
        """The valid events of ``records`` as columns in entry order, and each row's index in
        ``records``; every bad item or payload is dead-lettered (with its entry) on the way.
        Column blocks are decoded all at once (:func:`decode_blocks`), so are entries of one
        event each (:func:`decode_maps`); the other payloads, and those two do not vouch for,
        one by one (:func:`decode_events`, the reference) and turned into columns."""
        payloads = records.payloads
        parts: list[EventColumns] = []
        owners: list[npt.NDArray[np.intp]] = []
        # one-event maps first: that decode classifies every payload at C speed, the rest
        # (column blocks, and what it does not vouch for) comes back in ``others``
        maps = decode_maps(payloads)
        if maps.columns.n:
            parts.append(maps.columns)
            owners.append(maps.row_payload.astype(np.intp))
        magic = BLOCK_MAGIC[:1]  # is_block(), inlined
        block_at = [i for i in maps.others if payloads[i][:1] == magic]
        row_at = [i for i in maps.others if payloads[i][:1] != magic] if block_at else maps.others
        if block_at:
            decoded = decode_blocks([payloads[i] for i in block_at])
            for p, err in decoded.errors:
                rec = records[block_at[p]]
                await self._dead_letter(rec, err.reason, err.detail, err.payload or rec.payload)
            parts.append(decoded.columns)
            owners.append(np.asarray(block_at, np.intp)[decoded.row_payload])
        if row_at:
            events: list[StreamEvent] = []
            owner: list[int] = []
            for i in row_at:
                rec = records[i]
                batch = decode_events(rec.payload)
                for err in batch.errors:
                    await self._dead_letter(rec, err.reason, err.detail, err.payload or rec.payload)
                for ev in batch.events:
                    if ev.seq > _MAX_SEQ:
                        await self._dead_letter(
                            rec,
                            "validation",
                            f"seq {ev.seq} of {ev.event_id} is beyond the store's range "
                            f"(bigint: at most {_MAX_SEQ})",
                            _single_payload(ev),
                        )
                        continue
                    events.append(ev)
                    owner.append(i)
            parts.append(columns_from_events(events))
            owners.append(np.asarray(owner, np.intp))
        cols = EventColumns.concat(parts)
        rec_of_row = np.concatenate(owners) if owners else np.zeros(0, np.intp)
        if len(parts) > 1:  # several kinds of payload in one poll: back to entry order
            order = np.argsort(rec_of_row, kind="stable")
            cols, rec_of_row = cols.take(order), rec_of_row[order]
        return cols, rec_of_row

    async def _ingest(self, records: Sequence[BusRecord]) -> None:
        """Decode a poll's entries, assign their events to windows (lateness decided row by
        row as :class:`EventClock` does, on arrays: see :func:`classify_rows`), buffer them
        and account which entry holds what; dead-letter what is bad or too late."""
        now = self._wall()
        fresh = self._held.fresh(records)
        cols, rec_of_row = await self._decode(fresh)
        n = cols.n
        poll = HeldEntries.poll(fresh)
        held = np.zeros(len(fresh), np.int64)
        if n:
            clocks = [self._clock(p, s) for p, s in cols.series]
            template = clocks[0]
            before = running_max_before(
                cols.series_idx,
                cols.src_ts,
                {i: c.max_event_us for i, c in enumerate(clocks) if c.max_event_us is not None},
            )
            starts, codes = classify_rows(cols.src_ts, before, template)
            is_bar = cols.kind == KIND_CODES["bar"]
            codes[is_bar] = ON_TIME_CODE  # provider bars are upserted as they come
            if fresh.deliveries is not None:
                redelivered = np.array(fresh.deliveries, np.int64) > 1
                # A redelivery (a crashed or rebalanced worker's entry) is not a new arrival:
                # its lateness is an artefact of processing, so it corrects the bar instead of
                # being dead-lettered.
                codes[(codes == TOO_LATE_CODE) & redelivered[rec_of_row]] = LATE_CODE
            too_late = codes == TOO_LATE_CODE
            if too_late.any():
                await self._too_late(fresh, cols, rec_of_row, before, np.flatnonzero(too_late))
            # the clocks: every event moves its series' maximum (a too-late one is below it)
            # and, unless too late, its last arrival
            for i, clock in enumerate(clocks):
                mine = cols.series_idx == i
                newest = int(cols.src_ts[mine].max())
                if clock.max_event_us is None or newest > clock.max_event_us:
                    clock.max_event_us = newest
                if np.any(mine & ~too_late):
                    clock.last_arrival_wall_us = now
            if is_bar.any():
                for i in np.flatnonzero(is_bar).tolist():
                    self._buffer_bar(cols, i, poll, int(rec_of_row[i]))
                held += np.bincount(rec_of_row[is_bar], minlength=len(fresh))
            keep = ~too_late & ~is_bar
            if keep.any():
                held += self._buffer_windows(cols, keep, starts, rec_of_row, poll, clocks)
            newest_ingest = cols.ingest_ts[cols.has("ingest_ts")]
            if len(newest_ingest):
                self._set_lag(max(0.0, (now - int(newest_ingest.max())) / 1000))
        # held until their windows commit, then acked (or renewed, or handed back); the rest
        # (dead-lettered, too late, nothing valid) are done now
        self._held.hold(poll, held)
        ack_now = poll.ids_by_shard(np.flatnonzero(held == 0))
        self.stats.events_in += n
        self._consumed.inc(n)
        if records:
            measured = max(1.0, n / len(records))
            previous = self._events_per_entry
            self._events_per_entry = (
                measured if previous is None else 0.8 * previous + 0.2 * measured
            )
        if ack_now:
            await _retry_bus(lambda: self._consumer.ack_ids(ack_now), "ack")

    def _buffer_windows(
        self,
        cols: EventColumns,
        keep: npt.NDArray[np.bool_],
        starts: npt.NDArray[np.int64],
        rec_of_row: npt.NDArray[np.intp],
        poll: PolledEntries,
        clocks: list[EventClock],
    ) -> npt.NDArray[np.int64]:
        """Add the ``keep`` rows to their open windows (one block per window and poll: the
        rows sorted by window once, each window's rows a slice of them) and record which
        entries hold how many of each; returns the rows held per entry."""
        rows = np.flatnonzero(keep)
        window_us = clocks[0].window_us
        # one int64 per (series, window): series below 2**21, windows within +-2**40
        key = cols.series_idx[rows].astype(np.int64) * (1 << 42) + (
            starts[rows] // window_us + (1 << 41)
        )
        order = np.argsort(key, kind="stable")  # arrival order within a window
        rows = rows[order]
        key = key[order]
        bounds = np.flatnonzero(key[1:] != key[:-1]) + 1
        firsts = np.concatenate(([0], bounds))
        lasts = np.concatenate((bounds, [len(rows)]))
        by_window = cols.take(rows)
        owners = rec_of_row[rows]
        is_quote = by_window.kind == KIND_CODES["quote"]
        # (window, entry) pairs and how many rows each: the holds, one per window
        n_entries = len(poll.ids)
        group = np.repeat(np.arange(len(firsts)), lasts - firsts)
        pairs, counts = np.unique(group * n_entries + owners, return_counts=True)
        pair_group, pair_entry = np.divmod(pairs, n_entries)
        cuts = np.searchsorted(pair_group, np.arange(len(firsts) + 1)).tolist()
        holds: list[Hold] = [
            (poll, pair_entry[a:b], counts[a:b]) for a, b in itertools.pairwise(cuts)
        ]
        windows = self._windows
        for g, (first, last) in enumerate(zip(firsts.tolist(), lasts.tolist(), strict=True)):
            series = cols.series[int(by_window.series_idx[first])]
            start = int(starts[rows[first]])
            wkey = (series[0], series[1], start)
            window = windows.get(wkey)
            if window is None:
                window = windows[wkey] = OpenWindow(start + window_us, series)
            part = by_window.slice(first, last)
            # one series: coded as such, so that the window's parts concatenate as they are
            part.series = (series,)
            part.series_idx = np.zeros(last - first, np.int32)
            window.parts.append(part)
            window.received += last - first
            window.pending += last - first
            if not window.quotes and is_quote[first:last].any():
                window.quotes = True
            window.holds.append(holds[g])
        held: npt.NDArray[np.int64] = np.bincount(owners, minlength=n_entries)
        return held

    def _buffer_bar(self, cols: EventColumns, i: int, poll: PolledEntries, entry: int) -> None:
        """A provider bar: kept until the next flush; of two with one key the later by
        ``(src_ts, seq)`` wins."""
        [ev] = cols.take(np.array([i])).to_events()
        assert ev.interval is not None
        bkey = (ev.provider, ev.symbol, ev.interval, ev.src_ts)
        buf = self._bars.get(bkey)
        if buf is None or (buf.event.src_ts, buf.event.seq) <= (ev.src_ts, ev.seq):
            keys = buf.keys if buf else []
            self._bars[bkey] = buf = BufferedBar(ev, keys)
        buf.keys.append((poll, entry))

    async def _too_late(
        self,
        records: RecordBatch,
        cols: EventColumns,
        rec_of_row: npt.NDArray[np.intp],
        max_before_us: npt.NDArray[np.int64],
        rows: npt.NDArray[np.intp],
    ) -> None:
        """Dead-letter events beyond the correction horizon, each with its entry."""
        allow_late_us = self.config.micro_batch.allow_late_ms * 1000
        for i, ev in zip(rows.tolist(), cols.take(rows).to_events(), strict=True):
            self.stats.too_late += 1
            wm = int(max_before_us[i]) - allow_late_us
            ts_us = int(cols.src_ts[i])
            await self._dead_letter(
                records[int(rec_of_row[i])],
                "late",
                f"event {ev.event_id} at {isoformat_us(ev.src_ts)} is "
                f"{(wm - ts_us) / 1e6:.3f}s behind the watermark "
                f"{isoformat_us(from_epoch_us(wm))}, beyond correction_horizon_ms="
                f"{self.config.micro_batch.correction_horizon_ms}",
                _single_payload(ev),
            )

    def _set_lag(self, lag_ms: float) -> None:
        self.last_lag_ms = lag_ms
        telemetry.STREAM_CONSUMER_LAG.labels(
            topic=self.config.bus.events_topic,
            group=self.config.bus.group,
            consumer=self._consumer.name,
        ).set(lag_ms)

    async def _dead_letter(self, rec: BusRecord, reason: str, detail: str, payload: bytes) -> None:
        telemetry.ERRORS.labels(component=_COMPONENT, reason=reason).inc()
        letter = letter_from_record(
            rec,
            reason=reason,
            detail=detail,
            component=_COMPONENT,
            payload=payload,
            ts=from_epoch_us(self._wall()),
        )
        await _retry_bus(lambda: self._bus.dead_letter(letter), "write a dead letter")
        self._stage_letters[reason] = self._stage_letters.get(reason, 0) + 1
        self._count_letters()

    def _closed_windows(self, force: bool) -> list[tuple[str, str, int]]:
        now = self._wall()
        return [
            key
            for key in self._windows
            if force or self._clocks[(key[0], key[1])].closable(key[2], now, self._read_wall_us)
        ]

    def _closed_events(self, force: bool) -> int:
        return sum(self._windows[key].pending for key in self._closed_windows(force))

    def _take_closed(self, force: bool) -> FlushJob | None:
        """Move closed windows (and buffered provider bars) out of the buffers into a job."""
        closed = self._closed_windows(force)
        if not closed and not self._bars:
            return None
        units = {key: self._windows.pop(key) for key in closed}
        now = self._wall()
        for window in units.values():
            window.taken_us = now
        bars = list(self._bars.values())
        self._bars = {}
        return FlushJob(units, bars)

    def _take_early(self, force: bool) -> list[tuple[OpenWindow, list[EventColumns]]]:
        """The events of open windows holding ``max_batch_size`` or more not yet stored, taken
        out of them: storing them while the window is open spreads the store's work over the
        window instead of bunching it at its end (lower latency, less memory); their bar is
        recomputed when the window closes, from all its stored events (the close waits for a
        store of its window still in flight). Only current windows: one its series' events
        have passed (its end at or before the newest event time) waits for its close, which
        is at most ``allow_late_ms`` of event time away and would wait for that store."""
        big = [
            (key, window)
            for key, window in self._windows.items()
            if window.pending >= self._max_batch
            and window.end_us > (self._clocks[window.series].max_event_us or window.end_us - 1)
        ]
        if not big:
            return []
        closed = set(self._closed_windows(force))
        to_store = []
        for key, window in big:
            if key not in closed:
                to_store.append((window, window.parts))
                window.parts, window.pending = [], 0
        return to_store

    async def _commit(self, stop: asyncio.Event, job: FlushJob) -> None:
        """Write a job, then ack every entry whose events are all committed. If ``stop`` is
        set while the store is unavailable, give up: the entries stay pending (nothing lost)."""
        if not await self._committer.write(stop, job):
            return
        one = np.ones(1, np.int64)
        holds: list[Hold] = [
            (poll, np.array([entry], np.intp), one) for buf in job.bars for poll, entry in buf.keys
        ]
        holds += [h for w in job.units.values() for h in w.holds]
        done = self._held.commit(holds)
        if done:
            await _retry_bus(lambda: self._consumer.ack_ids(done), "ack")


def _single_payload(ev: StreamEvent) -> bytes:
    return encode_event(ev, "json")


async def _retry_bus(op: Callable[[], Awaitable[None]], what: str) -> None:
    """Retry a bus write through short outages (a busy or restarting server): about 30 s of
    capped backoff, then the BusError propagates (the entries stay pending: nothing is lost)."""

    def report(exc: BaseException, delay_s: float | None) -> None:
        if delay_s is not None:
            telemetry.RETRIES.labels(component=_COMPONENT).inc()
            log.warning("bus: could not %s (%s); retrying in %.1fs", what, exc, delay_s)

    await retry(
        op,
        retry_on=BusError,
        backoff=Backoff(0.1, 2.0),
        give_up_after_s=_BUS_RETRY_S,
        on_failure=report,
    )
