"""The asyncpg connection pool every client uses."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from market_data_store._errors import translate_errors

__all__ = ["SERVER_SETTINGS", "STAGING_DDL", "StagingJanitor", "create_pool"]

SERVER_SETTINGS = {"timezone": "UTC", "application_name": "mdp-store"}

# Per-connection staging tables for COPY. Not ``ON COMMIT DELETE ROWS``: truncating at commit
# costs ~1 ms per table per transaction; writers ``DELETE`` their rows before committing and
# :class:`StagingJanitor` vacuums the dead rows away now and then.
STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS mdp_stage_ticks (
    provider text, symbol text, ts timestamptz, seq bigint, series_key bigint,
    price numeric, size numeric, side text, trade_id text, ingest_ts timestamptz
);
CREATE TEMP TABLE IF NOT EXISTS mdp_stage_quotes (
    provider text, symbol text, ts timestamptz, seq bigint, series_key bigint,
    bid float8, ask float8, bid_size float8, ask_size float8, ingest_ts timestamptz
);
CREATE TEMP TABLE IF NOT EXISTS mdp_stage_bars (
    provider text, symbol text, interval text, ts timestamptz,
    o float8, h float8, l float8, c float8, v float8, vwap float8, trade_count integer
);
CREATE TEMP TABLE IF NOT EXISTS mdp_stage_signals (
    signal_id text, ts timestamptz, provider text, symbol text, name text,
    value float8, score float8, adapter text, meta text, ver integer, state text
);
"""

log = logging.getLogger(__name__)


class _OneLineRetries(logging.Filter):
    """asyncpg's pool logs every failed attempt to restore its connection floor (``min_size``)
    with a full traceback, one per second or so while the server is down. Keep one line per
    attempt, with its reason, and no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            lines = [p.strip() for p in str(exc).splitlines() if p.strip()]
            reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
            record.msg = f"{record.getMessage()} ({reason})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


_ONE_LINE_RETRIES = _OneLineRetries()


async def _init_connection(conn: Any) -> None:
    await conn.execute(STAGING_DDL)


async def _reset_connection(conn: Any) -> None:
    """Nothing to reset: clients use no session state beyond the staging tables (emptied
    at commit) and transaction-scoped advisory locks. Saves a round trip per release."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 4) -> Any:
    """An asyncpg pool (UTC sessions, staging tables created on every new connection).

    A connection lost while idle is replaced on the next acquire, so a client recovers by
    itself once the server is back. Raises ``StoreUnavailableError`` if unreachable now.
    """
    logging.getLogger("asyncpg.pool").addFilter(_ONE_LINE_RETRIES)  # once; idempotent
    with translate_errors("connect"):
        return await asyncpg.create_pool(
            dsn,
            min_size=min(min_size, max_size),
            max_size=max_size,
            init=_init_connection,
            reset=_reset_connection,
            server_settings=SERVER_SETTINGS,
            command_timeout=120,
        )


class StagingJanitor:
    """Keeps the staging tables small: after ``vacuum_rows`` rows went through a connection's
    staging table, ``VACUUM`` it (outside any transaction; best effort, a failure is logged
    and retried later)."""

    def __init__(self, vacuum_rows: int = 200_000) -> None:
        self._vacuum_rows = vacuum_rows
        self._rows: dict[tuple[int, str], int] = {}

    async def used(self, conn: Any, table: str, rows: int) -> None:
        key = (conn.get_server_pid(), table)
        total = self._rows.get(key, 0) + rows
        if total < self._vacuum_rows:
            self._rows[key] = total
            return
        self._rows[key] = 0
        try:
            await conn.execute(f"VACUUM {table}")
        except Exception as exc:  # the data is committed; a missed vacuum is harmless
            log.warning("could not vacuum %s: %s", table, exc)
