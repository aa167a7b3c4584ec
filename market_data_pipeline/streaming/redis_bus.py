"""The Redis Streams bus (Redis 7.0+ and Valkey).

Layout: the events topic (``bus.events_topic``) is split into ``partitions`` streams
``<topic>:<n>`` (exactly ``<topic>`` when ``partitions == 1``); every other topic (bars, signals,
the DLQ) is one stream. An entry has one field, ``data``, holding the payload bytes, so an entry
written by any Redis client (``XADD mdp.events * data <json>``) is read like our own.

Publishing is one pipelined round trip per batch (``XADD ... MAXLEN ~ bus.maxlen``); retention is
therefore "about the last ``maxlen`` entries per stream". The DLQ is never trimmed.

Consuming (:class:`RedisConsumer`), per ``poll``:

1. every ``lease_ttl_ms / 3``, one Lua round trip refreshes this consumer's shard leases
   (see :mod:`market_data_pipeline.streaming.leases` for the mechanism and the takeover bound);
2. on each shard it newly holds, its **own** pending entries (left by a previous run under the
   same name) come first, oldest first, walking ``XPENDING`` forward from a cursor until none
   are left, so each is claimed once;
3. a newly held shard is *gated* while other consumers still have pending entries on it: new
   entries are not read from it until those are acked by their consumer (a live one that just
   released the shard) or claimed here once idle for ``claim_idle_ms`` (a dead one) — so per-key
   order holds across a takeover;
4. every ``claim_idle_ms / 4``, timed-out entries on held shards are claimed and delivered
   again: this consumer's own that it neither acked nor renewed (``in_progress``) for
   ``claim_idle_ms``, and other consumers' entries idle that long; now and then, group members
   with nothing pending and idle for ``2 * max(claim_idle_ms, lease_ttl_ms)`` are deleted;
5. otherwise ``XREADGROUP ... >`` over the held shards, blocking at most ``block_ms`` (capped at
   ``lease_ttl_ms / 3`` so leases are renewed in time).

Delivery counts are the PEL's ``times_delivered``. The consumer remembers what it holds (entries
delivered and not yet acked, dead-lettered or released) and never claims those again while
they are renewed, so buffering an entry across many polls, or waiting for the store, costs
nothing; a crash leaves the counts as they are (the restart's re-read is counted), while
:meth:`RedisConsumer.release` on a clean stop sets them back (``XCLAIM ... RETRYCOUNT``).
An entry about to be delivered for the ``max_deliveries + 1``-th time goes to the DLQ instead
(reason ``max_deliveries``, counted in ``errors_total{component="bus"}`` and
``bus_dead_letters``); the letter and the ack are one ``MULTI`` transaction.
Every redis-py error (connection refused/lost, timeouts, server errors) becomes ``BusError``;
the caller retries, and nothing acked is lost: unacked entries stay pending and come back.

``status`` confirms the lag by reading: ``XINFO GROUPS`` can report a stale lag (seen on Redis
7.0 after a restart from its AOF: lag 11,783 with every entry read), so the entries after the
group's ``last-delivered-id`` are counted by a script, up to 1,000 (a bounded cost: status is
polled every second by ``mdp run``'s progress line); above that XINFO's figure is shown if
larger. Zero, what a drain waits for, is therefore always read, never taken from XINFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, cast

import redis.asyncio as aredis
from redis.exceptions import RedisError, ResponseError

from market_data_core.config import BusConfig
from market_data_core.errors import BusError
from market_data_core.protocols import BusRecord, DeadLetter, StreamStatus, shard_for
from market_data_core.redaction import redact_url
from market_data_pipeline import telemetry
from market_data_pipeline.streaming.dlq import letter_fields, letter_from_fields, letter_from_record
from market_data_pipeline.streaming.leases import (
    MAINTAIN_LUA,
    RELEASE_LUA,
    lease_key,
    members_key,
    start_offset,
)

__all__ = ["RedisBus", "RedisConsumer"]

_DATA = b"data"
_Entries = list[tuple[bytes, dict[bytes, bytes] | None]]
_LAG_COUNT_CAP = 1000  # about 1 ms per shard at 167-byte entries (Redis 7.0, measured)
_RELEASE_CHUNK = 1000

# Entries after the group's last-delivered id (ARGV[1]), counted up to ARGV[2]: the lag,
# read rather than taken from XINFO (whose counter can be stale).
_COUNT_AFTER_LUA = """
local after = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
return #after
"""

# Set the delivery count of entries still pending to this consumer (ARGV[2] of group ARGV[1])
# back: pairs (id, count) from ARGV[3]. JUSTID keeps XCLAIM from counting a delivery itself.
_RESET_COUNTS_LUA = """
local n = 0
for i = 3, #ARGV, 2 do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if row[1] and row[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'RETRYCOUNT', ARGV[i + 1],
               'JUSTID')
    n = n + 1
  end
