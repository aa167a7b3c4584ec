"""Entry point of ``mdp``: assembles the command modules and turns every failure into one
readable line (exit 2 for bad input, 1 for a runtime failure, 130 for Ctrl-C)."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer
from typer._click import exceptions as click  # typer vendors click; its errors live here

from market_data_core import __version__
from market_data_core.errors import ConfigError, ContractError, MDPError
from market_data_pipeline.cli import (
    cmd_alerts,  # noqa: F401 - registers commands
    cmd_bench,  # noqa: F401 - registers commands
    cmd_bus,  # noqa: F401 - registers commands
    cmd_db,  # noqa: F401 - registers commands
    cmd_infer,  # noqa: F401 - registers commands
    cmd_microbatch,  # noqa: F401 - registers commands
    cmd_produce,  # noqa: F401 - registers commands
    cmd_report,  # noqa: F401 - registers commands
    cmd_run,  # noqa: F401 - registers commands
    cmd_servers,  # noqa: F401 - registers commands
)
from market_data_pipeline.cli.apps import app

__all__ = ["app", "main"]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mdp {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """mdp: a market-data streaming pipeline."""


def _usage_line(exc: click.UsageError) -> str:
    msg = exc.format_message().strip().splitlines()
    text = msg[0] if msg else "bad usage"
    if exc.ctx is not None:
        text += f" (see '{exc.ctx.command_path} --help')"
    return text


def main(argv: list[str] | None = None) -> int:
    """Run ``mdp``; returns the exit code (also used by tests)."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    try:
        # without standalone mode, a `typer.Exit(code)` raised by a command comes back here
        result = command.main(args=args, prog_name="mdp", standalone_mode=False)
    except click.NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help())
        return 0
    except click.UsageError as exc:
        typer.echo(f"mdp: error: {_usage_line(exc)}", err=True)
        return 2
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        typer.echo("mdp: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        typer.echo(f"mdp: error: {exc.format_message()}", err=True)
        return exc.exit_code if exc.exit_code != 1 else 2
    except (ConfigError, ContractError) as exc:
        typer.echo(f"mdp: error: {exc}", err=True)
        return 2
    except MDPError as exc:
        typer.echo(f"mdp: error: {exc}", err=True)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        # a second Ctrl-C/SIGTERM cancels the main task instead of waiting for the drain
        typer.echo("mdp: interrupted", err=True)
        return 130
    return result if isinstance(result, int) else 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
