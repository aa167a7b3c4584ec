"""`mdp bench`'s bare ceiling publishes with the client method the producers ship (the publish
script per stream, not one redis-py XADD per entry), so the one-event-per-entry goal ("past the
bare whole path of the same run") is judged against the publish we ship, not a slower one. Counted
on the server (``INFO commandstats``), never timed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aredis

from market_data_core.config import BusConfig
from market_data_pipeline.bench import measure_ceiling, result_record, result_rows
from market_data_pipeline.bench.full_path import FullPath
from market_data_pipeline.servers import EmbeddedRedis, ServerUrls
from market_data_pipeline.streaming.redis_bus import RedisBus


@pytest.fixture
def own_valkey() -> Iterator[str]:
    """A Valkey of this test's own: its command counts are the ceiling's alone."""
    server = EmbeddedRedis()
    server.start()
    yield server.url
    server.stop()


def _calls(stats: dict[str, Any], command: str) -> int:
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_the_ceiling_publishes_with_the_producers_script(
    own_valkey: str, database_url: str
) -> None:
    events, pack = 2_500, 50
    redis_client = aredis.Redis.from_url(own_valkey)
    try:
        before = await redis_client.info("commandstats")
        ceiling = await measure_ceiling(
            ServerUrls(own_valkey, database_url, None),
            events,
            4,
            pack,
            BusConfig(maxlen=1000),
            repeats=1,
        )
        after = await redis_client.info("commandstats")
    finally:
        await redis_client.aclose()

    # 1,000 entries per publish: 3 script calls for 2,500 one-event entries, 1 for 50 packs
    assert _calls(after, "evalsha") - _calls(before, "evalsha") == 3 + 1
    # each entry is one XADD run by the script (counted by the server like any other call); the
    # run's maxlen (1,000) was raised to the events measured, else the stream would be trimmed
    # and measure_ceiling raise BusError for reading back fewer entries than it published
    assert _calls(after, "xadd") - _calls(before, "xadd") == events + events // pack
    assert _calls(after, "xack") - _calls(before, "xack") >= 1
    assert ceiling.events == events and ceiling.read_ack_per_s > 0
    assert ceiling.packed_xadd_per_s is not None and ceiling.path_per_s > 0

    bus = await RedisBus.connect(own_valkey, BusConfig())
    try:
        assert ceiling.publish_method == bus.publish_method
    finally:
        await bus.aclose()
    assert ceiling.publish_method.startswith("EVALSHA publish script")

    # the printed lines and the JSON say how the ceiling published
    full = FullPath(sustained_per_s=1.0)
    rows = dict(result_rows(ceiling, full, 2000, 1000.0, pack, "1 producer"))
    assert ceiling.publish_method in rows["bare ceiling: XADD"]
    assert "publish as above" in rows["bare ceiling: whole path"]
    record = result_record("run", {}, 2000, ceiling, full)
    assert record["ceiling"]["publish_method"] == ceiling.publish_method


async def test_the_ceiling_is_the_median_of_its_rounds(own_valkey: str, database_url: str) -> None:
    """Each round publishes and reads its own streams; the figures are the rounds' medians."""
    events = 2_000
    redis_client = aredis.Redis.from_url(own_valkey)
    try:
        before = await redis_client.info("commandstats")
        ceiling = await measure_ceiling(
            ServerUrls(own_valkey, database_url, None), events, 4, 1, repeats=3
        )
        after = await redis_client.info("commandstats")
        leftover = [key async for key in redis_client.scan_iter("mdp.bench.ceiling.*")]
    finally:
        await redis_client.aclose()
    assert _calls(after, "xadd") - _calls(before, "xadd") == 3 * events
    assert ceiling.repeats == 3 and len(ceiling.path_samples) == 3
    assert ceiling.path_per_s == sorted(ceiling.path_samples)[1]
    assert ceiling.packed_xadd_per_s is None
    assert leftover == []  # every round's streams are deleted
    full = FullPath(sustained_per_s=1.0)
    rows = dict(result_rows(ceiling, full, 2000, 1000.0, 1, "1 producer"))
    assert "median of 3 rounds" in rows["bare ceiling: whole path"]
    with pytest.raises(ValueError, match="repeats"):
        await measure_ceiling(ServerUrls(own_valkey, database_url, None), events, 4, 1, repeats=0)
