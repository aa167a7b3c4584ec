"""The Redis Streams bus (Redis 7.0+ and Valkey), on one server or on a Redis Cluster.

Layout (:mod:`~market_data_pipeline.streaming.redis_layout`): the events topic
(``bus.events_topic``) is split into ``partitions`` streams ``<topic>:<n>`` (exactly ``<topic>``
when ``partitions == 1``; on a cluster ``<topic>:{<tag>}``, hash-tagged so that a shard's
stream, group, lease and dead letters share one slot and the shards spread over the masters);
every other topic (bars, signals, the DLQ) is one stream. An entry has one field, ``data``,
holding the payload bytes, so an entry written by any Redis client
(``XADD mdp.events * data <json>``) is read like our own. Any other field of an entry is kept in
the record (``BusRecord.extra_fields``) and so in its dead letter: an entry written with its
content in another field (``XADD mdp.events * payload <json>``) is dead-lettered with that
field, not lost.

A cluster (``bus.redis.cluster: true``, or a ``redis+cluster://`` / ``rediss+cluster://`` URL,
whose comma-separated hosts are all seeds) is spoken to by redis-py's ``RedisCluster``, which
follows ``MOVED``/``ASK`` redirections (a resharding) and refreshes its slot map after a
failover. Every script and transaction touches one slot; a pipeline is split per master and
sent in parallel; reads of several shards are one ``XREADGROUP`` per stream.

Publishing is one pipelined round trip per batch: per stream, one script call that appends the
batch's entries of that stream in order (``XADD`` each, up to ``_PUBLISH_CHUNK`` per call, then
one ``XTRIM ... MAXLEN ~ bus.maxlen``), so the client encodes one command and parses one reply
per stream instead of one per entry (an XADD pipelined by redis-py cost the producer ~10 µs per
entry, the script ~0.6; the server ~0.3 µs more per entry); retention is therefore "about the
last ``maxlen`` entries per stream". The DLQ is never trimmed. With
``bus.redis.wait_replicas: r`` the batch ends with ``WAIT r wait_timeout_ms`` on every master it
wrote to: a publish returns only once ``r`` replicas have the entries, else it raises
``BusError`` (the publisher retries; entries already appended are appended again, which event
ids make harmless). Without it a failover can lose what the old master acknowledged but had
not replicated yet (Redis replicates asynchronously); on a cluster the bus keeps the ids of the
last entries it published per stream and, when a stream's master changes, checks they are
still there: those that are not are reported (an error log line and
``errors_total{component="bus",reason="lost_writes"}``, :attr:`RedisBus.lost_writes`).

Consuming (:class:`RedisConsumer`), per ``poll``:

1. every ``lease_ttl_ms / 3``, one pipelined round trip of one-key scripts refreshes this
   consumer's shard leases (see :mod:`market_data_pipeline.streaming.leases` for the mechanism
   and the takeover bound);
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
5. otherwise ``XREADGROUP ... >`` over the held shards (on a cluster one per stream),
   blocking at most ``block_ms`` (capped at ``lease_ttl_ms / 3`` so leases are renewed in
   time).

Delivery counts are the PEL's ``times_delivered``. The consumer remembers what it holds (entries
delivered and not yet acked, dead-lettered or released) and never claims those again while
they are renewed, so buffering an entry across many polls, or waiting for the store, costs
nothing; a crash leaves the counts as they are (the restart's re-read is counted), while
:meth:`RedisConsumer.release` on a clean stop sets them back (``XCLAIM ... RETRYCOUNT``).
An entry about to be delivered for the ``max_deliveries + 1``-th time goes to the DLQ instead
(reason ``max_deliveries``, counted in ``errors_total{component="bus"}`` and
``bus_dead_letters``); the letter and the ack are one atomic script (on a cluster the
letter goes to the DLQ stream in its entry's slot, so a failover keeps or loses both).
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
import collections
import contextlib
import logging
import math
import operator
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from market_data_core.config import BusConfig
from market_data_core.errors import BusError, ConfigError
from market_data_core.protocols import (
    BusRecord,
    DeadLetter,
    RecordBatch,
    StreamStatus,
    shard_for,
)
from market_data_core.redaction import redact_url
from market_data_pipeline import telemetry
from market_data_pipeline.streaming import leases
from market_data_pipeline.streaming.dlq import letter_fields, letter_from_fields, letter_from_record
from market_data_pipeline.streaming.redis_layout import RedisLayout

__all__ = ["RedisBus", "RedisConsumer", "cluster_seeds"]

log = logging.getLogger(__name__)

_DATA = b"data"
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
_Entries = list[tuple[bytes, dict[bytes, bytes] | None]]
_LAG_COUNT_CAP = 1000  # about 1 ms per shard at 167-byte entries (Redis 7.0, measured)
_RELEASE_CHUNK = 1000
# entries per publish script call (bounds one call's arguments and the time it holds the server)
_PUBLISH_CHUNK = 1000
# routing keys whose stream a bus remembers per topic before it starts over
_KEYS_REMEMBERED = 1 << 16
_LETTER_CHUNK = 200  # letters per script call (each one 18 arguments)
# a stream's trimmed-unread error line is logged at most this often (the count always)
_TRIM_REPORT_EVERY_S = 60.0
# ids of recent publishes kept per stream on a cluster, to find writes a failover lost
_RECENT_IDS_BUDGET = 200_000
_RECENT_IDS_MIN = 1_000
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

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


# A dead letter and the ack of its entry, atomically (one slot: the DLQ stream of the entry's
# slot and the entry's stream). KEYS[1] = DLQ stream, KEYS[2] = source stream; ARGV[1] = group,
# ARGV[2] = letters k, ARGV[3] = arguments per letter w (field/value pairs), then k * w
# arguments, then the entry ids to ack. Returns how many entries were acked.
_LETTERS_AND_ACK_LUA = """
local k, w = tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
for _ = 1, k do
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i, i + w - 1))
  i = i + w
