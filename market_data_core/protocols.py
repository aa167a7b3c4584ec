"""The boundaries between stages, as Protocols. Only mdp's own frozen types cross them.

Failure semantics are part of each contract and stated in its docstring.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal, Protocol, overload, runtime_checkable

from market_data_core.columnar import EventColumns
from market_data_core.contracts import Bar, QuoteBar, Signal, StreamEvent, WindowBar

__all__ = [
    "ABANDON_AFTER_HEARTBEATS",
    "Bus",
    "BusConsumer",
    "BusRecord",
    "DeadLetter",
    "FeatureCheckpoint",
    "FeatureSnapshot",
    "InferenceAdapter",
    "JobRun",
    "JobRunTracker",
    "Provider",
    "RecordBatch",
    "RelayResult",
    "RollupPlan",
    "SeriesResume",
    "SignalsStoreClient",
    "StoreClient",
    "StreamStatus",
    "TickIngestResult",
    "TradingSession",
    "UpsertResult",
    "murmur2",
    "partition_key",
    "routing_key",
    "shard_for",
]


def routing_key(provider: str, symbol: str) -> str:
    """``provider|symbol``: the unit whose order the bus keeps (and whose events a publisher
    packs together). Its shard is decided by the symbol alone (:func:`shard_for`)."""
    return f"{provider}|{symbol}"


def partition_key(key: str) -> bytes:
    """The bytes a routing key is partitioned by: its symbol, UTF-8 (the text after the last
    ``|``; a bare symbol is its own key). On Kafka this is the record key, so that any
    producer keyed by the symbol lands beside mdp's."""
    return key.rpartition("|")[2].encode()


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``), as an unsigned
    32-bit integer; aiokafka's and the Java client's default partitioners use it."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


@functools.lru_cache(maxsize=1 << 16)  # publishers call it per entry; keys are few
def _partition_of(key: str, partitions: int) -> int:
    return (murmur2(partition_key(key)) & 0x7FFFFFFF) % partitions


def shard_for(key: str, partitions: int) -> int:
    """The shard of a routing key: where Kafka's default partitioner puts its
    :func:`partition_key` -- ``toPositive(murmur2(symbol)) % partitions`` -- on every backend
    (Redis stream ``<stream>:<shard>``, Kafka partition), in every process. All events of a
    symbol share a shard, whatever their provider."""
    if partitions <= 1:
        return 0
    return _partition_of(key, partitions)


@dataclass(frozen=True, slots=True)
class BusRecord:
    """One entry read from the bus.

    ``topic`` is the logical name (``mdp.events``); ``shard`` the shard/partition it came from;
    ``entry_id`` the backend's id (Redis stream id, or Kafka offset); ``deliveries`` counts this
    delivery and the earlier ones that failed: 1 the first time, one more after each crash,
    timeout or takeover (see :class:`BusConsumer`). An entry handed back on a clean stop
    (:meth:`BusConsumer.release`) is not counted again.

    ``extra_fields``: what the entry holds besides its payload, as ``(name, bytes)`` pairs in
    the entry's order: on Redis every field but ``data`` (an entry written by another producer,
    e.g. ``XADD mdp.events * payload ...``, has an empty ``payload`` and its content here); on
    Kafka the record's ``key`` and its headers. Empty for mdp's own Redis entries. A dead letter
    keeps them (:attr:`DeadLetter.source_fields`), so nothing of the entry is lost.
    """

    topic: str
    shard: int
    entry_id: str
    payload: bytes
    deliveries: int = 1
    extra_fields: tuple[tuple[str, bytes], ...] = ()

    @property
    def source(self) -> str:
        return f"{self.topic}:{self.shard}/{self.entry_id}"


