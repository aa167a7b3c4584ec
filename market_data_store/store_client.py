"""``PgStoreClient``: bars and raw ticks in PostgreSQL/TimescaleDB (core ``StoreClient``).

Every write is one transaction that first takes ``pg_advisory_xact_lock`` for each
(provider, symbol) it touches, in sorted order — so writers of the same series serialise and
can never deadlock on each other — then COPYs the de-duplicated batch into a per-connection
staging table and runs one set-based statement. Round trips per call are constant.
``upsert_bars`` short-cuts two common cases with the same outcome: all-new batches are COPYed
straight into the table, all-unchanged replays are settled by reading. ``ingest_ticks``
likewise moves all-new batches from staging with a plain INSERT, and only batches holding
already stored ticks go through ``ON CONFLICT``.

Exactness of tick-derived bars: see :mod:`market_data_store.models` (numeric aggregation,
one correctly rounded conversion to float8, ``vwap`` divided to at least ``VWAP_GUARD_DIGITS``
significant digits before that conversion).

Transactional outbox: the statement that writes bars also appends every inserted or changed
bar to ``bar_changes`` with the next ``seq`` of its series (``bar_series``), so a committed
revision is never without its change record, and an unchanged bar (a replay) writes none.
:meth:`PgStoreClient.relay_bar_changes` publishes the records in ``id`` order and marks them
after the publish succeeded, one relay at a time (``pg_try_advisory_xact_lock``). Writers of a
series hold its advisory lock while taking ``seq`` and ``id``, so within a series both follow
commit order, and the relay publishes a series' changes in ``seq`` order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from operator import itemgetter
from typing import Any

import asyncpg

from market_data_core.contracts import Bar, StreamEvent
from market_data_core.errors import StoreError
from market_data_core.protocols import RelayResult, TickIngestResult, UpsertResult
from market_data_core.timeutil import (
    from_epoch_us,
    parse_duration_ms,
    to_epoch_us,
    window_start_us,
)
from market_data_store._base import LOCK_SQL, SERIES_LOCK_NAMESPACE, PgClientBase, series_lock_keys
from market_data_store._errors import translate_errors
from market_data_store.models import VWAP_GUARD_DIGITS

__all__ = ["PgStoreClient"]

_BAR_COLS = ("o", "h", "l", "c", "v", "vwap", "trade_count")
_BAR_DISTINCT = (
    "(b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count) IS DISTINCT FROM "
    "(EXCLUDED.o, EXCLUDED.h, EXCLUDED.l, EXCLUDED.c, EXCLUDED.v, EXCLUDED.vwap, "
    "EXCLUDED.trade_count)"
)
_BAR_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in _BAR_COLS)
# An inserted row has revision 0 and an updated one revision >= 1: that tells them apart in
# RETURNING (``xmax`` is not available on partitioned tables).
_BAR_ON_CONFLICT = (
    f"ON CONFLICT (provider, symbol, interval, ts) DO UPDATE SET {_BAR_SET}, "
    f"revision = b.revision + 1, updated_at = EXCLUDED.updated_at WHERE {_BAR_DISTINCT}"
)
_BAR_INSERT = (
    "INSERT INTO bars_ohlcv AS b (provider, symbol, interval, ts, o, h, l, c, v, vwap, "
    "trade_count, revision, updated_at) "
)

_BAR_RETURNING = (
    "RETURNING b.provider, b.symbol, b.interval, b.ts, b.o, b.h, b.l, b.c, b.v, b.vwap, "
    "b.trade_count, b.revision, (b.revision = 0) AS inserted"
)

# Appended to a statement whose CTE ``up`` returns the bars it inserted or changed: their
# change records, numbered per series after its log head. Every writer holds the series'
# advisory lock, so nobody else moves the head meanwhile.
_LOG_CHANGES_CTES = """
, heads AS (
    INSERT INTO bar_series AS s (provider, symbol, interval, seq)
    SELECT provider, symbol, interval, count(*) FROM up GROUP BY provider, symbol, interval
    ON CONFLICT (provider, symbol, interval) DO UPDATE SET seq = s.seq + EXCLUDED.seq
    RETURNING s.provider, s.symbol, s.interval, s.seq AS head
), ch AS (
    INSERT INTO bar_changes (provider, symbol, interval, seq, ts, o, h, l, c, v, vwap,
                             trade_count, revision)
    SELECT u.provider, u.symbol, u.interval,
           h.head - count(*) OVER w + row_number() OVER (w ORDER BY u.ts),
           u.ts, u.o, u.h, u.l, u.c, u.v, u.vwap, u.trade_count, u.revision
    FROM up u
    JOIN heads h ON (h.provider, h.symbol, h.interval) = (u.provider, u.symbol, u.interval)
    WINDOW w AS (PARTITION BY u.provider, u.symbol, u.interval)
    ORDER BY u.provider, u.symbol, u.interval, u.ts
    RETURNING provider, symbol, interval, ts, seq
)"""

_UPSERT_BARS_SQL = f"""
WITH up AS (
    {_BAR_INSERT}
    SELECT provider, symbol, interval, ts, o, h, l, c, v, vwap, trade_count, 0, now()
    FROM mdp_stage_bars
    {_BAR_ON_CONFLICT}
    {_BAR_RETURNING}
){_LOG_CHANGES_CTES}
SELECT count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated
FROM up
"""

# All-new bars: a plain INSERT from staging (an existing key aborts it to a savepoint).
_INSERT_NEW_BARS_SQL = f"""
WITH up AS (
    {_BAR_INSERT}
    SELECT provider, symbol, interval, ts, o, h, l, c, v, vwap, trade_count, 0, now()
    FROM mdp_stage_bars
    {_BAR_RETURNING}
){_LOG_CHANGES_CTES}
SELECT count(*) AS inserted, 0 AS updated FROM up
"""

_BARS_SPAN_SQL = (
    "SELECT provider, symbol, interval, ts, o, h, l, c, v, vwap, trade_count FROM bars_ohlcv "
    "WHERE provider = $1 AND symbol = $2 AND interval = $3 AND ts >= $4 AND ts <= $5"
)
# A replay check reads each series' stored span; past this many series, upsert directly.
_REPLAY_CHECK_MAX_SERIES = 64

_ANY_BAR_EXISTS_SQL = """
SELECT EXISTS (SELECT 1 FROM bars_ohlcv WHERE (provider, symbol, interval, ts) = ($1, $2, $3, $4))
    OR EXISTS (SELECT 1 FROM bars_ohlcv WHERE (provider, symbol, interval, ts) = ($5, $6, $7, $8))
