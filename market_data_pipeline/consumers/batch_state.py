"""What a micro-batch worker holds between a poll and the commit that acknowledges it.

Shared by the poll -> ingest -> ack side (:mod:`.micro_batcher`), the commit path
(:mod:`.commit`) and the outbox relay (:mod:`.relay`): the open windows as column blocks, the
provider bars waiting for the next flush, the entries holding them, a flush job, and the run's
counts.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from market_data_core.columnar import EventColumns
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import BusRecord

__all__ = [
    "BufferedBar",
    "FlushJob",
    "MicroBatchStats",
    "OpenWindow",
    "RecordKey",
    "RecordState",
]

RecordKey = tuple[int, str]
"""A bus entry: ``(shard, entry_id)``."""


@dataclass(slots=True)
class RecordState:
    """An entry held until its events are committed: ``remaining`` events still to commit
    (its payload is dropped once decoded: acking, renewing or handing it back needs none)."""

    record: BusRecord
    remaining: int


@dataclass(slots=True)
class BufferedBar:
    """A provider bar waiting for the next flush, and the entries that carried it."""

    event: StreamEvent
    keys: list[RecordKey]


@dataclass(slots=True)
class OpenWindow:
    """The ticks and quotes of one open (provider, symbol, window) as column blocks in
    arrival order (duplicates included: the store keeps the first of each ``event_id``), and
    the entries holding them: ``(entry, n)`` means n of the entry's events are here
    (duplicates count, so the entry is acked only once all of them are committed)."""

    end_us: int
    series: tuple[str, str]
    parts: list[EventColumns] = field(default_factory=list)
    holds: list[tuple[RecordKey, int]] = field(default_factory=list)
    received: int = 0  # events added, duplicates included
    pending: int = 0  # events in ``parts`` (not yet stored)
    quotes: bool = False  # holds a quote: later windows' carried book depends on it
    # events stored while the window was open (``store_raw``): the first and last of each
    # store call (all the close needs of them), and how many of them were new
    stored: list[EventColumns] = field(default_factory=list)
    stored_new: int = 0
    taken_us: int = 0  # wall clock when it was taken into a flush job (closed)
    # the early store in flight holding some of its events: its close waits for it
    storing: asyncio.Future[None] | None = None


@dataclass(slots=True)
class FlushJob:
    """One commit: closed windows by ``(provider, symbol, window start µs)``, provider bars,
    and events of open windows to store now (their bars are recomputed when they close)."""

    units: dict[tuple[str, str, int], OpenWindow]
    bars: list[BufferedBar]
    early: list[tuple[OpenWindow, EventColumns]] = field(default_factory=list)


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
