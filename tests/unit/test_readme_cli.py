"""The README's CLI reference agrees with the commands (issue 17): every option of every command
is in its section's table and every option there exists, and a default the README states as
a value (`60.0`, `--no-drain`, `rules`, `off`, `none`, a config key) is the command's."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
import typer

from market_data_core.config import AppConfig
from market_data_pipeline.cli.app import app
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
# documented once for every command, in the CLI reference's first paragraph
GLOBAL = {"--config", "--help"}
LONG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
OPTION_NOTE = re.compile(r"`(--[a-z][a-z0-9-]*)[^`]*`( \([^)]*\))?")


def _leaves(command: Any, path: tuple[str, ...]) -> dict[str, Any]:
    if hasattr(command, "commands"):
        out: dict[str, Any] = {}
        for name, sub in command.commands.items():
            out.update(_leaves(sub, (*path, name)))
        return out
    return {" ".join(path): command}


COMMANDS = _leaves(typer.main.get_command(app), ("mdp",))


@dataclass
class Row:
    options: set[str]
    default: str | None  # the default cell, for "| option | default | meaning |" tables


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _sections() -> dict[str, str]:
    """Section text by command: `#### \\`mdp X\\`` headings (the first command named), and the
    Benchmarks section for `mdp bench`."""
    out: dict[str, str] = {}
    parts = re.split(r"^(#{2,4} .*)$", README, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        named = re.match(r"#### `(mdp [a-z -]+?)`", heading)
        if named:
            out[named.group(1)] = body
        elif heading == "## Benchmarks":
            out["mdp bench"] = body
    return out


def _tables(body: str) -> dict[str, list[Row]]:
    """Rows per command of the section's tables: option tables belong to the section's
    command; `| command | options |` tables (dlq, db) name the command per row."""
    rows: dict[str, list[Row]] = {}
    lines = body.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("| ") or i + 1 >= len(lines) or not lines[i + 1].startswith("|--"):
            continue
        header = _cells(line)
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            cells = _cells(row)
            if header[:2] == ["option", "default"]:
                rows.setdefault("", []).append(Row(set(LONG.findall(cells[0])), cells[1]))
            elif header[:2] == ["command", "options"]:
                # "`--limit/-n INT` (default 100), `--id ID` (repeatable)": a row per option
                name = cells[0].strip("`")
                for flag, note in OPTION_NOTE.findall(cells[1]):
                    said = re.match(r" \((?:default `?([^`;,)]+)`?|(required))", note)
                    default = None
                    if said:
                        default = "required" if said.group(2) else f"`{said.group(1)}`"
                    rows.setdefault(name, []).append(Row({flag}, default))
    return rows


def _documented() -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for name, body in _sections().items():
        for command, rows in _tables(body).items():
            out.setdefault(command or name, []).extend(rows)
    return out


DOCUMENTED = _documented()


def _options(command: Any) -> dict[str, Any]:
    """Long option -> click parameter (a ``--x/--no-x`` pair under both names)."""
    return {
        opt: p
        for p in command.params
        for opt in (*p.opts, *getattr(p, "secondary_opts", ()))
        if opt.startswith("--") and opt not in GLOBAL
    }


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_options_table_lists_exactly_the_commands_options(name: str) -> None:
    options = set(_options(COMMANDS[name]))
    if not options:
        return  # `mdp down`: only --config
    assert name in DOCUMENTED, f"README has no options table for {name}"
    documented = set().union(*(r.options for r in DOCUMENTED[name]))
    assert documented == options, f"{name}: README {sorted(documented)} vs --help {sorted(options)}"


_CONFIG_SECTIONS = set(AppConfig.model_fields)


def _expected(cell: str) -> tuple[str, Any] | None:
    """What a default cell claims, or None when it is prose (``demo-<host>``, ``see above``)."""
    cell = re.sub(r"\s*\(.*\)$", "", cell)  # "`x` (1.0)": the note is for the reader
    if cell in ("none", "config"):
        return ("value", None)
    if cell == "off":
        return ("value", False)
    if cell == "required":
        return ("required", True)
    literal = re.fullmatch(r"`([^`]+)`", cell)
    if literal is None:
        return None
    text = literal.group(1)
    if text.startswith("--"):
        return ("value", not text.startswith("--no-"))
    if text.split(".")[0] in _CONFIG_SECTIONS and "." in text:
        return ("value", None)  # from the config: the flag itself has no default
    if "<" in text:
        return None
    return ("text", text)


def _actual(param: Any) -> Any:
    default = param.default
    return getattr(default, "value", default)


def _agrees(param: Any, claim: tuple[str, Any]) -> bool:
    kind, value = claim
    if kind == "required":  # by click, or by the command (`--yes`: one line, exit 2)
        return bool(param.required) or param.default in (None, False)
    actual = _actual(param)
    if kind == "value":
        return bool(actual == value)
    if isinstance(actual, int | float) and not isinstance(actual, bool):
        return float(value) == actual
    return str(actual) == value


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_the_defaults_the_readme_states_are_the_commands(name: str) -> None:
    options = _options(COMMANDS[name])
    checked, wrong = 0, []
    for row in DOCUMENTED[name]:
        claim = None if row.default is None else _expected(row.default)
        if claim is None or not row.options:
            continue
        param = options[sorted(row.options)[0]]
        if not _agrees(param, claim):
            shown = "required" if param.required else repr(_actual(param))
            wrong.append(f"{'/'.join(sorted(row.options))}: README {row.default!r}, --help {shown}")
        checked += 1
    assert wrong == []
    assert checked, f"no default of {name} could be checked"


def test_every_command_is_in_the_commands_table() -> None:
    table = README.split("### Commands", 1)[1].split("Options shared", 1)[0]
    for name in COMMANDS:
        group = " ".join(name.split()[:3]) if name.startswith("mdp stream dlq") else name
        group = " ".join(name.split()[:2]) if name.startswith("mdp db") else group
        assert f"`{group}" in table, name


def test_the_global_options_table_lists_the_root_options() -> None:
    root = typer.main.get_command(app)
    options = {o for p in root.params for o in p.opts if o.startswith("--")} - {"--help"}
    section = README.split("### Global options", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = set().union(*(LONG.findall(_cells(row)[0]) for row in rows))
    assert documented == options - {"--version"}  # --version: the first paragraph