"""

_STAGE_TICK_COLUMNS = (
    "provider",
    "symbol",
    "ts",
    "seq",
    "event_id",
    "price",
    "size",
    "side",
    "trade_id",
    "ingest_ts",
)
_ANY_TICK_EXISTS_SQL = """
SELECT EXISTS (SELECT 1 FROM ticks WHERE (provider, symbol, ts, seq) = ($1, $2, $3, $4))
    OR EXISTS (SELECT 1 FROM ticks WHERE (provider, symbol, ts, seq) = ($5, $6, $7, $8))
"""
# Emptying the staging table: DELETE costs per row (and the dead rows slow every later scan
# of the table until the janitor's VACUUM); TRUNCATE costs ~1 ms per call (a new file, and
# the statements reading the table are planned again). Measured crossover: 200-500 ticks.
_TRUNCATE_STAGE_MIN_ROWS = 400
_STAGE_BAR_COLUMNS = ("provider", "symbol", "interval", "ts", *_BAR_COLS)

_INSERT_TICKS_SQL = """
INSERT INTO ticks (provider, symbol, ts, seq, event_id, price, size, side, trade_id, ingest_ts)
SELECT provider, symbol, ts, seq, event_id, price::numeric, size::numeric, side, trade_id,
       coalesce(ingest_ts, now())
