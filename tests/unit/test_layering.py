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
# The one place allowed to construct store clients for the pipeline (the composition root the
# Python API and the CLI both build on; "the pipeline never knows SQL" holds for every other module).
COMPOSITION_ROOT = ROOT / "market_data_pipeline" / "wiring.py"


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


CLI = "market_data_pipeline.cli"


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an import statement names (``from a.b import c`` -> ``a.b`` and
    ``a.b.c``: ``c`` may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def cli_importers() -> list[str]:
    """Modules outside ``market_data_pipeline/cli/`` that import the CLI (issue 17: the CLI
    calls the library, never the other way round)."""
    out = []
    cli_dir = ROOT / "market_data_pipeline" / "cli"
    for package in sorted(RULES):
        for path in sorted((ROOT / package).rglob("*.py")):
            if cli_dir in path.parents:
                continue
            bad = {m for m in imported_modules(path) if m == CLI or m.startswith(CLI + ".")}
            out += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(bad)]
    return out


def test_nothing_outside_the_cli_imports_it() -> None:
    assert cli_importers() == []


def test_the_cli_checker_catches_an_import_into_the_cli(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text(
        "from market_data_pipeline.cli.cmd_produce import pump\n"
        "from market_data_pipeline import cli\n"
    )
    found = {m for m in imported_modules(bad) if m == CLI or m.startswith(CLI + ".")}
    assert {"market_data_pipeline.cli.cmd_produce", "market_data_pipeline.cli"} <= found


SERVERS = "market_data_pipeline.servers"


def pipeline_imports_of(path: Path) -> set[str]:
    """The ``market_data_pipeline`` modules outside ``servers`` that ``path`` imports."""
    return {
        m
        for m in imported_modules(path)
        if (m == "market_data_pipeline" or m.startswith("market_data_pipeline."))
        and not (m == SERVERS or m.startswith(SERVERS + "."))
    }


def test_the_servers_stand_on_core_alone() -> None:
    """``servers/`` (embedded and ``mdp up`` servers) starts processes and resolves URLs;
    it needs nothing of the pipeline above it, so every command and the API can use it."""
    found = {
        f"{path.relative_to(ROOT)} imports {m}"
        for path in sorted((ROOT / "market_data_pipeline" / "servers").rglob("*.py"))
        for m in pipeline_imports_of(path)
    }
    assert found == set()


def test_the_servers_checker_catches_an_import_of_the_pipeline(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text(
        "from market_data_pipeline import telemetry\n"
        "from market_data_pipeline.servers.process import Server\n"
    )
    assert pipeline_imports_of(bad) == {"market_data_pipeline", "market_data_pipeline.telemetry"}


FEATURES = "market_data_pipeline.features"
# top to bottom; a module imports only modules of the layers below its own (issue 17: the
# feature engine split by concern stays split)
FEATURE_LAYERS = [{"engine"}, {"indicators", "quotes"}, {"base"}, {"spec", "exact"}]


def feature_layer_violations(module: str, path: Path) -> set[str]:
    """The ``features`` modules ``path`` (the module ``features.<module>``) imports that are
    not in a layer below its own."""
    layer = next(i for i, mods in enumerate(FEATURE_LAYERS) if module in mods)
    below = set().union(*FEATURE_LAYERS[layer + 1 :])
    return {
        m
        for m in imported_modules(path)
        if m.startswith(FEATURES + ".") and m.split(".")[2] not in below
    }


def test_the_feature_modules_import_only_the_layers_below() -> None:
    features = ROOT / "market_data_pipeline" / "features"
    modules = {p.stem for p in features.glob("*.py")} - {"__init__"}
    assert modules == set().union(*FEATURE_LAYERS), "a features module missing from the layers"
    found = {
        f"{m} imports {bad}"
        for m in sorted(modules)
        for bad in feature_layer_violations(m, features / f"{m}.py")
    }
    assert found == set()


def test_the_feature_layers_checker_catches_an_import_upwards(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text(
        "from market_data_pipeline.features.engine import FeatureEngine\n"
        "from market_data_pipeline.features.quotes import QuoteMean\n"
        "from market_data_pipeline.features.spec import WindowSpec\n"
    )
    assert feature_layer_violations("indicators", bad) == {
        "market_data_pipeline.features.engine",
        "market_data_pipeline.features.engine.FeatureEngine",
        "market_data_pipeline.features.quotes",
        "market_data_pipeline.features.quotes.QuoteMean",
    }
