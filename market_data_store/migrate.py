"""Run the Alembic migrations shipped inside this package (``mdp db upgrade|downgrade``).

The migrations run on one asyncpg connection (via SQLAlchemy's asyncpg dialect), in one
transaction: a failed upgrade leaves the schema where it was. Revisions may be abbreviated
(``0002`` for ``0002_job_runs``); ``base`` means an empty schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from market_data_core.errors import ConfigError
from market_data_store._errors import translate_errors
from market_data_store._pool import SERVER_SETTINGS

__all__ = [
    "alembic_config",
    "current_revision",
    "downgrade_schema",
    "head_revision",
    "run_with_connection",
    "upgrade_schema",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

_PACKAGE_DIR = Path(__file__).resolve().parent


def alembic_config(**attributes: Any) -> Config:
    """An Alembic config pointing at the packaged migrations (no ini file needed)."""
    cfg = Config(str(_PACKAGE_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(_PACKAGE_DIR / "migrations"))
    cfg.attributes.update(attributes)
    return cfg


def head_revision() -> str:
    """The newest revision shipped with this version of mdp."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def run_with_connection(dsn: str, fn: Callable[[Connection], T]) -> T:
    """Run ``fn(sync_connection)`` inside one transaction on a fresh connection to ``dsn``."""

    async def creator() -> Any:
        return await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)

    engine = create_async_engine("postgresql+asyncpg://", async_creator=creator, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


async def _alembic(dsn: str, action: Callable[[Config], None], **attributes: Any) -> str | None:
    def run(connection: Connection) -> str | None:
        cfg = alembic_config(connection=connection, **attributes)
        action(cfg)
        return MigrationContext.configure(connection).get_current_revision()

    with translate_errors("migrate"):
        try:
            return await run_with_connection(dsn, run)
        except CommandError as exc:
            # Alembic's own errors are about the request: an unknown or ambiguous revision.
            raise ConfigError(str(exc), source="--revision") from exc


async def upgrade_schema(
    dsn: str,
    revision: str = "head",
    *,
    partitioning: str = "auto",
    compress_after_ms: int = 7 * 86_400_000,
) -> str | None:
    """Upgrade to ``revision``; returns the revision the database is at afterwards.

    ``partitioning`` (``auto``/``timescale``/``native``) and ``compress_after_ms`` shape the
    time-series tables when they are created. Raises ``StoreUnavailableError`` when the server
    cannot be reached, ``StoreError`` for anything else (the transaction is rolled back).
    """
    return await _alembic(
        dsn,
        lambda cfg: command.upgrade(cfg, revision),
        partitioning=partitioning,
        compress_after_ms=compress_after_ms,
    )


async def downgrade_schema(dsn: str, revision: str) -> str | None:
    """Downgrade to ``revision`` (``base`` drops every mdp table); returns the new revision."""
    return await _alembic(dsn, lambda cfg: command.downgrade(cfg, revision))


async def current_revision(dsn: str) -> str | None:
    """The revision the database is at (``None`` for an empty schema)."""

    def run(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    with translate_errors("current_revision"):
        return await run_with_connection(dsn, run)
