"""The Kafka bus (aiokafka; ``pip install 'mdp-streaming[kafka]'``), tested against Tansu and
usable with any Kafka 2.x+ broker.

Layout: the events topic has ``partitions`` partitions, every other topic (bars, signals, DLQ)
one; topics are created on first use. A record's key is the symbol (UTF-8 bytes,
:func:`~market_data_core.protocols.partition_key`) and its partition is the one Kafka's default
partitioner gives that key for the topic's actual partition count (murmur2,
:func:`~market_data_core.protocols.shard_for`): a record any other producer writes with the
symbol as its key (aiokafka, the Java client; librdkafka clients with
``partitioner=murmur2_random``, since librdkafka's own default is CRC-32) lands on the same
partition, so per-symbol order and one reader per symbol hold across producers. The Redis bus
routes by the same function, so both backends put a symbol on the same shard. Producer:
``acks=all``, compression zstd or lz4 when ``compression: auto`` and the codec is importable,
no idempotence (Tansu 0.6 lacks it; event ids make retries safe downstream). Retention is the
broker's topic setting (``retention.ms``), not ``bus.maxlen``.

Consuming (:class:`KafkaConsumer`): a member of a Kafka consumer group (the broker assigns each
partition to one live member: that is the shard ownership). Offsets are committed only after
:meth:`~KafkaConsumer.ack`, up to the lowest offset still unacked on each partition, so after a
restart or a rebalance everything unacked is delivered again (to this consumer, or to the member
that now holds the partition). A dead member's partitions move after ``session_timeout_ms`` plus
the rebalance; a member that stops polling for ``max(session_timeout_ms, claim_idle_ms)`` is
taken out of the group too. A record the consumer holds (delivered, not acked) is never
delivered to it again while the caller renews it (``in_progress``), e.g. while it sits in a
window buffer during a store outage; one neither acked nor renewed for ``claim_idle_ms`` has
timed out and is delivered again (the consumer seeks back to it; records acked or still held
meanwhile are skipped, not counted). Delivery counts are kept by this consumer process (Kafka
has none): a record delivered ``max_deliveries`` times by this process goes to the DLQ (reason
``max_deliveries``) instead of a further delivery; counts restart at 1 in a new process.

The DLQ topic holds msgpack maps (see :mod:`~market_data_pipeline.streaming.dlq`); since Kafka
cannot delete a record, :meth:`KafkaBus.dlq_delete` appends a deletion marker that
:meth:`KafkaBus.dlq_list` honours. Every aiokafka error becomes ``BusError``.

Tansu 0.6 notes: ``end_offsets`` can be wrong after a batched produce, so lengths and lags are
confirmed by reading; group joins are slow unless ``session_timeout_ms`` is short (~1.5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal

import msgpack

from market_data_core.config import BusConfig
from market_data_core.errors import BusError
from market_data_core.protocols import (
    BusRecord,
    DeadLetter,
    StreamStatus,
    partition_key,
    shard_for,
)
from market_data_pipeline import telemetry
from market_data_pipeline.streaming.dlq import letter_fields, letter_from_fields, letter_from_record

try:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.abc import ConsumerRebalanceListener
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.codec import has_lz4, has_zstd
    from aiokafka.errors import KafkaError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the Kafka bus needs aiokafka: install with: pip install 'mdp-streaming[kafka]'"
    ) from exc

__all__ = ["KafkaBus", "KafkaConsumer"]

log = logging.getLogger(__name__)

_TOPIC_EXISTS = 36
_IDLE_READ_MS = 400


@contextlib.asynccontextmanager
async def _translated(operation: str, what: str) -> AsyncIterator[None]:
    try:
        yield
    except (KafkaError, OSError) as exc:
        raise BusError(
            f"kafka bus: {what} failed: {type(exc).__name__}: {exc}",
            backend="kafka",
            operation=operation,
        ) from exc


def _extra_fields(record: Any) -> tuple[tuple[str, bytes], ...]:
    """A consumed record's key and headers (``header.<name>``): kept in its dead letter."""
    out = [] if record.key is None else [("key", bytes(record.key))]
    out += [(f"header.{name}", bytes(value or b"")) for name, value in record.headers or ()]
    return tuple(out)


