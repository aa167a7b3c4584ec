"""Producers: sources of events (synthetic, dataset replay, Coinbase, IBKR) and the paced,
batching :class:`Publisher` that puts their events on the bus.

Every provider satisfies :class:`market_data_core.protocols.Provider`: ``events()`` yields
validated :class:`StreamEvent` objects with deterministic ids, ``aclose()`` stops it.
"""

from market_data_pipeline.producers.coinbase import CoinbaseProvider
from market_data_pipeline.producers.datasets import (
    DatasetSpec,
    RowError,
    load_registry,
    lookup,
    read_dataset,
)
from market_data_pipeline.producers.pacing import TokenBucket
from market_data_pipeline.producers.publisher import Publisher, encode_batch
from market_data_pipeline.producers.replay import DatasetReplayProvider, StoreBarsReplayProvider
from market_data_pipeline.producers.synthetic import SyntheticProvider

__all__ = [
    "CoinbaseProvider",
    "DatasetReplayProvider",
    "DatasetSpec",
    "Publisher",
    "RowError",
    "StoreBarsReplayProvider",
    "SyntheticProvider",
    "TokenBucket",
    "encode_batch",
    "load_registry",
    "lookup",
    "read_dataset",
]
