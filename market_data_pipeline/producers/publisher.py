"""The publisher between a provider and the bus: a bounded buffer, batching, pacing, retries.

Contract:

* :meth:`Publisher.put` appends one event; when the buffer holds ``buffer_max_events`` it
  *waits* for room (backpressure reaches the provider, which slows down).
  :meth:`Publisher.put_nowait` raises :class:`BackpressureError` instead.
  :meth:`Publisher.put_block` appends a :class:`WireBlock`: many events already in wire form
  (a :class:`WireSource` such as the synthetic provider makes them without building
  ``StreamEvent`` objects); the bytes published are the same as for the equivalent events.
* A background task takes up to ``batch_size`` events at a time (by default 500 entries'
  worth: :func:`default_batch_size`), pays for them on the token
  bucket (``max_msgs_per_s``), encodes them (``pack_events > 1``: that many events of one
  routing key per entry, per-key order kept) and publishes them in one call.
* A failed publish (``BusError``) is retried with capped exponential backoff for
  ``retry_timeout_s``; the batch stays at the head of the buffer meanwhile, so nothing is
  lost or reordered. After that the error is kept and raised by the next ``put``/``flush``.
* :meth:`Publisher.aclose` flushes everything buffered, then stops (SIGINT/SIGTERM path).
* Every published event counts in ``stream_events_ingested_total{bus,topic,provider}``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from itertools import islice
from types import TracebackType
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec
import numpy as np

from market_data_core.codec import CodecName, encode_event, encode_events, event_to_dict
from market_data_core.columnar import (
    COLUMN_ROW_FIELDS,
    FLOAT_FIELDS,
    KIND_NAMES,
    OPTIONAL_BITS,
    SIDE_NAMES,
    ColumnRow,
    EventColumns,
    columns_from_rows,
    columns_from_wire_rows,
    encode_blocks,
    encode_columns,
)
from market_data_core.config import PackAs
from market_data_core.contracts import StreamEvent
from market_data_core.errors import BackpressureError, BusError
from market_data_core.protocols import Bus, routing_key
from market_data_pipeline import telemetry
from market_data_pipeline.producers.pacing import TokenBucket
from market_data_pipeline.retry import Backoff, retry

__all__ = ["Publisher", "WireBlock", "WireForm", "WireSource", "default_batch_size", "encode_batch"]

log = logging.getLogger(__name__)

# What event_to_dict(event, codec=...) gives, or (msgpack only) a msgspec Struct that encodes
# as exactly that dict (the synthetic provider's ticks: cheaper to build than a dict), or (form
# "columns") a column row (market_data_core.columnar.COLUMN_ROW_FIELDS) or a msgpack-form dict.
WireRow = Any
WireForm = Literal["msgpack", "json", "columns"]
"""How the rows of a :class:`WireBlock` are written: as ``event_to_dict`` in that codec, or
(``columns``, for a publisher that packs column blocks) as column rows."""


@dataclass(frozen=True, slots=True)
class WireBlock:
    """Events already in wire form, in source order.

    ``rows[i]`` must equal ``event_to_dict(event_i, codec=codec)`` *including its key order*
    (the encoded bytes follow it), or for msgpack be a ``msgspec.Struct`` that encodes as
    that dict; ``keys[i]`` must be
    ``routing_key(event_i.provider, event_i.symbol)``. The publisher trusts both.
    With ``codec="columns"`` the events may come as ``columns`` instead (valid trades and
    quotes, in order; ``keys`` and ``rows`` empty).
    """

    codec: WireForm
    keys: list[str]
    rows: list[WireRow]
    columns: EventColumns | None = None

    def __len__(self) -> int:
        return len(self.rows) if self.columns is None else self.columns.n

    def head(self, n: int) -> WireBlock:
        """The first ``n`` events."""
        if self.columns is not None:
            return WireBlock(self.codec, [], [], self.columns.slice(0, min(n, self.columns.n)))
        return WireBlock(self.codec, self.keys[:n], self.rows[:n])


@runtime_checkable
class WireSource(Protocol):
    """A provider that can hand over its events as :class:`WireBlock` s (cheaper than
    ``events()``: no ``StreamEvent`` per event, no per-event ``put``)."""

    def wire_blocks(self, codec: WireForm) -> AsyncGenerator[WireBlock, None]:
        """The same events as ``events()``, in the same order, paced the same way."""
        ...


# msgspec writes the same MessagePack as msgpack.packb(obj, use_bin_type=True) for what events
# hold (str, int, float, lists and maps of them: float64 always, the smallest int and str
# formats) at about 2.5 times the speed; tests/unit/test_producers_publisher.py checks the
# bytes against market_data_core.codec for arbitrary events.
_MSGPACK_ENCODER = msgspec.msgpack.Encoder()


def _dumps(obj: Any, codec: CodecName) -> bytes:
    """Byte-for-byte what ``market_data_core.codec`` writes for ``obj``."""
    if codec == "msgpack":
        return _MSGPACK_ENCODER.encode(obj)
    return json.dumps(obj, separators=(",", ":"), allow_nan=True).encode()


def encode_rows(
    rows: Sequence[tuple[str, WireRow]],
    codec: CodecName,
    pack_events: int,
    pack_as: PackAs = "rows",
) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """:func:`encode_batch` for ``(routing key, wire row)`` pairs, plus the event count per
    provider. The items are byte-identical to ``encode_batch`` of the same events; with
    ``pack_as="columns"`` (rows in msgpack form) each entry is a column block of up to
    ``pack_events`` events of one series (:mod:`market_data_core.columnar`)."""
    if pack_as == "columns":
        row_list = [row for _key, row in rows]
        if set(map(type, row_list)) == {tuple}:
            return _blocks_of_column_rows(row_list, pack_events)
    if pack_events <= 1 and pack_as != "columns":  # one entry per event, in order
        keys = [key for key, _row in rows]
        providers: dict[str, int] = {}
        for key, count in collections.Counter(keys).items():
            # a routing key is "provider|symbol" and a provider name holds no "|"
            provider = key.partition("|")[0]
            providers[provider] = providers.get(provider, 0) + count
        row_list = [row for _key, row in rows]
        if codec == "msgpack":
            payloads = list(map(_MSGPACK_ENCODER.encode, row_list))
        else:
            payloads = [_dumps(row, codec) for row in row_list]
        return list(zip(keys, payloads, strict=True)), providers
    by_key: dict[str, list[WireRow]] = {}
    for key, row in rows:
        group = by_key.get(key)
        if group is None:
            by_key[key] = [row]
        else:
            group.append(row)
    per_provider: dict[str, int] = {}
    for key, group in by_key.items():
        # a routing key is "provider|symbol" and a provider name holds no "|"
        provider = key.partition("|")[0]
        per_provider[provider] = per_provider.get(provider, 0) + len(group)
    if pack_as == "columns":
        return _column_blocks(by_key, pack_events), per_provider
    items: list[tuple[str, bytes]] = []
    for key, group in by_key.items():
        if len(group) <= pack_events:
            items.append((key, _dumps(group[0] if len(group) == 1 else group, codec)))
            continue
        for i in range(0, len(group), pack_events):
            chunk = group[i : i + pack_events]
            items.append((key, _dumps(chunk[0] if len(chunk) == 1 else chunk, codec)))
    return items, per_provider


def _column_blocks(by_key: dict[str, list[WireRow]], pack_events: int) -> list[tuple[str, bytes]]:
    """Up to ``pack_events`` events of one key per block (one interval per block: provider
    bars of several intervals are split). Column rows transpose at C speed; msgpack-form
    rows (events put one by one, provider bars) go field by field."""
    items: list[tuple[str, bytes]] = []
    for key, group in by_key.items():
        tuples = [type(row) is tuple for row in group]
        if all(tuples):
            cols = columns_from_rows(group)
        elif any(tuples):  # one source per publisher: only if a caller mixes put and blocks
            cols = columns_from_wire_rows(
                [_row_as_dict(row) if t else row for row, t in zip(group, tuples, strict=True)]
            )
        else:
            cols = columns_from_wire_rows(group)
        by_interval = (
            [np.arange(cols.n)]
            if len(cols.intervals) <= 2
            else [np.flatnonzero(cols.interval_idx == i) for i in range(len(cols.intervals))]
        )
        for rows in by_interval:
            for start in range(0, len(rows), pack_events):
                part = rows[start : start + pack_events]
                if not len(part):
                    continue
                block = cols if len(part) == cols.n else cols.take(part)
                interval = cols.intervals[int(block.interval_idx[0])]
                items.append((key, encode_columns(block, interval=interval)))
    return items


def _blocks_of_column_rows(
    rows: list[ColumnRow], pack_events: int
) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """:func:`encode_rows` of column rows: one transposition for the whole batch, then the
    rows of each series (in order) cut into blocks of ``pack_events``."""
    return _blocks_of_columns(columns_from_rows(rows), pack_events)


def _blocks_of_columns(
    cols: EventColumns, pack_events: int
) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """Blocks of up to ``pack_events`` events of one series (each series' events in order),
    and the events per provider."""
    order = np.argsort(cols.series_idx, kind="stable")
    cols = cols.take(order)
    counts = np.bincount(cols.series_idx, minlength=len(cols.series)).tolist()
    keys: list[str] = []
    bounds: list[tuple[int, int]] = []
    per_provider: dict[str, int] = {}
    start = 0
    for (provider, symbol), count in zip(cols.series, counts, strict=True):
        key = routing_key(provider, symbol)
        per_provider[provider] = per_provider.get(provider, 0) + count
        for first in range(start, start + count, pack_events):
            keys.append(key)
            bounds.append((first, min(first + pack_events, start + count)))
        start += count
    return list(zip(keys, encode_blocks(cols, bounds), strict=True)), per_provider


def _row_as_dict(row: ColumnRow) -> dict[str, Any]:
    """A column row as the msgpack-form dict of its event (``event_id`` left out)."""
    out: dict[str, Any] = dict(zip(COLUMN_ROW_FIELDS, row, strict=True))
    bits = out.pop("present")
    out["kind"] = KIND_NAMES[out["kind"]]
    out["side"] = SIDE_NAMES[out["side"]]
    for name in (*FLOAT_FIELDS, "ingest_ts", "trade_id"):
        if name in out and not bits & OPTIONAL_BITS[name]:
            del out[name]
    out["ver"] = 1
    return out


def encode_batch(
    events: Sequence[StreamEvent], codec: CodecName, pack_events: int
) -> list[tuple[str, bytes]]:
    """Bus items for ``events``: one per event, or packs of up to ``pack_events`` events of
    one routing key (order within a key is the order in ``events``)."""
    if pack_events <= 1:
        return [(routing_key(e.provider, e.symbol), encode_event(e, codec)) for e in events]
    by_key: dict[str, list[StreamEvent]] = {}
    for e in events:
        by_key.setdefault(routing_key(e.provider, e.symbol), []).append(e)
    items: list[tuple[str, bytes]] = []
    for key, evs in by_key.items():
        for i in range(0, len(evs), pack_events):
            chunk = evs[i : i + pack_events]
            if len(chunk) == 1:
                items.append((key, encode_event(chunk[0], codec)))
            else:
                items.append((key, encode_events(chunk, codec)))
    return items


# A publish call's default size, in entries: each call has a fixed cost on both sides (the
# retry wrapper, the script call and its round trip, the encoding set-up), so a call of packed
# entries carries as many entries as one of single events would (10 entries per call, 500
# events at 50 per entry, cost the producers 2.0-2.1 µs of CPU per event at 200,000 ev/s,
# 100-500 entries 0.8-1.0), up to MAX_BATCH_EVENTS events.
DEFAULT_BATCH_ENTRIES = 500
MAX_BATCH_EVENTS = 100_000


def default_batch_size(pack_events: int) -> int:
    """Events per publish call when none is configured: :data:`DEFAULT_BATCH_ENTRIES`
    entries of ``pack_events`` events, at most :data:`MAX_BATCH_EVENTS`."""
    return min(MAX_BATCH_EVENTS, DEFAULT_BATCH_ENTRIES * max(1, pack_events))


class Publisher:
    """Buffers events and publishes them to ``topic`` in paced batches (see module doc);
    ``batch_size`` events per call (``None``: :func:`default_batch_size` of
    ``pack_events``)."""

    def __init__(
        self,
        bus: Bus,
        *,
        topic: str,
        codec: CodecName = "msgpack",
        batch_size: int | None = None,
        buffer_max_events: int = 100_000,
        pack_events: int = 1,
        pack_as: PackAs = "rows",
        max_msgs_per_s: float | None = None,
        linger_ms: int = 50,
        retry_timeout_s: float = 30.0,
        retry_max_delay_s: float = 2.0,
    ) -> None:
        # pacing keeps the burst it always had (the old default batch) when none is given
        burst = float(batch_size or DEFAULT_BATCH_ENTRIES)
        if batch_size is None:
            batch_size = default_batch_size(pack_events)
        if batch_size < 1 or buffer_max_events < 1 or pack_events < 1:
            raise ValueError("batch_size, buffer_max_events and pack_events must be >= 1")
        self._bus = bus
        self.topic = topic
        # A block of one event costs more than its map (a block's fixed cost, on both sides,
        # is paid per event): column blocks are for packs only.
        if pack_events == 1:
            pack_as = "rows"
        # column blocks are built from column rows, whatever the bus codec
        self._codec: WireForm = "columns" if pack_as == "columns" else codec
        self._pack_as: PackAs = pack_as
        self._batch_size = batch_size
        self._buffer_max = max(buffer_max_events, batch_size)
        self._pack = pack_events
        self._bucket = TokenBucket(max_msgs_per_s, burst=max(1.0, burst))
        self._linger_s = linger_ms / 1000
        self._retry_timeout_s = retry_timeout_s
        self._retry_max_delay_s = retry_max_delay_s
        # (routing key, wire row) per event, or a block of events as columns: encoded on put,
        # packed and dumped per batch; _count is the events in it
        self._buffer: deque[tuple[str, WireRow] | EventColumns] = deque()
        self._count = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._flush_waiters = 0
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.entries = 0
        self.retries = 0
        telemetry.init_error_series("publisher")

    @property
    def buffered(self) -> int:
        return self._count

    @property
    def codec(self) -> WireForm:
        """The form of the rows this publisher takes in :meth:`put_block`."""
        return self._codec

    async def __aenter__(self) -> Publisher:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"publisher:{self.topic}")

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise BusError(
                f"publishing to {self.topic} failed: {self._error}",
                backend=self._bus.backend,
                operation="publish",
            ) from self._error

    async def put(self, event: StreamEvent) -> None:
        """Buffer one event, waiting while the buffer is full. Raises ``BusError`` once the
        publisher has given up on the bus."""
        while self._count >= self._buffer_max:
            self._raise_if_failed()
            self._room.clear()
            await self._room.wait()
        self._raise_if_failed()
        self._append(event)

    def put_nowait(self, event: StreamEvent) -> None:
        """Buffer one event or raise ``BackpressureError`` (with a retry hint) when full."""
        self._raise_if_failed()
        if self._count >= self._buffer_max:
            rate = self._bucket.rate_per_s or 10_000.0
            raise BackpressureError(
                f"publish buffer full ({self._buffer_max} events)",
                retry_after_s=self._batch_size / rate,
            )
        self._append(event)

    async def put_block(self, block: WireBlock) -> None:
        """Buffer a block of events (in order), waiting while the buffer is full; the block
        may take the buffer past ``buffer_max_events`` (by less than one block).

        If cancelled while waiting for room, the block is buffered anyway before
        ``CancelledError`` propagates: its events exist, and a stop must not lose them.
        Raises ``ValueError`` for a block in another codec, ``BusError`` once the publisher
        has given up on the bus."""
        if block.codec != self._codec:
            raise ValueError(f"block is in {block.codec}, this publisher writes {self._codec}")
        try:
            while self._count >= self._buffer_max:
                self._raise_if_failed()
                self._room.clear()
                await self._room.wait()
        except asyncio.CancelledError:
            self._extend(block)
            raise
        self._raise_if_failed()
        self._extend(block)

    def _extend(self, block: WireBlock) -> None:
        if block.columns is not None:
            if block.columns.n:
                self._buffer.append(block.columns)
        else:
            self._buffer.extend(zip(block.keys, block.rows, strict=True))
        self._count += len(block)
        self._idle.clear()
        if self._count >= self._batch_size:
            self._wake.set()

    def _append(self, event: StreamEvent) -> None:
        codec: CodecName = "msgpack" if self._codec == "columns" else self._codec
        self._buffer.append(
            (routing_key(event.provider, event.symbol), event_to_dict(event, codec=codec))
        )
        self._count += 1
        self._idle.clear()
        if self._count >= self._batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Return once everything buffered so far is published; raises ``BusError``."""
        self.start()
        self._flush_waiters += 1
        self._wake.set()
        try:
            while self._count and self._error is None:
                await self._idle.wait()
        finally:
            self._flush_waiters -= 1
        self._raise_if_failed()

    async def aclose(self) -> None:
        """Flush, then stop the background task. Raises ``BusError`` if the flush failed."""
        if self._task is None:
            self._raise_if_failed()
            return
        self._closing = True
        self._wake.set()
        try:
            await self._task
        finally:
            self._task = None
            self._room.set()
        self._raise_if_failed()

    async def _wait_for_wake(self) -> None:
        """Return when woken (a full batch, a flush, close) or after ``linger_ms``.

        A timer that sets the wake event, not ``asyncio.wait_for``: that costs a task and
        several loop iterations per call, and this runs for every batch."""
        if not self._wake.is_set():
            timer = asyncio.get_running_loop().call_later(self._linger_s, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
        self._wake.clear()

    async def _run(self) -> None:
        try:
            while True:
                if not self._count:
                    self._idle.set()
                    if self._closing:
                        return
                    await self._wait_for_wake()
                    continue
                urgent = self._closing or self._flush_waiters > 0
                if self._count < self._batch_size and not urgent:
                    # Give a partial batch a moment to fill (linger), unless told to flush.
                    await self._wait_for_wake()
                n = min(self._batch_size, self._count)
                if isinstance(self._buffer[0], EventColumns):
                    await self._publish_columns(n)
                    continue
                rows: list[tuple[str, WireRow]] = list(islice(self._buffer, n))  # type: ignore[arg-type]
                kinds = list(map(type, rows))  # in C: no test per row in Python
                if EventColumns in kinds:  # a row batch ends where a column block begins
                    rows = rows[: kinds.index(EventColumns)]
                n = len(rows)
                await self._bucket.acquire(n)
                await self._publish_with_retry(rows)
                popleft = self._buffer.popleft
                for _ in range(n):
                    popleft()
                self._count -= n
                self._room.set()
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self._error = exc
            self._idle.set()
            self._room.set()
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _publish_columns(self, n: int) -> None:
        """Publish up to ``n`` events from the column blocks at the head of the buffer (a
        block is cut when needed), then drop them from the buffer."""
        parts: list[EventColumns] = []
        taken = 0
        for item in self._buffer:
            if not isinstance(item, EventColumns) or taken >= n:
                break
            part = item if taken + item.n <= n else item.slice(0, n - taken)
            parts.append(part)
            taken += part.n
        await self._bucket.acquire(taken)
        cols = EventColumns.concat(parts)
        await self._publish_items(*_blocks_of_columns(cols, self._pack), taken)
        for part in parts:
            head = self._buffer[0]
            assert isinstance(head, EventColumns)
            if part.n == head.n:
                self._buffer.popleft()
            else:
                self._buffer[0] = head.slice(part.n, head.n)
        self._count -= taken
        self._room.set()

    async def _publish_with_retry(self, rows: list[tuple[str, WireRow]]) -> None:
        codec: CodecName = "msgpack" if self._codec == "columns" else self._codec
        items, per_provider = encode_rows(rows, codec, self._pack, self._pack_as)
        await self._publish_items(items, per_provider, len(rows))

    async def _publish_items(
        self, items: list[tuple[str, bytes]], per_provider: dict[str, int], events: int
    ) -> None:

        def report(exc: BaseException, delay_s: float | None) -> None:
            if delay_s is not None:
                self.retries += 1
                telemetry.RETRIES.labels(component="publisher").inc()
                log.warning(
                    "publish to %s failed (%s); retrying in %.2fs", self.topic, exc, delay_s
                )

        appended = await retry(
            lambda: self._bus.publish(self.topic, items),
            retry_on=BusError,
            backoff=Backoff(0.05, self._retry_max_delay_s),
            give_up_after_s=self._retry_timeout_s,
            on_failure=report,
        )
        self.entries += appended
        self.published += events
        for provider, count in per_provider.items():
            telemetry.EVENTS_INGESTED.labels(
                bus=self._bus.backend, topic=self.topic, provider=provider
            ).inc(count)
