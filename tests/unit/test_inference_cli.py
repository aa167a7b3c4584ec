"""`mdp stream infer` refuses bad rules, bad models and bad flags with one line and exit 2,
before it starts or connects to any server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from market_data_pipeline.cli.app import main
from tests.conftest import SHIPPED_CONFIG, SHIPPED_RULES


def _config(tmp_path: Path, **inference: object) -> Path:
    data = yaml.safe_load(SHIPPED_CONFIG.read_text())
    sklearn = data["inference"]["adapters"]["sklearn"]
    sklearn["model_path"] = str(SHIPPED_CONFIG.parent / sklearn["model_path"])
    data["inference"]["adapters"]["rules"]["file"] = str(SHIPPED_RULES)
    for key, value in inference.items():
        section, _, field = key.partition("__")
        data["inference"]["adapters"].setdefault(section, {})[field] = value
    path = tmp_path / "streaming.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["stream", "infer", *args])
    err = capsys.readouterr().err.strip()
    return code, err


def test_hostile_rules_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump([{"name": "x", "condition": "rsi.__class__", "signal": 1, "score": 1}])
    )
    code, err = _run(["--config", str(_config(tmp_path, rules__file=str(rules)))], capsys)
    assert code == 2
    assert err.count("\n") == 0
    assert "[0].condition: rule 'x': unexpected character '.': attribute access" in err


def test_unknown_feature_lists_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump([{"name": "x", "condition": "rsi14 > 1", "signal": 1, "score": 1}])
    )
    code, err = _run(["--config", str(_config(tmp_path, rules__file=str(rules)))], capsys)
    assert code == 2
    assert (
        "unknown feature 'rsi14' (known: close, imbalance, momentum, ret_30s, rsi, sma_fast" in err
    )


def test_model_hash_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, sklearn__sha256="ab" * 32)
    code, err = _run(["--config", str(path), "--adapter", "sklearn"], capsys)
    assert code == 2 and err.count("\n") == 0
    assert "inference.adapters.sklearn.sha256" in err and "refusing to load it" in err


def test_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["--adapter", "torch"], capsys)
    assert code == 2 and "torch" in err
    code, err = _run(["--interval", "soon"], capsys)
    assert code == 2 and err.startswith("mdp: error: --interval:")


def test_a_plugin_that_is_not_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, plugin__plugin="no_such_module:Strategy", plugin__name="mine")
    code, err = _run(["--config", str(path), "--adapter", "plugin"], capsys)
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("mdp: error: ")
    assert "inference.adapters.plugin.plugin" in err and "cannot import 'no_such_module'" in err
    path = _config(tmp_path, plugin__plugin="no_such_entry_point")
    code, err = _run(["--config", str(path), "--adapter", "plugin"], capsys)
    assert (
        code == 2 and "no plugin 'no_such_entry_point' in the entry points of mdp.adapters" in err
    )