end
return n
"""


@contextlib.asynccontextmanager
async def _translated(what: str) -> AsyncIterator[None]:
    """Turn redis-py (and socket) failures into ``BusError`` naming the operation."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise BusError(f"redis bus: {what} failed: {type(exc).__name__}: {exc}") from exc


def _id_ms(entry_id: str) -> int:
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


class RedisBus:
    """A :class:`~market_data_core.protocols.Bus` on Redis Streams. Build with :meth:`connect`."""

    def __init__(self, client: aredis.Redis, config: BusConfig) -> None:
        self._client = client
        self._config = config
        self._events_topic = config.events_topic
        self._partitions = config.partitions
        self._maxlen = config.maxlen
        self._maintain = client.register_script(MAINTAIN_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._count_after = client.register_script(_COUNT_AFTER_LUA)
        self._reset_counts = client.register_script(_RESET_COUNTS_LUA)

    @classmethod
    async def connect(cls, url: str, config: BusConfig) -> RedisBus:
        """Connect (and ping) ``url``; raises ``BusError`` when the server cannot be reached."""
        client = aredis.Redis.from_url(url, socket_keepalive=True, health_check_interval=30)
        try:
            async with _translated(f"connecting to {redact_url(url)}"):
                await client.ping()
        except BusError:
            await client.aclose()
            raise
        return cls(client, config)

    @property
    def backend(self) -> Literal["redis", "kafka"]:
        return "redis"

    @property
    def client(self) -> aredis.Redis:
        return self._client

    @property
    def config(self) -> BusConfig:
        return self._config

    def shard_count(self, topic: str) -> int:
        """Shards of ``topic``: ``partitions`` for the events topic, 1 for every other one."""
        return self._partitions if topic == self._events_topic else 1

    def stream_name(self, topic: str, shard: int) -> str:
        """The Redis stream that holds shard ``shard`` of ``topic``."""
        if self.shard_count(topic) == 1:
            return topic
        return f"{topic}:{shard}"

    def streams(self, topic: str) -> list[str]:
        return [self.stream_name(topic, n) for n in range(self.shard_count(topic))]

    async def publish(self, topic: str, items: Sequence[tuple[str, bytes]]) -> int:
        """Append items in one pipelined round trip (``XADD MAXLEN ~``); per-key order is kept
        because a key always maps to the same stream and the pipeline preserves order."""
        if not items:
            return 0
        pipe = self._client.pipeline(transaction=False)
        command = pipe.execute_command
        maxlen = self._maxlen
        n = self.shard_count(topic)
        if n == 1:
            for _key, payload in items:
                command("XADD", topic, "MAXLEN", "~", maxlen, "*", "data", payload)
        else:
            names = self.streams(topic)
            for key, payload in items:
                command(
                    "XADD", names[shard_for(key, n)], "MAXLEN", "~", maxlen, "*", "data", payload
                )
        async with _translated(f"publish to {topic}"):
            await pipe.execute()
        return len(items)

    def consumer(self, topic: str, group: str, name: str) -> RedisConsumer:
        return RedisConsumer(self, topic, group, name)

    async def tail(self, topic: str, limit: int) -> list[BusRecord]:
        """The last ``limit`` entries over all shards, oldest first (merged by entry id)."""
        if limit <= 0:
            return []
        names = self.streams(topic)
        pipe = self._client.pipeline(transaction=False)
        for stream in names:
            pipe.xrevrange(stream, count=limit)
        async with _translated(f"tail {topic}"):
            replies = cast("list[_Entries]", await pipe.execute())
        records: list[tuple[tuple[int, int], BusRecord]] = []
        for shard, entries in enumerate(replies):
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                ms, _, seq = entry_id.partition("-")
                payload = (fields or {}).get(_DATA, b"")
                record = BusRecord(topic, shard, entry_id, payload)
                records.append(((int(ms), int(seq or 0)), record))
        records.sort(key=lambda pair: pair[0])
        return [record for _, record in records[-limit:]]

    async def status(self, topic: str, group: str | None = None) -> list[StreamStatus]:
        """Per shard: length, and per group (``group`` only, if given) lag, pending, consumers,
        the age of the oldest pending entry and the lease owner."""
        out: list[StreamStatus] = []
        async with _translated(f"status of {topic}"):
            now_ms = await self._server_ms()
            for stream in self.streams(topic):
                pipe = self._client.pipeline(transaction=False)
                pipe.xlen(stream)
                pipe.exists(stream)
                length, exists = await pipe.execute()
                groups: list[dict[str, Any]] = []
                if exists:
                    groups = await self._client.xinfo_groups(stream)
                wanted = [g for g in groups if group is None or _text(g.get("name")) == group]
                if not wanted:
                    out.append(StreamStatus(stream=stream, length=int(length), group=group))
                    continue
                for info in wanted:
                    name = _text(info.get("name"))
                    out.append(await self._group_status(stream, int(length), name, info, now_ms))
        return out

    async def _server_ms(self) -> int:
        seconds, micros = await self._client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def _group_status(
        self, stream: str, length: int, group: str, info: dict[str, Any], now_ms: int
    ) -> StreamStatus:
        pending = int(info.get("pending") or 0)
        lag_raw = info.get("lag")
        oldest_ms: int | None = None
        if pending:
            first = await self._client.xpending_range(stream, group, "-", "+", 1)
            if first:
                oldest_ms = max(0, now_ms - _id_ms(_text(first[0]["message_id"])))
        lag = await self._confirmed_lag(stream, info, None if lag_raw is None else int(lag_raw))
        owner = await self._client.get(lease_key(stream, group))
        return StreamStatus(
            stream=stream,
            length=length,
            group=group,
            lag=lag,
            pending=pending,
            consumers=int(info.get("consumers") or 0),
            oldest_pending_ms=oldest_ms,
            owner=None if owner is None else _text(owner),
        )

    async def _confirmed_lag(self, stream: str, info: dict[str, Any], hint: int | None) -> int:
        """The entries after the group's ``last-delivered-id``, counted by reading (up to
        ``_LAG_COUNT_CAP``; beyond that XINFO's ``hint`` if larger). XINFO's lag is only a
        hint: it is absent on Redis < 7 or after an XDEL, and can be stale (Redis 7.0 after a
        restart from its AOF reported thousands with nothing unread)."""
        last = _text(info.get("last-delivered-id") or b"0-0")
        unread = int(await self._count_after(keys=[stream], args=[last, _LAG_COUNT_CAP]))
        if unread < _LAG_COUNT_CAP:
            return unread
        return max(unread, hint or 0)

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Append ``letter`` to the DLQ (never trimmed)."""
        async with _translated("write to the DLQ"):
            await self._client.xadd(self._config.dlq_topic, _fields(letter))

    async def dlq_list(self, limit: int) -> list[DeadLetter]:
        async with _translated("read the DLQ"):
            entries = cast(
                "_Entries", await self._client.xrange(self._config.dlq_topic, count=limit)
            )
        return [
            letter_from_fields(raw_id.decode(), {k.decode(): v for k, v in (fields or {}).items()})
            for raw_id, fields in entries
        ]

    async def dlq_delete(self, entry_ids: Sequence[str]) -> int:
        if not entry_ids:
            return 0
        async with _translated("delete from the DLQ"):
            return int(await self._client.xdel(self._config.dlq_topic, *entry_ids))

    async def aclose(self) -> None:
        await self._client.aclose()


def _fields(letter: DeadLetter) -> dict[Any, Any]:
    return dict(letter_fields(letter))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class RedisConsumer:
    """One member of a consumer group on one topic; see the module docstring for ``poll``.

    Not safe for concurrent use: one task polls, acks and dead-letters.
    """

    def __init__(self, bus: RedisBus, topic: str, group: str, name: str) -> None:
        config = bus.config
        self._bus = bus
        self._client = bus.client
        self._topic = topic
        self._group = group
        self._name = name
        self._streams = bus.streams(topic)
        self._shard_of = {s.encode(): n for n, s in enumerate(self._streams)}
        self._members_key = members_key(topic, group)
        self._lease_keys = [lease_key(s, group) for s in self._streams]
        self._offset = start_offset(name, len(self._streams))
        self._lease_ttl_ms = config.redis.lease_ttl_ms
        self._renew_every_s = self._lease_ttl_ms / 3000
        self._claim_idle_ms = config.claim_idle_ms
        self._claim_every_s = max(config.claim_idle_ms / 4000, 0.05)
        self._max_deliveries = config.max_deliveries
        self._dlq = config.dlq_topic
        self._owned: list[int] = []
        self._own_pending: set[int] = set()
        # where the walk over this consumer's own pending entries of a shard resumes
        self._own_cursor: dict[int, str] = {}
        self._orphan_cursor: dict[int, str] = {}
        self._gated: set[int] = set()
        # per shard: entry id -> (deliveries, monotonic time of delivery or last in_progress)
        self._held: list[dict[str, tuple[int, float]]] = [{} for _ in self._streams]
        self._letters: dict[str, int] = {}
        self._groups_ready = False
        self._next_maintain = 0.0
        self._next_claim = 0.0
        self._claim_rounds = 0
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def owned_shards(self) -> frozenset[int]:
        return frozenset(self._owned)

    @property
    def bus_dead_letters(self) -> Mapping[str, int]:
        return dict(self._letters)

    @property
    def held(self) -> int:
        """How many entries this consumer holds (delivered, not yet acked or released)."""
        return sum(len(h) for h in self._held)

    async def _ensure_groups(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        for stream in self._streams:
            # From the start of the stream: events published before the first consumer
            # started are still processed.
            pipe.xgroup_create(stream, self._group, id="0", mkstream=True)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply
        self._groups_ready = True

    async def _refresh_leases(self) -> None:
        held = await self._bus._maintain(
            keys=[self._members_key, *self._lease_keys],
            args=[self._name, self._lease_ttl_ms, self._offset],
        )
        now_owned = sorted(int(x) for x in held)
        gained = set(now_owned) - set(self._owned)
        for shard in gained:
            self._own_pending.add(shard)
            self._own_cursor.pop(shard, None)
            self._gated.add(shard)
        lost = set(self._owned) - set(now_owned)
        self._own_pending -= lost
        self._gated -= lost
        self._owned = now_owned
        self._next_maintain = time.monotonic() + self._renew_every_s

    async def poll(self, max_count: int, block_ms: int) -> list[BusRecord]:
        """Up to ``max_count`` entries (see the module docstring for the order); ``[]`` after at
        most ``block_ms``. Raises ``BusError`` (nothing is lost: unacked entries come back)."""
        if self._closed:
            raise BusError(f"consumer {self._name} on {self._topic} is closed")
        max_count = max(1, max_count)
        async with _translated(f"poll {self._topic} as {self._group}/{self._name}"):
            if not self._groups_ready:
                await self._ensure_groups()
            try:
                return await self._poll(max_count, block_ms)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream or group was deleted under us: recreate, read again next poll.
                self._groups_ready = False
                return []

    async def _poll(self, max_count: int, block_ms: int) -> list[BusRecord]:
        now = time.monotonic()
        if now >= self._next_maintain:
            await self._refresh_leases()
        if not self._owned:
            await asyncio.sleep(min(block_ms / 1000, self._renew_every_s))
            return []
        if self._own_pending:
            records = await self._recover_own(max_count)
            if records:
                return records
        if self._gated:
            await self._ungate()
        if now >= self._next_claim:
            self._next_claim = now + self._claim_every_s
            records = await self._claim_idle(max_count)
            if records:
                return records
        readable = [s for s in self._owned if s not in self._gated]
        if not readable:
            await asyncio.sleep(min(block_ms / 1000, self._claim_every_s, self._renew_every_s))
            return []
        return await self._read_new(readable, max_count, block_ms)

    async def _read_new(self, shards: list[int], max_count: int, block_ms: int) -> list[BusRecord]:
        per_stream = max(1, max_count // len(shards))
        block = max(1, min(block_ms, int(self._renew_every_s * 1000)))
        reply: list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None
        reply = await self._client.xreadgroup(  # type: ignore[assignment]
            self._group,
            self._name,
            {self._streams[s]: ">" for s in shards},
            count=per_stream,
            block=block,
        )
        if not reply:
            return []
        topic = self._topic
        shard_of = self._shard_of
        out: list[BusRecord] = []
        append = out.append
        now = time.monotonic()
        for raw_stream, entries in reply:
            shard = shard_of[raw_stream]
            held = self._held[shard]
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                held[entry_id] = (1, now)
                append(BusRecord(topic, shard, entry_id, fields.get(_DATA, b"")))
        return out

    async def _recover_own(self, max_count: int) -> list[BusRecord]:
        """This consumer's pending entries on newly held shards (left by a previous run under
        the same name), oldest first. The walk goes forward from a cursor, so each entry is
        claimed once; entries this consumer already holds are skipped."""
        out: list[BusRecord] = []
        for shard in sorted(self._own_pending):
            want = max_count - len(out)
            if want <= 0:
                break
            rows = await self._client.xpending_range(
                self._streams[shard],
                self._group,
                self._own_cursor.get(shard, "-"),
                "+",
                want,
                consumername=self._name,
            )
            if len(rows) < want:
                self._own_pending.discard(shard)
                self._own_cursor.pop(shard, None)
            else:
                self._own_cursor[shard] = "(" + _text(rows[-1]["message_id"])
            held = self._held[shard]
            candidates = [
                (entry_id, int(row["times_delivered"]))
                for row in rows
                if (entry_id := _text(row["message_id"])) not in held
            ]
            out += await self._claim(shard, candidates, min_idle_ms=0)
        return out

    async def _ungate(self) -> None:
        """Open newly held shards on which no other consumer has pending entries any more."""
        gated = sorted(self._gated)
        pipe = self._client.pipeline(transaction=False)
        for shard in gated:
            pipe.xpending(self._streams[shard], self._group)
        summaries = await pipe.execute()
        for shard, summary in zip(gated, summaries, strict=True):
            if not self._others(summary):
                self._gated.discard(shard)
                continue
            # Held by a consumer that is gone (or gave the shard up): the idle-claim path
            # takes its entries after claim_idle_ms; until then the shard stays closed.
            self._next_claim = min(self._next_claim, time.monotonic())

    def _others(self, summary: dict[str, Any]) -> list[tuple[str, int]]:
        """(consumer, pending) of the other consumers in an ``XPENDING`` summary."""
        out = []
        for row in summary.get("consumers") or []:
            name = _text(row["name"])
            if name != self._name and int(row["pending"]):
                out.append((name, int(row["pending"])))
        return out

    async def _claim_idle(self, max_count: int) -> list[BusRecord]:
        """Timed-out entries on held shards: this consumer's own that were neither acked nor
        renewed for ``claim_idle_ms``, its own pending entries idle that long that it does
        not hold (an ack lost with a Redis restart), then other consumers' entries idle that
        long (a dead or stuck holder). Entries this consumer holds and renews are never
        claimed."""
        out: list[BusRecord] = []
        deadline = time.monotonic() - self._claim_idle_ms / 1000
        for shard in self._owned:
            want = max_count - len(out)
            if want <= 0:
                break
            expired = [
                (entry_id, deliveries)
                for entry_id, (deliveries, since) in self._held[shard].items()
                if since <= deadline
            ][:want]
            if expired:
                out += await self._claim(shard, expired, min_idle_ms=self._claim_idle_ms)
        for shard in self._owned:
            want = max_count - len(out)
            if want <= 0:
                break
            out += await self._claim_orphans(shard, want)
        if len(out) < max_count and self._owned:
            pipe = self._client.pipeline(transaction=False)
            for shard in self._owned:
                pipe.xpending(self._streams[shard], self._group)
            summaries = await pipe.execute()
            for shard, summary in zip(self._owned, summaries, strict=True):
                for other, _ in self._others(summary):
                    want = max_count - len(out)
                    if want <= 0:
                        break
                    rows = await self._client.xpending_range(
                        self._streams[shard],
                        self._group,
                        "-",
                        "+",
                        want,
                        consumername=other,
                        idle=self._claim_idle_ms,
                    )
                    candidates = [
                        (_text(row["message_id"]), int(row["times_delivered"])) for row in rows
                    ]
                    out += await self._claim(shard, candidates, min_idle_ms=self._claim_idle_ms)
        if not out:
            self._claim_rounds += 1
            if self._claim_rounds % 8 == 0:
                await self._prune_consumers()
        return out

    async def _claim_orphans(self, shard: int, want: int) -> list[BusRecord]:
        """One step of a walk over this consumer's own idle pending entries of ``shard``,
        resuming where the last step ended (so entries it holds, which may be many, are
        stepped over rather than read again each time) and wrapping around at the end."""
        start = self._orphan_cursor.get(shard, "-")
        rows = await self._client.xpending_range(
            self._streams[shard],
            self._group,
            start,
            "+",
            want,
            consumername=self._name,
            idle=self._claim_idle_ms,
        )
        if len(rows) < want:
            self._orphan_cursor.pop(shard, None)
        else:
            self._orphan_cursor[shard] = "(" + _text(rows[-1]["message_id"])
        held = self._held[shard]
        candidates = [
            (entry_id, int(row["times_delivered"]))
            for row in rows
            if (entry_id := _text(row["message_id"])) not in held
        ]
        return await self._claim(shard, candidates, min_idle_ms=self._claim_idle_ms)

    async def _prune_consumers(self) -> None:
        """Forget group members of held shards that have nothing pending and have been idle
        far longer than any live consumer can be (restarts under new names would otherwise
        pile up in ``XINFO CONSUMERS``). A live one is re-created by its next read."""
        idle_ms = max(self._claim_idle_ms, self._lease_ttl_ms) * 2
        for shard in self._owned:
            stream = self._streams[shard]
            members = await self._client.xinfo_consumers(stream, self._group)
            stale = [
                _text(m["name"])
                for m in members
                if int(m.get("pending") or 0) == 0
                and int(m.get("idle") or 0) > idle_ms
                and _text(m["name"]) != self._name
            ]
            if stale:
                pipe = self._client.pipeline(transaction=False)
                for name in stale:
                    pipe.xgroup_delconsumer(stream, self._group, name)
                await pipe.execute()

    async def _claim(
        self, shard: int, candidates: list[tuple[str, int]], *, min_idle_ms: int
    ) -> list[BusRecord]:
        """Claim pending entries ``(entry id, times delivered so far)`` of ``shard`` for this
        consumer, oldest first, and hold them; those already delivered ``max_deliveries``
        times go to the DLQ instead, those trimmed away while pending leave a ``trimmed``
        letter. An entry that ``XCLAIM`` skips (acked, or renewed by another consumer since)
        is not this consumer's any more."""
        if not candidates:
            return []
        stream = self._streams[shard]
        held = self._held[shard]
        deliveries: dict[str, int] = {}
        poison: list[tuple[str, int]] = []
        for entry_id, times in candidates:
            if times >= self._max_deliveries:
                poison.append((entry_id, times))
            else:
                deliveries[entry_id] = times
        if poison:
            await self._bury(shard, poison)
        if not deliveries:
            return []
        claimed = cast(
            "_Entries",
            await self._client.xclaim(
                stream, self._group, self._name, min_idle_ms, list(deliveries)
            ),
        )
        out: list[BusRecord] = []
        gone: list[str] = []
        returned: set[str] = set()
        now = time.monotonic()
        for raw_id, fields in claimed:
            entry_id = raw_id.decode()
            returned.add(entry_id)
            if fields is None:  # Redis 6: trimmed away while pending, nothing to deliver
                gone.append(entry_id)
                continue
            times = deliveries.get(entry_id, 0) + 1
            held[entry_id] = (times, now)
            out.append(BusRecord(self._topic, shard, entry_id, fields.get(_DATA, b""), times))
        missing = [e for e in deliveries if e not in returned]
        if missing:
            for entry_id in missing:
                held.pop(entry_id, None)
            # Redis 7 / Valkey drop trimmed entries from the PEL inside XCLAIM and return
            # nothing for them; an entry merely acked or claimed by someone else still exists.
            pipe = self._client.pipeline(transaction=False)
            for entry_id in missing:
                pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
            exists = await pipe.execute()
            gone += [e for e, rows in zip(missing, exists, strict=True) if not rows]
        if gone:
            await self._bury_trimmed(shard, gone, deliveries)
        return out

    async def _bury_trimmed(self, shard: int, gone: list[str], deliveries: dict[str, int]) -> None:
        """Nothing to deliver any more, but never silently: each lost entry leaves a dead
        letter (no payload) saying so, written and acked in one transaction, and counted."""
        stream = self._streams[shard]
        pipe = self._client.pipeline(transaction=True)
        for entry_id in gone:
            self._held[shard].pop(entry_id, None)
            record = BusRecord(self._topic, shard, entry_id, b"", deliveries.get(entry_id, 0) + 1)
            letter = letter_from_record(
                record,
                reason="trimmed",
                detail=(
                    f"pending entry {entry_id} of {stream} was trimmed by "
                    f"MAXLEN ~ {self._bus.config.maxlen} before it was processed; "
                    "its payload is lost (raise bus.maxlen or add consumers)"
                ),
                component="bus",
            )
            pipe.xadd(self._dlq, _fields(letter))
        pipe.xack(stream, self._group, *gone)
        await pipe.execute()
        self._count_letters("trimmed", len(gone))

    async def _bury(self, shard: int, poison: list[tuple[str, int]]) -> None:
        """Move entries delivered ``max_deliveries`` times to the DLQ and ack them in one
        transaction (MULTI): an entry is never acked without its letter."""
        stream = self._streams[shard]
        pipe = self._client.pipeline(transaction=False)
        for entry_id, _ in poison:
            pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
        bodies = cast("list[_Entries]", await pipe.execute())
        pipe = self._client.pipeline(transaction=True)
        for (entry_id, times), body in zip(poison, bodies, strict=True):
            self._held[shard].pop(entry_id, None)
            payload = (body[0][1] or {}).get(_DATA, b"") if body else b""
            record = BusRecord(self._topic, shard, entry_id, payload, times)
            letter = letter_from_record(
                record,
                reason="max_deliveries",
                detail=f"delivered {times} times (max_deliveries={self._max_deliveries})",
                component="bus",
            )
            pipe.xadd(self._dlq, _fields(letter))
        pipe.xack(stream, self._group, *(entry_id for entry_id, _ in poison))
        await pipe.execute()
        self._count_letters("max_deliveries", len(poison))

    def _count_letters(self, reason: str, n: int) -> None:
        self._letters[reason] = self._letters.get(reason, 0) + n
        telemetry.ERRORS.labels(component="bus", reason=reason).inc(n)

    async def ack(self, records: Sequence[BusRecord]) -> None:
        """XACK, one pipelined round trip for all shards. Acking an entry twice is harmless."""
        if not records:
            return
        by_shard: dict[int, list[str]] = {}
        for record in records:
            by_shard.setdefault(record.shard, []).append(record.entry_id)
        pipe = self._client.pipeline(transaction=False)
        for shard, ids in by_shard.items():
            pipe.xack(self._streams[shard], self._group, *ids)
        async with _translated(f"ack on {self._topic}"):
            await pipe.execute()
        for shard, ids in by_shard.items():
            held = self._held[shard]
            for entry_id in ids:
                held.pop(entry_id, None)

    async def in_progress(self, records: Sequence[BusRecord]) -> None:
        """Renew the hold on ``records`` for another ``claim_idle_ms`` (bookkeeping in this
        process: only this consumer claims entries of the shards it holds)."""
        now = time.monotonic()
        for record in records:
            held = self._held[record.shard]
            entry = held.get(record.entry_id)
            if entry is not None:
                held[record.entry_id] = (entry[0], now)

    async def release(self, records: Sequence[BusRecord]) -> None:
        """Hand held entries back on a clean stop: each one still pending to this consumer
        gets its delivery count set back to what it was before this process received it
        (``XCLAIM ... RETRYCOUNT n JUSTID``, in a script that first checks the owner), so the
        next start's re-read is not counted as a redelivery."""
        by_shard: dict[int, list[str]] = {}
        for record in records:
            entry = self._held[record.shard].pop(record.entry_id, None)
            if entry is not None:
                by_shard.setdefault(record.shard, []).extend(
                    (record.entry_id, str(max(0, entry[0] - 1)))
                )
        async with _translated(f"release entries of {self._topic}"):
            for shard, args in by_shard.items():
                for i in range(0, len(args), 2 * _RELEASE_CHUNK):
                    await self._bus._reset_counts(
                        keys=[self._streams[shard]],
                        args=[self._group, self._name, *args[i : i + 2 * _RELEASE_CHUNK]],
                    )

    async def dead_letter(
        self, record: BusRecord, *, reason: str, detail: str, component: str
    ) -> None:
        """Write ``record`` to the DLQ and ack it, atomically (MULTI): either both or neither.

        The caller counts ``errors_total{component, reason}``; the bus counts only the letters
        it writes itself (``max_deliveries``, ``trimmed``)."""
        letter = letter_from_record(record, reason=reason, detail=detail, component=component)
        pipe = self._client.pipeline(transaction=True)
        pipe.xadd(self._dlq, _fields(letter))
        pipe.xack(self._streams[record.shard], self._group, record.entry_id)
        async with _translated(f"dead-letter {record.source}"):
            await pipe.execute()
        self._held[record.shard].pop(record.entry_id, None)

    async def aclose(self) -> None:
        """Release this consumer's leases and leave the registry (pending entries stay
        pending: a restart under the same name receives them first, counted as redelivered
        unless they were handed back with :meth:`release`)."""
        if self._closed:
            return
        self._closed = True
        self._owned = []
        for held in self._held:
            held.clear()
        with contextlib.suppress(BusError):
            async with _translated("release leases"):
                await self._bus._release(
                    keys=[self._members_key, *self._lease_keys], args=[self._name]
                )
