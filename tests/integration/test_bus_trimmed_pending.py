"""A pending entry that MAXLEN trimming removed before it was processed is not lost silently:
it leaves a dead letter with reason ``trimmed`` and is counted."""

from __future__ import annotations

import redis.asyncio as aredis

from market_data_core.config import parse_config
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.streaming.bus import open_bus


async def test_trimmed_pending_entries_become_dead_letters(redis_url: str, unique: str) -> None:
    cfg = parse_config(
        {
            "bus": {
                "redis": {
                    "uri": redis_url,
                    "stream": f"trim.{unique}",
                    "dlq_stream": f"trim.{unique}.dlq",
                    "consumer_group": f"g{unique}",
                }
            }
        }
    )
    bus = await open_bus(cfg, ServerUrls(redis_url, None, None))
    raw = aredis.Redis.from_url(redis_url)
    try:
        await bus.publish(cfg.bus.events_topic, [("p|S", b'{"n": %d}' % i) for i in range(5)])
        first = bus.consumer(cfg.bus.events_topic, cfg.bus.group, "worker")
        assert len(await first.poll(10, 100)) == 5  # delivered, never acked
        await first.aclose()
        await raw.xtrim(cfg.bus.events_topic, maxlen=0)  # what MAXLEN ~ does to old entries
        again = bus.consumer(cfg.bus.events_topic, cfg.bus.group, "worker")  # restart
        assert await again.poll(10, 100) == []
        await again.aclose()
        letters = await bus.dlq_list(100)
        assert len(letters) == 5
        assert {le.reason for le in letters} == {"trimmed"}
        assert all("payload is lost" in le.detail and le.payload == b"" for le in letters)
        groups = await raw.xinfo_groups(cfg.bus.events_topic)
        assert groups[0]["pending"] == 0
    finally:
        await raw.aclose()
        await bus.aclose()
