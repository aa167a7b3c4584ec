"""Inference: features -> signals. :mod:`.expr` is the safe rule language (never ``eval``),
:mod:`.adapters` the rules and sklearn adapters, :mod:`.engine` ties them to the features."""

from market_data_pipeline.inference.engine import (
    AdapterKind,
    InferenceEngine,
    WarmableAdapter,
    build_adapter,
)
from market_data_pipeline.inference.expr import ExprError, parse_condition

__all__ = [
    "AdapterKind",
    "ExprError",
    "InferenceEngine",
    "WarmableAdapter",
    "build_adapter",
    "parse_condition",
]
