"""Shard leases for Redis consumer groups: each shard of a group is read by one live consumer.

Mechanism
---------
For a consumer group ``G`` reading a topic ``T`` with ``n`` shards (streams ``S_0..S_{n-1}``):

- a **live-consumer registry**, the sorted set ``mdp:bus:T:G:members`` whose members are
  consumer names scored by the server time (ms) at which they stop being live
  (``now + lease_ttl_ms``);
- one **lease key per shard** (names in :mod:`~market_data_pipeline.streaming.redis_layout`;
  on a Redis Cluster in the slot of the shard's stream), holding the owner's consumer name
  with a TTL of ``lease_ttl_ms``.

Every ``lease_ttl_ms / 3`` (from ``poll``) a consumer runs :func:`maintain`: one pipelined
round trip (on a cluster: one per master, in parallel) runs :data:`REGISTER_LUA` on the
registry — refresh its own entry, drop expired members, return the live ones — and
:data:`RENEW_LUA` on every lease — renew it if it names this consumer (compare-and-renew),
else say whether it is free. From the live members it computes its quota: with ``m`` live
consumers sorted by name, the consumer ranked ``r`` may hold ``n // m + (1 if r < n % m else 0)``
shards (so quotas add up to ``n`` and none exceeds ``ceil(n / m)``). Only when the count is off,
a second round trip releases the surplus (:data:`DROP_LUA`, compare-and-delete) or takes free
shards, starting at its own offset (``SET NX PX``). It returns the shards it now holds; the
consumer reads only those.

Every script touches one key, so each runs on one hash slot of a cluster; the lease key alone
decides who holds a shard (``SET NX`` and compare-and-renew are atomic on it), and the registry
only decides the fair share. On one server the keys and the arithmetic are those of the single
``MAINTAIN`` script of earlier releases (which touched every key in one call), so during a
rolling upgrade old and new workers respect each other's leases (by construction: the same
lease keys, the same ``SET NX`` and compare-and-renew; not exercised by a test).

Bounds
------
- A consumer that dies (``kill -9``) stops renewing: its registry entry and leases expire after at
  most ``lease_ttl_ms``; every survivor runs a round within ``lease_ttl_ms / 3`` plus one poll
  (``block_ms`` is capped at ``lease_ttl_ms / 3``), so the dead worker's shards are held again
  within **lease_ttl_ms + lease_ttl_ms / 3 + block_ms** (about 6.9 s with the defaults).
  The new holder reads no newer entry of such a shard until the dead worker's unacked entries
  are claimed, which happens once they are idle for ``claim_idle_ms`` (checked every
  ``claim_idle_ms / 4``): per-key order is kept, and the shard flows again within
  **max(lease bound, 1.25 * claim_idle_ms)** of the death (37.5 s with the defaults; lower
  ``claim_idle_ms`` for faster recovery, keeping it above the longest batch processing time).
- A consumer that joins gets its share within two maintenance rounds (the holders release their
  surplus at their next round, the newcomer takes it at its next one): about
  ``2 * lease_ttl_ms / 3 + block_ms``.
- A consumer that cannot renew (it did not poll for ``lease_ttl_ms``, or the network failed) finds
  at its next round that the key is gone or names someone else and stops reading that shard.
- A cluster failover can lose the last writes of the failed master, a lease renewal or
  ``SET NX`` among them (replication is asynchronous): its holder finds the lease gone or taken
  at its next round and stops reading the shard, so two consumers may read one shard for at
  most ``lease_ttl_ms / 3`` after a failover.

The lease names the consumer, not the process: a consumer restarted under the same name takes its
leases back at once (and receives its pending entries first). Two live processes must therefore
never share a consumer name. Server time (``TIME``, TTLs) is used throughout, so host clocks do
not matter.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

__all__ = [
    "DROP_LUA",
    "REGISTER_LUA",
    "RENEW_LUA",
    "maintain",
    "quota",
    "release",
    "start_offset",
]


def quota(shards: int, live: int, rank: int) -> int:
    """How many of ``shards`` the consumer ranked ``rank`` (0-based, by name) among ``live`` may
    hold."""
    live = max(live, 1)
    return shards // live + (1 if rank < shards % live else 0)


def start_offset(name: str, shards: int) -> int:
    """Where a consumer starts looking for free shards, so that newcomers spread out."""
    return zlib.crc32(name.encode()) % max(shards, 1)


# KEYS[1] = registry; ARGV[1] = consumer name, ARGV[2] = lease_ttl_ms.
# Returns the live members (names), this one included.
REGISTER_LUA = """
local ttl = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 4)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# KEYS[1] = lease; ARGV[1] = consumer name, ARGV[2] = lease_ttl_ms.
# 1: held by this consumer (renewed), 0: free, -1: held by another consumer.
RENEW_LUA = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if owner then return -1 end
return 0
"""

# KEYS[1] = lease; ARGV[1] = consumer name. Compare-and-delete: 1 if it was this consumer's.
DROP_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


async def maintain(
    client: Any,
    members_key: str,
    lease_keys: Sequence[str],
    name: str,
    ttl_ms: int,
    offset: int,
) -> list[int]:
    """One maintenance round (see the module docstring) with ``client`` (a redis-py asyncio
    ``Redis`` or ``RedisCluster``); returns the 0-based shards held after it. Raises what
    redis-py raises; a round cut short leaves every lease valid or expiring, never shared."""
    n = len(lease_keys)
    pipe = client.pipeline(transaction=False)
    pipe.eval(REGISTER_LUA, 1, members_key, name, ttl_ms)
    for key in lease_keys:
        pipe.eval(RENEW_LUA, 1, key, name, ttl_ms)
    members, *states = await pipe.execute()
    live = sorted(_bytes(m) for m in members)
    me = name.encode()
    rank = live.index(me) if me in live else len(live)
    want = quota(n, max(len(live), rank + 1), rank)
    owned = [i for i, state in enumerate(states) if int(state) == 1]
    if len(owned) > want:
        surplus = owned[want:]
        owned = owned[:want]
        pipe = client.pipeline(transaction=False)
        for i in surplus:
            pipe.eval(DROP_LUA, 1, lease_keys[i], name)
        await pipe.execute()
    elif len(owned) < want:
        order = [(offset + k) % n for k in range(n)]
        free = [i for i in order if int(states[i]) == 0][: want - len(owned)]
        if free:
            pipe = client.pipeline(transaction=False)
            for i in free:
                pipe.set(lease_keys[i], name, nx=True, px=ttl_ms)
            taken = await pipe.execute()
            owned += [i for i, ok in zip(free, taken, strict=True) if ok]
    return sorted(owned)


async def release(client: Any, members_key: str, lease_keys: Sequence[str], name: str) -> int:
    """Leave the registry and delete the leases that still name this consumer (one pipelined
    round trip); returns how many leases were released."""
    pipe = client.pipeline(transaction=False)
    pipe.zrem(members_key, name)
    for key in lease_keys:
        pipe.eval(DROP_LUA, 1, key, name)
    _, *dropped = await pipe.execute()
    return sum(int(d) for d in dropped)
