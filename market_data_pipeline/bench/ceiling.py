"""The bare ceiling of ``mdp bench``: what the servers do with no mdp logic in the way, in the
same run as the full path (SPEC §12): publishing (one event per entry, and packed) with the
client method the producers ship (:meth:`RedisBus.publish`: the publish script per stream,
``XADD`` per entry and one ``XTRIM ... MAXLEN ~`` per call), ``XREADGROUP`` + msgpack unpack +
``XACK``, and PostgreSQL ``COPY`` of tick-shaped rows."""

from __future__ import annotations

import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

import msgpack

from market_data_core.codec import encode_event, encode_events
from market_data_core.config import BusConfig
from market_data_core.contracts import StreamEvent
from market_data_core.errors import BusError
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.streaming.redis_bus import RedisBus

__all__ = ["Ceiling", "measure_ceiling"]

# entries per publish (one round trip), as the ceiling has always batched them
_BATCH = 1000


@dataclass
class Ceiling:
    """The bare ceiling of one run: ``events`` measured per round, ``repeats`` rounds, each
    figure the median of the rounds' (``path_samples`` the rounds' whole paths, in order):
    publish (``xadd_per_s``, one event per entry; ``packed_xadd_per_s`` with ``--pack``
    events per entry, ``None`` for ``--pack 1``), ``XREADGROUP`` + ``XACK`` and ``COPY`` in
    events (rows) per second; ``path_per_s`` the three one after the other for one event per
    entry; ``publish_method`` how both publishes were sent (:attr:`RedisBus.publish_method`)."""

    events: int
    xadd_per_s: float
    read_ack_per_s: float
    copy_per_s: float
    path_per_s: float
    publish_method: str
    packed_xadd_per_s: float | None = None
    repeats: int = 1
    path_samples: list[float] = field(default_factory=list)


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


async def measure_ceiling(
    urls: ServerUrls,
    n: int,
    symbols: int,
    pack: int,
    bus: BusConfig | None = None,
    repeats: int = 3,
) -> Ceiling:
    """Bare publish -> XREADGROUP+XACK (msgpack unpack, no validation) -> COPY of ``n`` events
    over ``symbols`` symbols (and a packed publish of ``pack`` events per entry when
    ``pack > 1``), ``repeats`` rounds; each rate the median of the rounds', in events (rows)
    per second. One round of 200,000 events lasts about a second, so one hiccup of the
    machine moved a single round's whole path by up to a fifth (102k-135k ev/s in runs
    minutes apart on the 2-core machine); the median of three does not follow one.

    The publishes go through :meth:`RedisBus.publish` built from ``bus`` (the run's bus config:
    its ``maxlen``, raised to ``n`` so that nothing is trimmed before it is read, and
    ``wait_replicas``; the defaults when ``None``), ``_BATCH`` entries per call into streams
    of the ceiling's own: the script and packing the producers use, without their event
    building, encoding, rate limiting or retries. Raises ``BusError`` when Redis fails or fewer
    entries are read back than were published, ``StoreError`` when PostgreSQL fails,
    ``ValueError`` for ``repeats < 1``."""
    from market_data_pipeline.wiring import bare_copy_ticks_per_s

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    assert urls.redis_url is not None and urls.database_url is not None
    base = bus or BusConfig()
    config = base.model_copy(update={"maxlen": max(base.maxlen, n)})
    events = _bench_events(n, symbols)
    items = [(e.symbol, encode_event(e)) for e in events]
    packed = (
        [(events[i].symbol, encode_events(events[i : i + pack])) for i in range(0, n, pack)]
        if pack > 1
        else []
    )
    rounds: list[tuple[float, float, float | None, float]] = []
    publisher = await RedisBus.connect(urls.redis_url, config)
    try:
        for _ in range(repeats):
            xadd_s, read_s, packed_rate = await _publish_and_read(publisher, items, packed, n)
            copy_rate = await bare_copy_ticks_per_s(urls.database_url, n)
            rounds.append((xadd_s, read_s, packed_rate, copy_rate))
    finally:
        await publisher.aclose()
    paths = [n / (xadd_s + read_s + n / copy_rate) for xadd_s, read_s, _, copy_rate in rounds]
    packed_rates = [r[2] for r in rounds if r[2] is not None]
    return Ceiling(
        events=n,
        xadd_per_s=statistics.median(n / r[0] for r in rounds),
        read_ack_per_s=statistics.median(n / r[1] for r in rounds),
        copy_per_s=statistics.median(r[3] for r in rounds),
        path_per_s=statistics.median(paths),
        publish_method=publisher.publish_method,
        packed_xadd_per_s=statistics.median(packed_rates) if packed_rates else None,
        repeats=repeats,
        path_samples=paths,
    )


async def _publish_and_read(
    publisher: RedisBus,
    items: list[tuple[str, bytes]],
    packed: list[tuple[str, bytes]],
    n: int,
) -> tuple[float, float, float | None]:
    """One round on fresh streams: seconds to publish ``items``, seconds to read and ack them
    back, and the packed publish rate (``None`` without ``packed``)."""
    client = publisher.client
    stream = f"mdp.bench.ceiling.{uuid.uuid4().hex[:8]}"
    try:
        t = time.perf_counter()
        for i in range(0, n, _BATCH):
            await publisher.publish(stream, items[i : i + _BATCH])
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
        if read < n:  # a rate over fewer entries than published would be no figure at all
            raise BusError(
                f"bare ceiling: read back {read:,} of the {n:,} entries published",
                backend="redis",
                operation="read",
            )
        packed_rate = None
        if packed:
            t = time.perf_counter()
            for i in range(0, len(packed), _BATCH):
                await publisher.publish(stream + ".packed", packed[i : i + _BATCH])
            packed_rate = n / (time.perf_counter() - t)
    finally:
        await client.delete(stream, stream + ".packed")
    return xadd_s, read_s, packed_rate
