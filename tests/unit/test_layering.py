"""SPEC §1 layering, checked from the source (``make lint`` also runs import-linter)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

SQL = {"sqlalchemy", "asyncpg", "alembic"}
RULES = {
    "market_data_core": {
        "market_data_pipeline",
        "market_data_store",
        "redis",
        "aiokafka",
        "prometheus_client",
    }
    | SQL,
    "market_data_pipeline": SQL | {"market_data_store"},
    "market_data_store": {"market_data_pipeline"},
}
# The one place allowed to construct store clients for the pipeline.
COMPOSITION_ROOT = ROOT / "market_data_pipeline" / "cli" / "wiring.py"


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def violations(package: str, forbidden: set[str]) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_roots(path) & forbidden
        if path == COMPOSITION_ROOT:
            bad -= {"market_data_store"}
        out += [f"{path.relative_to(ROOT)} imports {b}" for b in sorted(bad)]
    return out


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_boundaries(package: str) -> None:
    assert violations(package, RULES[package]) == []


def test_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("import asyncpg\nfrom sqlalchemy import text\n")
    assert imported_roots(bad) & SQL == {"asyncpg", "sqlalchemy"}
