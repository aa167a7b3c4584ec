from __future__ import annotations

from pathlib import Path

import pytest

from market_data_pipeline.cli.app import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version")[:2] == (0, "mdp 0.4.0\n")


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "Examples:" in out and "mdp demo" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("bogus",), "No such command 'bogus'"),
        (("demo", "--rate", "x"), "Invalid value for '--rate'"),
        (("demo", "--nope"), "No such option: --nope"),
        (("demo", "--config", "missing.yaml"), "missing.yaml: file not found"),
        (("db", "downgrade", "--revision", "base"), "--yes: downgrade to base drops tables"),
        (("stream", "dlq", "purge"), "--yes: purge deletes dead letters for good"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], expected: str
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith("mdp: error: ") and expected in err
    assert "Traceback" not in err + out


def test_bad_yaml_via_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("micro_batch:\n  window_ms: [1\n")
    code, _, err = run(capsys, "demo", "--config", str(p))
    assert code == 2 and "YAML syntax error" in err and err.count("\n") == 1


def test_a_task_group_failure_stands_for_its_primary_error() -> None:
    import asyncio

    from market_data_core.errors import StoreError
    from market_data_pipeline.cli.common import describe_error, primary_error

    store = StoreError('ingest_ticks: relation "ticks" does not exist')
    group = BaseExceptionGroup(
        "unhandled errors in a TaskGroup",
        [asyncio.CancelledError(), ExceptionGroup("inner", [RuntimeError("x"), store])],
    )
    assert primary_error(group) is store
    assert describe_error(group) == 'ingest_ticks: relation "ticks" does not exist'
    assert primary_error(ExceptionGroup("g", [KeyError("k")])).__class__ is KeyError
    assert describe_error(ExceptionGroup("g", [ValueError("bad\nsecond line")])) == (
        "ValueError: bad"
    )
    assert describe_error(BaseExceptionGroup("g", [asyncio.CancelledError()])).startswith(
        "cancelled"
    )
