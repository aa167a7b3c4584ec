from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
DATASETS = ROOT / "datasets"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
