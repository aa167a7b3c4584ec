from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The real market data the project ships (copied from ../shared/data, provenance in
# datasets/README.md); tests read these so a clone needs nothing beside it.
DATA = ROOT / "datasets"
SHARED_ORIGINAL = ROOT.parent / "shared" / "data"

# A developer's `mdp up` in this clone must not capture the commands the tests run: their
# state folder (market_data_pipeline.local_servers) is one that does not exist.
os.environ["MDP_HOME"] = str(Path(tempfile.gettempdir()) / f"mdp-tests-{os.getpid()}-no-servers")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
