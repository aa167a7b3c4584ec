"""``PgSignalsStore``: the ``signals`` time-series table (core ``SignalsStoreClient``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from market_data_core.contracts import Signal
from market_data_core.protocols import UpsertResult
from market_data_store._base import PgClientBase
from market_data_store._errors import translate_errors

__all__ = ["PgSignalsStore"]

_STAGE_COLUMNS = (
    "signal_id",
    "ts",
    "provider",
    "symbol",
    "name",
    "value",
    "score",
    "adapter",
    "meta",
    "ver",
)

# Rows that existed before the statement (its snapshot) are the updated or unchanged ones;
# ``xmax`` cannot tell inserts from updates on a partitioned table.
_UPSERT_SQL = """
WITH prior AS (
    SELECT count(*) AS n FROM mdp_stage_signals x
    WHERE EXISTS (SELECT 1 FROM signals s WHERE s.signal_id = x.signal_id AND s.ts = x.ts)
), up AS (
    INSERT INTO signals AS s (signal_id, ts, provider, symbol, name, value, score, adapter,
                             meta, ver, updated_at)
    SELECT signal_id, ts, provider, symbol, name, value, score, adapter, meta::jsonb, ver, now()
    FROM mdp_stage_signals
    ORDER BY signal_id, ts
    ON CONFLICT (signal_id, ts) DO UPDATE SET
        value = EXCLUDED.value, score = EXCLUDED.score, meta = EXCLUDED.meta,
        ver = EXCLUDED.ver, updated_at = EXCLUDED.updated_at
    WHERE (s.value, s.score, s.meta, s.ver)
          IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.score, EXCLUDED.meta, EXCLUDED.ver)
    RETURNING 1
)
SELECT (SELECT count(*) FROM up) AS changed, (SELECT n FROM prior) AS prior
"""

_RANGE_SQL = """
SELECT signal_id, ts, provider, symbol, name, value, score, adapter, meta::text AS meta, ver
FROM signals
WHERE ts >= $1 AND ts < $2 AND ($3::text IS NULL OR symbol = $3)
ORDER BY ts, signal_id
"""


class PgSignalsStore(PgClientBase):
    """asyncpg implementation of ``SignalsStoreClient`` (idempotent by ``signal_id``).

    Failure semantics as for ``PgStoreClient``: one transaction per call,
    ``StoreUnavailableError`` when transient, ``StoreError`` otherwise.
    """

    async def upsert_signals(self, signals: Sequence[Signal]) -> UpsertResult:
        """Upsert by ``signal_id`` (last of duplicates wins); identical rows are unchanged."""
        if not signals:
            return UpsertResult()
        latest = {s.signal_id: s for s in signals}
        records = [
            (
                s.signal_id,
                s.ts,
                s.provider,
                s.symbol,
                s.name,
                s.value,
                s.score,
                s.adapter,
                json.dumps(s.meta, sort_keys=True, default=str),
                s.ver,
            )
            for s in latest.values()
        ]
        days = {s.ts.astimezone(UTC).date() for s in latest.values()}

        async def write() -> Any:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "mdp_stage_signals", records=records, columns=_STAGE_COLUMNS
                    )
                    row = await conn.fetchrow(_UPSERT_SQL)
                    await conn.execute("DELETE FROM mdp_stage_signals")
                await self._janitor.used(conn, "mdp_stage_signals", len(records))
            return row

        with translate_errors("upsert_signals"):
            row = await self._write([("signals", days)], write)
        inserted = len(records) - int(row["prior"])
        updated = int(row["changed"]) - inserted
        return UpsertResult(
            inserted=inserted, updated=updated, unchanged=len(records) - inserted - updated
        )

    async def signals_range(
        self, start: datetime, end: datetime, symbol: str | None = None
    ) -> list[Signal]:
        """Signals with ``start <= ts < end`` (of ``symbol`` if given), oldest first."""
        with translate_errors("signals_range"):
            rows = await self._pool.fetch(_RANGE_SQL, start, end, symbol)
        return [
            Signal(
                ver=r["ver"],
                provider=r["provider"],
                symbol=r["symbol"],
                ts=r["ts"],
                name=r["name"],
                value=r["value"],
                score=r["score"],
                meta=json.loads(r["meta"]),
                adapter=r["adapter"],
                signal_id=r["signal_id"],
            )
            for r in rows
        ]
