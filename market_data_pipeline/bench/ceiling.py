"""The bare ceiling of ``mdp bench``: what the servers do with no mdp logic in the way, in the
same run as the full path (SPEC §12): redis-py ``XADD`` (one event per entry, and packed),
``XREADGROUP`` + msgpack unpack + ``XACK``, and PostgreSQL ``COPY`` of tick-shaped rows."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import msgpack
import redis.asyncio as aredis

from market_data_core.codec import encode_event, encode_events
from market_data_core.contracts import StreamEvent
from market_data_pipeline.servers import ServerUrls

__all__ = ["Ceiling", "measure_ceiling"]


@dataclass
class Ceiling:
    events: int
    xadd_per_s: float
    read_ack_per_s: float
    copy_per_s: float
    path_per_s: float
    packed_xadd_per_s: float | None = None


def _bench_events(n: int, symbols: int) -> list[StreamEvent]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        StreamEvent.create(
            provider="ceiling",
            symbol=f"S{i % symbols:03d}",
            kind="tick",
            src_ts=t0 + timedelta(microseconds=50 * i),
            c=100.0 + (i % 97) * 0.01,
            v=1.0,
            seq=i,
        )
        for i in range(n)
    ]


async def measure_ceiling(urls: ServerUrls, n: int, symbols: int, pack: int) -> Ceiling:
    """Bare redis-py XADD -> XREADGROUP+XACK (msgpack unpack, no validation) -> COPY."""
    from market_data_pipeline.wiring import bare_copy_ticks_per_s

    assert urls.redis_url is not None and urls.database_url is not None
    events = _bench_events(n, symbols)
    payloads = [encode_event(e) for e in events]
    stream = f"mdp.bench.ceiling.{uuid.uuid4().hex[:8]}"
    client = aredis.Redis.from_url(urls.redis_url)
    try:
        t = time.perf_counter()
        for i in range(0, n, 1000):
            pipe = client.pipeline(transaction=False)
            for p in payloads[i : i + 1000]:
                pipe.xadd(stream, {"data": p})
            await pipe.execute()
        xadd_s = time.perf_counter() - t
        await client.xgroup_create(stream, "g", id="0")
        t = time.perf_counter()
        read = 0
        while read < n:
            resp = cast(
                "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
                await client.xreadgroup("g", "c", {stream: ">"}, count=1000),
            )
            entries = resp[0][1] if resp else []
            if not entries:
                break
            for _id, fields in entries:
                msgpack.unpackb(fields[b"data"])
            await client.xack(stream, "g", *[eid for eid, _ in entries])
            read += len(entries)
        read_s = time.perf_counter() - t
        packed_rate = None
        if pack > 1:
            packed = [encode_events(events[i : i + pack]) for i in range(0, n, pack)]
            t = time.perf_counter()
            for i in range(0, len(packed), 1000):
                pipe = client.pipeline(transaction=False)
                for p in packed[i : i + 1000]:
                    pipe.xadd(stream + ".packed", {"data": p})
                await pipe.execute()
            packed_rate = n / (time.perf_counter() - t)
        await client.delete(stream, stream + ".packed")
    finally:
        await client.aclose()
    copy_rate = await bare_copy_ticks_per_s(urls.database_url, n)
    return Ceiling(
        events=n,
        xadd_per_s=n / xadd_s,
        read_ack_per_s=n / read_s,
        copy_per_s=copy_rate,
        path_per_s=n / (xadd_s + read_s + n / copy_rate),
        packed_xadd_per_s=packed_rate,
    )
