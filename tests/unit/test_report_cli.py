"""`mdp report` and `mdp up` on bad input: one line, exit 2, before touching any server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from market_data_pipeline.cli.app import main


@pytest.fixture(autouse=True)
def _no_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URI", "DATABASE_URL", "KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "mdp report reads an existing database: set DATABASE_URL"),
        (("--from", "2020-01-01"), "--from/--to: give both --from and --to, or neither"),
        (("--from", "2020-01-02", "--to", "2020-01-01"), "--from must be before --to"),
        (("--from", "yesterday", "--to", "2020-01-01"), "--from: expected a date or ISO-8601"),
        (("--last", "0s"), "--last: must be positive, got 0s"),
        (("--min-gap", "soon"), "--min-gap: expected a duration"),
        (("--interval", "2 seconds"), "--interval: expected a duration"),
        (("--max-series", "0"), "Invalid value for '--max-series'"),
    ],
)
def test_bad_report_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    out_file = tmp_path / "r.html"
    code = main(["report", "-o", str(out_file), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("mdp: error: ") and expected in err, err
    assert not out_file.exists()


def test_report_needs_an_output_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report"]) == 2
    assert "Missing option '--output'" in capsys.readouterr().err


def test_up_status_when_nothing_was_started(capsys: pytest.CaptureFixture[str]) -> None:
    home = Path(os.environ["MDP_HOME"])  # tests/conftest.py: a folder that does not exist
    assert main(["up", "--status"]) == 3
    out = capsys.readouterr().out
    assert out.count("stopped") == 2
    assert not home.exists()  # looking starts nothing and creates nothing


def test_up_rejects_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--redis-port", "0"]) == 2
    assert "Invalid value for '--redis-port'" in capsys.readouterr().err
