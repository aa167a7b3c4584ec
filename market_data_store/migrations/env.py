"""Alembic environment of mdp.

Migrations run on a connection handed over by :mod:`market_data_store.migrate`
(``config.attributes["connection"]``), which also passes ``partitioning`` and
``compress_after_ms``. Run standalone (``alembic -c market_data_store/alembic.ini``), it
connects to ``sqlalchemy.url`` (or ``-x dsn=postgresql://...``) itself. Offline (SQL script)
mode is not supported: choosing the time-series layout needs a live server.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from market_data_store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        transaction_per_migration=False,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(dsn: str) -> None:
    from market_data_store.migrate import run_with_connection

    await run_with_connection(dsn, _run)


if context.is_offline_mode():
    raise SystemExit("mdp migrations need a live database (no offline/--sql mode)")

_connection = config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:
    _dsn = context.get_x_argument(as_dictionary=True).get("dsn") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not _dsn:
        raise SystemExit("set sqlalchemy.url or pass -x dsn=postgresql://...")
    asyncio.run(_run_standalone(_dsn))
