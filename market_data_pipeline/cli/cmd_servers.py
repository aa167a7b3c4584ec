"""``mdp up`` / ``mdp down`` / ``mdp up --status``: the project's local Valkey and PostgreSQL
in the background (:mod:`market_data_pipeline.servers.local`), shared by every later command
that has no server URL of its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import typer
from rich.console import Console

from market_data_core.config import AppConfig
from market_data_pipeline.cli.apps import app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    environment,
    load_app_config,
)
from market_data_pipeline.servers import LocalServers, ServerState, state_dir_for
from market_data_pipeline.ui import console as ui_console
from market_data_pipeline.ui.tables import print_table

_NOT_RUNNING_EXIT = 3  # `mdp up --status` with a server down (the LSB "not running" code)


def _print_states(states: list[ServerState], console: Console) -> None:
    print_table(
        ["server", "state", "port", "pid", "url"],
        [
            [
                s.name,
                s.state,
                "-" if s.port is None else str(s.port),
                str(s.pid or "-"),
                s.url or "-",
            ]
            for s in states
        ],
        indent=2,
        console=console,
    )


def _exports(states: list[ServerState]) -> str:
    names = {"valkey": "REDIS_URI", "postgres": "DATABASE_URL"}
    return "\n".join(f"export {names[s.name]}={s.url}" for s in states if s.running and s.url)


@app.command("up")
def up(
    config: ConfigOpt = DEFAULT_CONFIG,
    status: Annotated[
        bool,
        typer.Option(
            "--status", help="Only show whether they run (exit 3 when one is not running)."
        ),
    ] = False,
    redis_port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="Valkey's port (default: the last one, or free).", metavar="PORT"
        ),
    ] = None,
    pg_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="PostgreSQL's port (default: the last one, or free).",
            metavar="PORT",
        ),
    ] = None,
) -> None:
    """Start the embedded Valkey and PostgreSQL in the background with their data in the
    project's .mdp/ folder (beside configs/, or MDP_HOME), migrate the database, and print
    the exports. Commands without REDIS_URI / DATABASE_URL (or bus.redis.uri / store.dsn)
    then use these servers instead of starting throwaway ones. Running it again is harmless.

    Examples:

    \b
      mdp up
      eval "$(mdp up)"   # the exports, for psql and other tools
      mdp up --status
    """
    cfg = load_app_config(config, local_servers=False)
    servers = LocalServers(state_dir_for(config, environment()))
    if status:
        states = servers.status()
        typer.echo(f"local servers in {servers.state_dir}:")
        _print_states(states, ui_console.stdout())
        if not all(s.running for s in states):
            raise typer.Exit(_NOT_RUNNING_EXIT)
        return
    states = start_local_servers(servers, cfg, {"valkey": redis_port, "postgres": pg_port})
    typer.echo(_exports(states))


def start_local_servers(
    servers: LocalServers, cfg: AppConfig, ports: Mapping[str, int | None] | None = None
) -> list[ServerState]:
    """``mdp up`` without the exports: start what is not running, migrate the database to
    the newest schema, and describe them on stderr (also used by ``mdp demo --keep``)."""
    from market_data_pipeline.wiring import compress_after_ms, upgrade_schema

    compress_after_ms(cfg)  # a bad store.compress_after fails before anything starts
    states = servers.up(ports)
    pg = next(s for s in states if s.name == "postgres")
    assert pg.url is not None
    at = upgrade_schema(pg.url, config=cfg)
    ui_console.note(f"local servers up, data in {servers.state_dir} (schema at revision {at}):")
    if not ui_console.settings().quiet:
        _print_states(states, ui_console.stderr())
    ui_console.note(
        "commands of this project without a server URL use them; `mdp down` stops them."
    )
    return states


@app.command("down")
def down(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Stop the servers of `mdp up` cleanly (PostgreSQL: fast shutdown; Valkey: saves its
    data first). The data stays in .mdp/ for the next `mdp up`; delete that folder to
    start afresh.

    Examples:

    \b
      mdp down
    """
    servers = LocalServers(state_dir_for(config, environment()))
    for name, what in servers.down():
        typer.echo(f"{name}: {what}")
