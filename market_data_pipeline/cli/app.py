"""Entry point of ``mdp``: assembles the command modules and turns every failure into one
readable line (exit 2 for bad input, 1 for a runtime failure, 130 for Ctrl-C)."""

from __future__ import annotations

import asyncio
import sys
from enum import StrEnum
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
    cmd_init,  # noqa: F401 - registers commands
    cmd_microbatch,  # noqa: F401 - registers commands
    cmd_produce,  # noqa: F401 - registers commands
    cmd_report,  # noqa: F401 - registers commands
    cmd_run,  # noqa: F401 - registers commands
    cmd_servers,  # noqa: F401 - registers commands
)
from market_data_pipeline.cli.apps import app
from market_data_pipeline.cli.common import (
    environment,
    one_line,
    primary_error,
    set_flag_environment,
)
from market_data_pipeline.telemetry import setup_logging
from market_data_pipeline.ui import console
from market_data_pipeline.ui.console import LogLevel

__all__ = ["app", "main"]


class LogLevelName(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


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
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="Only errors on stderr: no progress, notes or warnings."
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Debug logs (where servers and metrics are, each step)."
        ),
    ] = False,
    log_level: Annotated[
        LogLevelName | None,
        typer.Option(
            "--log-level",
            metavar="LEVEL",
            case_sensitive=False,
            help="DEBUG, INFO, WARNING or ERROR (default: telemetry.log_level of the config, "
            "INFO shipped).",
            show_default=False,
        ),
    ] = None,
    redis_uri: Annotated[
        str | None,
        typer.Option(
            "--redis-uri",
            envvar="REDIS_URI",
            show_envvar=True,
            metavar="URL",
            help="Redis/Valkey server (wins over bus.redis.uri). A password on the command "
            "line is visible to other users: prefer the variable.",
        ),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="DATABASE_URL",
            show_envvar=True,
            metavar="DSN",
            help="PostgreSQL DSN (wins over store.dsn); prefer the variable for a password.",
        ),
    ] = None,
    kafka_bootstrap: Annotated[
        str | None,
        typer.Option(
            "--kafka-bootstrap",
            envvar="KAFKA_BOOTSTRAP",
            show_envvar=True,
            metavar="HOST:PORT",
            help="Kafka brokers (with bus.type: kafka; wins over bus.kafka.bootstrap).",
        ),
    ] = None,
) -> None:
    """mdp: a market-data streaming pipeline."""
    chosen = [
        name for name, on in (("-q", quiet), ("-v", verbose), ("--log-level", log_level)) if on
    ]
    if len(chosen) > 1:
        raise ConfigError(f"give one of {', '.join(chosen)}", source=chosen[0])
    level: LogLevel | None = None
    if quiet:
        level = "ERROR"
    elif verbose:
        level = "DEBUG"
    elif log_level is not None:
        level = log_level.value
    console.configure(
        console.OutputSettings(
            log_level=level,
            quiet=quiet,
            verbose=verbose,
            no_color=bool(environment().get("NO_COLOR")),
        )
    )
    # until a command loads its config: warnings and errors (or what -q/-v/--log-level say)
    setup_logging(level or "WARNING", json=False)
    console.tame_libraries()
    set_flag_environment(
        {"REDIS_URI": redis_uri, "DATABASE_URL": database_url, "KAFKA_BOOTSTRAP": kafka_bootstrap}
    )


def _usage_line(exc: click.UsageError) -> str:
    msg = exc.format_message().strip().splitlines()
    text = msg[0] if msg else "bad usage"
    if exc.ctx is not None:
        text += f" (see '{exc.ctx.command_path} --help')"
    return text


def _error(message: object, code: int) -> int:
    typer.echo(f"mdp: error: {one_line(message) or type(message).__name__}", err=True)
    return code


def _exit_code(exc: BaseException) -> int:
    """Print what ``exc`` means in one line (or the help) and return the exit code; anything
    that is not a known failure is re-raised with its traceback (a bug to report)."""
    if isinstance(exc, click.NoArgsIsHelpError):
        typer.echo(exc.ctx.get_help())
        return 0
    if isinstance(exc, click.UsageError):
        return _error(_usage_line(exc), 2)
    if isinstance(exc, typer.Exit):
        return int(exc.exit_code)
    if isinstance(exc, typer.Abort):
        typer.echo("mdp: interrupted", err=True)
        return 130
    if isinstance(exc, click.ClickException):
        return _error(exc.format_message(), exc.exit_code if exc.exit_code != 1 else 2)
    if isinstance(exc, ConfigError | ContractError):
        return _error(exc, 2)
    if isinstance(exc, MDPError):
        return _error(exc, 1)
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
        # a second Ctrl-C/SIGTERM cancels the main task instead of waiting for the drain
        typer.echo("mdp: interrupted", err=True)
        return 130
    raise exc


def main(argv: list[str] | None = None) -> int:
    """Run ``mdp``; returns the exit code (also used by tests). Every failure of a command,
    also one raised inside a task group, ends as one line ``mdp: error: ...``."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    try:
        # without standalone mode, a `typer.Exit(code)` raised by a command comes back here
        result = command.main(args=args, prog_name="mdp", standalone_mode=False)
    except BaseExceptionGroup as group:
        primary = primary_error(group)
        try:
            return _exit_code(primary)
        except BaseException:
            raise group from None
    except (Exception, KeyboardInterrupt, asyncio.CancelledError) as exc:
        return _exit_code(exc)
    return result if isinstance(result, int) else 0


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
