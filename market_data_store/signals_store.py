"""``PgSignalsStore``: what the inference stage keeps (core ``SignalsStoreClient``): the
``signals`` time-series table (a row's ``state`` is ``active`` or ``retracted``) and the
feature checkpoints of each series, validated against the bars' change log."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from market_data_core.contracts import Signal
from market_data_core.protocols import FeatureCheckpoint, SeriesResume, UpsertResult
from market_data_store._base import PgClientBase
from market_data_store._errors import translate_errors
from market_data_store.store_client import WINDOWS_SQL, window_from_row

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
    "state",
)

# Rows that existed before the statement (its snapshot) are the updated or unchanged ones;
# ``xmax`` cannot tell inserts from updates on a partitioned table.
_UPSERT_SQL = """
WITH prior AS (
    SELECT count(*) AS n FROM mdp_stage_signals x
    WHERE EXISTS (SELECT 1 FROM signals s WHERE s.signal_id = x.signal_id AND s.ts = x.ts)
), up AS (
    INSERT INTO signals AS s (signal_id, ts, provider, symbol, name, value, score, adapter,
                             meta, ver, state, updated_at)
    SELECT signal_id, ts, provider, symbol, name, value, score, adapter, meta::jsonb, ver,
           state, now()
    FROM mdp_stage_signals
    ORDER BY signal_id, ts
    ON CONFLICT (signal_id, ts) DO UPDATE SET
        value = EXCLUDED.value, score = EXCLUDED.score, meta = EXCLUDED.meta,
        ver = EXCLUDED.ver, state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
    WHERE (s.value, s.score, s.meta, s.ver, s.state)
          IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.score, EXCLUDED.meta, EXCLUDED.ver,
                            EXCLUDED.state)
    RETURNING 1
)
SELECT (SELECT count(*) FROM up) AS changed, (SELECT n FROM prior) AS prior
"""

_COLUMNS = (
    "signal_id, ts, provider, symbol, name, value, score, adapter, meta::text AS meta, ver, state"
)

_RANGE_SQL = f"""
SELECT {_COLUMNS}
FROM signals
WHERE ts >= $1 AND ts < $2 AND ($3::text IS NULL OR symbol = $3)
ORDER BY ts, signal_id
"""

_SINCE_SQL = """
SELECT s.signal_id, s.ts, s.provider, s.symbol, s.name, s.value, s.score, s.adapter,
       s.meta::text AS meta, s.ver, s.state
FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS q(provider, symbol, since)
JOIN signals s ON s.symbol = q.symbol AND s.ts >= q.since AND s.provider = q.provider
WHERE s.adapter = ANY($4::text[])
ORDER BY s.ts, s.signal_id
"""

_HEAD_SQL = (
    "SELECT seq, pruned_seq FROM bar_series WHERE (provider, symbol, interval) = ($1, $2, $3)"
)

# The newest checkpoint that no later change invalidates: no change after its as_of_seq
# touched a bar at or before its ts, and none of those changes was pruned (which would hide
# one). bar_changes' unique key (provider, symbol, interval, seq) makes the check a short
# index range scan.
_VALID_CHECKPOINT_SQL = """
SELECT c.ts, c.as_of_seq, c.progress_seq, c.bars, c.state
FROM feature_checkpoints c
WHERE (c.engine_key, c.provider, c.symbol, c.interval) = ($1, $2, $3, $4)
  AND c.as_of_seq >= $5 AND c.as_of_seq <= $6
  AND NOT EXISTS (
      SELECT 1 FROM bar_changes x
      WHERE (x.provider, x.symbol, x.interval) = (c.provider, c.symbol, c.interval)
        AND x.seq > c.as_of_seq AND x.ts <= c.ts
  )
ORDER BY c.ts DESC
LIMIT 1
"""

_SAVE_CHECKPOINTS_SQL = """
INSERT INTO feature_checkpoints AS c (engine_key, provider, symbol, interval, ts, as_of_seq,
                                      progress_seq, bars, state, created_at)
SELECT $1, x.provider, x.symbol, x.interval, x.ts, x.as_of_seq, x.progress_seq, x.bars,
       x.state, now()
FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bigint[], $7::bigint[],
            $8::bigint[], $9::bytea[])
     AS x(provider, symbol, interval, ts, as_of_seq, progress_seq, bars, state)
ON CONFLICT (engine_key, provider, symbol, interval, ts) DO UPDATE SET
    as_of_seq = EXCLUDED.as_of_seq, progress_seq = EXCLUDED.progress_seq,
    bars = EXCLUDED.bars, state = EXCLUDED.state, created_at = EXCLUDED.created_at
