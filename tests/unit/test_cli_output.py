"""Terminal output a person can read (issue 18, item 3): help text (placeholders, examples that
wrap without breaking, environment variables, shell completion), global -q/-v/--log-level,
colour only on a terminal and never with NO_COLOR, and one renderer for progress and logs
(a log line never lands inside the progress line; no stale line after a job)."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from market_data_pipeline.cli.app import main
from market_data_pipeline.cli.common import environment
from market_data_pipeline.telemetry import setup_logging
from market_data_pipeline.ui import console
from market_data_pipeline.ui.progress import ProgressLine
from tests.conftest import ROOT
from tests.support.cli import command_names, examples, help_text

MDP = [sys.executable, "-m", "market_data_pipeline.cli.app"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


COMMANDS = command_names()
LEAVES = sorted(name for name, c in COMMANDS.items() if not hasattr(c, "commands"))


@pytest.mark.parametrize("name", LEAVES)
def test_every_command_has_examples_that_wrap_without_breaking(name: str) -> None:
    wide = examples(help_text(name, 100))
    assert wide, f"{name} --help has no examples"
    for example in wide:
        assert re.match(r"(eval \"\$\()?mdp ", example), example
    # narrower terminals: click re-wraps prose, never an example (each stays one line)
    for width in (80, 60):
        assert examples(help_text(name, width)) == wide


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_placeholders_are_words_not_types(name: str) -> None:
    text = help_text(name, 100).split("Options:", 1)[1]
    # typer's own placeholders look like <path>, <int range>, <list[str]>, <float>
    assert not re.search(r"(?m)^\s+(?:-\w, )?--[\w-]+ <", text), text
    for placeholder in re.findall(r"(?m)^\s+(?:-\w, )?--[\w-]+ (\S+)", text):
        if placeholder == "/":  # --flag / --no-flag
            continue
        assert placeholder.isupper() or re.fullmatch(r"\[[\w|]+\]", placeholder), placeholder


def test_the_readme_example_that_ran_55_minutes_is_bounded() -> None:
    """`mdp stream produce --provider synthetic --count 10000` ran at the default 3 events/s;
    every produce example now gives --rate or --duration."""
    produce = [
        e
        for name in ("mdp", "mdp stream produce")
        for e in examples(help_text(name, 100))
        if "stream produce" in e
    ]
    assert produce
    assert all("--rate" in e or "--duration" in e for e in produce), produce


def test_server_flags_show_their_environment_variables() -> None:
    text = " ".join(help_text("mdp", 100).split())
    for flag, var in (
        ("--redis-uri URL", "REDIS_URI"),
        ("--database-url DSN", "DATABASE_URL"),
        ("--kafka-bootstrap HOST:PORT", "KAFKA_BOOTSTRAP"),
    ):
        assert flag in text
        assert f"[env var: {var}]" in text
    assert "--install-completion" in text and "--show-completion" in text


def test_a_server_flag_stands_for_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Precedence flag = variable > config > embedded: the flag fills the variable's place
    (and wins over it), the config is read only when neither is given."""
    monkeypatch.delenv("REDIS_URI", raising=False)
    assert main(["stream", "status", "--config", str(ROOT / "no-such.yaml")]) == 2
    capsys.readouterr()
    monkeypatch.setenv("REDIS_URI", "redis://127.0.0.1:2/0")
    assert main(["alerts"]) == 0
    assert environment()["REDIS_URI"] == "redis://127.0.0.1:2/0"
    assert main(["--redis-uri", "redis://127.0.0.1:3/0", "alerts"]) == 0
    assert environment()["REDIS_URI"] == "redis://127.0.0.1:3/0"
    monkeypatch.delenv("REDIS_URI")
    assert main(["alerts"]) == 0
    assert "REDIS_URI" not in environment()
    capsys.readouterr()
    # nothing configured: the inspection command says what to set
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MDP_HOME", str(ROOT / "tests" / "no-such-project"))
    assert main(["stream", "status"]) == 2
    assert "set REDIS_URI" in capsys.readouterr().err
    # the flag is a server to inspect: the command tries it (nothing listens on port 3)
    assert main(["--redis-uri", "redis://127.0.0.1:3/0", "stream", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mdp: error: ") and "127.0.0.1:3" in err


@pytest.mark.parametrize(
    ("args", "level", "quiet"),
    [
        ([], None, False),
        (["-q"], "ERROR", True),
        (["-v"], "DEBUG", False),
        (["--log-level", "warning"], "WARNING", False),
    ],
)
def test_verbosity_flags(
    args: list[str], level: str | None, quiet: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "alerts"]) == 0
    assert console.settings().log_level == level
    assert console.settings().quiet is quiet
    assert console.log_level("INFO") == (level or "INFO")


def test_verbosity_flags_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "-v", "alerts"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give one of -q, -v" in err


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Any:
    return subprocess.run(
        [*MDP, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_shell_completion_is_available() -> None:
    shown = _run("--show-completion", "bash")
    assert shown.returncode == 0, shown.stderr
    assert "complete -o default -F _mdp_completion mdp" in shown.stdout
    completed = _run(
        env={"_MDP_COMPLETE": "complete_bash", "COMP_WORDS": "mdp stream dl", "COMP_CWORD": "2"}
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["dlq"]


def test_colour_only_on_a_terminal_and_never_with_no_color(tmp_path: Path) -> None:
    """`mdp init` prints a field list: bold names on a terminal (FORCE_COLOR makes rich treat
    the pipe as one), plain text to a pipe, plain with NO_COLOR even on a terminal."""
    piped = _run("init", str(tmp_path / "a"))
    assert piped.returncode == 0 and not ANSI.search(piped.stdout + piped.stderr)
    coloured = _run("init", str(tmp_path / "b"), env={"FORCE_COLOR": "1"})
    assert coloured.returncode == 0 and ANSI.search(coloured.stdout)
    plain = _run("init", str(tmp_path / "c"), env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert plain.returncode == 0
    assert "\x1b[1m" not in plain.stdout and "\x1b[3" not in plain.stdout
    assert ANSI.sub("", coloured.stdout).replace(str(tmp_path / "b"), "X") == plain.stdout.replace(
        str(tmp_path / "c"), "X"
    )


@pytest.fixture
def terminal() -> Iterator[io.StringIO]:
    """stderr is an interactive terminal of 100 columns, recorded."""
    out = io.StringIO()
    fake = Console(file=out, force_terminal=True, force_interactive=True, width=100)
    console.configure(console.OutputSettings(), stderr=fake)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    setup_logging("INFO", json=False)
    try:
        yield out
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        console.configure(console.OutputSettings())


def _screen_lines(raw: str) -> list[str]:
    """What a terminal shows, line by line: carriage returns and erases applied roughly
    (each \\r or erase starts the line afresh), escape codes dropped."""
    lines: list[str] = []
    for physical in raw.split("\n"):
        current = ""
        for part in re.split(r"\r|\x1b\[2K", physical):
            current = ANSI.sub("", part) or current
        lines.append(current)
    return lines


def test_a_log_line_never_lands_in_the_progress_line(terminal: io.StringIO) -> None:
    with ProgressLine("replay demo", total=1000) as progress:
        assert progress.live
        progress.update(400)
        assert progress._live is not None
        progress._live.refresh()
        logging.getLogger("mdp.test").warning("a bad row at line 7")
        progress.update(900)
        progress._live.refresh()
    raw = terminal.getvalue()
    shown = _screen_lines(raw)
    logged = [line for line in shown if "a bad row at line 7" in line]
    assert len(logged) == 1
    assert "replay demo" not in logged[0] and "WARNING mdp.test" in logged[0]
    assert any("replay demo" in line and "90.0%" in line for line in raw.split("\r"))
    # transient: the live line is erased when the work ends (no stale "90.0%" left)
    assert raw.rstrip().endswith("\x1b[2K") or raw.endswith("\x1b[?25h")
    assert "replay demo" not in ANSI.sub("", raw.rsplit("\x1b[2K", 1)[-1])


def test_a_fast_job_leaves_no_progress_line(terminal: io.StringIO) -> None:
    with ProgressLine("produce", total=10) as progress:
        progress.update(1)
    raw = terminal.getvalue()
    assert "produce" not in ANSI.sub("", raw.rsplit("\x1b[2K", 1)[-1])


def test_no_progress_line_without_a_terminal_or_with_q() -> None:
    out = io.StringIO()
    console.configure(console.OutputSettings(), stderr=Console(file=out, force_terminal=False))
    try:
        with ProgressLine("x", total=3) as progress:
            assert not progress.live
            progress.update(2)
        assert out.getvalue() == ""
        fake = Console(file=out, force_terminal=True, force_interactive=True)
        console.configure(console.OutputSettings(quiet=True), stderr=fake)
        with ProgressLine("x", total=3, plain_every_s=0.0) as progress:
            assert not progress.live
            progress.update(2)
        assert out.getvalue() == ""
    finally:
        console.configure(console.OutputSettings())


def test_without_a_terminal_a_plain_line_every_few_seconds() -> None:
    out = io.StringIO()
    console.configure(console.OutputSettings(), stderr=Console(file=out, force_terminal=False))
    try:
        with ProgressLine("run", rate=False, detail=lambda: "12 bars", plain_every_s=0.0) as p:
            p.update(5)
        line = out.getvalue()
        assert line.count("\n") == 1 and "run" in line and "5 events" in line
        assert "12 bars" in line and "\x1b" not in line
    finally:
        console.configure(console.OutputSettings())


def test_tables_to_a_pipe_are_whole_rows_without_trailing_blanks() -> None:
    from market_data_pipeline.ui.tables import print_fields, print_table

    out = io.StringIO()
    plain = Console(file=out, force_terminal=False, width=40)
    long_id = "binance-futures|BTCUSDT|2020-02-22T00:00:02.111000Z|42377944"
    print_table(
        ["time", "symbol", "id"], [["t1", "BTCUSDT", long_id], ["t2", "X", "y"]], console=plain
    )
    print_fields([("events published", "9,999"), ("elapsed", "1.0 s")], console=plain)
    assert out.getvalue().splitlines() == [
        "time  symbol   id",
        f"t1    BTCUSDT  {long_id}",
        "t2    X        y",
        "  events published  9,999",
        "  elapsed           1.0 s",
    ]
