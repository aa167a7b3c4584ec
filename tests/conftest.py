from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from market_data_pipeline.project import (
    DEFAULT_CONFIG_FILE,
    DEFAULT_RULES_FILE,
    DEFAULTS_DIR,
    SHIPPED_DATASETS_FILE,
)

ROOT = Path(__file__).resolve().parent.parent
# The real market data the project ships as package data (copied from ../shared/data,
# provenance in market_data_pipeline/defaults/datasets/README.md); tests read these so a clone
# needs nothing beside it.
DATA = DEFAULTS_DIR / "datasets"
# The shipped config, rules and dataset registry (market_data_pipeline/defaults/configs/).
SHIPPED_CONFIG = DEFAULT_CONFIG_FILE
SHIPPED_RULES = DEFAULT_RULES_FILE
SHIPPED_REGISTRY = SHIPPED_DATASETS_FILE
SHARED_ORIGINAL = ROOT.parent / "shared" / "data"

# A developer's `mdp up` in this clone must not capture the commands the tests run: their
# state folder (market_data_pipeline.servers.local) is one that does not exist.
os.environ["MDP_HOME"] = str(Path(tempfile.gettempdir()) / f"mdp-tests-{os.getpid()}-no-servers")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