"""

_TRIM_CHECKPOINTS_SQL = """
DELETE FROM feature_checkpoints c
USING unnest($2::text[], $3::text[], $4::text[]) AS x(provider, symbol, interval)
WHERE (c.engine_key, c.provider, c.symbol, c.interval) = ($1, x.provider, x.symbol, x.interval)
  AND c.ts < (
      SELECT k.ts FROM feature_checkpoints k
      WHERE (k.engine_key, k.provider, k.symbol, k.interval)
            = ($1, x.provider, x.symbol, x.interval)
      ORDER BY k.ts DESC OFFSET $5 - 1 LIMIT 1
  )
"""

_PROGRESS_SQL = """
SELECT b.provider, b.symbol, b.seq,
       (SELECT max(c.progress_seq) FROM feature_checkpoints c
        WHERE (c.engine_key, c.provider, c.symbol, c.interval)
              = ($1, b.provider, b.symbol, b.interval)) AS progress
FROM bar_series b
WHERE b.interval = $2
"""

_MIN_TS = datetime(1, 1, 1, tzinfo=UTC)
_MAX_TS = datetime(9999, 12, 31, tzinfo=UTC)
_AFTER = timedelta(microseconds=1)  # windows after a checkpoint's: ts >= its ts + 1 µs


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
                s.state,
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
        return [_signal_from_row(r) for r in rows]

    async def signals_since(
        self, series: Sequence[tuple[str, str, datetime]], *, adapters: Sequence[str]
    ) -> list[Signal]:
        """Signals (any state) of ``adapters`` with ``ts >= since`` per (provider, symbol,
        since), oldest first; one index range scan per series."""
        if not series:
            return []
        with translate_errors("signals_since"):
            rows = await self._pool.fetch(
                _SINCE_SQL,
                [p for p, _, _ in series],
                [s for _, s, _ in series],
                [t for _, _, t in series],
                list(adapters),
            )
        return [_signal_from_row(r) for r in rows]

    async def resume_series(
        self, engine_key: str, provider: str, symbol: str, interval: str
    ) -> SeriesResume:
        """The newest valid checkpoint of the series (see the core protocol) and its windows
        after it (trade bars with their quote bars, quote bars alone), read in one
        REPEATABLE READ snapshot together with the series' head."""
        with translate_errors("resume_series"):
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                head = await conn.fetchrow(_HEAD_SQL, provider, symbol, interval)
                seq, pruned = (0, 0) if head is None else (head["seq"], head["pruned_seq"])
                cp = await conn.fetchrow(
                    _VALID_CHECKPOINT_SQL, engine_key, provider, symbol, interval, pruned, seq
                )
                since = _MIN_TS if cp is None else cp["ts"] + _AFTER
                rows = await conn.fetch(WINDOWS_SQL, provider, symbol, interval, since, _MAX_TS)
        checkpoint = (
            None
            if cp is None
            else FeatureCheckpoint(
                provider=provider,
                symbol=symbol,
                interval=interval,
                ts=cp["ts"],
                as_of_seq=cp["as_of_seq"],
                progress_seq=cp["progress_seq"],
                bars=cp["bars"],
                state=bytes(cp["state"]),
            )
        )
        return SeriesResume(checkpoint=checkpoint, bars=[window_from_row(r) for r in rows], seq=seq)

    async def save_checkpoints(
        self, engine_key: str, checkpoints: Sequence[FeatureCheckpoint], *, keep: int = 4
    ) -> None:
        """Upsert checkpoints and keep the newest ``keep`` per series, in one transaction."""
        if not checkpoints:
            return
        cps = list({(c.provider, c.symbol, c.interval, c.ts): c for c in checkpoints}.values())
        series = sorted({(c.provider, c.symbol, c.interval) for c in cps})
        with translate_errors("save_checkpoints"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    _SAVE_CHECKPOINTS_SQL,
                    engine_key,
                    [c.provider for c in cps],
                    [c.symbol for c in cps],
                    [c.interval for c in cps],
                    [c.ts for c in cps],
                    [c.as_of_seq for c in cps],
                    [c.progress_seq for c in cps],
                    [c.bars for c in cps],
                    [c.state for c in cps],
                )
                await conn.execute(
                    _TRIM_CHECKPOINTS_SQL,
                    engine_key,
                    [s[0] for s in series],
                    [s[1] for s in series],
                    [s[2] for s in series],
                    max(1, keep),
                )

    async def series_progress(
        self, engine_key: str, interval: str
    ) -> dict[tuple[str, str], tuple[int, int | None]]:
        """Every series with a change log at ``interval``: (head seq, this engine's newest
        checkpointed progress or ``None``)."""
        with translate_errors("series_progress"):
            rows = await self._pool.fetch(_PROGRESS_SQL, engine_key, interval)
        return {(r["provider"], r["symbol"]): (r["seq"], r["progress"]) for r in rows}


def _signal_from_row(r: Any) -> Signal:
    return Signal(
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
        state=r["state"],
    )