class RecordBatch(Sequence[BusRecord]):
    """The entries of one poll of one topic as parallel lists, a :class:`BusRecord` made only
    when one is asked for (``batch[i]``): with one event per entry a worker reads ~100k
    entries a second, and building a frozen record per entry cost more than reading it.

    ``shards[i]``, ``ids[i]`` and ``payloads[i]`` are entry ``i``'s; ``deliveries`` is ``None``
    when every entry is on its first delivery (a read of new entries), else one count per
    entry; ``extra_fields`` holds the :attr:`BusRecord.extra_fields` of the entries that have
    any, by index (entries of another producer: rare). A batch equals the list of its records
    in order (``list(batch)``). Not to be mutated once handed over."""

    __slots__ = ("deliveries", "extra_fields", "ids", "payloads", "shards", "topic")

    def __init__(
        self,
        topic: str,
        shards: list[int],
        ids: list[str],
        payloads: list[bytes],
        deliveries: list[int] | None = None,
        extra_fields: dict[int, tuple[tuple[str, bytes], ...]] | None = None,
    ) -> None:
        if not len(shards) == len(ids) == len(payloads) or (
            deliveries is not None and len(deliveries) != len(ids)
        ):
            raise ValueError("a RecordBatch needs one shard, id, payload (and delivery) per entry")
        self.topic = topic
        self.shards = shards
        self.ids = ids
        self.payloads = payloads
        self.deliveries = deliveries
        self.extra_fields = extra_fields or {}

    @classmethod
    def of(cls, records: Sequence[BusRecord]) -> RecordBatch:
        """``records`` (all of one topic) as a batch; a batch is returned as it is."""
        if isinstance(records, RecordBatch):
            return records
        deliveries = [r.deliveries for r in records]
        return cls(
            records[0].topic if records else "",
            [r.shard for r in records],
            [r.entry_id for r in records],
            [r.payload for r in records],
            None if deliveries.count(1) == len(deliveries) else deliveries,
            {i: r.extra_fields for i, r in enumerate(records) if r.extra_fields},
        )

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> BusRecord: ...

    @overload
    def __getitem__(self, index: slice) -> RecordBatch: ...

    def __getitem__(self, index: int | slice) -> BusRecord | RecordBatch:
        if isinstance(index, slice):
            return self.take(range(len(self.ids))[index])
        i = range(len(self.ids))[index]  # an IndexError past either end, as a list's
        return BusRecord(
            self.topic,
            self.shards[i],
            self.ids[i],
            self.payloads[i],
            1 if self.deliveries is None else self.deliveries[i],
            self.extra_fields.get(i, ()),
        )

    def __iter__(self) -> Iterator[BusRecord]:
        for i in range(len(self.ids)):
            yield self[i]

    def take(self, indices: Sequence[int]) -> RecordBatch:
        """The entries at ``indices``, in that order, as a batch."""
        extra = self.extra_fields
        return RecordBatch(
            self.topic,
            [self.shards[i] for i in indices],
            [self.ids[i] for i in indices],
            [self.payloads[i] for i in indices],
            None if self.deliveries is None else [self.deliveries[i] for i in indices],
            {k: extra[i] for k, i in enumerate(indices) if i in extra} if extra else None,
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordBatch | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable lists inside: not hashable

    def __repr__(self) -> str:
        return f"RecordBatch({self.topic!r}, {len(self.ids)} entries)"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry on the dead-letter stream: the original payload and why it is there.

    ``source_fields``: the original entry's other fields (:attr:`BusRecord.extra_fields`),
    kept so that a letter of an entry written by another producer loses nothing."""

    entry_id: str
    payload: bytes
    reason: str
    detail: str
    component: str
    source_topic: str
    source_shard: int
    source_id: str
    ts: datetime
    deliveries: int = 1
    source_fields: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """Health of one stream/shard for one consumer group (``mdp stream status``)."""

    stream: str
    length: int
    group: str | None = None
    lag: int | None = None
    pending: int = 0
    consumers: int = 0
    oldest_pending_ms: int | None = None
    owner: str | None = None


@runtime_checkable
class BusConsumer(Protocol):
    """A member of a consumer group on one topic.

    ``poll`` returns this consumer's own unacknowledged entries first (after a restart), then
    new entries, only from the shards it currently holds; each shard is held by one live
    consumer of the group at a time. Entries stay pending until :meth:`ack`.

    Holding and redelivery (the model of NATS JetStream's ack wait and ``AckProgress``):
    an entry returned by ``poll`` is *held* by this consumer until it is acked,
    dead-lettered or released. It is never delivered again to anyone while the consumer keeps
    holding it, i.e. calls :meth:`in_progress` for it at least every ``bus.claim_idle_ms`` (a
    caller that buffers entries across polls, such as the micro-batcher with its open
    windows, does). An entry that is neither acked nor renewed for ``claim_idle_ms`` has
    *timed out* and is delivered again, counted; so are the entries of a consumer that
    crashed (after a restart under the same name) or stopped polling (after a takeover).
    An entry about to be delivered for the ``bus.max_deliveries + 1``-th time goes to the
    dead-letter stream instead (reason ``max_deliveries``); nothing else consumes a delivery.
    """

    @property
    def name(self) -> str: ...

    @property
    def owned_shards(self) -> frozenset[int]: ...

    @property
    def bus_dead_letters(self) -> Mapping[str, int]:
        """Dead letters the bus layer wrote by itself for this consumer, by reason
        (``max_deliveries``, ``trimmed``); letters written through :meth:`dead_letter` are
        the caller's to count."""
        ...

    async def poll(self, max_count: int, block_ms: int) -> Sequence[BusRecord]:
        """Next entries (a list, or a :class:`RecordBatch`); empty after ``block_ms`` with
        nothing to read. Raises ``BusError``."""
        ...

    async def ack(self, records: Sequence[BusRecord]) -> None:
        """Mark entries done (the store transaction that used them has committed)."""
        ...

    async def ack_ids(self, entry_ids: Mapping[int, Sequence[str]]) -> None:
        """:meth:`ack` of entries given as ``{shard: [entry_id, ...]}``: for a caller that
        keeps the ids of many held entries rather than their records."""
        ...

    async def in_progress(self, records: Sequence[BusRecord]) -> None:
        """Renew the hold on entries still being worked on (buffered, or waiting for the
        store): they do not time out for another ``claim_idle_ms``. Entries not held (acked,
        or taken over by another consumer meanwhile) are ignored."""
        ...

    async def release(self, records: Sequence[BusRecord]) -> None:
        """Hand held entries back unprocessed on a *clean* stop (e.g. open windows left pending
        on purpose): they stay pending for the next start, and their next delivery is not
        counted as a redelivery. Not for failures: a consumer that stops because it failed
        closes without releasing, so a crash loop still reaches ``max_deliveries``."""
        ...

    async def dead_letter(
        self, record: BusRecord, *, reason: str, detail: str, component: str
    ) -> None:
        """Write the entry to the dead-letter stream with its reason, then ack it."""
        ...

    async def aclose(self) -> None:
        """Leave the group (release shard leases); pending entries stay pending, and those not
        released first keep their delivery counts."""
        ...


@runtime_checkable
class Bus(Protocol):
    """A durable, sharded log (Redis Streams or Kafka)."""

    @property
    def backend(self) -> Literal["redis", "kafka"]: ...

    async def publish(self, topic: str, items: Sequence[tuple[str, bytes]]) -> int:
        """Append ``(routing_key, payload)`` items, batched; per-key order is kept.

        Returns how many were appended. Raises ``BusError``; on error none or some of the
        items may have been appended (idempotent event ids make a retry safe downstream).
        """
        ...

    def consumer(self, topic: str, group: str, name: str) -> BusConsumer:
        """A group member; the group is created on first use."""
        ...

    async def tail(self, topic: str, limit: int) -> list[BusRecord]:
        """The last ``limit`` entries of a topic (all shards, oldest first), no group involved."""
        ...

    async def status(self, topic: str, group: str | None = None) -> list[StreamStatus]:
        """Length, lag, pending, consumers per shard of ``topic`` (for ``group`` if given)."""
        ...

    async def topic_exists(self, topic: str) -> bool:
        """Whether ``topic`` exists on the server (Redis: one of its shard streams; Kafka: the
        topic in the cluster's metadata). Never creates it."""
        ...

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Append a dead letter to the DLQ topic (for producers: rows that fail validation).
        ``letter.entry_id`` is ignored; the bus assigns one."""
        ...

    async def dlq_list(self, limit: int) -> list[DeadLetter]:
        """Oldest first, at most ``limit``."""
        ...

    async def dlq_delete(self, entry_ids: Sequence[str]) -> int:
        """Remove dead letters (after a successful replay, or ``purge``); returns how many."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """What an idempotent upsert did: an identical replay gives ``inserted == updated == 0``."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return self.inserted + self.updated


@dataclass(frozen=True, slots=True)
class TickIngestResult:
    """What :meth:`StoreClient.ingest_events` (or ``ingest_ticks``) did.

    ``ticks_inserted``/``quotes_inserted`` count new raw ticks and quotes (duplicates by
    ``event_id`` are not counted); ``bars`` are the trade bars that were inserted or changed
    (revision already incremented), ``quote_bars`` likewise the quote bars; each carries its
    window's ``change_seq``. ``bars_result``/``quote_bars_result`` count the windows
    recomputed.
    """

    ticks_inserted: int
    bars: list[Bar] = field(default_factory=list)
    bars_result: UpsertResult = UpsertResult()
    quotes_inserted: int = 0
    quote_bars: list[QuoteBar] = field(default_factory=list)
    quote_bars_result: UpsertResult = UpsertResult()
    # the rollup bars (every level of the RollupPlan, and flat micro-bars of the empty-interval
    # policy) inserted or changed, and the rollup windows recomputed
    rollup_bars: list[Bar] = field(default_factory=list)
    rollups_result: UpsertResult = UpsertResult()


@dataclass(frozen=True, slots=True)
class TradingSession:
    """One session of a trading calendar: ``[open, close)`` in UTC, labelled by its date."""

    session: date
    open: datetime
    close: datetime


@dataclass(frozen=True, slots=True)
class RollupPlan:
    """What :meth:`StoreClient.ingest_events` builds beyond the micro-bars, in the same
    transaction (``micro_batch.rollups``; built by ``market_data_pipeline.sessions``).

    - ``intervals``: the rollup levels, ascending (e.g. ``("1m", "5m", "1h", "1d")``).
    - ``calendars``: symbol -> trading calendar name; a symbol not in it trades 24/7 (its
      ``1d`` buckets are UTC days). The calendar's sessions must be in the store
      (:meth:`StoreClient.sync_sessions`).
    - ``sources``: ``(calendar or None, level) -> interval`` of the bars the level is built
      from: the coarsest lower level whose buckets nest in the level's (the micro-bars at
      worst).
    - ``empty_intervals``: ``none`` or ``flat`` (see ``RollupsConfig``).
    """

    intervals: tuple[str, ...] = ()
    calendars: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[tuple[str | None, str], str] = field(default_factory=dict)
    empty_intervals: Literal["none", "flat"] = "none"

    @property
    def active(self) -> bool:
        return bool(self.intervals) or self.empty_intervals == "flat"

    def source_of(self, calendar: str | None, level: str) -> str:
        """The interval ``level`` is built from for a series on ``calendar``."""
        source = self.sources.get((calendar, level))
        return source if source is not None else self.sources[(None, level)]


@dataclass(frozen=True, slots=True)
class RelayResult:
    """What one :meth:`StoreClient.relay_bar_changes` call did: ``relayed`` changes published
    and marked; ``busy`` when another relay held the outbox (it publishes them); ``more`` when
    the batch was full (call again)."""

    relayed: int = 0
    busy: bool = False
    more: bool = False


@runtime_checkable
class StoreClient(Protocol):
    """Everything the pipeline may ask of the store. The pipeline never sees SQL.

    Every write is one transaction, idempotent, and safe to retry. A transient connection
    failure raises ``StoreUnavailableError`` (retry with backoff); anything else ``StoreError``.
    """

    async def upsert_bars(self, bars: Sequence[Bar]) -> UpsertResult:
        """Upsert provider bars by key; an identical row is left alone (``unchanged``)."""
        ...

    async def ingest_ticks(
        self, ticks: Sequence[StreamEvent], *, interval: str
    ) -> TickIngestResult:
        """:meth:`ingest_events` of trade ticks only, with the default quote carry."""
        ...

    async def ingest_events(
        self,
        events: Sequence[StreamEvent],
        *,
        interval: str,
        quote_carry_ms: int,
        rollups: RollupPlan | None = None,
    ) -> TickIngestResult:
        """Store raw trade ticks and quotes (idempotent by ``event_id``) and, in the same
        transaction, serialised per (provider, symbol), recompute from all stored ticks and
        quotes the ``interval`` trade bars of every window the ticks touch and the quote bars
        (see :class:`~market_data_core.contracts.QuoteBar`; a book is carried into a window
        from a quote at most ``quote_carry_ms`` before it) of every window the events touch
        or whose carried book a new quote may change. A changed existing bar gets
        ``revision + 1``; every window whose trade or quote bar changed is one change on the
        change log, with both as they are now. Raises ``StoreError`` for a provider bar.

        With ``rollups``, in the same transaction: the empty-interval policy's flat bars
        around the windows touched, then each rollup level's bucket of every window touched,
        recomputed exactly from the level below (open/close of its first/last bar with trades,
        high/low, exact sums of volume and ``price * size``, trade counts; the quote-bar
        columns composed from the quote bars below), each changed one with its revision and
        its change on the change log like any bar."""
        ...

    async def sync_sessions(self, calendar: str, sessions: Sequence[TradingSession]) -> int:
        """Make the store's sessions of ``calendar`` these (upserted by session date); returns
        how many rows were inserted or changed."""
        ...

    async def ingest_columns(
        self,
        events: EventColumns,
        *,
        interval: str,
        quote_carry_ms: int,
        rollups: RollupPlan | None = None,
        stored: EventColumns | None = None,
        early_quotes: EventColumns | None = None,
    ) -> TickIngestResult:
        """:meth:`ingest_events` of events given as columns (valid rows, as
        :func:`~market_data_core.columnar.decode_blocks` returns them); of rows with the same
        ``event_id`` the first one counts. ``stored``: rows :meth:`store_raw` already stored,
        whose windows are recomputed as if they were in ``events``. ``early_quotes``: every
        quote of some of those windows that :meth:`store_raw` stored, from calls that inserted
        all the quotes they were given (their ``quotes_inserted``): a hint the store may use to
        compute those windows' quote bars without reading them back (the bars are the same
        either way; a window holding other stored quotes is recomputed). Raises
        ``StoreError`` for a provider bar."""
        ...

    async def store_raw(self, events: EventColumns) -> TickIngestResult:
        """Store raw ticks and quotes (idempotent by ``event_id``) without recomputing any
        bar, in one transaction serialised per series: for the events of a window still open,
        whose bars :meth:`ingest_columns` (with them as ``stored``) recomputes once it closes.
        Returns the new ticks and quotes. Raises ``StoreError`` for a provider bar."""
        ...

    async def windows_range(
        self, provider: str, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[WindowBar]:
        """Every window of the series with ``start <= ts < end`` that has a trade bar (with
        its quote bar attached) or a quote bar alone, oldest first: what inference scores."""
        ...

    async def bars_range(
        self, provider: str, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[Bar]:
        """Bars with ``start <= ts < end``, oldest first."""
        ...

    async def latest_bars(self, interval: str, limit: int) -> dict[tuple[str, str], list[Bar]]:
        """The latest ``limit`` bars per (provider, symbol), oldest first."""
        ...

    async def quote_bars_range(
        self, provider: str, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[QuoteBar]:
        """Quote bars with ``start <= ts < end``, oldest first."""
        ...

    async def latest_quote_bars(
        self, interval: str, limit: int
    ) -> dict[tuple[str, str], list[QuoteBar]]:
        """The latest ``limit`` quote bars per (provider, symbol), oldest first."""
        ...

    async def relay_bar_changes(
        self, publish: Callable[[Sequence[WindowBar]], Awaitable[None]], *, limit: int = 1000
    ) -> RelayResult:
        """The transactional outbox's relay: every window change ``upsert_bars`` and
        ``ingest_events`` commit is recorded in the same transaction (with its series'
        ``change_seq``, as the window's trade bar with its quote bar, or its quote bar
        alone). One call takes the relay (one relay at a time across processes;
        ``busy`` if another holds it), reads the oldest ``limit`` unrelayed changes, awaits
        ``publish(bars)`` (oldest first, so each series' changes in ``change_seq`` order) and
        marks them relayed only after it returned. If ``publish`` raises, nothing is marked
        and the exception propagates: the changes are published by a later call."""
        ...

    async def prune_bar_changes(self, older_than_ms: int) -> int:
        """Delete changes relayed more than ``older_than_ms`` ago; returns how many."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class FeatureCheckpoint:
    """An inference engine's exact state of one series after its bar ``ts``.

    ``state`` is opaque to the store (the engine's msgpack). ``as_of_seq``: the state is the
    function of the series' bars up to ``ts`` as of the series' change ``as_of_seq``; it stays
    valid while no later change touches a bar at or before ``ts``. ``progress_seq``: when it
    was saved, the engine's signals reflected every change of the series up to this one (the
    consumer's progress). ``bars``: bars it covers.
    """

    provider: str
    symbol: str
    interval: str
    ts: datetime
    as_of_seq: int
    progress_seq: int
    bars: int
    state: bytes


@dataclass(frozen=True, slots=True)
class SeriesResume:
    """Where an inference engine resumes a series: the newest still valid checkpoint (or
    ``None``: from the series' first bar), the series' bars after it, oldest first, and the
    series' change-log head ``seq`` when they were read (every change up to it is reflected
    in checkpoint + bars)."""

    checkpoint: FeatureCheckpoint | None
    bars: list[WindowBar]
    seq: int


@runtime_checkable
class SignalsStoreClient(Protocol):
    """What the inference stage keeps in the store: the signals table (idempotent by
    ``signal_id``; a row's ``state`` is ``active`` or ``retracted``) and feature checkpoints.
    Failure semantics as :class:`StoreClient`'s."""

    async def upsert_signals(self, signals: Sequence[Signal]) -> UpsertResult:
        """Upsert by ``signal_id`` (last of duplicates wins), state included; identical rows
        are unchanged."""
        ...

    async def signals_range(
        self, start: datetime, end: datetime, symbol: str | None = None
    ) -> list[Signal]:
        """Signals (any state) with ``start <= ts < end``, oldest first."""
        ...

    async def signals_since(
        self, series: Sequence[tuple[str, str, datetime]], *, adapters: Sequence[str]
    ) -> list[Signal]:
        """Signals (any state) of ``adapters`` for each ``(provider, symbol, since)`` with
        ``ts >= since``, oldest first."""
        ...

    async def resume_series(
        self, engine_key: str, provider: str, symbol: str, interval: str
    ) -> SeriesResume:
        """The newest checkpoint of ``engine_key`` for the series that is still valid (no
        change after its ``as_of_seq`` touched a bar at or before its ``ts``, and none of
        those changes pruned), and the series' bars after it, in one snapshot."""
        ...

    async def save_checkpoints(
        self, engine_key: str, checkpoints: Sequence[FeatureCheckpoint], *, keep: int = 4
    ) -> None:
        """Store checkpoints (replacing one at the same ``ts``); keep the newest ``keep``
        per series and engine."""
        ...

    async def series_progress(
        self, engine_key: str, interval: str
    ) -> dict[tuple[str, str], tuple[int, int | None]]:
        """Every (provider, symbol) with a change log at ``interval``: its head ``seq`` and
        the newest ``progress_seq`` of ``engine_key``'s checkpoints (``None``: none)."""
        ...

    async def aclose(self) -> None: ...


ABANDON_AFTER_HEARTBEATS = 3
"""A ``running`` job run whose last heartbeat is older than this many of its heartbeat
intervals is dead (killed, host lost): :meth:`JobRunTracker.abandon_stale` marks it
``abandoned``."""

JobRunStatus = Literal["running", "success", "failed", "stopped", "abandoned"]


@dataclass(frozen=True, slots=True)
class JobRun:
    """One ``job_runs`` row.

    ``heartbeat_at`` is the last sign of life of a running job (its start, then every
    ``heartbeat_interval_ms``); the counts are those of its last heartbeat until it finishes.
    An ``abandoned`` run has ``finished_at == heartbeat_at`` and says why in ``detail``.
    """

    id: int
    job: str
    started_at: datetime
    finished_at: datetime | None
    status: JobRunStatus
    events_in: int
    rows_written: int
    errors: int
    config_hash: str
    detail: str | None
    heartbeat_at: datetime
    heartbeat_interval_ms: int


@runtime_checkable
class JobRunTracker(Protocol):
    """The ``job_runs`` audit trail: one row per run of a long job.

    A run is ``running`` from :meth:`start` until :meth:`finish`; meanwhile its process calls
    :meth:`heartbeat` every ``heartbeat_interval_ms``. A process that dies without finishing
    (``kill -9``, a lost host) stops beating; the next :meth:`abandon_stale` (called by every
    start and by ``mdp stream status``) marks its row ``abandoned``. A run marked abandoned
    that beats again (it was only stalled) is ``running`` again; :meth:`finish` always writes
    the final status. Every method raises ``StoreUnavailableError`` when the store cannot be
    reached, ``StoreError`` otherwise.
    """

    async def start(
        self, job: str, config_hash: str, *, heartbeat_interval_ms: int = 10_000
    ) -> int:
        """Insert a ``running`` row (heartbeat now); returns its id."""
        ...

    async def heartbeat(
        self, run_id: int, *, events_in: int, rows_written: int, errors: int
    ) -> None:
        """Record a sign of life and the counts so far. Raises ``StoreError`` when ``run_id``
        is not a running (or abandoned) run."""
        ...

    async def abandon_stale(self) -> list[JobRun]:
        """Mark every ``running`` row with no heartbeat for ``ABANDON_AFTER_HEARTBEATS`` of its
        intervals ``abandoned``; returns those rows as they are now."""
        ...

    async def finish(
        self,
        run_id: int,
        *,
        status: Literal["success", "failed", "stopped"],
        events_in: int,
        rows_written: int,
        errors: int,
        detail: str | None = None,
    ) -> None: ...

    async def recent(self, limit: int = 20, job: str | None = None) -> list[JobRun]:
        """The newest runs first (of ``job`` if given)."""
        ...

    async def running(self) -> list[JobRun]:
        """Every ``running`` run, oldest first."""
        ...

    async def aclose(self) -> None:
        """Release the tracker's connection."""
        ...


@dataclass(frozen=True, slots=True)
class FeatureSnapshot:
    """The feature values of one symbol right after a bar (or quote) updated them."""

    provider: str
    symbol: str
    ts: datetime
    values: Mapping[str, float]
    price: float | None = None


@runtime_checkable
class InferenceAdapter(Protocol):
    """Turns feature snapshots into signals. Raises ``InferenceError`` on failure.

    ``name``: ``rules``, ``sklearn`` or a strategy plugin's configured name; it is
    ``Signal.adapter`` and part of the adapter's consumer group."""

    @property
    def name(self) -> str: ...

    async def evaluate(self, snapshot: FeatureSnapshot) -> list[Signal]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Provider(Protocol):
    """A source of events (synthetic, replay, coinbase, ibkr)."""

    @property
    def name(self) -> str: ...

    def events(self) -> AsyncIterator[StreamEvent]:
        """Events in source order; ends when the source is exhausted (or never, for live)."""
        ...

    async def aclose(self) -> None: ...
