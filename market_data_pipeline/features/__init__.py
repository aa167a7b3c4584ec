"""Rolling features per symbol over closed bars and quotes (see :mod:`.rolling`)."""

from market_data_pipeline.features.rolling import (
    BASE_FEATURES,
    FEATURE_KINDS,
    NAME_PREFIXES,
    FeatureEngine,
    WindowSpec,
    resolve_windows,
)

__all__ = [
    "BASE_FEATURES",
    "FEATURE_KINDS",
    "NAME_PREFIXES",
    "FeatureEngine",
    "WindowSpec",
    "resolve_windows",
]