end
if i > #ARGV then return 0 end
return redis.call('XACK', KEYS[2], ARGV[1], unpack(ARGV, i, #ARGV))
"""

# Append ARGV[3..] to stream KEYS[1] in order, one entry each (field "data"), then trim it to
# about ARGV[1] entries once (XTRIM MAXLEN ~: what a pipeline of XADD ... MAXLEN ~ leaves, with
# no trim check and three arguments fewer per entry). Returns {new ids when ARGV[2] is "ids"
# (a cluster tracks them), else how many were appended; entries the trim removed before a
# consumer group had read them, summed over the groups; groups that lost entries it could not
# count}. Per group, with ld its last delivered id: a trim removes entries from the head, so if
# the head was after ld every entry removed was unread; if the head was at or before ld and is
# after it now, the unread ones removed are those removed less the read ones there were, which
# the script counts (XRANGE - ld, at most one more than the trim can remove) before the trim,
# for the groups it may pass: a trim keeps at least ARGV[1] entries, all unread when it passes
# ld, so only a group whose XINFO lag is nil (an XDEL among its unread entries, a group made
# at '$' that has not read to the end yet) or at least ARGV[1] can be passed. XINFO's lag is
# not used as the count: it is often too large (Redis 7.0 adds 1 to a group's entries-read per
# entry read, not counting the trimmed ones it skipped; after an AOF restart its entries-read
# is that of the rewrite), which counted read entries as trimmed unread. A lag too small (an
# entries-read set ahead with XGROUP SETID) is the "could not count" case. The groups are
# looked at only when the stream is longer than ARGV[1] (a trim may remove something).
# Counting the read entries costs server time only while a group is being passed: Valkey 9,
# a group reading half as fast as the publisher, 1.16-1.18 -> 1.69-1.87 µs per entry at
# 1,000 entries per call; a group caught up or never reading, no change.
# Server time per entry against the XADD ... MAXLEN ~ per entry it replaced (Valkey 9): a
# stream below maxlen, 1,000 entries per call, 1.44-1.55 -> 1.08-1.10 µs; a stream at maxlen
# with a group behind, 1,000 per call 1.43 -> 1.25, 10 per call (50-event packs) 1.69 -> 1.81.
_PUBLISH_LUA = """
local key = KEYS[1]
local n = #ARGV - 2
local out
if ARGV[2] == 'ids' then
  out = {}
  for i = 1, n do
    out[i] = redis.call('XADD', key, '*', 'data', ARGV[i + 2])
  end
else
  for i = 3, #ARGV do
    redis.call('XADD', key, '*', 'data', ARGV[i])
  end
  out = n
end
local length = redis.call('XLEN', key)
if length <= tonumber(ARGV[1]) then
  return {out, 0, 0}
end
local groups = redis.call('XINFO', 'GROUPS', key)
if #groups == 0 then
  redis.call('XTRIM', key, 'MAXLEN', '~', ARGV[1])
  return {out, 0, 0}
end
local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1][1]
local function after(a, b)  -- stream id a > stream id b
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local maxlen = tonumber(ARGV[1])
local cap = length - maxlen + 1  -- more than MAXLEN ~ can remove
local lds, read = {}, {}
for i, g in ipairs(groups) do
  local f = {}
  for j = 1, #g, 2 do f[g[j]] = g[j + 1] end
  local ld = f['last-delivered-id']
  lds[i] = ld
  local lag = f['lag']
  if not after(first, ld) and (type(lag) ~= 'number' or lag >= maxlen) then
    read[i] = #redis.call('XRANGE', key, '-', ld, 'COUNT', cap)
  end
end
local deleted = redis.call('XTRIM', key, 'MAXLEN', '~', ARGV[1])
if deleted == 0 then
  return {out, 0, 0}
end
local head = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
local lost, uncounted = 0, 0
for i, ld in ipairs(lds) do
  if after(first, ld) then
    lost = lost + deleted
  elseif head == nil or after(head[1], ld) then
    if read[i] then
      lost = lost + deleted - read[i]
    else
      uncounted = uncounted + 1
    end
  end
end
return {out, lost, uncounted}
"""

# Which of the ids ARGV (ascending) are not in stream KEYS[1]; also its first id, so that
# entries trimmed by MAXLEN are told from entries lost.
_MISSING_LUA = """
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local missing = {}
for i = 1, #ARGV do
  if #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i], 'COUNT', 1) == 0 then
    missing[#missing + 1] = ARGV[i]
  end
end
return {first[1] and first[1][1] or '', missing}
"""


@contextlib.asynccontextmanager
async def _translated(operation: str, what: str) -> AsyncIterator[None]:
    """Turn redis-py (and socket) failures into ``BusError`` naming the operation."""
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:
        raise BusError(
            f"redis bus: {what} failed: {type(exc).__name__}: {exc}",
            backend="redis",
            operation=operation,
        ) from exc


_pack_command = hiredis.pack_command


async def _raw_round_trip(client: aredis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one write on one pooled connection and read their replies as the
    server sent them (hiredis' lists and bytes: no redis-py response callback), an error reply
    as its ``ResponseError`` in its place. For the hot commands of a single server (publish
    scripts, XREADGROUP, XACK): redis-py packs each argument and parses each entry of a reply
    in Python (~0.3 µs per argument, ~0.5 µs per stream entry); ``hiredis.pack_command`` and
    the raw reply skip both. A connection failure (or a cancellation mid-way) drops the
    connection and propagates: the caller decides whether to send again."""
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(b"".join([_pack_command(c) for c in commands]))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # the reply was read: the connection is in step
                replies.append(exc)
        return replies
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]] | None:
    """For a ``redis+cluster://`` or ``rediss+cluster://`` URL: the plain ``redis(s)://`` URL of
    its first host (credentials and options kept) and every ``(host, port)`` it names
    (``redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000``); ``None`` for any other URL.
    Raises ``ValueError`` for a host list that cannot be read."""
    scheme, sep, rest = url.partition("://")
    plain = _CLUSTER_SCHEMES.get(scheme.lower())
    if not sep or plain is None:
        return None
    netloc, slash, tail = rest.partition("/")
    if "?" in netloc:  # no path: options right after the hosts
        netloc, _, query = netloc.partition("?")
        tail, slash = f"?{query}", "/"
    userinfo, at, hosts = netloc.rpartition("@")
    seeds: list[tuple[str, int]] = []
    for host in hosts.split(","):
        parts = urlsplit(f"//{host.strip()}")
        if not parts.hostname:
            raise ValueError(f"no host in {host!r}")
        seeds.append((parts.hostname, parts.port or 6379))
    first = hosts.split(",")[0].strip()
    return f"{plain}://{userinfo}{at}{first}{slash}{tail}", seeds


