"""``mdp db upgrade|downgrade``: run the schema migrations shipped with mdp.

The DSN comes from ``DATABASE_URL``, then ``store.dsn``, then the servers of ``mdp up``, then a
throwaway embedded server (which is migrated and then stops with the command — harmless, but
rarely what you want).
"""

from __future__ import annotations

from typing import Annotated

import typer

from market_data_core.errors import ConfigError
from market_data_pipeline.cli.apps import db_app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    environment,
    load_app_config,
)
from market_data_pipeline.servers import ServerUrls, resolve_servers

_EMBEDDED_NOTE = (
    "note: no DATABASE_URL or store.dsn is set and `mdp up` is not running, so a throwaway "
    "embedded PostgreSQL was migrated; it stops with this command (`mdp up` keeps one)"
)


def _note_embedded(urls: ServerUrls) -> None:
    if "postgres" in urls.embedded:
        typer.echo(_EMBEDDED_NOTE, err=True)


@db_app.command("upgrade")
def upgrade(
    config: ConfigOpt = DEFAULT_CONFIG,
    revision: Annotated[
        str,
        typer.Option(
            "--revision", "-r", metavar="REV", help="Target revision (or a unique prefix)."
        ),
    ] = "head",
) -> None:
    """Upgrade the schema to a revision (default: the newest).

    Time-series tables become TimescaleDB hypertables when the extension is available
    (store.partitioning: auto|timescale|native), else daily native partitions.

    The database is that of `mdp --database-url` / DATABASE_URL, store.dsn or `mdp up`.

    Examples:

    \b
      mdp db upgrade
      mdp db upgrade --revision 0002
    """
    cfg = load_app_config(config)
    # wiring pulls in SQLAlchemy and Alembic: imported here, not by every `mdp` start
    from market_data_pipeline.wiring import compress_after_ms, upgrade_schema

    compress_after_ms(cfg)  # a bad store.compress_after is a ConfigError before connecting

    with resolve_servers(cfg, environment(), redis=False) as urls:
        _note_embedded(urls)
        assert urls.database_url is not None
        at = upgrade_schema(urls.database_url, revision, config=cfg)
        typer.echo(f"database {urls.describe()} is at revision {at or 'base'}")


@db_app.command("downgrade")
def downgrade(
    revision: Annotated[
        str,
        typer.Option(
            "--revision",
            "-r",
            metavar="REV",
            help="Target revision (prefix ok), or 'base' to drop all.",
        ),
    ],
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Really drop the tables above the revision (required)."),
    ] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Downgrade the schema to a revision; 'base' drops every mdp table (and its data).

    The tables of every later revision are dropped with their data at once, even while a
    pipeline writes to them, so it needs --yes.

    Examples:

    \b
      mdp db downgrade --revision 0002 --yes
    """
    cfg = load_app_config(config)
    if not yes:
        raise ConfigError(
            f"downgrade to {revision} drops tables and their data for good; run again with --yes",
            source="--yes",
        )
    from market_data_pipeline.wiring import downgrade_schema

    with resolve_servers(cfg, environment(), redis=False) as urls:
        _note_embedded(urls)
        assert urls.database_url is not None
        at = downgrade_schema(urls.database_url, revision)
        typer.echo(f"database {urls.describe()} is at revision {at or 'base'}")
