from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The real market data the project ships (copied from ../shared/data, provenance in
# datasets/README.md); tests read these so a clone needs nothing beside it.
DATA = ROOT / "datasets"
SHARED_ORIGINAL = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
