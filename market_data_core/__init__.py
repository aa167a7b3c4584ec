"""Contracts, codecs, config, protocols and errors of mdp. Imports no I/O library."""

from market_data_core.codec import (
    DecodedBatch,
    decode_events,
    decode_signal,
    encode_event,
    encode_events,
    encode_signal,
)
from market_data_core.config import AppConfig, load_config, parse_config
from market_data_core.contracts import Bar, Signal, StreamEvent, make_event_id, make_signal_id
from market_data_core.errors import (
    BackpressureError,
    BusError,
    ConfigError,
    ContractError,
    InferenceError,
    MDPError,
    StoreError,
    StoreUnavailableError,
)

__version__ = "0.4.0"

__all__ = [
    "AppConfig",
    "BackpressureError",
    "Bar",
    "BusError",
    "ConfigError",
    "ContractError",
    "DecodedBatch",
    "InferenceError",
    "MDPError",
    "Signal",
    "StoreError",
    "StoreUnavailableError",
    "StreamEvent",
    "__version__",
    "decode_events",
    "decode_signal",
    "encode_event",
    "encode_events",
    "encode_signal",
    "load_config",
    "make_event_id",
    "make_signal_id",
    "parse_config",
]