def _id_ms(entry_id: str) -> int:
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


class RedisBus:
    """A :class:`~market_data_core.protocols.Bus` on Redis Streams. Build with :meth:`connect`."""

    def __init__(
        self, client: aredis.Redis | RedisCluster, config: BusConfig, *, cluster: bool = False
    ) -> None:
        self._client: Any = client
        self._config = config
        self._cluster = cluster
        self._layout = RedisLayout.of(config, cluster=cluster)
        self._maxlen = config.maxlen
        self._wait_replicas = config.redis.wait_replicas
        self._wait_timeout_ms = config.redis.wait_timeout_ms
        self._count_after = client.register_script(_COUNT_AFTER_LUA)
        self._reset_counts = client.register_script(_RESET_COUNTS_LUA)
        self._letters_and_ack = client.register_script(_LETTERS_AND_ACK_LUA)
        self._missing = client.register_script(_MISSING_LUA)
        self._publish_sha = client.register_script(_PUBLISH_LUA).sha
        # per topic, the stream each routing key publishes to (keys are few: symbols)
        self._stream_of_key: dict[str, dict[str, str]] = {}
        self._publish_loaded = False
        # cluster only: per stream, the master it was last published to and the ids it gave
        self._master_of: dict[str, str] = {}
        self._recent: dict[str, collections.deque[bytes]] = {}
        self._lost: dict[str, int] = {}
        # per stream: entries this bus's trims removed before a group read them, and when
        # that was last logged
        self._trimmed_unread: dict[str, int] = {}
        self._trim_reported: dict[str, float] = {}
        # a publisher's process reports trimmed_unread (and lost_writes) too: its series from 0
        telemetry.init_error_series("bus")

    @classmethod
    async def connect(cls, url: str, config: BusConfig) -> RedisBus:
        """Connect (and ping) ``url``: one server, or a cluster (``bus.redis.cluster`` or a
        ``redis+cluster://`` URL). Raises ``BusError`` when it cannot be reached (or is not
        what the config says), ``ConfigError`` for a URL or topic name a cluster refuses."""
        seeds = None
        try:
            seeds = cluster_seeds(url)
        except ValueError as exc:
            raise ConfigError(
                f"malformed Redis Cluster URL {redact_url(url)}: {exc}", key_path="bus.redis.uri"
            ) from exc
        cluster = config.redis.cluster or seeds is not None
        try:
            RedisLayout.of(config, cluster=cluster)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        client: aredis.Redis | RedisCluster
        try:
            if cluster:
                first, nodes = seeds or (url, [])
                client = RedisCluster.from_url(
                    first,
                    startup_nodes=[ClusterNode(host, port) for host, port in nodes] or None,
                    socket_keepalive=True,
                    socket_connect_timeout=2.0,
                )
            else:
                # TCP keepalive for TCP only: a unix:// socket's connection class refuses it
                keepalive = {} if url.startswith("unix:") else {"socket_keepalive": True}
                client = aredis.Redis.from_url(url, health_check_interval=30, **keepalive)
        except (ValueError, RedisError, RedisClusterException) as exc:
            raise ConfigError(
                f"cannot use Redis URL {redact_url(url)}: {exc}", key_path="bus.redis.uri"
            ) from exc
        try:
            async with _translated("connect", f"connecting to {redact_url(url)}"):
                await client.ping()
        except BusError:
            await client.aclose()
            raise
        return cls(client, config, cluster=cluster)

    @property
    def backend(self) -> Literal["redis", "kafka"]:
        return "redis"

    @property
    def client(self) -> Any:
        """The redis-py asyncio client: ``Redis``, or ``RedisCluster`` on a cluster."""
        return self._client

    @property
    def config(self) -> BusConfig:
        return self._config

    @property
    def cluster(self) -> bool:
        return self._cluster

    @property
    def layout(self) -> RedisLayout:
        return self._layout

    @property
    def publish_method(self) -> str:
        """How :meth:`publish` sends entries, in words (``mdp bench`` prints it beside the bare
        ceiling, which publishes through this bus): the publish script per stream, packed by
        hiredis on one pooled connection (one server) or in a redis-py cluster pipeline."""
        how = "redis-py cluster pipeline" if self._cluster else "packed by hiredis"
        return f"EVALSHA publish script (XADD per entry, XTRIM MAXLEN ~ per call), {how}"

    @property
    def lost_writes(self) -> Mapping[str, int]:
        """Per stream, entries this bus published that a failover lost (cluster only; see the
        module docstring)."""
        return dict(self._lost)

    @property
    def trimmed_unread(self) -> Mapping[str, int]:
        """Per stream, entries this bus's publishes trimmed (``bus.maxlen``) before a consumer
        group had read them: gone (see ``_PUBLISH_LUA``)."""
        return dict(self._trimmed_unread)

    def shard_count(self, topic: str) -> int:
        """Shards of ``topic``: ``partitions`` for the events topic, 1 for every other one."""
        return self._layout.shard_count(topic)

    def stream_name(self, topic: str, shard: int) -> str:
        """The Redis stream that holds shard ``shard`` of ``topic``."""
        return self._layout.stream_name(topic, shard)

    def streams(self, topic: str) -> list[str]:
        return self._layout.streams(topic)

    async def _streams_of(self, topic: str) -> list[str]:
        """The streams to read for ``topic``: on a cluster the DLQ is one stream per slot of
        every configured topic's shards, plus those listed in its registry."""
        if not (self._cluster and topic == self._layout.dlq):
            return self.streams(topic)
        listed = await self._client.smembers(self._layout.dlq_registry)
        known = self._layout.known_dlq_streams()
        return known + sorted({_text(s) for s in listed} - set(known))

    async def publish(self, topic: str, items: Sequence[tuple[str, bytes]]) -> int:
        """Append items in one pipelined round trip: per stream, script calls that ``XADD``
        its items in order, then trim it (``MAXLEN ~``; see the module docstring). Per-key
        order is kept because a key always maps to the same stream and each stream's items
        are appended in order (on a cluster the calls of one stream go to its master in
        order; after a redirection the unsent rest follows in order). With ``wait_replicas``, raises
        ``BusError`` when a master could not confirm that many replicas within
        ``wait_timeout_ms``."""
        if not items:
            return 0
        n = self.shard_count(topic)
        if n == 1:
            targets = [topic] * len(items)
        else:
            stream_of = self._stream_of_key.get(topic)
            if stream_of is None or len(stream_of) > _KEYS_REMEMBERED:
                stream_of = self._stream_of_key[topic] = {}
            keys = [key for key, _ in items]
            if not stream_of.keys() >= set(keys):
                names = self.streams(topic)
                stream_of.update({key: names[shard_for(key, n)] for key in set(keys)})
            targets = list(map(stream_of.__getitem__, keys))
        by_stream: dict[str, list[bytes]] = {}
        for stream, (_key, payload) in zip(targets, items, strict=True):
            group = by_stream.get(stream)
            if group is None:
                by_stream[stream] = [payload]
            else:
                group.append(payload)
        calls = [
            (stream, payloads[i : i + _PUBLISH_CHUNK])
            for stream, payloads in by_stream.items()
            for i in range(0, len(payloads), _PUBLISH_CHUNK)
        ]
        async with _translated("publish", f"publish to {topic}"):
            if not self._publish_loaded:
                await self._client.script_load(_PUBLISH_LUA)  # every master, on a cluster
                self._publish_loaded = True
            replies = await self._append(topic, calls)
            retry = [call for call, reply in zip(calls, replies, strict=True) if reply is None]
            if retry:
                # the script cache was emptied (a restart, a failover): those calls did not
                # run at all, so they alone are sent again
                await self._client.script_load(_PUBLISH_LUA)
                again = iter(await self._append(topic, retry))
                replies = [next(again) if reply is None else reply for reply in replies]
            done = [reply for reply in replies if reply is not None]
            if len(done) < len(replies):  # NOSCRIPT again: those calls appended nothing
                raise BusError(
                    f"redis bus: publish to {topic}: the server lost the publish script "
                    f"again right after it was loaded ({len(replies) - len(done)} of "
                    f"{len(replies)} calls not run); nothing of them was appended",
                    backend="redis",
                    operation="publish",
                )
            if any(reply[1] or reply[2] for reply in done):
                self._report_trimmed_unread(calls, done)
            if self._cluster:
                streams = [stream for stream, chunk in calls for _ in chunk]
                await self._track(streams, [i for reply in done for i in reply[0]])
        return len(items)

    async def _append(
        self, topic: str, calls: list[tuple[str, list[bytes]]]
    ) -> list[list[Any] | None]:
        """One pipeline of publish script calls (and the ``WAIT`` s): each call's reply
        (``[new ids on a cluster or how many it appended on one server, entries trimmed
        unread, groups trimmed uncounted]``), or ``None`` for a call the server did not know
        the script of (``NOSCRIPT``: nothing appended). Raises the first other error."""
        sha, maxlen = self._publish_sha, self._maxlen
        written = [stream for stream, chunk in calls for _ in chunk]
        if self._cluster:
            pipe = self._client.pipeline(transaction=False)
            for stream, payloads in calls:
                pipe.execute_command("EVALSHA", sha, 1, stream, maxlen, "ids", *payloads)
            waits = self._queue_waits(pipe, written)
            replies = await pipe.execute(raise_on_error=False)
        else:  # one server: no ids to track, the script answers with a count
            commands = [
                ("EVALSHA", sha, 1, stream, maxlen, "count", *chunk) for stream, chunk in calls
            ]
            waits = []
            if self._wait_replicas:
                commands.append(("WAIT", self._wait_replicas, self._wait_timeout_ms))
                waits = [("server", len(written))]
            replies = await _raw_round_trip(self._client, commands)
        out: list[list[Any] | None] = []
        for reply in replies[: len(calls)]:
            if isinstance(reply, NoScriptError):
                out.append(None)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                out.append(reply)
        for reply in replies[len(calls) :]:
            if isinstance(reply, BaseException):
                raise reply
        if waits:
            self._check_waits(topic, waits, replies[len(calls) :])
        return out

    def _queue_waits(self, pipe: Any, streams: Sequence[str]) -> list[tuple[str, int]]:
        """Append ``WAIT`` to the pipeline, once per master written to (on the connection
        that carried the writes); returns (master, entries) in the order queued."""
        if not self._wait_replicas:
            return []
        args = ("WAIT", self._wait_replicas, self._wait_timeout_ms)
        if not self._cluster:
            pipe.execute_command(*args)
            return [("server", len(streams))]
        count: dict[str, int] = {}
        nodes: dict[str, Any] = {}
        for stream in streams:
            node = self._client.get_node_from_key(stream)
            nodes[node.name] = node
            count[node.name] = count.get(node.name, 0) + 1
        for node in nodes.values():
            pipe.execute_command(*args, target_nodes=node)
        return [(name, count[name]) for name in nodes]

    def _check_waits(self, topic: str, waits: list[tuple[str, int]], acked: list[Any]) -> None:
        short = [
            f"{entries} on {master} reached {int(n)} of {self._wait_replicas} replicas"
            for (master, entries), n in zip(waits, acked, strict=True)
            if int(n) < self._wait_replicas
        ]
        if short:
            raise BusError(
                f"redis bus: publish to {topic}: entries not replicated within "
                f"{self._wait_timeout_ms} ms (bus.redis.wait_replicas): {'; '.join(short)}; "
                "they are on the master but not counted as published",
                backend="redis",
                operation="publish",
            )

    async def _track(self, streams: Sequence[str], ids: Sequence[Any]) -> None:
        """Cluster: remember the ids just published; when a stream's master changed since its
        last publish (a failover, or a slot moved), first check that the ids remembered from
        before are still there and report those that are not."""
        by_stream: dict[str, list[bytes]] = {}
        for stream, entry_id in zip(streams, ids, strict=True):
            by_stream.setdefault(stream, []).append(entry_id)
        keep = max(_RECENT_IDS_MIN, _RECENT_IDS_BUDGET // max(1, self._layout.partitions))
        for stream, new_ids in by_stream.items():
            master = self._client.get_node_from_key(stream).name
            before = self._master_of.get(stream)
            recent = self._recent.setdefault(stream, collections.deque(maxlen=keep))
            if before is not None and before != master and recent:
                await self._report_lost(stream, before, master, list(recent))
                recent.clear()
            self._master_of[stream] = master
            recent.extend(new_ids)

    async def _report_lost(self, stream: str, before: str, after: str, ids: list[bytes]) -> None:
        lost: list[str] = []
        first = ""
        for i in range(0, len(ids), _RELEASE_CHUNK):
            head, missing = await self._missing(keys=[stream], args=ids[i : i + _RELEASE_CHUNK])
            first = first or _text(head)
            lost += [_text(m) for m in missing]
        if first:  # entries older than the stream's first one were trimmed by MAXLEN, not lost
            lost = [m for m in lost if _id_key(m) >= _id_key(first)]
        if not lost:
            log.info(
                "redis bus: %s moved from %s to %s with every entry kept", stream, before, after
            )
            return
        self._lost[stream] = self._lost.get(stream, 0) + len(lost)
        telemetry.ERRORS.labels(component="bus", reason="lost_writes").inc(len(lost))
        log.error(
            "redis bus: %d entries of %s that %s acknowledged are not on %s, which serves the "
            "stream now (ids %s .. %s, of the last %d published here): a failover promoted a "
            "replica that had not received them (Redis replicates asynchronously); they are "
            "lost unless published again. bus.redis.wait_replicas makes a publish wait for "
            "replicas",
            len(lost),
            stream,
            before,
            after,
            lost[0],
            lost[-1],
            len(ids),
        )

    def _report_trimmed_unread(
        self, calls: list[tuple[str, list[bytes]]], replies: list[list[Any]]
    ) -> None:
        """Count and report what the publish script's trims removed before a consumer group
        had read it (see ``_PUBLISH_LUA``): ``errors_total{component="bus",
        reason="trimmed_unread"}``, :attr:`trimmed_unread`, and an error log line per stream
        at most every ``_TRIM_REPORT_EVERY_S``."""
        now = time.monotonic()
        for (stream, _chunk), (_out, lost, uncounted) in zip(calls, replies, strict=True):
            lost, uncounted = int(lost), int(uncounted)
            if not (lost or uncounted):
                continue
            self._trimmed_unread[stream] = self._trimmed_unread.get(stream, 0) + lost
            telemetry.ERRORS.labels(component="bus", reason="trimmed_unread").inc(lost)
            if not uncounted and now < self._trim_reported.get(stream, -math.inf) + (
                _TRIM_REPORT_EVERY_S
            ):
                continue  # an uncounted loss is logged every time: it is in no count
            self._trim_reported[stream] = now
            log.error(
                "redis bus: publishing to %s trimmed entries a consumer group had not read "
                "yet (%s so far from this process%s): the group's backlog is longer than "
                "bus.maxlen (%d); those entries are gone. Raise bus.maxlen above the largest "
                "backlog, or add consumers",
                stream,
                f"{self._trimmed_unread[stream]:,}",
                f"; and in {uncounted} group(s) Redis could not count them" if uncounted else "",
                self._maxlen,
            )

    def consumer(self, topic: str, group: str, name: str) -> RedisConsumer:
        return RedisConsumer(self, topic, group, name)

    async def tail(self, topic: str, limit: int) -> list[BusRecord]:
        """The last ``limit`` entries over all shards, oldest first (merged by entry id)."""
        if limit <= 0:
            return []
        async with _translated("tail", f"tail {topic}"):
            names = await self._streams_of(topic)
            pipe = self._client.pipeline(transaction=False)
            for stream in names:
                pipe.xrevrange(stream, count=limit)
            replies = cast("list[_Entries]", await pipe.execute())
        records: list[tuple[tuple[int, int], BusRecord]] = []
        for shard, entries in enumerate(replies):
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                ms, _, seq = entry_id.partition("-")
                record = _record(topic, shard, entry_id, fields)
                records.append(((int(ms), int(seq or 0)), record))
        records.sort(key=lambda pair: pair[0])
        return [record for _, record in records[-limit:]]

    async def status(self, topic: str, group: str | None = None) -> list[StreamStatus]:
        """Per shard: length, and per group (``group`` only, if given) lag, pending, consumers,
        the age of the oldest pending entry and the lease owner."""
        out: list[StreamStatus] = []
        async with _translated("status", f"status of {topic}"):
            now_ms = await self._server_ms()
            for stream in await self._streams_of(topic):
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

    async def topic_exists(self, topic: str) -> bool:
        """Whether one of the topic's streams exists (``EXISTS`` per stream, one key each so
        that a cluster routes each to its slot; never creates)."""
        async with _translated("lookup", f"look up {topic}"):
            pipe = self._client.pipeline(transaction=False)
            for stream in await self._streams_of(topic):
                pipe.exists(stream)
            return any(await pipe.execute())

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
        owner = await self._client.get(self._layout.lease_key(stream, group))
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
        """Append ``letter`` to the DLQ (never trimmed); on a cluster to the DLQ stream in the
        slot of its source entry when that is a shard of a configured topic (the entry's ack,
        which comes later, then lives beside it: a failover cannot keep the ack and lose the
        letter)."""
        stream = self._layout.dlq_for_letter(letter.source_topic, letter.source_shard)
        async with _translated("dlq_write", "write to the DLQ"):
            await self._client.xadd(stream, _fields(letter))

    async def dlq_list(self, limit: int) -> list[DeadLetter]:
        """Oldest first (by the time each was dead-lettered). On a cluster the letters of all
        DLQ streams are merged and their ids read ``<dlq stream>/<entry id>``."""
        async with _translated("dlq_read", "read the DLQ"):
            streams = await self._streams_of(self._layout.dlq)
            pipe = self._client.pipeline(transaction=False)
            for stream in streams:
                pipe.xrange(stream, count=limit)
            replies = cast("list[_Entries]", await pipe.execute())
        letters: list[DeadLetter] = []
        for stream, entries in zip(streams, replies, strict=True):
            for raw_id, fields in entries:
                entry_id = raw_id.decode()
                if self._cluster:
                    entry_id = f"{stream}/{entry_id}"
                letters.append(
                    letter_from_fields(entry_id, {k.decode(): v for k, v in (fields or {}).items()})
                )
        if len(streams) > 1:
            letters.sort(key=lambda lt: (lt.ts, _id_key(lt.entry_id.rpartition("/")[2])))
        return letters[:limit]

    async def dlq_delete(self, entry_ids: Sequence[str]) -> int:
        """Delete letters by the ids :meth:`dlq_list` gave; returns how many existed."""
        if not entry_ids:
            return 0
        by_stream: dict[str, list[str]] = {}
        for entry_id in entry_ids:
            stream, _, raw = entry_id.rpartition("/")
            if not self._cluster or not stream:
                stream, raw = self._layout.dlq, entry_id
            by_stream.setdefault(stream, []).append(raw)
        async with _translated("dlq_delete", "delete from the DLQ"):
            pipe = self._client.pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xdel(stream, *ids)
            return sum(int(n) for n in await pipe.execute())

    async def letters_and_ack(
        self, stream: str, group: str, pairs: Sequence[tuple[DeadLetter, str]]
    ) -> None:
        """Write each letter to the DLQ of ``stream`` and ack its entry id (of ``group`` on
        ``stream``) in one atomic script per chunk: an entry is never acked without its letter.
        On a cluster the DLQ stream is in ``stream``'s slot."""
        dlq = self._layout.dlq_of(stream)
        for i in range(0, len(pairs), _LETTER_CHUNK):
            chunk = pairs[i : i + _LETTER_CHUNK]
            flat: list[Any] = []
            for letter, _ in chunk:
                for name, value in letter_fields(letter).items():
                    flat += [name, value]
            await self._letters_and_ack(
                keys=[dlq, stream],
                args=[group, len(chunk), len(flat) // len(chunk), *flat, *(e for _, e in chunk)],
            )

    async def aclose(self) -> None:
        await self._client.aclose()


def _fields(letter: DeadLetter) -> dict[Any, Any]:
    return dict(letter_fields(letter))


def _record(
    topic: str,
    shard: int,
    entry_id: str,
    fields: Mapping[bytes, bytes] | None,
    deliveries: int = 1,
) -> BusRecord:
    """An entry as a record: ``data`` is the payload, every other field is kept in
    ``extra_fields`` (an entry of another producer; empty payload if it has no ``data``)."""
    if not fields:
        return BusRecord(topic, shard, entry_id, b"", deliveries)
    payload = fields.get(_DATA)
    if payload is not None and len(fields) == 1:
        return BusRecord(topic, shard, entry_id, payload, deliveries)
    extra = tuple((_text(name), value) for name, value in fields.items() if name != _DATA)
    return BusRecord(topic, shard, entry_id, payload or b"", deliveries, extra)


def _field_map(fields: list[bytes]) -> dict[bytes, bytes]:
    """An entry's raw field list (name, value, name, value...) as a map, in order."""
    it = iter(fields)
    return dict(zip(it, it, strict=True))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _id_key(entry_id: str) -> tuple[int, int]:
    """A stream id (``ms-seq``) as a sortable pair; anything else sorts first."""
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return 0, 0


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
        layout = bus.layout
        self._cluster = bus.cluster
        self._streams = bus.streams(topic)
        self._shard_of = {s.encode(): n for n, s in enumerate(self._streams)}
        try:
            self._members_key = layout.members_key(topic, group)
            self._lease_keys = [layout.lease_key(s, group) for s in self._streams]
            self._dlq_streams = [layout.dlq_of(s) for s in self._streams]
        except ValueError as exc:
            raise BusError(
                f"redis bus: cannot consume {topic!r} on a cluster: {exc}",
                backend="redis",
                operation="consume",
            ) from exc
        self._register_dlq = self._cluster and topic not in layout.topics()
        self._offset = leases.start_offset(name, len(self._streams))
        self._lease_ttl_ms = config.redis.lease_ttl_ms
        self._renew_every_s = self._lease_ttl_ms / 3000
        self._claim_idle_ms = config.claim_idle_ms
        self._claim_every_s = max(config.claim_idle_ms / 4000, 0.05)
        self._max_deliveries = config.max_deliveries
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
        if self._register_dlq:
            # a topic outside the config: list its DLQ streams where dlq list/status look
            await self._client.sadd(self._bus.layout.dlq_registry, *self._dlq_streams)
        self._groups_ready = True

    async def _refresh_leases(self) -> None:
        now_owned = await leases.maintain(
            self._client,
            self._members_key,
            self._lease_keys,
            self._name,
            self._lease_ttl_ms,
            self._offset,
        )
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

    async def poll(self, max_count: int, block_ms: int) -> Sequence[BusRecord]:
        """Up to ``max_count`` entries (see the module docstring for the order); ``[]`` after at
        most ``block_ms``. Raises ``BusError`` (nothing is lost: unacked entries come back)."""
        if self._closed:
            raise BusError(
                f"consumer {self._name} on {self._topic} is closed",
                backend="redis",
                operation="poll",
            )
        max_count = max(1, max_count)
        async with _translated("poll", f"poll {self._topic} as {self._group}/{self._name}"):
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

    async def _poll(self, max_count: int, block_ms: int) -> Sequence[BusRecord]:
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

    async def _read_new(
        self, shards: list[int], max_count: int, block_ms: int
    ) -> Sequence[BusRecord]:
        per_stream = max(1, max_count // len(shards))
        block = max(1, min(block_ms, int(self._renew_every_s * 1000)))
        reply: Any
        if self._cluster:
            reply = await self._read_new_per_stream(shards, per_stream, block)
        else:
            streams = [self._streams[s] for s in shards]
            [reply] = await _raw_round_trip(
                self._client,
                [
                    (
                        "XREADGROUP",
                        "GROUP",
                        self._group,
                        self._name,
                        "COUNT",
                        per_stream,
                        "BLOCK",
                        block,
                        "STREAMS",
                        *streams,
                        *[">"] * len(streams),
                    )
                ],
            )
            if isinstance(reply, ResponseError):
                raise reply
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3: {stream: entries}
            reply = list(reply.items())
        shards_out: list[int] = []
        ids_out: list[str] = []
        payloads_out: list[bytes] = []
        records: list[BusRecord] | None = None  # once an entry is not [b"data", payload]
        stamp = (1, time.monotonic())  # (deliveries, since): one tuple for the whole poll
        for raw_stream, entries in reply:
            if not entries:
                continue
            shard = self._shard_of[raw_stream]
            n = len(entries)
            # the ids decoded at once (stream ids are ASCII: ms-seq)
            ids = b" ".join(map(_FIRST, entries)).decode().split(" ")
            self._held[shard].update(dict.fromkeys(ids, stamp))
            fields = list(map(_SECOND, entries))
            # the raw reply: [b"data", payload] per entry (mdp's own); redis-py's parsed one
            # (cluster): a dict per entry
            if (
                records is None
                and list(map(type, fields)).count(list) == n
                and list(map(len, fields)).count(2) == n
                and list(map(_FIRST, fields)).count(_DATA) == n
            ):
                shards_out += [shard] * n
                ids_out += ids
                payloads_out += map(_SECOND, fields)
                continue
            if records is None:
                records = list(RecordBatch(self._topic, shards_out, ids_out, payloads_out))
            for entry_id, entry_fields in zip(ids, fields, strict=True):
                if type(entry_fields) is list:
                    entry_fields = _field_map(entry_fields)
                records.append(_record(self._topic, shard, entry_id, entry_fields))
        if records is not None:
            return RecordBatch.of(records)
        return RecordBatch(self._topic, shards_out, ids_out, payloads_out)

    async def _read_new_per_stream(
        self, shards: list[int], per_stream: int, block: int
    ) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
        """Cluster: one ``XREADGROUP`` per stream (one key each, one slot each). A pipelined
        pass that does not block (one round trip per master, in parallel); when it finds
        nothing, every stream is read once more with ``BLOCK``, concurrently, and all those
        reads are awaited (one cancelled mid-way could have moved entries into this consumer's
        pending list unseen)."""
        pipe = self._client.pipeline(transaction=False)
        for shard in shards:
            pipe.xreadgroup(self._group, self._name, {self._streams[shard]: ">"}, count=per_stream)
        replies = await pipe.execute()
        if not any(replies):
            replies = await asyncio.gather(
                *(
                    self._client.xreadgroup(
                        self._group,
                        self._name,
                        {self._streams[shard]: ">"},
                        count=per_stream,
                        block=block,
                    )
                    for shard in shards
                ),
                return_exceptions=True,
            )
            failed = [r for r in replies if isinstance(r, BaseException)]
            replies = [r for r in replies if not isinstance(r, BaseException)]
            if failed and not any(replies):
                raise failed[0]
            # else deliver what the other reads returned (it is pending to this consumer
            # now); the failing stream fails again, and is reported, at the next poll
        return [item for reply in replies if reply for item in reply]

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
            out.append(_record(self._topic, shard, entry_id, fields, times))
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
        pairs: list[tuple[DeadLetter, str]] = []
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
            pairs.append((letter, entry_id))
        await self._bus.letters_and_ack(stream, self._group, pairs)
        self._count_letters("trimmed", len(gone))

    async def _bury(self, shard: int, poison: list[tuple[str, int]]) -> None:
        """Move entries delivered ``max_deliveries`` times to the DLQ and ack them atomically
        (one script, see :meth:`RedisBus.letters_and_ack`): an entry is never acked without
        its letter."""
        stream = self._streams[shard]
        pipe = self._client.pipeline(transaction=False)
        for entry_id, _ in poison:
            pipe.xrange(stream, min=entry_id, max=entry_id, count=1)
        bodies = cast("list[_Entries]", await pipe.execute())
        pairs: list[tuple[DeadLetter, str]] = []
        for (entry_id, times), body in zip(poison, bodies, strict=True):
            self._held[shard].pop(entry_id, None)
            record = _record(self._topic, shard, entry_id, body[0][1] if body else None, times)
            letter = letter_from_record(
                record,
                reason="max_deliveries",
                detail=f"delivered {times} times (max_deliveries={self._max_deliveries})",
                component="bus",
            )
            pairs.append((letter, entry_id))
        await self._bus.letters_and_ack(stream, self._group, pairs)
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
            ids = by_shard.get(record.shard)
            if ids is None:
                by_shard[record.shard] = [record.entry_id]
            else:
                ids.append(record.entry_id)
        await self.ack_ids(by_shard)

    async def ack_ids(self, entry_ids: Mapping[int, Sequence[str]]) -> None:
        """:meth:`ack` by ``{shard: entry ids}``."""
        by_shard = {shard: ids for shard, ids in entry_ids.items() if ids}
        if not by_shard:
            return
        async with _translated("ack", f"ack on {self._topic}"):
            if self._cluster:
                pipe = self._client.pipeline(transaction=False)
                for shard, ids in by_shard.items():
                    pipe.xack(self._streams[shard], self._group, *ids)
                await pipe.execute()
            else:
                commands = [
                    ("XACK", self._streams[shard], self._group, *ids)
                    for shard, ids in by_shard.items()
                ]
                for reply in await _raw_round_trip(self._client, commands):
                    if isinstance(reply, ResponseError):
                        raise reply
        for shard, ids in by_shard.items():
            pop = self._held[shard].pop
            for entry_id in ids:
                pop(entry_id, None)

    async def in_progress(self, records: Sequence[BusRecord]) -> None:
        """Renew the hold on ``records`` for another ``claim_idle_ms`` (bookkeeping in this
        process: only this consumer claims entries of the shards it holds)."""
        now = time.monotonic()
        batch = RecordBatch.of(records)  # no record object per entry
        for shard, entry_id in zip(batch.shards, batch.ids, strict=True):
            held = self._held[shard]
            entry = held.get(entry_id)
            if entry is not None:
                held[entry_id] = (entry[0], now)

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
        async with _translated("release", f"release entries of {self._topic}"):
            for shard, args in by_shard.items():
                for i in range(0, len(args), 2 * _RELEASE_CHUNK):
                    await self._bus._reset_counts(
                        keys=[self._streams[shard]],
                        args=[self._group, self._name, *args[i : i + 2 * _RELEASE_CHUNK]],
                    )

    async def dead_letter(
        self, record: BusRecord, *, reason: str, detail: str, component: str
    ) -> None:
        """Write ``record`` to the DLQ and ack it, atomically (one script): either both or
        neither.

        The caller counts ``errors_total{component, reason}``; the bus counts only the letters
        it writes itself (``max_deliveries``, ``trimmed``)."""
        letter = letter_from_record(record, reason=reason, detail=detail, component=component)
        async with _translated("dead_letter", f"dead-letter {record.source}"):
            await self._bus.letters_and_ack(
                self._streams[record.shard], self._group, [(letter, record.entry_id)]
            )
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
            async with _translated("release_leases", "release leases"):
                await leases.release(self._client, self._members_key, self._lease_keys, self._name)
