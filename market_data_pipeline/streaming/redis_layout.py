"""Where every key of the Redis bus lives, on one server and on a Redis Cluster.

One server (``bus.redis.cluster: false``, the layout of every release so far, unchanged):

- the events topic ``T`` with ``n > 1`` shards is the streams ``T:0 .. T:n-1``, with one
  shard exactly ``T``; every other topic (bars, signals, the DLQ) is one stream, its own name;
- the lease of a shard (stream ``S``) for group ``G``: ``mdp:bus:S:G:lease``; the live-consumer
  registry of ``G`` on topic ``T``: ``mdp:bus:T:G:members``;
- one dead-letter stream, ``bus.redis.dlq_stream``.

Redis Cluster (``bus.redis.cluster: true`` or a ``redis+cluster://`` URL). A command, script or
``MULTI`` may only touch keys of one hash slot, and a key's slot is CRC16 of its *hash tag* (the
text between the first ``{`` and the next ``}``) or of the whole name. So everything one shard
needs shares its tag:

- shard ``i`` of ``n > 1`` is the stream ``T:{<tag_i>}``; ``tag_i`` is ``"<i>.<k>"`` with the
  smallest ``k >= 0`` whose slot lies in the middle half of the ``i``-th of ``n`` equal slot
  ranges (:func:`shard_tags`). Slots thus rise evenly over the 16,384: on the layout
  ``redis-cli --cluster create`` makes (``m`` masters, equal contiguous ranges) every master
  serves exactly ``n / m`` shards when ``m`` divides ``n`` (checked for every ``n <= 256``,
  ``m <= 16``), and the counts differ by at most 2 otherwise; plain tags ``{0} .. {11}`` would
  put 4, 5 and 3 of 12 shards on 3 masters. The tags depend on ``n`` only, so every process
  computes the same names (about 0.4 s for 1,024 shards, once per process);
- a single-stream topic keeps its name; its slot is that of the whole name, and keys that must
  share it carry the name as their tag (``{mdp.bars}``);
- the shard's lease ``mdp:bus:{<tag>}:S:G:lease`` and its dead letters
  ``<dlq>:{<tag>}``: a dead letter and the ack of its entry are one atomic script on one slot,
  and a failover keeps or loses both (a replica holds a prefix of its master's writes);
- the registry ``mdp:bus:T:G:members`` is one key on any slot (the lease scripts touch one key
  each, see :mod:`~market_data_pipeline.streaming.leases`);
- letters that come from no bus entry (a bad row of a replayed file) go to ``<dlq>`` itself;
  ``mdp:bus:{<dlq>}:<dlq>:streams`` lists the per-slot DLQ streams of topics outside the config.

Topic names in cluster mode must not contain ``{`` or ``}``: mdp places the tags itself.
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Iterable
from dataclasses import dataclass

from redis.crc import key_slot

from market_data_core.config import BusConfig

__all__ = ["CLUSTER_SLOTS", "RedisLayout", "hash_tag", "shard_tags", "slot_of"]

CLUSTER_SLOTS = 16384


def hash_tag(key: str) -> str | None:
    """The hash tag of ``key`` by Redis Cluster's rule (text between the first ``{`` and the
    next ``}``, if not empty), or ``None`` when the whole key is hashed."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


def slot_of(key: str) -> int:
    """The hash slot (0 to 16,383) of ``key``: CRC16 of its hash tag or of the whole key."""
    return int(key_slot(key.encode()))