FROM mdp_stage_ticks
ORDER BY provider, symbol, ts, seq
ON CONFLICT DO NOTHING
"""

# All-new ticks: no ON CONFLICT (speculative insertion costs twice a plain insert) and no
# sort (the batch arrives in event-time order; the key order only matters to ON CONFLICT).
_INSERT_NEW_TICKS_SQL = """
INSERT INTO ticks (provider, symbol, ts, seq, event_id, price, size, side, trade_id, ingest_ts)
SELECT provider, symbol, ts, seq, event_id, price::numeric, size::numeric, side, trade_id,
       coalesce(ingest_ts, now())
FROM mdp_stage_ticks
"""

# Recompute the bars of every window the batch touched from ALL stored ticks of the window.
# The LATERAL aggregate cannot be flattened, so each window is one index range scan on
# ticks' primary key (provider, symbol, ts, seq), whatever the size of the table; open and
# close are two more probes of that index (first/last by (ts, seq)), cheaper than sorting
# the window's prices in ordered aggregates. $3 and $4 bound all the windows (the client's
# estimate, widened by a window each side): redundant, but with them the planner prunes the
# partitions of ``ticks`` at plan time, instead of planning scans of every partition.
_RECOMPUTE_BARS_SQL = f"""
WITH win AS (
    SELECT DISTINCT provider, symbol,
           date_bin($1::interval, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS bucket
    FROM mdp_stage_ticks
), agg AS (
    SELECT w.provider, w.symbol, w.bucket, a.o, a.h, a.l, a.c, a.v, a.pv, a.n
    FROM win w
    CROSS JOIN LATERAL (
        SELECT (SELECT f.price FROM ticks f
                WHERE f.provider = w.provider AND f.symbol = w.symbol
                  AND f.ts >= w.bucket AND f.ts < w.bucket + $1::interval
                  AND f.ts >= $3 AND f.ts < $4
                ORDER BY f.ts, f.seq LIMIT 1) AS o,
               max(t.price) AS h,
               min(t.price) AS l,
               (SELECT f.price FROM ticks f
                WHERE f.provider = w.provider AND f.symbol = w.symbol
                  AND f.ts >= w.bucket AND f.ts < w.bucket + $1::interval
                  AND f.ts >= $3 AND f.ts < $4
                ORDER BY f.ts DESC, f.seq DESC LIMIT 1) AS c,
               sum(t.size) AS v,
               sum(t.price * t.size) AS pv,
               count(*) AS n
        FROM ticks t
        WHERE t.provider = w.provider AND t.symbol = w.symbol
          AND t.ts >= w.bucket AND t.ts < w.bucket + $1::interval
          AND t.ts >= $3 AND t.ts < $4
    ) a
    WHERE a.n > 0
), up AS (
    {_BAR_INSERT}
    SELECT provider, symbol, $2::text, bucket, o::float8, h::float8, l::float8, c::float8,
           v::float8,
           CASE WHEN v > 0 THEN (round(pv, scale(pv) + {VWAP_GUARD_DIGITS}) / v)::float8 END,
           n::int, 0, now()
    FROM agg
    ORDER BY provider, symbol, bucket
    {_BAR_ON_CONFLICT}
    {_BAR_RETURNING}
){_LOG_CHANGES_CTES}
SELECT n.windows, up.*, ch.seq AS change_seq
FROM (SELECT count(*) AS windows FROM agg) n
LEFT JOIN (up JOIN ch USING (provider, symbol, interval, ts)) ON true
"""

# One relay at a time, across processes: a transaction-scoped advisory lock of its own.
_RELAY_LOCK_NAMESPACE = 0x6D6472
_RELAY_LOCK_SQL = "SELECT pg_try_advisory_xact_lock($1::int4, 0)"
_RELAY_READ_SQL = """
SELECT id, provider, symbol, interval, seq, ts, o, h, l, c, v, vwap, trade_count, revision
FROM bar_changes WHERE relayed_at IS NULL ORDER BY id LIMIT $1
"""
_RELAY_MARK_SQL = "UPDATE bar_changes SET relayed_at = now() WHERE id = ANY($1::bigint[])"
# Oldest first through the primary key: relayed rows are the oldest ones.
_PRUNE_SQL = """
DELETE FROM bar_changes WHERE id IN (
    SELECT id FROM bar_changes
    WHERE relayed_at < now() - $1::bigint * interval '1 millisecond'
    ORDER BY id LIMIT $2
)
RETURNING provider, symbol, interval, seq
"""
_PRUNE_BATCH = 10_000
_PRUNED_SEQ_SQL = """
UPDATE bar_series s SET pruned_seq = greatest(s.pruned_seq, x.seq)
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS x(provider, symbol, interval, seq)
WHERE (s.provider, s.symbol, s.interval) = (x.provider, x.symbol, x.interval)
"""

_BAR_SELECT = (
    "SELECT provider, symbol, interval, ts, o, h, l, c, v, vwap, trade_count, revision "
    "FROM bars_ohlcv "
)

_BARS_RANGE_SQL = (
    _BAR_SELECT
    + "WHERE provider = $1 AND symbol = $2 AND interval = $3 AND ts >= $4 AND ts < $5 "
    + "ORDER BY ts"
)

# Loose index scan over the distinct (provider, symbol) pairs, then the newest `limit` bars
# of each through the primary key (backwards), instead of scanning the whole table.
_LATEST_BARS_SQL = """
WITH RECURSIVE series AS (
    (SELECT provider, symbol FROM bars_ohlcv ORDER BY provider, symbol LIMIT 1)
    UNION ALL
    SELECT n.provider, n.symbol
    FROM series s
    CROSS JOIN LATERAL (
        SELECT b.provider, b.symbol FROM bars_ohlcv b
        WHERE (b.provider, b.symbol) > (s.provider, s.symbol)
        ORDER BY b.provider, b.symbol LIMIT 1
    ) n
)
SELECT x.*
FROM series s
CROSS JOIN LATERAL (
    SELECT provider, symbol, interval, ts, o, h, l, c, v, vwap, trade_count, revision
    FROM bars_ohlcv b
    WHERE b.provider = s.provider AND b.symbol = s.symbol AND b.interval = $1
    ORDER BY b.ts DESC
    LIMIT $2
) x
ORDER BY x.provider, x.symbol, x.ts
"""

_DAY_US = 86_400_000_000


def _interval_ms(interval: str) -> int:
    try:
        ms = parse_duration_ms(interval)
    except ValueError as exc:
        raise StoreError(f"bad bar interval {interval!r}: {exc}") from None
    if ms <= 0:
        raise StoreError(f"bad bar interval {interval!r}: must be positive")
    return ms


def _bar_from_row(row: Any, interval: str | None = None, change_seq: int | None = None) -> Bar:
    return Bar(
        provider=row["provider"],
        symbol=row["symbol"],
        interval=interval if interval is not None else row["interval"],
        ts=row["ts"],
        o=row["o"],
        h=row["h"],
        l=row["l"],
        c=row["c"],
        v=row["v"],
        vwap=row["vwap"],
        trade_count=row["trade_count"],
        revision=row["revision"],
        change_seq=change_seq,
    )


def _bar_days(tick_days: set[date], window_ms: int) -> set[date]:
    """UTC days of the window starts of ticks on ``tick_days`` (a window that starts before
    midnight holds ticks of the next day when the interval does not divide a day)."""
    days = set(tick_days)
    if _DAY_US % (window_ms * 1000):
        for d in tick_days:
            midnight_us = to_epoch_us(datetime(d.year, d.month, d.day, tzinfo=UTC))
            days.add(from_epoch_us(window_start_us(midnight_us, window_ms)).date())
    return days


async def _all_stored_unchanged(conn: Any, rows: list[tuple[Any, ...]]) -> bool:
    """True when every row is already stored with identical values (the same test as the
    upsert's ``IS DISTINCT FROM`` guard), read with one index range scan per series."""
    spans: dict[tuple[str, str, str], tuple[datetime, datetime]] = {}
    for r in rows:
        key = (r[0], r[1], r[2])
        span = spans.get(key)
        if span is None:
            spans[key] = (r[3], r[3])
        elif r[3] < span[0] or r[3] > span[1]:
            spans[key] = (min(span[0], r[3]), max(span[1], r[3]))
    if len(spans) > _REPLAY_CHECK_MAX_SERIES:
        return False
    stored: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for (provider, symbol, interval), (lo, hi) in spans.items():
        for rec in await conn.fetch(_BARS_SPAN_SQL, provider, symbol, interval, lo, hi):
            stored[(rec[0], rec[1], rec[2], rec[3])] = tuple(rec[4:11])
    return all(stored.get(r[:4]) == r[4:11] for r in rows)


class PgStoreClient(PgClientBase):
    """asyncpg implementation of ``StoreClient``. Create with ``await PgStoreClient.connect``.

    Failure semantics: each call is one transaction; on any error nothing of it is visible.
    Transient failures raise ``StoreUnavailableError`` and the next call, once the server is
    back, reconnects by itself; everything else raises ``StoreError``.
    """

    async def upsert_bars(self, bars: Sequence[Bar]) -> UpsertResult:
        """Upsert bars by (provider, symbol, interval, ts); the last of duplicate keys in the
        batch wins. A changed existing bar gets ``revision + 1`` (the ``revision`` given in
        ``bars`` is ignored: the store owns it); an identical one is left alone."""
        if not bars:
            return UpsertResult()
        # The key spelled out inline: twice as fast as ``Bar.key`` on 100k-row batches.
        latest: dict[tuple[str, str, str, datetime], Bar] = {
            (b.provider, b.symbol, b.interval, b.ts): b for b in bars
        }
        unique = latest.values()
        now = datetime.now(UTC)
        # (key..., values..., revision 0, updated_at): the row as a fresh insert writes it
        rows = [
            (
                b.provider,
                b.symbol,
                b.interval,
                b.ts,
                b.o,
                b.h,
                b.l,
                b.c,
                b.v,
                b.vwap,
                b.trade_count,
                0,
                now,
            )
            for b in unique
        ]
        days = {ts.astimezone(UTC).date() for ts in {b.ts for b in unique}}
        locks = series_lock_keys({(b.provider, b.symbol) for b in unique})

        async def write() -> Any:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute(LOCK_SQL, SERIES_LOCK_NAMESPACE, locks)
                    # Fast path: a batch of bars that are all new (live data) goes in with a
                    # plain INSERT, much cheaper than INSERT ... ON CONFLICT. Two index probes
                    # (the first and last key) send replays and updates to the staged upsert
                    # at once; an existing key in the middle aborts the INSERT, and the
                    # savepoint rollback leaves the staged upsert below to do the work.
                    # Writers of one series are serialised by the advisory lock above, so
                    # two INSERTs can never wait on each other's keys.
                    ends = (rows[0][:4], rows[-1][:4])
                    known = await conn.fetchval(_ANY_BAR_EXISTS_SQL, *ends[0], *ends[1])
                    if known and await _all_stored_unchanged(conn, rows):
                        # a replay: settled by one range read per series, nothing written
                        # (so nothing to relay either)
                        return {"inserted": 0, "updated": 0}
                    await conn.copy_records_to_table(
                        "mdp_stage_bars",
                        records=[r[:11] for r in rows],
                        columns=_STAGE_BAR_COLUMNS,
                    )
                    row = None
                    if not known:
                        try:
                            async with conn.transaction():
                                row = await conn.fetchrow(_INSERT_NEW_BARS_SQL)
                        except asyncpg.UniqueViolationError:
                            pass  # an existing key in the middle: upsert instead
                    if row is None:
                        row = await conn.fetchrow(_UPSERT_BARS_SQL)
                    await conn.execute("DELETE FROM mdp_stage_bars")
                await self._janitor.used(conn, "mdp_stage_bars", len(rows))
            return row

        with translate_errors("upsert_bars"):
            row = await self._write([("bars_ohlcv", days)], write)
        inserted, updated = int(row["inserted"]), int(row["updated"])
        return UpsertResult(
            inserted=inserted, updated=updated, unchanged=len(rows) - inserted - updated
        )

    async def ingest_ticks(
        self, ticks: Sequence[StreamEvent], *, interval: str
    ) -> TickIngestResult:
        """Store trade ticks (idempotent by ``event_id``) and recompute, in the same
        transaction, the ``interval`` bars of every epoch-aligned window ``[k*w, (k+1)*w)``
        the batch touches from all stored ticks of that window (open/close = first/last by
        ``(ts, seq)``). Windows of duplicate-only ticks are recomputed too (unchanged unless
        the stored bar was wrong), so a replay at a new interval still produces its bars.
        Returns new ticks and the bars inserted or changed (with their new ``revision``).
        Raises ``StoreError`` for a non-tick event."""
        window_ms = _interval_ms(interval)
        if not ticks:
            return TickIngestResult(ticks_inserted=0)
        # Comprehensions rather than one loop doing everything: this runs for every tick of
        # the pipeline, and their per-item cost is a fraction of a statement loop's.
        bad = next((e for e in ticks if e.kind != "tick" or e.c is None or e.v is None), None)
        if bad is not None:
            raise StoreError(f"ingest_ticks got a {bad.kind} event ({bad.event_id})")
        unique = {e.event_id: e for e in ticks}
        records = [
            (
                e.provider,
                e.symbol,
                e.src_ts,
                e.seq,
                e.event_id,
                repr(e.c),  # the shortest decimal that round-trips the float -> numeric
                repr(e.v),
                e.side,
                e.trade_id,
                e.ingest_ts,
            )
            for e in unique.values()
        ]
        stamps = [r[2] for r in records]
        first_ts, last_ts = min(stamps), max(stamps)
        first_day, last_day = first_ts.date(), last_ts.date()  # src_ts is UTC (validated)
        tick_days = {first_day} if first_day == last_day else {ts.date() for ts in stamps}
        locks = series_lock_keys(set(map(itemgetter(0, 1), records)))
        stride = timedelta(milliseconds=window_ms)
        lo = from_epoch_us(window_start_us(to_epoch_us(first_ts), window_ms)) - stride
        hi = from_epoch_us(window_start_us(to_epoch_us(last_ts), window_ms)) + 2 * stride
        ends = (records[0][:4], records[-1][:4])
        truncate = len(records) >= _TRUNCATE_STAGE_MIN_ROWS

        async def write() -> tuple[int, list[Any]]:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute(LOCK_SQL, SERIES_LOCK_NAMESPACE, locks)
                    await conn.copy_records_to_table(
                        "mdp_stage_ticks", records=records, columns=_STAGE_TICK_COLUMNS
                    )
                    inserted: int | None = None
                    # Fast path: a batch of all-new ticks (live data) is a plain INSERT, much
                    # cheaper than the speculative insertion of ON CONFLICT. Two index probes
                    # (the first and last key) send replays to ON CONFLICT at once; an
                    # existing key in the middle aborts the INSERT, and the savepoint rollback
                    # leaves the staged rows to ON CONFLICT. Writers of one series are
                    # serialised by the advisory locks above, so the INSERT never waits on
                    # another writer's keys.
                    if not await conn.fetchval(_ANY_TICK_EXISTS_SQL, *ends[0], *ends[1]):
                        try:
                            async with conn.transaction():
                                await conn.execute(_INSERT_NEW_TICKS_SQL)
                            inserted = len(records)
                        except asyncpg.UniqueViolationError:
                            pass  # an already stored tick in the middle
                    if inserted is None:
                        status = await conn.execute(_INSERT_TICKS_SQL)
                        inserted = int(status.rsplit(" ", 1)[-1])
                    rows = await conn.fetch(_RECOMPUTE_BARS_SQL, stride, interval, lo, hi)
                    if truncate:
                        await conn.execute("TRUNCATE mdp_stage_ticks")
                    else:
                        await conn.execute("DELETE FROM mdp_stage_ticks")
                if not truncate:
                    await self._janitor.used(conn, "mdp_stage_ticks", len(records))
            return inserted, rows

        with translate_errors("ingest_ticks"):
            ticks_inserted, rows = await self._write(
                [("ticks", tick_days), ("bars_ohlcv", _bar_days(tick_days, window_ms))], write
            )
        n_windows = int(rows[0]["windows"]) if rows else 0
        changed = [r for r in rows if r["provider"] is not None]
        inserted = sum(1 for r in changed if r["inserted"])
        bars = [_bar_from_row(r, interval, r["change_seq"]) for r in changed]
        return TickIngestResult(
            ticks_inserted=ticks_inserted,
            bars=bars,
            bars_result=UpsertResult(
                inserted=inserted,
                updated=len(changed) - inserted,
                unchanged=n_windows - len(changed),
            ),
        )

    async def bars_range(
        self, provider: str, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[Bar]:
        """Bars with ``start <= ts < end``, oldest first."""
        with translate_errors("bars_range"):
            rows = await self._pool.fetch(_BARS_RANGE_SQL, provider, symbol, interval, start, end)
        return [_bar_from_row(r) for r in rows]

    async def latest_bars(self, interval: str, limit: int) -> dict[tuple[str, str], list[Bar]]:
        """The newest ``limit`` bars of ``interval`` per (provider, symbol), oldest first."""
        if limit <= 0:
            return {}
        with translate_errors("latest_bars"):
            rows = await self._pool.fetch(_LATEST_BARS_SQL, interval, limit)
        out: dict[tuple[str, str], list[Bar]] = {}
        for r in rows:
            out.setdefault((r["provider"], r["symbol"]), []).append(_bar_from_row(r))
        return out

    async def relay_bar_changes(
        self, publish: Callable[[Sequence[Bar]], Awaitable[None]], *, limit: int = 1000
    ) -> RelayResult:
        """Publish the oldest unrelayed bar changes, then mark them relayed; see the core
        ``StoreClient`` protocol. The transaction (and the relay lock) stays open while
        ``publish`` runs: a relay that dies mid-way leaves its changes unmarked for the next.
        Each bar carries its ``change_seq``."""
        with translate_errors("relay_bar_changes"):
            async with self._pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval(_RELAY_LOCK_SQL, _RELAY_LOCK_NAMESPACE):
                    return RelayResult(busy=True)
                rows = await conn.fetch(_RELAY_READ_SQL, limit)
                if not rows:
                    return RelayResult()
                bars = [_bar_from_row(r, change_seq=r["seq"]) for r in rows]
                await publish(bars)
                await conn.execute(_RELAY_MARK_SQL, [r["id"] for r in rows])
        return RelayResult(relayed=len(rows), more=len(rows) >= limit)

    async def prune_bar_changes(self, older_than_ms: int) -> int:
        """Delete changes relayed more than ``older_than_ms`` ago (oldest first, in batches)
        and raise their series' ``pruned_seq``, under the relay lock and the series' locks
        (in the writers' order). Returns how many were deleted (0 when the relay is busy)."""
        total = 0
        with translate_errors("prune_bar_changes"):
            while True:
                async with self._pool.acquire() as conn, conn.transaction():
                    if not await conn.fetchval(_RELAY_LOCK_SQL, _RELAY_LOCK_NAMESPACE):
                        return total
                    rows = await conn.fetch(_PRUNE_SQL, older_than_ms, _PRUNE_BATCH)
                    if not rows:
                        return total
                    heads: dict[tuple[str, str, str], int] = {}
                    for r in rows:
                        key = (r["provider"], r["symbol"], r["interval"])
                        heads[key] = max(heads.get(key, 0), r["seq"])
                    await conn.execute(
                        LOCK_SQL,
                        SERIES_LOCK_NAMESPACE,
                        series_lock_keys({(p, s) for p, s, _ in heads}),
                    )
                    await conn.execute(
                        _PRUNED_SEQ_SQL,
                        [k[0] for k in heads],
                        [k[1] for k in heads],
                        [k[2] for k in heads],
                        list(heads.values()),
                    )
                total += len(rows)
                if len(rows) < _PRUNE_BATCH:
                    return total

    async def count_rows(self, table: str) -> int:
        """Rows in one of mdp's tables (for tests, benchmarks and ``mdp stream status``)."""
        if table not in ("bars_ohlcv", "ticks", "signals", "job_runs", "bar_changes"):
            raise StoreError(f"unknown table {table!r}")
        with translate_errors("count_rows"):
            return int(await self._pool.fetchval(f"SELECT count(*) FROM {table}"))
