"""What the micro-batch integration tests share: an ``AppConfig`` on fresh stream names, the
server URLs it names, publishing events, and the config as a file for ``mdp`` run as a
separate process (``tests/support/cli.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml

from market_data_core.codec import encode_event
from market_data_core.columnar import encode_block
from market_data_core.config import AppConfig, parse_config
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import Bus, routing_key
from market_data_pipeline.servers import ServerUrls


def make_config(
    redis_url: str, database_url: str, unique: str, window_ms: int, **mb: Any
) -> AppConfig:
    """Fresh stream and group names (``unique``), short bus timings; ``partitions``,
    ``claim_idle_ms`` and ``max_deliveries`` go to ``bus``, ``lease_ttl_ms`` to
    ``bus.redis``, the rest to ``micro_batch``."""
    bus = {
        "partitions": mb.pop("partitions", 1),
        "claim_idle_ms": mb.pop("claim_idle_ms", 1000),
        "max_deliveries": mb.pop("max_deliveries", 5),
    }
    lease_ttl_ms = mb.pop("lease_ttl_ms", 1000)
    return parse_config(
        {
            "bus": {
                **bus,
                "block_ms": 50,
                "redis": {
                    "uri": redis_url,
                    "stream": f"t.{unique}.events",
                    "bars_stream": f"t.{unique}.bars",
                    "dlq_stream": f"t.{unique}.dlq",
                    "signals_stream": f"t.{unique}.signals",
                    "consumer_group": f"g.{unique}",
                    "lease_ttl_ms": lease_ttl_ms,
                },
            },
            "micro_batch": {
                "window_ms": window_ms,
                "allow_late_ms": 500,
                "flush_timeout_ms": 200,
                "correction_horizon_ms": 3_600_000,
                "max_batch_size": 5000,
                **mb,
            },
            "store": {"dsn": database_url},
            "telemetry": {"metrics_port": 0},
        }
    )


def urls(cfg: AppConfig) -> ServerUrls:
    assert cfg.bus.redis.uri is not None and cfg.store.dsn is not None
    return ServerUrls(cfg.bus.redis.uri.get_secret_value(), cfg.store.dsn.get_secret_value(), None)


Wire = Literal["rows", "blocks"]
WIRES: tuple[Wire, ...] = ("rows", "blocks")


def wire_options(wire: Wire) -> dict[str, Any]:
    """``make_config`` options of a wire scenario: with blocks, also batches so small that
    open windows are stored before they close (``MicroBatcher``'s early stores) and every
    window's bar is recomputed from events stored in several transactions. (The flush
    timeout stays short: a replay read in full polls never looks quiet, however slow they
    are, so its windows close by their watermark and the in-order scenarios count no
    corrections.)"""
    return {"max_batch_size": 16} if wire == "blocks" else {}


async def publish(
    bus: Bus, cfg: AppConfig, events: list[StreamEvent], wire: Wire = "rows", pack: int = 50
) -> None:
    """One entry per event (``rows``: msgpack or JSON, the bus codec), or column blocks of up
    to ``pack`` events of one series (``blocks``), as a producer packs them: runs of 1000
    events, each series' events in order."""
    if wire == "rows":
        items = [
            (routing_key(e.provider, e.symbol), encode_event(e, cfg.bus.codec)) for e in events
        ]
    else:
        items = []
        for i in range(0, len(events), 1000):
            by_key: dict[str, list[StreamEvent]] = {}
            for e in events[i : i + 1000]:
                by_key.setdefault(routing_key(e.provider, e.symbol), []).append(e)
            for key, group in by_key.items():
                items += [
                    (key, encode_block(group[j : j + pack])) for j in range(0, len(group), pack)
                ]
    for i in range(0, len(items), 1000):
        await bus.publish(cfg.bus.events_topic, items[i : i + 1000])


def write_config(tmp_path: Path, cfg: AppConfig) -> Path:
    path = tmp_path / "streaming.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path
