"""Issue 17: the shipped defaults, where relative paths in a config resolve (its folder, never
the working directory), the config `--config` falls back to, dataset lookup across registries,
and `mdp init`."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from market_data_core.config import load_config, parse_config
from market_data_core.contracts import StreamEvent
from market_data_core.errors import ConfigError
from market_data_pipeline.cli.app import main
from market_data_pipeline.cli.common import DEFAULT_CONFIG, config_file, load_app_config
from market_data_pipeline.features import FeatureEngine
from market_data_pipeline.inference.engine import build_adapter
from market_data_pipeline.producers.datasets import find_dataset, load_registry, read_dataset
from market_data_pipeline.project import (
    DEFAULTS_DIR,
    EXAMPLE_MODEL_FILE,
    PROJECT_FILES,
    dataset_registries,
    init_project,
    rules_file,
)
from tests.conftest import DATA, SHIPPED_CONFIG, SHIPPED_REGISTRY, SHIPPED_RULES

TRADES = DATA / "binance-futures-btcusdt-trades-2020-02-22.csv"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with no project in it (and no server variables)."""
    for name in ("REDIS_URI", "DATABASE_URL", "KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _one_line_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("mdp: error: "), err
    return err


def test_relative_paths_resolve_against_the_config_folder_not_the_working_directory(
    tmp_path: Path, elsewhere: Path
) -> None:
    folder = tmp_path / "ops" / "cfg"
    folder.mkdir(parents=True)
    path = folder / "streaming.yaml"
    path.write_text(
        "inference:\n  adapters:\n"
        "    rules: {file: rules/mine.yaml}\n"
        "    sklearn: {model_path: ../models/m.joblib}\n"
        "producers:\n  replay: {datasets_file: datasets.yaml}\n"
    )
    cfg = load_config(path, env={})
    assert cfg.inference.adapters.rules.file == str(folder / "rules" / "mine.yaml")
    assert cfg.inference.adapters.sklearn.model_path == str(
        tmp_path / "ops" / "models" / "m.joblib"
    )
    assert cfg.producers.replay.datasets_file == str(folder / "datasets.yaml")
    # the same through the CLI's loader, given relative to the working directory
    rel = Path("..") / "ops" / "cfg" / "streaming.yaml"
    assert (elsewhere / rel).exists()
    assert load_app_config(rel).producers.replay.datasets_file == str(folder / "datasets.yaml")


def test_absolute_and_unset_paths_are_kept_and_data_without_a_folder_stays_as_written(
    tmp_path: Path,
) -> None:
    absolute = str(tmp_path / "r.yaml")
    cfg = parse_config({"inference": {"adapters": {"rules": {"file": absolute}}}}, base_dir="/x")
    assert cfg.inference.adapters.rules.file == absolute
    unset = parse_config({"producers": {"replay": {"datasets_file": ""}}}, base_dir="/x")
    assert unset.producers.replay.datasets_file is None
    assert unset.inference.adapters.rules.file is None
    assert unset.inference.adapters.sklearn.model_path == ""
    as_written = parse_config({"inference": {"adapters": {"rules": {"file": "r.yaml"}}}})
    assert as_written.inference.adapters.rules.file == "r.yaml"


def test_the_cli_reads_rules_beside_the_config_from_any_working_directory(
    tmp_path: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mdp stream infer` loads its rules before any server starts: a bad rule in the rules
    file beside the config is reported by that file's path, from another directory."""
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    (folder / "rules.yaml").write_text(
        '- {name: "x", condition: "nope > 1", signal: 1, score: 1}\n'
    )
    config = folder / "streaming.yaml"
    config.write_text(
        SHIPPED_CONFIG.read_text().replace('# file: "rules.yaml"', 'file: "rules.yaml"')
    )
    (elsewhere / "rules.yaml").write_text("this file must not be read\n")
    err = _one_line_exit_2(["stream", "infer", "-c", str(config)], capsys)
    assert f"{folder / 'rules.yaml'}: [0].condition: rule 'x': unknown feature 'nope'" in err


def test_the_default_config_is_the_working_directorys_else_the_shipped_one(
    tmp_path: Path, elsewhere: Path
) -> None:
    assert config_file(DEFAULT_CONFIG) == SHIPPED_CONFIG
    shipped = load_app_config(DEFAULT_CONFIG)
    assert shipped == load_config(SHIPPED_CONFIG, env={})
    assert rules_file(shipped) == SHIPPED_RULES  # it names none: the shipped rules
    assert shipped.inference.adapters.sklearn.model_path == str(EXAMPLE_MODEL_FILE)
    (elsewhere / "configs").mkdir()
    (elsewhere / "configs" / "streaming.yaml").write_text("micro_batch: {window_ms: 1000}\n")
    assert config_file(DEFAULT_CONFIG) == DEFAULT_CONFIG
    assert load_app_config(DEFAULT_CONFIG).micro_batch.window_ms == 1000
    # an explicit path never falls back
    with pytest.raises(ConfigError, match="file not found"):
        load_app_config(tmp_path / "none.yaml")


def test_a_copy_of_the_shipped_config_anywhere_runs_with_the_shipped_rules(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "copy.yaml"
    shutil.copy(SHIPPED_CONFIG, copy)
    cfg = load_config(copy, env={})
    features = FeatureEngine(cfg.features.windows)
    adapter = build_adapter(cfg, "rules", features.feature_names)
    assert adapter.name == "rules"
    assert rules_file(cfg) == SHIPPED_RULES
    assert dataset_registries(cfg) == [SHIPPED_REGISTRY]


def test_the_shipped_defaults_are_the_files_the_wheel_carries() -> None:
    found = sorted(p.relative_to(DEFAULTS_DIR).as_posix() for p in DEFAULTS_DIR.rglob("*.*"))
    assert found == [
        "configs/datasets.yaml",
        "configs/rules.yaml",
        "configs/streaming.yaml",
        "datasets/README.md",
        "datasets/binance-futures-btcusdt-trades-2020-02-22.csv",
        "datasets/eurusd-bid-1m-2020-01-01.csv",
        "datasets/eurusd-quotes-2020-01-01.csv",
        "datasets/ftx-btc-perp-1m-2022-01.csv",
        "models/example_model.joblib",
        "templates/datasets.yaml",
    ]
    registry = load_registry(SHIPPED_REGISTRY)
    assert all(spec.path.is_relative_to(DEFAULTS_DIR / "datasets") for spec in registry.values())
    assert all(spec.path.exists() for spec in registry.values())


def _registry(path: Path, name: str, data: Path, symbol: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    name: {
                        "path": str(data),
                        "provider": "mine",
                        "symbol": symbol,
                        "kind": "tick",
                        "timestamp": {"column": "timestamp", "format": "epoch_us"},
                        "columns": {"c": "price", "v": "amount", "seq": "id"},
                    }
                }
            }
        )
    )
    return path


def test_dataset_names_come_from_the_users_registry_first_then_the_shipped_one(
    tmp_path: Path,
) -> None:
    mine = _registry(tmp_path / "d.yaml", "binance_btcusdt_trades", TRADES, "MINE")
    order = [mine, SHIPPED_REGISTRY]
    assert find_dataset("binance_btcusdt_trades", order).symbol == "MINE"  # overrides
    assert find_dataset("ftx_btc_perp_1m", order).symbol == "BTC-PERP"  # shipped
    assert find_dataset("ftx_btc_perp_1m", [SHIPPED_REGISTRY, SHIPPED_REGISTRY]).kind == "bar"
    with pytest.raises(ConfigError) as err:
        find_dataset("nope", order)
    text = str(err.value)
    assert text.startswith("--dataset: unknown dataset 'nope'; registered: ")
    assert f"binance_btcusdt_trades ({mine})" in text
    assert f"ftx_btc_perp_1m ({SHIPPED_REGISTRY})" in text
    with pytest.raises(ConfigError, match="dataset registry not found"):
        find_dataset("binance_btcusdt_trades", [tmp_path / "gone.yaml", SHIPPED_REGISTRY])


def test_init_writes_an_editable_project_that_uses_its_own_files(tmp_path: Path) -> None:
    project = tmp_path / "new" / "proj"
    written = init_project(project)
    assert [f.path for f in written] == [f.path for f in PROJECT_FILES]
    cfg = load_config(project / "configs" / "streaming.yaml", env={})
    assert rules_file(cfg) == project / "configs" / "rules.yaml"
    assert dataset_registries(cfg) == [project / "configs" / "datasets.yaml", SHIPPED_REGISTRY]
    model = Path(cfg.inference.adapters.sklearn.model_path)
    assert model == project / "models" / "example_model.joblib"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == cfg.inference.adapters.sklearn.sha256
    assert (project / "configs" / "rules.yaml").read_bytes() == SHIPPED_RULES.read_bytes()
    features = FeatureEngine(cfg.features.windows)
    assert build_adapter(cfg, "sklearn", features.feature_names).name == "sklearn"
    # the user's registry: empty, and every shipped name still found through it
    registry = project / "configs" / "datasets.yaml"
    assert load_registry(registry) == {}
    assert find_dataset("eurusd_quotes", dataset_registries(cfg)).symbol == "EUR/USD"


def test_the_registry_example_works_once_uncommented(tmp_path: Path) -> None:
    """The commented example of the registry `mdp init` writes, switched on, reads a file of
    that shape from the project's data/ folder."""
    project = tmp_path / "proj"
    init_project(project)
    registry = project / "configs" / "datasets.yaml"
    lines = registry.read_text().splitlines()
    start = lines.index("  # my_trades:")
    registry.write_text(
        "\n".join(lines[:start] + [line.replace("# ", "", 1) for line in lines[start:]]) + "\n"
    )
    (project / "data").mkdir()
    (project / "data" / "my-trades.csv").write_text(
        "timestamp,price,size,side,id\n"
        "2024-03-01T14:30:00.120Z,101.5,3,buy,1\n"
        "2024-03-01T14:30:00.480Z,101.25,2,sell,2\n"
    )
    spec = load_registry(registry)["my_trades"]
    items = list(read_dataset(spec))
    events = [e for e in items if isinstance(e, StreamEvent)]
    assert events == items  # no bad rows
    assert [(e.symbol, e.c, e.v, e.side, e.seq) for e in events] == [
        ("BTCUSDT", 101.5, 3.0, "buy", 1),
        ("BTCUSDT", 101.25, 2.0, "sell", 2),
    ]


def test_init_never_overwrites_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "proj"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "rules.yaml").write_text("# mine\n")
    err = _one_line_exit_2(["init", str(project)], capsys)
    assert f"{project / 'configs' / 'rules.yaml'}: already exists" in err and "--force" in err
    assert (project / "configs" / "rules.yaml").read_text() == "# mine\n"
    assert not (project / "configs" / "streaming.yaml").exists()  # nothing written

    assert main(["init", str(project), "--force"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mdp init: wrote 4 files in {project}:")
    assert f"next: cd {project} && mdp demo" in out
    assert (project / "configs" / "rules.yaml").read_bytes() == SHIPPED_RULES.read_bytes()

    a_file = tmp_path / "file"
    a_file.write_text("")
    assert "not a folder" in _one_line_exit_2(["init", str(a_file)], capsys)
    (tmp_path / "p2" / "configs" / "streaming.yaml").mkdir(parents=True)
    err = _one_line_exit_2(["init", str(tmp_path / "p2"), "--force"], capsys)
    assert "is a folder, not a file" in err


def test_the_example_model_without_the_ml_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`pip install 'mdp-streaming[embedded]'` has no joblib: `--adapter sklearn` with the
    shipped config is one line naming the extra, not a traceback."""
    monkeypatch.setitem(sys.modules, "joblib", None)
    cfg = load_config(SHIPPED_CONFIG, env={})
    features = FeatureEngine(cfg.features.windows)
    with pytest.raises(ConfigError, match=r"needs the ml extra: pip install 'mdp-streaming\[ml\]'"):
        build_adapter(cfg, "sklearn", features.feature_names)
