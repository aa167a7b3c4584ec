"""What a micro-batch worker holds between a poll and the commit that acknowledges it.

Shared by the poll -> ingest -> ack side (:mod:`.micro_batcher`), the commit path
(:mod:`.commit`) and the outbox relay (:mod:`.relay`): the open windows as column blocks, the
provider bars waiting for the next flush, the entries holding them, a flush job, and the run's
counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from market_data_core.columnar import EventColumns
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import BusRecord, RecordBatch

__all__ = [
    "BufferedBar",
    "FlushJob",
    "HeldEntries",
    "Hold",
    "MicroBatchStats",
    "OpenWindow",
    "PolledEntries",
]


@dataclass(slots=True, eq=False)
class PolledEntries:
    """The entries of one poll, for as long as any of them is held: what acking, renewing or
    handing an entry back needs (its id, shard and deliveries; not its payload, decoded
    already), per entry the events not committed yet (``remaining``), and which are done
    (acknowledged, or never held). One object per poll, numbers in arrays: no object per
    entry (with one event per entry a worker holds ~100k entries)."""

    topic: str
    ids: list[str]
    shards: npt.NDArray[np.int32]
    deliveries: list[int] | None  # None: every entry on its first delivery
    remaining: npt.NDArray[np.int64]
    done: npt.NDArray[np.bool_]
    held: int = 0  # entries not done

    def record(self, i: int) -> BusRecord:
        """Entry ``i`` as a record without its payload."""
        deliveries = 1 if self.deliveries is None else self.deliveries[i]
        return BusRecord(self.topic, int(self.shards[i]), self.ids[i], b"", deliveries)

    def ids_by_shard(self, entries: npt.NDArray[np.intp]) -> dict[int, list[str]]:
        """The ids of ``entries``, by shard."""
        ids = self.ids
        shards = self.shards[entries]
        if not len(entries):
            return {}
        first = int(shards[0])
        if (shards == first).all():
            return {first: [ids[i] for i in entries.tolist()]}
        return {
            shard: [ids[i] for i in entries[shards == shard].tolist()]
            for shard in np.unique(shards).tolist()
        }


Hold = tuple[PolledEntries, npt.NDArray[np.intp], npt.NDArray[np.int64]]
"""``(poll, entries, counts)``: ``counts[k]`` events of the poll's entry ``entries[k]`` are
here (each entry at most once)."""


class HeldEntries:
    """Every entry held until all the events it carried are committed (then acknowledged),
    renewed meanwhile, handed back on a clean stop; and, per shard, which entry ids are held
    (a redelivery of one is not a new arrival)."""

    def __init__(self) -> None:
        self._polls: dict[int, PolledEntries] = {}  # id() -> poll, while it holds an entry
        self._ids: dict[int, dict[str, PolledEntries]] = {}  # shard -> entry id -> poll
        self._held = 0

    def __len__(self) -> int:
        """Entries held."""
        return self._held

    def fresh(self, records: Sequence[BusRecord]) -> RecordBatch:
        """The entries of ``records`` that are not held already (a redelivery of a held
        entry, e.g. claimed again after a missed renewal, is already counted)."""
        batch = RecordBatch.of(records)
        held = [by_id for by_id in self._ids.values() if by_id]
        if not held:
            return batch
        ids = batch.ids
        if all(by_id.keys().isdisjoint(ids) for by_id in held):  # the usual case, in C
            return batch
        by_shard = self._ids
        return batch.take(
            [
                i
                for i, (shard, entry_id) in enumerate(zip(batch.shards, ids, strict=True))
                if entry_id not in by_shard.get(shard, ())
            ]
        )

    @staticmethod
    def poll(records: Sequence[BusRecord]) -> PolledEntries:
        """The entries of a poll, none held yet (see :meth:`hold`)."""
        batch = RecordBatch.of(records)
        n = len(batch)
        return PolledEntries(
            batch.topic,
            batch.ids,
            np.array(batch.shards, np.int32),
            batch.deliveries,
            np.zeros(n, np.int64),
            np.ones(n, np.bool_),
        )

    def hold(self, poll: PolledEntries, counts: npt.NDArray[np.int64]) -> None:
        """Hold each entry of ``poll`` with a positive count (that many of its events wait);
        the others stay done."""
        poll.remaining[:] = counts
        held = counts > 0
        poll.done[:] = ~held
        poll.held = int(held.sum())
        if not poll.held:
            return
        self._polls[id(poll)] = poll
        self._held += poll.held
        for shard, ids in poll.ids_by_shard(np.flatnonzero(held)).items():
            by_id = self._ids.get(shard)
            if by_id is None:
                self._ids[shard] = dict.fromkeys(ids, poll)
            else:
                by_id.update(dict.fromkeys(ids, poll))

    def commit(self, holds: Iterable[Hold]) -> dict[int, list[str]]:
        """Count the events of ``holds`` as committed; returns the entries all of whose events
        now are, by shard (to acknowledge), which are no longer held."""
        touched: dict[int, tuple[PolledEntries, list[npt.NDArray[np.intp]]]] = {}
        for poll, entries, counts in holds:
            live = ~poll.done[entries]
            poll.remaining[entries[live]] -= counts[live]
            slot = touched.get(id(poll))
            if slot is None:
                touched[id(poll)] = (poll, [entries])
            else:
                slot[1].append(entries)
        out: dict[int, list[str]] = {}
        for poll, parts in touched.values():
            entries = np.unique(np.concatenate(parts)) if len(parts) > 1 else parts[0]
            finished = entries[(poll.remaining[entries] <= 0) & ~poll.done[entries]]
            if not len(finished):
                continue
            poll.done[finished] = True
            poll.held -= len(finished)
            self._held -= len(finished)
            if poll.held == 0:
                del self._polls[id(poll)]
            for shard, ids in poll.ids_by_shard(finished).items():
                pop = self._ids[shard].pop
                for entry_id in ids:
                    pop(entry_id, None)
                mine = out.get(shard)
                if mine is None:
                    out[shard] = ids
                else:
                    mine += ids
        return out

    def records(self) -> RecordBatch:
        """Every entry held (without payloads), to renew or hand back."""
        shards: list[int] = []
        ids: list[str] = []
        deliveries: list[int] = []
        for poll in self._polls.values():
            held = np.flatnonzero(~poll.done)
            shards += poll.shards[held].tolist()
            ids += [poll.ids[i] for i in held.tolist()]
            if poll.deliveries is None:
                deliveries += [1] * len(held)
            else:
                deliveries += [poll.deliveries[i] for i in held.tolist()]
        topic = next(iter(self._polls.values())).topic if self._polls else ""
        return RecordBatch(topic, shards, ids, [b""] * len(ids), deliveries)


@dataclass(slots=True)
class BufferedBar:
    """A provider bar waiting for the next flush, and the entries that carried it (one event
    each)."""

    event: StreamEvent
    keys: list[tuple[PolledEntries, int]]


@dataclass(slots=True)
class OpenWindow:
    """The ticks and quotes of one open (provider, symbol, window) as column blocks in
    arrival order (duplicates included: the store keeps the first of each ``event_id``), and
    the entries holding them (:data:`Hold`: per poll, which of its entries have how many
    events here; duplicates count, so an entry is acked only once all of them are
    committed)."""

    end_us: int
    series: tuple[str, str]
    parts: list[EventColumns] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    received: int = 0  # events added, duplicates included
    pending: int = 0  # events in ``parts`` (not yet stored)
    quotes: bool = False  # holds a quote: later windows' carried book depends on it
    # events stored while the window was open (``store_raw``): the first and last of each
    # store call (all the close needs of them), and how many there were (duplicates included:
    # the early store counted its duplicates)
    stored: list[EventColumns] = field(default_factory=list)
    stored_n: int = 0
    # the quotes stored while it was open, every one of them new (the store may fold the
    # window's quote bar from them and the rest: ``ingest_columns(early_quotes=...)``); None
    # once a store call holding some of them inserted fewer quotes than it was given
    early_quotes: list[EventColumns] | None = field(default_factory=list)
    taken_us: int = 0  # wall clock when it was taken into a flush job (closed)
    # the early store in flight holding some of its events: its close waits for it
    storing: asyncio.Future[None] | None = None


@dataclass(slots=True)
class FlushJob:
    """One commit: closed windows by ``(provider, symbol, window start µs)``, provider bars,
    and events of open windows to store now, as each window's parts (their bars are
    recomputed when they close)."""

    units: dict[tuple[str, str, int], OpenWindow]
    bars: list[BufferedBar]
    early: list[tuple[OpenWindow, list[EventColumns]]] = field(default_factory=list)


@dataclass(slots=True)
class MicroBatchStats:
    """What one run did (also the ``job_runs`` counts).

    ``ticks_inserted``/``quotes_inserted`` new raw ticks and quotes (``stored_early`` of the
    events: stored while their window was still open); ``duplicates`` committed
    ticks and quotes the store (or the same batch) already had; ``bars_written`` trade bars
    inserted or changed, ``quote_bars_written`` quote bars; ``late_corrections`` bars and
    quote bars that already existed and changed (``revision + 1``, from the store's answer, not
    from how late an event looked); ``rollup_bars_written`` rollup windows (and flat
    micro-bars of the empty-interval policy) inserted or changed, ``rollup_revisions`` those
    of them that existed (``revision + 1``); ``dead_letters`` every letter written for this
    worker's entries,
    by reason in ``dead_letter_reasons`` (``decode``, ``validation``, ``late`` from this stage;
    ``max_deliveries``, ``trimmed`` from the bus layer)."""

    events_in: int = 0
    ticks_inserted: int = 0
    quotes_inserted: int = 0
    duplicates: int = 0
    bars_written: int = 0
    quote_bars_written: int = 0
    provider_bars: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    late_corrections: int = 0
    rollup_bars_written: int = 0
    rollup_revisions: int = 0
    too_late: int = 0
    flushes: int = 0
    stored_early: int = 0
    store_retries: int = 0
    bars_relayed: int = 0
    relay_calls: int = 0
    relay_s: float = 0.0
    relay_retries: int = 0
    window_latencies_ms: list[float] = field(default_factory=list)
    # of the same windows: window end -> taken into a flush job (the close: watermark or
    # flush timeout, then any commit in flight); the rest of the latency is its commit
    window_close_ms: list[float] = field(default_factory=list)

    @property
    def rows_written(self) -> int:
        return (
            self.ticks_inserted
            + self.quotes_inserted
            + self.bars_written
            + self.quote_bars_written
            + self.rollup_bars_written
        )
