"""The bus: Redis Streams (default) or Kafka behind :class:`market_data_core.protocols.Bus`.

``open_bus(config, urls)`` returns the configured one. Backends live side by side
(``redis_bus.py``, ``kafka_bus.py``); shard leases are in ``leases.py``, the dead-letter format
in ``dlq.py``.
"""

from __future__ import annotations

from market_data_pipeline.streaming.bus import open_bus

__all__ = ["open_bus"]