@functools.lru_cache(maxsize=64)
def shard_tags(n: int) -> tuple[str, ...]:
    """The hash tags of ``n`` cluster shards: tag ``i`` is ``"<i>.<k>"`` for the smallest ``k``
    whose slot lies in ``[(4i + 1) * S / 4n, (4i + 3) * S / 4n)``, ``S = 16384`` (the middle
    half of the ``i``-th of ``n`` equal ranges). Deterministic: the stream names of a
    deployment depend on it, so the rule must never change."""
    if not 1 <= n <= CLUSTER_SLOTS // 4:
        raise ValueError(f"cannot spread {n} shards over {CLUSTER_SLOTS} slots")
    tags = []
    for i in range(n):
        low = (4 * i + 1) * CLUSTER_SLOTS // (4 * n)
        high = max(low + 1, (4 * i + 3) * CLUSTER_SLOTS // (4 * n))
        # CRC16/XMODEM continues over concatenated bytes: hash the "<i>." prefix once
        prefix = binascii.crc_hqx(f"{i}.".encode(), 0)
        k = 0
        while not low <= binascii.crc_hqx(b"%d" % k, prefix) % CLUSTER_SLOTS < high:
            k += 1
        tags.append(f"{i}.{k}")
    return tuple(tags)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class RedisLayout:
    """The key names of one bus configuration (see the module docstring)."""

    cluster: bool
    events_topic: str
    partitions: int
    bars_topic: str
    signals_topic: str
    dlq: str

    @classmethod
    def of(cls, config: BusConfig, *, cluster: bool) -> RedisLayout:
        """The layout of ``config``; raises ``ValueError`` naming the key of a topic name that
        cannot be placed on a cluster."""
        layout = cls(
            cluster=cluster,
            events_topic=config.events_topic,
            partitions=config.partitions,
            bars_topic=config.bars_topic,
            signals_topic=config.signals_topic,
            dlq=config.dlq_topic,
        )
        if cluster:
            for key, name in (
                ("stream", layout.events_topic),
                ("bars_stream", layout.bars_topic),
                ("signals_stream", layout.signals_topic),
                ("dlq_stream", layout.dlq),
            ):
                if "{" in name or "}" in name:
                    raise ValueError(
                        f"bus.redis.{key}: {name!r} contains a brace; on a Redis Cluster mdp "
                        "adds the hash tags itself"
                    )
        return layout

    def shard_count(self, topic: str) -> int:
        """``partitions`` for the events topic, 1 for every other topic."""
        return self.partitions if topic == self.events_topic else 1

    def stream_name(self, topic: str, shard: int) -> str:
        n = self.shard_count(topic)
        if n == 1:
            return topic
        if self.cluster:
            return f"{topic}:{{{shard_tags(n)[shard]}}}"
        return f"{topic}:{shard}"

    def streams(self, topic: str) -> list[str]:
        return [self.stream_name(topic, n) for n in range(self.shard_count(topic))]

    def slot_tag(self, stream: str) -> str:
        """The tag that puts a key in ``stream``'s slot: its own tag, or its whole name."""
        tag = hash_tag(stream)
        if tag is not None:
            return tag
        if slot_of(f"{{{stream}}}") != slot_of(stream):
            raise ValueError(f"no key can share the slot of stream {stream!r} (a stray brace)")
        return stream

    def lease_key(self, stream: str, group: str) -> str:
        """The lease of one shard (stream) for ``group``."""
        if self.cluster:
            return f"mdp:bus:{{{self.slot_tag(stream)}}}:{stream}:{group}:lease"
        return f"mdp:bus:{stream}:{group}:lease"

    def members_key(self, topic: str, group: str) -> str:
        """The live-consumer registry of ``group`` on ``topic``."""
        return f"mdp:bus:{topic}:{group}:members"

    def dlq_of(self, stream: str) -> str:
        """The dead-letter stream for entries of ``stream`` (on a cluster: in its slot)."""
        if self.cluster:
            return f"{self.dlq}:{{{self.slot_tag(stream)}}}"
        return self.dlq

    def dlq_for_letter(self, source_topic: str, source_shard: int) -> str:
        """Where a letter written without an ack goes: the DLQ of its source stream when that
        is a shard of a configured topic, else the DLQ stream itself."""
        if (
            self.cluster
            and source_topic in self.topics()
            and 0 <= source_shard < self.shard_count(source_topic)
        ):
            return self.dlq_of(self.stream_name(source_topic, source_shard))
        return self.dlq

    @property
    def dlq_registry(self) -> str:
        """The set of per-slot DLQ streams written for topics outside the config (cluster)."""
        return f"mdp:bus:{{{self.slot_tag(self.dlq)}}}:{self.dlq}:streams"

    def topics(self) -> list[str]:
        return _unique([self.events_topic, self.bars_topic, self.signals_topic])

    def known_dlq_streams(self) -> list[str]:
        """Every DLQ stream of the configured topics (one server: just the DLQ)."""
        if not self.cluster:
            return [self.dlq]
        return _unique(
            [self.dlq, *(self.dlq_of(s) for topic in self.topics() for s in self.streams(topic))]
        )
