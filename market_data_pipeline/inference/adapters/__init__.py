"""Inference adapters behind the ``InferenceAdapter`` protocol, side by side: ``rules`` (the
safe condition language over features) and ``sklearn`` (a hash-pinned model with a circuit
breaker that falls back to the rules)."""

from market_data_pipeline.inference.adapters.rules import (
    Rule,
    RuleConfig,
    RulesAdapter,
    load_rules,
    parse_rules,
)
from market_data_pipeline.inference.adapters.sklearn import CircuitBreaker, SklearnAdapter

__all__ = [
    "CircuitBreaker",
    "Rule",
    "RuleConfig",
    "RulesAdapter",
    "SklearnAdapter",
    "load_rules",
    "parse_rules",
]
