"""Shard leases for Redis consumer groups: each shard of a group is read by one live consumer.

Mechanism
---------
For a consumer group ``G`` reading a topic ``T`` with ``n`` shards (streams ``S_0..S_{n-1}``):

- a **live-consumer registry**, the sorted set ``mdp:bus:{T}:{G}:members`` whose members are
  consumer names scored by the server time (ms) at which they stop being live
  (``now + lease_ttl_ms``);
- one **lease key per shard**, ``mdp:bus:{S_i}:{G}:lease``, holding the owner's consumer name
  with a TTL of ``lease_ttl_ms``.

Every ``lease_ttl_ms / 3`` (from ``poll``) a consumer runs :data:`MAINTAIN_LUA` — one atomic
script, one round trip — which refreshes its registry entry, drops expired members, and computes
its quota: with ``m`` live consumers sorted by name, the consumer ranked ``r`` may hold
``n // m + (1 if r < n % m else 0)`` shards (so quotas add up to ``n`` and none exceeds
``ceil(n / m)``). It renews the leases it holds (compare-and-renew: only keys whose value is its
own name), releases the surplus when over quota, and takes free shards (``SET NX PX``) when under.
It returns the shards it now holds; the consumer reads only those.

Bounds
------
- A consumer that dies (``kill -9``) stops renewing: its registry entry and leases expire after at
  most ``lease_ttl_ms``; every survivor runs the script within ``lease_ttl_ms / 3`` plus one poll
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

The lease names the consumer, not the process: a consumer restarted under the same name takes its
leases back at once (and receives its pending entries first). Two live processes must therefore
never share a consumer name. Server time (``TIME``) is used throughout, so host clocks do not
matter.
"""

from __future__ import annotations

import zlib

__all__ = ["MAINTAIN_LUA", "RELEASE_LUA", "lease_key", "members_key", "quota", "start_offset"]


def members_key(topic: str, group: str) -> str:
    """The live-consumer registry of ``group`` on ``topic``."""
    return f"mdp:bus:{topic}:{group}:members"


def lease_key(stream: str, group: str) -> str:
    """The lease of one shard (stream) for ``group``."""
    return f"mdp:bus:{stream}:{group}:lease"


def quota(shards: int, live: int, rank: int) -> int:
    """How many of ``shards`` the consumer ranked ``rank`` (0-based, by name) among ``live`` may
    hold; the same arithmetic as :data:`MAINTAIN_LUA` (kept here for the unit tests)."""
    live = max(live, 1)
    return shards // live + (1 if rank < shards % live else 0)


def start_offset(name: str, shards: int) -> int:
    """Where a consumer starts looking for free shards, so that newcomers spread out."""
    return zlib.crc32(name.encode()) % max(shards, 1)


# KEYS[1] = registry, KEYS[2..n+1] = lease of shard 0..n-1
# ARGV[1] = consumer name, ARGV[2] = lease_ttl_ms, ARGV[3] = start offset
# Returns the 0-based shards held after the round.
MAINTAIN_LUA = """
local name = ARGV[1]
local ttl = tonumber(ARGV[2])
local offset = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + ttl, name)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 4)
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
table.sort(members)
local live = #members
local rank = 0
for i, m in ipairs(members) do
  if m == name then rank = i - 1 end
end
local n = #KEYS - 1
local want = math.floor(n / live)
if rank < (n % live) then want = want + 1 end
local owned = {}
for i = 1, n do
  if redis.call('GET', KEYS[i + 1]) == name then owned[#owned + 1] = i end
end
while #owned > want do
  local i = table.remove(owned)
  redis.call('DEL', KEYS[i + 1])
end
for _, i in ipairs(owned) do redis.call('PEXPIRE', KEYS[i + 1], ttl) end
if #owned < want then
  for k = 0, n - 1 do
    if #owned >= want then break end
    local i = ((offset + k) % n) + 1
    if redis.call('SET', KEYS[i + 1], name, 'NX', 'PX', ttl) then
      owned[#owned + 1] = i
    end
  end
end
local result = {}
for _, i in ipairs(owned) do result[#result + 1] = i - 1 end
return result
"""

# KEYS[1] = registry, KEYS[2..] = leases; ARGV[1] = consumer name. Compare-and-delete.
RELEASE_LUA = """
redis.call('ZREM', KEYS[1], ARGV[1])
local released = 0
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
return released
"""
