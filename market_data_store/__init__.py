"""Persistence of mdp: SQLAlchemy models, Alembic migrations, asyncpg clients.

All SQL of mdp lives in this package. Public API:

- :class:`PgStoreClient` (core ``StoreClient``): bars upsert, raw ticks -> exact bars,
  read helpers (``bars_range``, ``latest_bars``).
- :class:`PgSignalsStore` (core ``SignalsStoreClient``), :class:`PgJobRunTracker`
  (core ``JobRunTracker``), :class:`PgStoreReader` (core ``StoreReader``: ``mdp report``).
- :func:`upgrade_schema` / :func:`downgrade_schema` / :func:`current_revision`: the Alembic
  migrations shipped in this package.
"""

from typing import TYPE_CHECKING, Any

from market_data_store._schema_names import VWAP_GUARD_DIGITS
from market_data_store.job_runs import JobRun, PgJobRunTracker
from market_data_store.reader import PgStoreReader
from market_data_store.signals_store import PgSignalsStore
from market_data_store.store_client import PgStoreClient

if TYPE_CHECKING:
    from market_data_store.migrate import (
        current_revision,
        downgrade_schema,
        head_revision,
        upgrade_schema,
    )

# The migrations load SQLAlchemy and Alembic (~28 MiB): only when one of them is asked for,
# not in every process that reads and writes.
_MIGRATE = ("current_revision", "downgrade_schema", "head_revision", "upgrade_schema")


def __getattr__(name: str) -> Any:
    if name in _MIGRATE:
        from market_data_store import migrate

        return getattr(migrate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "VWAP_GUARD_DIGITS",
    "JobRun",
    "PgJobRunTracker",
    "PgSignalsStore",
    "PgStoreClient",
    "PgStoreReader",
    "current_revision",
    "downgrade_schema",
    "head_revision",
    "upgrade_schema",
]