def _compression(config: BusConfig) -> str | None:
    wanted = config.kafka.compression
    if wanted == "none":
        return None
    if wanted != "auto":
        return wanted
    if has_zstd():
        return "zstd"
    if has_lz4():
        return "lz4"
    return None


class KafkaBus:
    """A :class:`~market_data_core.protocols.Bus` on Kafka. Build with :meth:`connect`."""

    def __init__(
        self,
        bootstrap: str,
        config: BusConfig,
        producer: AIOKafkaProducer,
        admin: AIOKafkaAdminClient,
    ) -> None:
        self._bootstrap = bootstrap
        self._config = config
        self._producer = producer
        self._admin = admin
        self._known_topics: set[str] = set()
        self._warned_counts: set[str] = set()

    @classmethod
    async def connect(cls, bootstrap: str, config: BusConfig) -> KafkaBus:
        """Start a producer and an admin client; ``BusError`` when the broker is unreachable."""
        common: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "security_protocol": config.kafka.security_protocol,
        }
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=False,
            compression_type=_compression(config),
            linger_ms=5,
            max_batch_size=1 << 20,
            **common,
        )
        admin = AIOKafkaAdminClient(**common)
        try:
            async with _translated("connect", f"connecting to {bootstrap}"):
                await producer.start()
                await admin.start()
        except BusError:
            await producer.stop()
            await admin.close()
            raise
        return cls(bootstrap, config, producer, admin)

    @property
    def backend(self) -> Literal["redis", "kafka"]:
        return "kafka"

    @property
    def config(self) -> BusConfig:
        return self._config

    @property
    def bootstrap(self) -> str:
        return self._bootstrap

    def shard_count(self, topic: str) -> int:
        return self._config.partitions if topic == self._config.events_topic else 1

    async def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` with its shard count if it does not exist yet."""
        if topic in self._known_topics:
            return
        async with _translated("create_topic", f"create topic {topic}"):
            reply = await self._admin.create_topics([NewTopic(topic, self.shard_count(topic), 1)])
        for error in getattr(reply, "topic_errors", []):
            code, message = error[1], error[2]
            if code not in (0, _TOPIC_EXISTS):
                raise BusError(
                    f"kafka bus: cannot create topic {topic}: {message} ({code})",
                    backend="kafka",
                    operation="create_topic",
                )
        self._known_topics.add(topic)

    async def _partition_count(self, topic: str) -> int:
        """The topic's partitions as the broker reports them (what every other producer's
        partitioner divides by); a mismatch with ``bus.partitions`` is logged once."""
        partitions = await self._producer.partitions_for(topic)
        n = len(partitions)
        expected = self.shard_count(topic)
        if n != expected and topic not in self._warned_counts:
            self._warned_counts.add(topic)
            log.warning(
                "kafka topic %s has %d partitions, the config says %d: keys go where Kafka's "
                "default partitioner puts them for %d (as every other producer's do)",
                topic,
                n,
                expected,
                n,
            )
        return n

    async def publish(self, topic: str, items: Sequence[tuple[str, bytes]]) -> int:
        """Append items as one record batch per partition and wait for ``acks=all``; each
        goes to the partition Kafka's default partitioner gives its key (module doc)."""
        if not items:
            return 0
        await self.ensure_topic(topic)
        producer = self._producer
        batches: dict[int, Any] = {}
        futures = []
        async with _translated("publish", f"publish to {topic}"):
            n = await self._partition_count(topic)
            for key, payload in items:
                partition = shard_for(key, n)
                record_key = partition_key(key)
                batch = batches.get(partition)
                if batch is None:
                    batch = batches[partition] = producer.create_batch()
                if batch.append(key=record_key, value=payload, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = batches[partition] = producer.create_batch()
                    batch.append(key=record_key, value=payload, timestamp=None)
            for partition, batch in batches.items():
                if batch.record_count():
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*futures)
        return len(items)

    def consumer(self, topic: str, group: str, name: str) -> KafkaConsumer:
        return KafkaConsumer(self, topic, group, name)

    def _reader(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            security_protocol=self._config.kafka.security_protocol,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    async def _read(self, topic: str, start: dict[int, int] | None = None) -> dict[int, list[Any]]:
        """Every record of ``topic`` from ``start`` (partition -> offset; default: the
        beginning) until the partitions stay quiet for a moment. Not for huge topics."""
        await self.ensure_topic(topic)
        reader = self._reader()
        out: dict[int, list[Any]] = {}
        async with _translated("read", f"read {topic}"):
            await reader.start()
            try:
                parts = [TopicPartition(topic, p) for p in range(self.shard_count(topic))]
                reader.assign(parts)
                for tp in parts:
                    offset = (start or {}).get(tp.partition)
                    if offset is None:
                        await reader.seek_to_beginning(tp)
                    else:
                        reader.seek(tp, offset)
                while True:
                    got = await reader.getmany(timeout_ms=_IDLE_READ_MS, max_records=10_000)
                    if not got:
                        break
                    for tp, records in got.items():
                        out.setdefault(tp.partition, []).extend(records)
            finally:
                await reader.stop()
        return out

    async def tail(self, topic: str, limit: int) -> list[BusRecord]:
        if limit <= 0:
            return []
        await self.ensure_topic(topic)
        _, ends = await self._offsets(topic)
        start = {p: max(0, end - limit) for p, end in ends.items()}
        read = await self._read(topic, start)
        records = [
            (r.timestamp, r.partition, r.offset, r.value or b"", _extra_fields(r))
            for rs in read.values()
            for r in rs[-limit:]
        ]
        records.sort(key=lambda rec: rec[:3])
        return [
            BusRecord(topic, p, str(off), value, 1, extra)
            for _, p, off, value, extra in records[-limit:]
        ]

    async def topic_exists(self, topic: str) -> bool:
        """Whether the broker knows ``topic`` (its metadata; never creates it)."""
        if topic in self._known_topics:
            return True
        async with _translated("lookup", f"look up {topic}"):
            return topic in await self._admin.list_topics()

    async def _offsets(self, topic: str) -> tuple[dict[int, int], dict[int, int]]:
        """(first, end) offset per partition as the broker reports them."""
        reader = self._reader()
        async with _translated("end_offsets", f"end offsets of {topic}"):
            await reader.start()
            try:
                parts = [TopicPartition(topic, p) for p in range(self.shard_count(topic))]
                ends = await reader.end_offsets(parts)
                starts = await reader.beginning_offsets(parts)
            finally:
                await reader.stop()
        return (
            {tp.partition: off for tp, off in starts.items()},
            {tp.partition: off for tp, off in ends.items()},
        )

    async def _committed(self, topic: str, group: str) -> dict[int, int]:
        """The group's committed offset per partition (through a consumer that does not join
        the group: Tansu 0.6 cannot answer the admin OffsetFetch)."""
        reader = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            security_protocol=self._config.kafka.security_protocol,
            group_id=group,
            enable_auto_commit=False,
        )
        out: dict[int, int] = {}
        async with _translated("committed_offsets", f"committed offsets of {group}"):
            await reader.start()
            try:
                for p in range(self.shard_count(topic)):
                    offset = await reader.committed(TopicPartition(topic, p))
                    if offset is not None and offset >= 0:
                        out[p] = offset
            finally:
                await reader.stop()
        return out

    async def status(self, topic: str, group: str | None = None) -> list[StreamStatus]:
        """Per partition: length and, per group (``group``, or every group that committed on
        ``topic``), lag from the committed offset. Kafka has no pending list: uncommitted work
        shows as lag. The end offset is confirmed by reading past the reported one (Tansu's
        can be stale)."""
        await self.ensure_topic(topic)
        starts, ends = await self._offsets(topic)
        probe = {p: max(starts.get(p, 0), end - 1, 0) for p, end in ends.items()}
        tail = await self._read(topic, probe)
        for p, records in tail.items():
            if records:
                ends[p] = max(ends.get(p, 0), records[-1].offset + 1)
        groups: dict[str | None, dict[int, int]] = {}
        names = [group] if group is not None else await self._group_names()
        for name in names:
            committed = await self._committed(topic, name)
            if group is not None or committed:
                groups[name] = committed
        if not groups:
            groups[None] = {}
        sharded = self.shard_count(topic) > 1
        out = []
        for group_name, offsets in groups.items():
            consumers = 0 if group_name is None else await self._members(group_name)
            for p in range(self.shard_count(topic)):
                first, end = starts.get(p, 0), ends.get(p, 0)
                out.append(
                    StreamStatus(
                        stream=f"{topic}[{p}]" if sharded else topic,
                        length=max(0, end - first),
                        group=group_name,
                        lag=None if group_name is None else max(0, end - offsets.get(p, first)),
                        pending=0,
                        consumers=consumers,
                    )
                )
        return out

    async def _group_names(self) -> list[str]:
        async with _translated("list_groups", "list consumer groups"):
            listed = await self._admin.list_consumer_groups()
        return sorted({str(g[0]) for g in listed if g})

    async def _members(self, group: str) -> int:
        async with _translated("describe_group", f"describe group {group}"):
            described = await self._admin.describe_consumer_groups([group])
        members = 0
        for desc in described:
            for g in getattr(desc, "groups", []):
                members = max(members, len(g[-1]) if g else 0)
        return members

    async def dead_letter(self, letter: DeadLetter) -> None:
        await self._send_letter(letter)

    async def _send_letter(self, letter: DeadLetter) -> None:
        dlq = self._config.dlq_topic
        await self.ensure_topic(dlq)
        value = msgpack.packb(letter_fields(letter), use_bin_type=True)
        async with _translated("dlq_write", "write to the DLQ"):
            await self._producer.send_and_wait(dlq, value=value, partition=0)

    async def dlq_list(self, limit: int) -> list[DeadLetter]:
        read = await self._read(self._config.dlq_topic)
        letters: dict[str, DeadLetter] = {}
        for record in read.get(0, []):
            try:
                fields = msgpack.unpackb(record.value, raw=False, strict_map_key=False)
            except Exception:  # a foreign record on our DLQ: show it as an unknown letter
                fields = {"payload": record.value or b""}
            if not isinstance(fields, dict):
                continue
            deleted = fields.get("deleted")
            if isinstance(deleted, list):
                for entry_id in deleted:
                    letters.pop(str(entry_id), None)
                continue
            entry_id = str(record.offset)
            letters[entry_id] = letter_from_fields(
                entry_id,
                {str(k): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()},
            )
        return list(letters.values())[:limit]

    async def dlq_delete(self, entry_ids: Sequence[str]) -> int:
        """Append a deletion marker for ``entry_ids`` (Kafka cannot delete single records)."""
        if not entry_ids:
            return 0
        present = {lt.entry_id for lt in await self.dlq_list(1 << 30)}
        ids = [i for i in entry_ids if i in present]
        if not ids:
            return 0
        value = msgpack.packb({"deleted": ids}, use_bin_type=True)
        async with _translated("dlq_delete", "delete from the DLQ"):
            await self._producer.send_and_wait(self._config.dlq_topic, value=value, partition=0)
        return len(ids)

    async def aclose(self) -> None:
        with contextlib.suppress(KafkaError, OSError):
            await self._producer.stop()
        with contextlib.suppress(KafkaError, OSError):
            await self._admin.close()


class _PartitionState:
    """Delivery bookkeeping of one assigned partition."""

    __slots__ = ("acked", "committed", "deliveries", "in_flight", "next_offset", "returned")

    def __init__(self) -> None:
        # held: offset -> monotonic time of delivery or of the last in_progress
        self.in_flight: dict[int, float] = {}
        # given back and not acked, to be delivered again when read again: offset -> whether
        # that delivery counts (True: timed out; False: released on a clean stop)
        self.returned: dict[int, bool] = {}
        self.acked: set[int] = set()  # acked offsets above the committed watermark
        self.deliveries: dict[int, int] = {}
        self.next_offset = -1  # one past the highest offset delivered
        self.committed = -1

    def watermark(self) -> int:
        """The lowest offset not done yet: commits never go past it."""
        mark = self.next_offset
        if self.in_flight:
            mark = min(mark, min(self.in_flight))
        if self.returned:
            mark = min(mark, min(self.returned))
        return mark


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: KafkaConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._owner._on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class KafkaConsumer:
    """A Kafka consumer-group member; see the module docstring. One task uses it at a time."""

    def __init__(self, bus: KafkaBus, topic: str, group: str, name: str) -> None:
        config = bus.config
        self._bus = bus
        self._topic = topic
        self._group = group
        self._name = name
        self._max_deliveries = config.max_deliveries
        self._claim_idle_s = config.claim_idle_ms / 1000
        session_ms = config.kafka.session_timeout_ms
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bus.bootstrap,
            security_protocol=config.kafka.security_protocol,
            group_id=group,
            client_id=name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 3),
            rebalance_timeout_ms=max(session_ms, 3000),
            # A member that stops polling for this long leaves the group (its partitions move
            # on), like a Redis consumer whose leases lapse.
            max_poll_interval_ms=max(session_ms, config.claim_idle_ms),
        )
        self._started = False
        self._closed = False
        self._state: dict[int, _PartitionState] = {}
        self._letters: dict[str, int] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def owned_shards(self) -> frozenset[int]:
        if not self._started:
            return frozenset()
        return frozenset(tp.partition for tp in self._consumer.assignment())

    @property
    def bus_dead_letters(self) -> Mapping[str, int]:
        return dict(self._letters)

    async def _start(self) -> None:
        await self._bus.ensure_topic(self._topic)
        # Start, then subscribe: start() after subscribe() waits for the first assignment
        # without a bound (and a Tansu group join can stall); getmany() bounds it by block_ms.
        await self._consumer.start()
        self._started = True
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))

    async def _on_revoked(self, partitions: set[int]) -> None:
        with contextlib.suppress(KafkaError):
            await self._commit(partitions)
        for p in partitions:
            self._state.pop(p, None)

    async def poll(self, max_count: int, block_ms: int) -> list[BusRecord]:
        if self._closed:
            raise BusError(
                f"consumer {self._name} on {self._topic} is closed",
                backend="kafka",
                operation="poll",
            )
        async with _translated("poll", f"poll {self._topic} as {self._group}/{self._name}"):
            if not self._started:
                await self._start()
            self._rewind_idle()
            got = await self._consumer.getmany(timeout_ms=block_ms, max_records=max(1, max_count))
            out: list[BusRecord] = []
            poison: list[BusRecord] = []
            now = time.monotonic()
            for tp, records in got.items():
                topic, partition = self._topic, tp.partition
                state = self._state.setdefault(partition, _PartitionState())
                for r in records:
                    offset = r.offset
                    if offset in state.acked or offset in state.in_flight:
                        continue  # done, or still held: not delivered again, not counted
                    # a timed-out (or new) record counts a delivery; a released one does not
                    counted = state.returned.pop(offset, True)
                    times = max(1, state.deliveries.get(offset, 0) + (1 if counted else 0))
                    state.deliveries[offset] = times
                    state.in_flight[offset] = now
                    state.next_offset = max(state.next_offset, offset + 1)
                    entry_id, payload, extra = str(offset), r.value or b"", _extra_fields(r)
                    if times > self._max_deliveries:
                        poison.append(
                            BusRecord(topic, partition, entry_id, payload, times - 1, extra)
                        )
                    else:
                        out.append(BusRecord(topic, partition, entry_id, payload, times, extra))
        for record in poison:
            letter = letter_from_record(
                record,
                reason="max_deliveries",
                detail=f"delivered {record.deliveries} times "
                f"(max_deliveries={self._max_deliveries})",
                component="bus",
            )
            await self._bus._send_letter(letter)
            await self.ack([record])
            self._letters["max_deliveries"] = self._letters.get("max_deliveries", 0) + 1
            telemetry.ERRORS.labels(component="bus", reason="max_deliveries").inc()
        return out

    def _rewind_idle(self) -> None:
        """Seek back to records that timed out (neither acked nor renewed for
        ``claim_idle_ms``) so they are delivered again; held records are skipped then."""
        deadline = time.monotonic() - self._claim_idle_s
        for p, state in self._state.items():
            expired = [o for o, since in state.in_flight.items() if since <= deadline]
            if not expired:
                continue
            for offset in expired:
                del state.in_flight[offset]
                state.returned[offset] = True
            self._consumer.seek(TopicPartition(self._topic, p), min(state.returned))

    async def in_progress(self, records: Sequence[BusRecord]) -> None:
        """Renew the hold on ``records`` for another ``claim_idle_ms``."""
        now = time.monotonic()
        for record in records:
            state = self._state.get(record.shard)
            offset = int(record.entry_id)
            if state is not None and offset in state.in_flight:
                state.in_flight[offset] = now

    async def release(self, records: Sequence[BusRecord]) -> None:
        """Hand held records back on a clean stop: they stay uncommitted (the next start reads
        them again) and, if this consumer reads them again, that delivery is not counted."""
        for record in records:
            state = self._state.get(record.shard)
            offset = int(record.entry_id)
            if state is not None and state.in_flight.pop(offset, None) is not None:
                state.returned[offset] = False

    async def ack(self, records: Sequence[BusRecord]) -> None:
        """Mark records done and commit, per partition, up to the lowest unacked offset."""
        touched: set[int] = set()
        for record in records:
            state = self._state.get(record.shard)
            if state is None:  # partition revoked since: the new owner delivers it again
                continue
            offset = int(record.entry_id)
            state.in_flight.pop(offset, None)
            state.returned.pop(offset, None)
            state.acked.add(offset)
            touched.add(record.shard)
        if touched:
            async with _translated("commit", f"commit on {self._topic}"):
                await self._commit(touched)

    async def ack_ids(self, entry_ids: Mapping[int, Sequence[str]]) -> None:
        """:meth:`ack` by ``{partition: offsets as text}``."""
        await self.ack(
            [
                BusRecord(self._topic, shard, entry_id, b"")
                for shard, ids in entry_ids.items()
                for entry_id in ids
            ]
        )

    async def _commit(self, partitions: set[int]) -> None:
        assigned = {tp.partition for tp in self._consumer.assignment()}
        offsets = {}
        for p in partitions & assigned:
            state = self._state.get(p)
            if state is None:
                continue
            mark = state.watermark()
            if mark > state.committed:
                offsets[TopicPartition(self._topic, p)] = mark
                state.committed = mark
                state.acked = {o for o in state.acked if o >= mark}
                state.deliveries = {o: n for o, n in state.deliveries.items() if o >= mark}
        if offsets:
            await self._consumer.commit(offsets)

    async def dead_letter(
        self, record: BusRecord, *, reason: str, detail: str, component: str
    ) -> None:
        """Write the record to the DLQ, then ack it (a crash in between re-delivers it, and it
        is dead-lettered again: the DLQ may hold a duplicate, never a loss)."""
        letter = letter_from_record(record, reason=reason, detail=detail, component=component)
        await self._bus._send_letter(letter)
        await self.ack([record])

    async def aclose(self) -> None:
        """Commit what was acked and leave the group (its partitions are reassigned now)."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            return
        with contextlib.suppress(KafkaError, OSError):
            await self._commit(set(self._state))
        with contextlib.suppress(KafkaError, OSError):
            await self._consumer.stop()
