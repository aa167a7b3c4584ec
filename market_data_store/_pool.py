"""The asyncpg connection pool every client uses, and DSN redaction."""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from market_data_store._errors import translate_errors

__all__ = ["SERVER_SETTINGS", "STAGING_DDL", "create_pool", "redact_dsn"]

SERVER_SETTINGS = {"timezone": "UTC", "application_name": "mdp-store"}

# Per-connection staging tables for COPY; emptied at every commit.
STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS mdp_stage_ticks (
    provider text, symbol text, ts timestamptz, seq bigint, event_id text,
    price text, size text, side text, trade_id text, ingest_ts timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS mdp_stage_bars (
    provider text, symbol text, interval text, ts timestamptz,
    o float8, h float8, l float8, c float8, v float8, vwap float8, trade_count integer
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS mdp_stage_signals (
    signal_id text, ts timestamptz, provider text, symbol text, name text,
    value float8, score float8, adapter text, meta text, ver integer
) ON COMMIT DELETE ROWS;
"""

_PASSWORD = re.compile(r"(?P<head>://[^:/@]+:)(?P<pw>[^@]*)(?P<tail>@)")
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s]*")


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (for ``repr`` and logs)."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\g<head>***\g<tail>", dsn))


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
