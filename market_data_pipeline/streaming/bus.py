"""Open the configured bus: ``bus.type`` picks a factory from :data:`FACTORIES`.

Both backends satisfy :class:`market_data_core.protocols.Bus` and pass the same contract suite
(``tests/integration/test_bus_contract.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable

from market_data_core.config import AppConfig
from market_data_core.errors import BusError, ConfigError
from market_data_core.protocols import Bus
from market_data_pipeline.servers import ServerUrls

__all__ = ["FACTORIES", "open_bus"]


async def _open_redis(config: AppConfig, urls: ServerUrls) -> Bus:
    from market_data_pipeline.streaming.redis_bus import RedisBus

    if not urls.redis_url:
        raise ConfigError(
            "bus.type is redis but no server is configured: set REDIS_URI or bus.redis.uri",
            source="config",
            key_path="bus.redis.uri",
        )
    if config.bus.redis.cluster and "valkey" in urls.embedded:
        raise ConfigError(
            "bus.redis.cluster is true but no cluster is configured (mdp starts no embedded "
            "cluster): set REDIS_URI or bus.redis.uri to one of its nodes "
            "(redis+cluster://host:port,host:port)",
            source="config",
            key_path="bus.redis.uri",
        )
    return await RedisBus.connect(urls.redis_url, config.bus)


async def _open_kafka(config: AppConfig, urls: ServerUrls) -> Bus:
    if not urls.kafka_bootstrap:
        raise ConfigError(
            "bus.type is kafka but no broker is configured: set KAFKA_BOOTSTRAP or "
            "bus.kafka.bootstrap",
            source="config",
            key_path="bus.kafka.bootstrap",
        )
    try:
        module = importlib.import_module("market_data_pipeline.streaming.kafka_bus")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BusError(
            f"the Kafka bus is unavailable ({exc})", backend="kafka", operation="connect"
        ) from exc
    bus: Bus = await module.KafkaBus.connect(urls.kafka_bootstrap, config.bus)
    return bus


FACTORIES: dict[str, Callable[[AppConfig, ServerUrls], Awaitable[Bus]]] = {
    "redis": _open_redis,
    "kafka": _open_kafka,
}


async def open_bus(config: AppConfig, urls: ServerUrls) -> Bus:
    """Connect the bus named by ``config.bus.type``.

    Raises ``ConfigError`` when its server is not configured, ``BusError`` when it cannot be
    reached (or, for Kafka, when aiokafka is not installed).
    """
    factory = FACTORIES.get(config.bus.type)
    if factory is None:  # the config model already restricts the type; kept for safety
        raise ConfigError(f"unknown bus type {config.bus.type!r}", key_path="bus.type")
    return await factory(config, urls)
