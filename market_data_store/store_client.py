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

import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from market_data_core.columnar import (
    KIND_CODES,
    EventColumns,
    columns_from_events,
    first_occurrences,
    window_marks,
)
from market_data_core.config import DEFAULT_QUOTE_CARRY_MS
from market_data_core.contracts import QUOTE_BAR_COLUMNS, Bar, QuoteBar, StreamEvent, WindowBar
from market_data_core.errors import StoreError
from market_data_core.protocols import (
    RelayResult,
    RollupPlan,
    TickIngestResult,
    TradingSession,
    UpsertResult,
)
from market_data_core.timeutil import (
    from_epoch_us,
    parse_duration_ms,
    to_epoch_us,
    window_start_us,
)
from market_data_store._base import (
    LOCK_SQL,
    SERIES_LOCK_NAMESPACE,
    PgClientBase,
    lock_sql_literal,
    series_lock_keys,
)
from market_data_store._errors import translate_errors
from market_data_store._event_copy import QUOTES, TICKS, RawTable
from market_data_store._quote_fold import (
    FOLD_COLUMNS,
    QuoteWindows,
    StoredBook,
    fold_windows,
    quote_windows,
)
from market_data_store._schema_names import SERIES_KEY_COLUMN, VWAP_GUARD_DIGITS, series_key

__all__ = ["WINDOWS_SQL", "PgStoreClient", "quote_bar_from_row", "window_from_row"]

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
    "b.trade_count, b.revision, b.in_session, (b.revision = 0) AS inserted"
)

_QUOTE_COLS = QUOTE_BAR_COLUMNS
_TRADE_PART = "o, h, l, c, v, vwap, trade_count, revision, in_session"
_QUOTE_PART = ", ".join(_QUOTE_COLS) + ", revision"


def _lookup(table: str, cols: str, skip: str | None) -> str:
    """The current row of ``table`` for each changed window (not among ``skip``'s rows): one
    primary-key probe per window (the ``LIMIT 1`` keeps the planner from turning the probes
    into a join over every partition)."""
    keep = (
        ""
        if skip is None
        else f"""
    WHERE NOT EXISTS (SELECT 1 FROM {skip} u
                      WHERE (u.provider, u.symbol, u.interval, u.ts)
                          = (k.provider, k.symbol, k.interval, k.ts))"""
    )
    return f"""
    SELECT k.provider, k.symbol, k.interval, k.ts, x.*
    FROM changed k
    CROSS JOIN LATERAL (
        SELECT {cols} FROM {table} y
        WHERE (y.provider, y.symbol, y.interval, y.ts) = (k.provider, k.symbol, k.interval, k.ts)
        LIMIT 1
    ) x{keep}"""


def _log_changes_ctes(*, trades: bool, quotes: bool, quote_part: bool) -> str:
    """CTEs appended to a statement whose CTE ``up`` returns the trade bars it inserted or
    changed (``trades``) and/or whose CTE ``up_q`` returns the quote bars it inserted or
    changed (``quotes``): one change record per window whose trade or quote bar changed,
    carrying both as they are now (the statement's own writes from ``up``/``up_q``, the rest
    read from the tables, where the statement changed nothing), numbered per series after
    its log head. Every writer holds the series' advisory lock, so nobody else moves the head
    meanwhile. Without ``quote_part`` the windows are known to have no quote bar (no quote
    within reach of them), and the record's quote columns are null."""
    sources = [n for n, on in (("up", trades), ("up_q", quotes)) if on]
    changed = " UNION ".join(f"SELECT provider, symbol, interval, ts FROM {n}" for n in sources)
    parts = []
    if trades:
        parts.append(f"SELECT provider, symbol, interval, ts, {_TRADE_PART} FROM up")
    if quotes:
        parts.append(_lookup("bars_ohlcv", _TRADE_PART, "up" if trades else None))
    ctes = [f"changed AS (\n    {changed}\n)", f"tpart AS (\n    {' UNION ALL '.join(parts)}\n)"]
    quote_names = [*_QUOTE_COLS, "quote_revision"]
    if quote_part:
        parts = []
        if quotes:
            parts.append(f"SELECT provider, symbol, interval, ts, {_QUOTE_PART} FROM up_q")
        parts.append(_lookup("quote_bars", _QUOTE_PART, "up_q" if quotes else None))
        ctes.append(f"qpart AS (\n    {' UNION ALL '.join(parts)}\n)")
        quote_values = ", ".join(f"q.{c}" for c in _QUOTE_COLS) + ", q.revision AS quote_revision"
        quote_join = """
        LEFT JOIN qpart q
          ON (q.provider, q.symbol, q.interval, q.ts) = (k.provider, k.symbol, k.interval, k.ts)"""
    else:
        quote_values = ", ".join(
            f"NULL::{'int' if c in ('quote_count', 'quote_revision') else 'float8'} AS {c}"
            for c in quote_names
        )
        quote_join = ""
    return f"""
, {", ".join(ctes)}, heads AS (
    INSERT INTO bar_series AS s (provider, symbol, interval, seq)
    SELECT provider, symbol, interval, count(*) FROM changed GROUP BY provider, symbol, interval
    ON CONFLICT (provider, symbol, interval) DO UPDATE SET seq = s.seq + EXCLUDED.seq
    RETURNING s.provider, s.symbol, s.interval, s.seq AS head
), ch AS (
    INSERT INTO bar_changes (provider, symbol, interval, seq, ts, {_TRADE_PART},
                             {", ".join(quote_names)})
    SELECT k.provider, k.symbol, k.interval,
           hd.head - count(*) OVER w + row_number() OVER (w ORDER BY k.ts),
           k.ts, {", ".join(f"k.{c}" for c in _TRADE_PART.split(", "))},
           {", ".join(f"k.{c}" for c in quote_names)}
    FROM (
        -- planned alone (OFFSET 0): joined with heads first, the changes were estimated at
        -- one row, and the planner re-ran the lookups of tpart/qpart once per change in a
        -- nested loop (a real batch of 10,000 trades and 9,500 quotes: over 120 s)
        SELECT k.provider, k.symbol, k.interval, k.ts,
               t.o, t.h, t.l, t.c, t.v, t.vwap, t.trade_count, t.revision, t.in_session,
               {quote_values}
        FROM changed k
        LEFT JOIN tpart t
          ON (t.provider, t.symbol, t.interval, t.ts) = (k.provider, k.symbol, k.interval, k.ts)
        {quote_join.strip()}
        OFFSET 0
    ) k
    JOIN heads hd ON (hd.provider, hd.symbol, hd.interval) = (k.provider, k.symbol, k.interval)
    WINDOW w AS (PARTITION BY k.provider, k.symbol, k.interval)
    ORDER BY k.provider, k.symbol, k.interval, k.ts
    RETURNING provider, symbol, interval, ts, seq
)"""


_UPSERT_BARS_SQL = f"""
WITH up AS (
    {_BAR_INSERT}
    SELECT provider, symbol, interval, ts, o, h, l, c, v, vwap, trade_count, 0, now()
    FROM mdp_stage_bars
    {_BAR_ON_CONFLICT}
    {_BAR_RETURNING}
){_log_changes_ctes(trades=True, quotes=False, quote_part=True)}
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
){_log_changes_ctes(trades=True, quotes=False, quote_part=True)}
SELECT count(*) AS inserted, 0 AS updated FROM up
"""


def _of_series(t: str, w: str) -> str:
    """SQL: the rows of raw table alias ``t`` (ticks, quotes) of the series ``w.provider``,
    ``w.symbol``: those of its ``series_key`` (the index's leading column), which no other
    series has (the writers register every series first: see
    :class:`~market_data_store._series.SeriesRegistry`)."""
    return f"{t}.{SERIES_KEY_COLUMN} = {series_key(f'{w}.provider', f'{w}.symbol')}"


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


def _any_exists(table: str, first: int) -> str:
    """SQL: whether ``table`` (ticks, quotes) holds the key of parameters ``$first`` ..
    ``$first+3`` or of the four after them (a batch's first and last key: provider, symbol,
    ts, seq)."""

    def key(at: int) -> str:
        params = ", ".join(f"${at + k}" for k in range(4))
        return (
            f"EXISTS (SELECT 1 FROM {table} "
            f"WHERE {SERIES_KEY_COLUMN} = {series_key(f'${at}::text', f'${at + 1}::text')} "
            f"AND (provider, symbol, ts, seq) = ({params}))"
        )

    return f"{key(first)} OR {key(first + 4)}"


_ANY_TICK_EXISTS_SQL = f"SELECT {_any_exists('ticks', 1)}"
_ANY_QUOTE_EXISTS_SQL = f"SELECT {_any_exists('quotes', 1)}"
# a batch of both kinds: one round trip for the two probes
_ANY_TICK_OR_QUOTE_EXISTS_SQL = (
    f"SELECT {_any_exists('ticks', 1)} AS ticks, {_any_exists('quotes', 9)} AS quotes"
)
# Emptying the staging table: DELETE costs per row (and the dead rows slow every later scan
# of the table until the janitor's VACUUM); TRUNCATE costs ~1 ms per call (a new file, and
# the statements reading the table are planned again). Measured crossover: 200-500 ticks.
_TRUNCATE_STAGE_MIN_ROWS = 400
_STAGE_BAR_COLUMNS = ("provider", "symbol", "interval", "ts", *_BAR_COLS)

# Batches holding already stored ticks (replays, redeliveries): staged, then ON CONFLICT.
# (All-new batches are COPYed straight into the table: see _insert_raw.)
_INSERT_TICKS_SQL = """
INSERT INTO ticks (provider, symbol, ts, seq, series_key, price, size, side, trade_id,
                   ingest_ts)
SELECT provider, symbol, ts, seq, series_key, price, size, side, trade_id,
       coalesce(ingest_ts, now())
FROM mdp_stage_ticks
ORDER BY series_key, ts, seq
ON CONFLICT DO NOTHING
"""

_INSERT_QUOTES_SQL = """
INSERT INTO quotes (provider, symbol, ts, seq, series_key, bid, ask, bid_size, ask_size,
                    ingest_ts)
SELECT provider, symbol, ts, seq, series_key, bid, ask, bid_size, ask_size,
       coalesce(ingest_ts, now())
FROM mdp_stage_quotes
ORDER BY series_key, ts, seq
ON CONFLICT DO NOTHING
"""


def _spread(t: str) -> str:
    """A book's spread in bps, in float8 from the stored floats (pandas' formula)."""
    return f"({t}.ask - {t}.bid) / (({t}.ask + {t}.bid) / 2) * 10000"


def _imbalance(t: str) -> str:
    """A book's imbalance; null when a size is unknown or both are 0."""
    return (
        f"CASE WHEN {t}.bid_size + {t}.ask_size > 0 "
        f"THEN ({t}.bid_size - {t}.ask_size) / ({t}.bid_size + {t}.ask_size) END"
    )


_EPOCH = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"

# Trade bars of the windows the marked ticks touch (mark_t: see _marks_cte). The LATERAL
# aggregate cannot be flattened, so each window is one index range scan on ticks' primary key
# (series_key, ts, seq), whatever the size of the table; open and close are two more
# probes of that index (first/last by (ts, seq)), cheaper than sorting the window's prices in
# ordered aggregates. $3 and $4 bound all the windows (the client's estimate, widened by a
# window each side): redundant, but with them the planner prunes the partitions at plan time
# instead of planning scans of every partition.
_TRADE_CTES = f"""
win AS (
    SELECT DISTINCT provider, symbol, date_bin($1::interval, ts, {_EPOCH}) AS bucket
    FROM mark_t
), agg AS (
    SELECT w.provider, w.symbol, w.bucket, a.o, a.h, a.l, a.c, a.v, a.pv, a.n
    FROM win w
    CROSS JOIN LATERAL (
        SELECT (SELECT f.price FROM ticks f
                WHERE {_of_series("f", "w")}
                  AND f.ts >= w.bucket AND f.ts < w.bucket + $1::interval
                  AND f.ts >= $3 AND f.ts < $4
                ORDER BY f.ts, f.seq LIMIT 1) AS o,
               max(t.price) AS h,
               min(t.price) AS l,
               (SELECT f.price FROM ticks f
                WHERE {_of_series("f", "w")}
                  AND f.ts >= w.bucket AND f.ts < w.bucket + $1::interval
                  AND f.ts >= $3 AND f.ts < $4
                ORDER BY f.ts DESC, f.seq DESC LIMIT 1) AS c,
               sum(t.size) AS v,
               sum(t.price * t.size) AS pv,
               count(*) AS n
        FROM ticks t
        WHERE {_of_series("t", "w")}
          AND t.ts >= w.bucket AND t.ts < w.bucket + $1::interval
          AND t.ts >= $3 AND t.ts < $4
    ) a
    WHERE a.n > 0
), up AS (
    INSERT INTO bars_ohlcv AS b (provider, symbol, interval, ts, o, h, l, c, v, vwap,
                                 trade_count, revision, updated_at, sum_pv, sum_v)
    SELECT provider, symbol, $2::text, bucket, o::float8, h::float8, l::float8, c::float8,
           v::float8,
           CASE WHEN v > 0 THEN (round(pv, scale(pv) + {VWAP_GUARD_DIGITS}) / v)::float8 END,
           n::int, 0, now(), pv, v
    FROM agg
    ORDER BY provider, symbol, bucket
    ON CONFLICT (provider, symbol, interval, ts) DO UPDATE SET {_BAR_SET},
        sum_pv = EXCLUDED.sum_pv, sum_v = EXCLUDED.sum_v,
        revision = b.revision + 1, updated_at = EXCLUDED.updated_at
    WHERE {_BAR_DISTINCT} OR (b.sum_pv IS NULL AND EXCLUDED.sum_pv IS NOT NULL)
    {_BAR_RETURNING}
)"""

# The windows whose quote bar to recompute: those of the marked quotes and ticks, and those
# whose carried book the marked quotes may change (mark_q: see _marks_cte). A quote at t can
# be the book carried into the windows starting in (t, t + carry], up to the first later quote
# (after which the book no longer comes from it): of those, the windows that exist (with a
# trade or a quote bar).
_QUOTE_WINDOWS_MARKED = f"""
qspan AS (
    SELECT provider, symbol, min(ts) AS t_min, max(ts) AS t_max
    FROM mark_q
    GROUP BY provider, symbol
), qwin AS (
    SELECT provider, symbol, date_bin($1::interval, ts, {_EPOCH}) AS bucket
    FROM mark_q
    {{ticks}}
    UNION
    SELECT s.provider, s.symbol, f.ts
    FROM qspan s
    CROSS JOIN LATERAL (
        SELECT least(
            s.t_max + $5::interval,
            (SELECT n.ts FROM quotes n
             WHERE {_of_series("n", "s")}
               AND n.ts > s.t_max AND n.ts <= s.t_max + $5::interval
               AND n.ts >= $3::timestamptz - $5::interval
               AND n.ts < $4::timestamptz + $5::interval
             ORDER BY n.ts LIMIT 1)
        ) AS reach
    ) r
    CROSS JOIN LATERAL (
        SELECT b.ts FROM bars_ohlcv b
        WHERE b.provider = s.provider AND b.symbol = s.symbol AND b.interval = $2
          AND b.ts > s.t_min AND b.ts <= r.reach
          AND b.ts >= $3 AND b.ts < $4::timestamptz + $5::interval
        UNION
        SELECT b.ts FROM quote_bars b
        WHERE b.provider = s.provider AND b.symbol = s.symbol AND b.interval = $2
          AND b.ts > s.t_min AND b.ts <= r.reach
          AND b.ts >= $3 AND b.ts < $4::timestamptz + $5::interval
    ) f
)"""
_QUOTE_WINDOWS_OF_TICKS = "qwin AS (SELECT provider, symbol, bucket FROM win)"


def whole_us(interval: str) -> str:
    """SQL: the whole microseconds of the (non-negative) SQL interval ``interval``, as float8,
    exactly: the float8 ``date_part('epoch', ...)`` rounded back to whole microseconds (an
    interval is whole microseconds and the float error stays far below 0.5 µs under 30 years),
    without ``extract``'s numeric arithmetic (PostgreSQL 14+ returns numeric), which was ~40 %
    of the quote bar statement's time."""
    return f"round(date_part('epoch', {interval}) * 1000000)"


# Per window, in one pass over its book: the carried book (the last quote before the window,
# at most the carry older than its start, as a state at the start: k = 0) and the window's
# quotes (k = 1), ordered by (ts, k, seq). A row is the book of its instant when the next row
# is at a later instant; it stands until that instant (or the window end): d, in microseconds
# (0 for the other rows, whose next row is at their instant: the book did not hold for any
# time). Sums in that fixed order, so the same quotes give the same bits; the row with no next
# row is the closing book. The ordered sums take no FILTER (a null term is skipped, as a
# filtered row is): with one, PostgreSQL sorts that aggregate's rows again per window instead
# of reading the window function's order (~10 % of the statement's time). d is computed beside
# the window function, in its projection, once per row: as a column of a subquery above it,
# PostgreSQL inlined its expression into each of the four aggregates reading it (~18 % of the
# statement's time).
def _quote_bar_ctes(
    *,
    win: str,
    end: str,
    name: str,
    carry: str,
    quotes_lo: str,
    quotes_hi: str,
    ticks_lo: str,
    ticks_hi: str,
    folded: str | None = None,
) -> str:
    """The CTEs ``qagg`` (the quote bar of every window ``w`` of the CTE ``win``: columns
    provider, symbol, bucket, with ``w.bucket`` its start and the SQL expression ``end`` its
    end) and ``up_q`` (their upsert as interval ``name``, returning what changed). The micro
    quote bars and every rollup level's quote bars are this one computation at their own
    bounds, so a rollup quote bar is the quote bar of all its bucket's quotes, bit for bit.
    ``carry``: the quote carry (an interval); ``quotes_lo``/``quotes_hi`` and
    ``ticks_lo``/``ticks_hi`` bound every quote and tick read (redundant, for plan-time
    partition pruning). ``folded``: a CTE of windows whose aggregates the client folded from
    the batch (see :mod:`market_data_store._quote_fold`; columns provider, symbol, bucket and
    ``FOLD_COLUMNS``), taken as they are beside those aggregated here (``win`` must not
    hold them)."""
    fold_part = ""
    if folded is not None:
        columns = ", ".join(FOLD_COLUMNS)
        fold_part = f"\n    UNION ALL\n    SELECT provider, symbol, bucket, {columns} FROM {folded}"
    return f"""
qagg AS (
    SELECT w.provider, w.symbol, w.bucket, a.*
    FROM {win} w
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE x.k = 1) AS n,
               count(*) FILTER (WHERE x.k = 0) AS carried,
               min(x.sp) FILTER (WHERE x.k = 1) AS smin,
               max(x.sp) FILTER (WHERE x.k = 1) AS smax,
               sum(CASE WHEN x.k = 1 THEN x.sp END ORDER BY x.ts, x.k, x.seq) AS ssum,
               sum(x.sp * x.d ORDER BY x.ts, x.k, x.seq) AS sp_w,
               sum(x.d) AS d_all,
               sum(x.imb * x.d ORDER BY x.ts, x.k, x.seq) AS imb_w,
               sum(x.d) FILTER (WHERE x.imb IS NOT NULL) AS d_imb,
               max(x.bid) FILTER (WHERE x.next_ts IS NULL) AS bid,
               max(x.ask) FILTER (WHERE x.next_ts IS NULL) AS ask,
               max(x.bid_size) FILTER (WHERE x.next_ts IS NULL) AS bid_size,
               max(x.ask_size) FILTER (WHERE x.next_ts IS NULL) AS ask_size
        FROM (
            SELECT z.*, {_spread("z")} AS sp, {_imbalance("z")} AS imb,
                   lead(z.ts) OVER book AS next_ts,
                   {whole_us(f"coalesce(lead(z.ts) OVER book, {end}) - z.ts")} AS d
            FROM (
                (SELECT w.bucket AS ts, 0 AS k, c.seq, c.bid, c.ask, c.bid_size, c.ask_size
                 FROM quotes c
                 WHERE {_of_series("c", "w")}
                   AND c.ts < w.bucket AND c.ts >= w.bucket - {carry}
                   AND c.ts >= {quotes_lo}
                   AND c.ts < {quotes_hi}
                 ORDER BY c.ts DESC, c.seq DESC LIMIT 1)
                UNION ALL
                SELECT q.ts, 1, q.seq, q.bid, q.ask, q.bid_size, q.ask_size
                FROM quotes q
                WHERE {_of_series("q", "w")}
                  AND q.ts >= w.bucket AND q.ts < {end}
                  AND q.ts >= {quotes_lo}
                  AND q.ts < {quotes_hi}
            ) z
            WINDOW book AS (ORDER BY z.ts, z.k, z.seq)
        ) x
    ) a
    WHERE a.n > 0
       OR (a.carried > 0
           AND EXISTS (SELECT 1 FROM ticks t
                       WHERE {_of_series("t", "w")}
                         AND t.ts >= w.bucket AND t.ts < {end}
                         AND t.ts >= {ticks_lo} AND t.ts < {ticks_hi})){fold_part}
), up_q AS (
    INSERT INTO quote_bars AS b (provider, symbol, interval, ts, {", ".join(_QUOTE_COLS)},
                                 revision, updated_at, book_us, imbalance_us)
    SELECT provider, symbol, {name}, bucket, bid, ask, bid_size, ask_size, (bid + ask) / 2,
           n::int, sp_w / d_all, smin, smax, CASE WHEN n > 0 THEN ssum / n END,
           imb_w / nullif(d_imb, 0),
           CASE WHEN bid_size + ask_size > 0
                THEN (bid_size - ask_size) / (bid_size + ask_size) END,
           0, now(), d_all, d_imb
    FROM qagg
    ORDER BY provider, symbol, bucket
    ON CONFLICT (provider, symbol, interval, ts) DO UPDATE SET
        {", ".join(f"{c} = EXCLUDED.{c}" for c in _QUOTE_COLS)},
        book_us = EXCLUDED.book_us, imbalance_us = EXCLUDED.imbalance_us,
        revision = b.revision + 1, updated_at = EXCLUDED.updated_at
    WHERE ({", ".join("b." + c for c in _QUOTE_COLS)})
          IS DISTINCT FROM ({", ".join("EXCLUDED." + c for c in _QUOTE_COLS)})
    RETURNING b.provider, b.symbol, b.interval, b.ts, {", ".join("b." + c for c in _QUOTE_COLS)},
              b.revision, (b.revision = 0) AS inserted
)"""


_QUOTE_BAR_BOUNDS = {
    "end": "w.bucket + $1::interval",
    "name": "$2::text",
    "carry": "$5::interval",
    "quotes_lo": "$3::timestamptz - $5::interval",
    "quotes_hi": "$4::timestamptz + $5::interval",
    "ticks_lo": "$3",
    "ticks_hi": "$4::timestamptz + $5::interval",
}
_QUOTE_BAR_CTES = _quote_bar_ctes(win="qwin", **_QUOTE_BAR_BOUNDS)
# The windows the client folded (parameters $6...: one array per column) and the others.
_FOLD_TYPES = ("text", "text", "timestamptz", "bigint", "bigint", *["float8"] * 11)
_FOLD_NAMES = ("provider", "symbol", "bucket", *FOLD_COLUMNS)
_FOLDED_WINDOWS = f"""
qfold AS (
    SELECT * FROM unnest({", ".join(f"${6 + i}::{t}[]" for i, t in enumerate(_FOLD_TYPES))})
        AS f({", ".join(_FOLD_NAMES)})
), qwin_rest AS (
    SELECT provider, symbol, bucket FROM qwin
    EXCEPT
    SELECT provider, symbol, bucket FROM qfold
)"""
_QUOTE_BAR_CTES_FOLDED = _quote_bar_ctes(win="qwin_rest", folded="qfold", **_QUOTE_BAR_BOUNDS)


def _marks_cte(name: str, first: int) -> str:
    """A CTE ``name (provider, symbol, ts)`` of window marks (see :func:`_marks_params`)
    given as parameters ``$first`` (provider text[]), ``$first+1`` (symbol text[]),
    ``$first+2`` (bigint[] µs since the Unix epoch: exact, as float8 below 2**53, which
    ``interval * float8`` is)."""
    return f"""
{name} AS (
    SELECT provider, symbol, {_EPOCH} + us * interval '1 microsecond' AS ts
    FROM unnest(${first}::text[], ${first + 1}::text[], ${first + 2}::bigint[])
        AS m(provider, symbol, us)
)"""


def _marks_params(cols: EventColumns, rows: npt.NDArray[np.intp] | None = None) -> list[list[Any]]:
    """The three parameters of a :func:`_marks_cte`: provider, symbol and ``src_ts`` (µs) of
    ``rows`` of ``cols`` (all of them when None)."""
    series_idx, src_ts = cols.series_idx, cols.src_ts
    if rows is not None:
        series_idx, src_ts = series_idx[rows], src_ts[rows]
    names = [cols.series[i] for i in series_idx.tolist()]
    return [[p for p, _s in names], [s for _p, s in names], src_ts.tolist()]


def _recompute_sql(*, ticks: bool, quotes: bool, book: bool, folded: bool = False) -> str:
    """The one statement that recomputes, from ALL stored ticks and quotes, the trade bars of
    the windows the marked ticks touch (``ticks``), the quote bars of the windows the marked
    ticks or quotes touch or whose carried book the marked quotes may change (``book``:
    there are quotes within reach; ``quotes``: the batch has some), and records one change
    per window that changed. Parameters: $1 the window, $2 its name, $3/$4 the batch's
    bounds, $5 the quote carry (with ``book``); ``folded`` (with ``quotes``): then the quote
    bar aggregates of the windows the client folded (:data:`_FOLD_TYPES`, one array per
    column), taken instead of computed; then the ticks' window marks (with ``ticks``) and
    the quotes' (with ``quotes``), three arrays each (:func:`_marks_params`; their
    :func:`~market_data_core.columnar.window_marks` are all a recompute needs of its rows).
    Rows: the counts, and each change (the trade and quote bar columns of what this
    statement wrote, null for a part it did not change)."""
    at = (5 if book else 4) + (len(_FOLD_TYPES) if folded else 0) + 1
    ctes = []
    if ticks:
        ctes.append(_marks_cte("mark_t", at))
        at += 3
    if quotes:
        ctes.append(_marks_cte("mark_q", at))
    if ticks:
        ctes.append(_TRADE_CTES)
    if quotes:
        extra = "UNION\n    SELECT provider, symbol, bucket FROM win" if ticks else ""
        ctes.append(_QUOTE_WINDOWS_MARKED.format(ticks=extra))
    elif book:
        ctes.append(_QUOTE_WINDOWS_OF_TICKS)
    if folded:
        assert quotes and book, "only quotes are folded"
        ctes.append(_FOLDED_WINDOWS)
        ctes.append(_QUOTE_BAR_CTES_FOLDED)
    elif book:
        ctes.append(_QUOTE_BAR_CTES)
    trade_cols = (
        "t.o, t.h, t.l, t.c, t.v, t.vwap, t.trade_count, t.revision, t.in_session, t.inserted"
    )
    quote_cols = ", ".join("q." + c for c in _QUOTE_COLS)
    quote_cols += ", q.revision AS quote_revision, q.inserted AS quote_inserted"
    null_trade = ", ".join(f"NULL::{t} AS {c}" for c, t in _TRADE_TYPES) + ", NULL AS inserted"
    null_quote = ", ".join(f"NULL::float8 AS {c}" for c in _QUOTE_COLS if c != "quote_count")
    null_quote += ", NULL::int AS quote_count, NULL::int AS quote_revision"
    null_quote += ", NULL AS quote_inserted"
    joins = ""
    if ticks:
        joins += "\n    LEFT JOIN up t USING (provider, symbol, interval, ts)"
    if book:
        joins += "\n    LEFT JOIN up_q q USING (provider, symbol, interval, ts)"
    return f"""
WITH {", ".join(c.strip() for c in ctes)}
{_log_changes_ctes(trades=ticks, quotes=book, quote_part=book)}
SELECT n.windows, n.quote_windows, x.*
FROM (SELECT {"(SELECT count(*) FROM agg)" if ticks else "0"} AS windows,
             {"(SELECT count(*) FROM qagg)" if book else "0"} AS quote_windows) n
LEFT JOIN (
    SELECT ch.seq AS change_seq, ch.provider, ch.symbol, ch.ts,
           {trade_cols if ticks else null_trade},
           {quote_cols if book else null_quote}
    FROM ch{joins}
) x ON true
"""


_TRADE_TYPES = (
    ("o", "float8"),
    ("h", "float8"),
    ("l", "float8"),
    ("c", "float8"),
    ("v", "float8"),
    ("vwap", "float8"),
    ("trade_count", "int"),
    ("revision", "int"),
    ("in_session", "bool"),
)
# by (ticks marked, quotes marked, quotes within reach)
_RECOMPUTE_SQL = {
    (True, False, False): _recompute_sql(ticks=True, quotes=False, book=False),
    (True, False, True): _recompute_sql(ticks=True, quotes=False, book=True),
    (False, True, True): _recompute_sql(ticks=False, quotes=True, book=True),
    (True, True, True): _recompute_sql(ticks=True, quotes=True, book=True),
}
# by ticks marked: a batch of quotes, some of whose windows the client folded
_RECOMPUTE_FOLDED_SQL = {
    ticks: _recompute_sql(ticks=ticks, quotes=True, book=True, folded=True)
    for ticks in (False, True)
}
# The recompute statements and the probes before them (the quote windows', the end keys', the
# book's) run on the connection's generic plan of their prepared statement, not on a custom
# plan per call: planning one with the batch's bounds as constants prunes every partitioned
# table reference at plan time, which cost more than executing it (a recompute with quotes,
# 9 partitioned references: ~3.8 ms planning per call over one day of partitions, ~18 ms over
# 60 days; the quote windows' probe was planned again on 193 of 189 calls; the generic plan
# prunes the same partitions when the executor starts, and is planned again only when a
# table changes). Set with the series locks, in their round trip. Plans never change the
# stored values: every float sum is ordered or of whole numbers. Only for those statements:
# the rollups keep the server's choice.
_GENERIC_PLANS_SQL = "SET LOCAL plan_cache_mode = force_generic_plan"
_DEFAULT_PLANS_SQL = "SET LOCAL plan_cache_mode TO DEFAULT"
# Before a batch of quotes goes in (inside the writer's transaction, after its series locks):
# per window of the batch's quotes, how many quotes of it the store holds, counted up to one
# more than the client expects ($4: the quotes it stored early there, 0 for the others; a
# window holding more is not counted to its end), and the last stored quote at most the carry
# before its start (the book it carries in). $1-$4 the windows, $5 the window, $6/$7 bounds of
# the windows, $8 the carry.
_QUOTE_WINDOWS_PROBE_SQL = f"""
SELECT (SELECT count(*) FROM (
            SELECT 1 FROM quotes q
            WHERE {_of_series("q", "w")}
              AND q.ts >= w.bucket AND q.ts < w.bucket + $5::interval
              AND q.ts >= $6 AND q.ts < $7
            LIMIT w.expect + 1) x) AS stored,
       c.ts, c.seq, c.bid, c.ask, c.bid_size, c.ask_size
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[]) WITH ORDINALITY
    AS w(provider, symbol, bucket, expect, i)
LEFT JOIN LATERAL (
    SELECT c.ts, c.seq, c.bid, c.ask, c.bid_size, c.ask_size FROM quotes c
    WHERE {_of_series("c", "w")}
      AND c.ts < w.bucket AND c.ts >= w.bucket - $8::interval
      AND c.ts >= $6::timestamptz - $8::interval AND c.ts < $7
    ORDER BY c.ts DESC, c.seq DESC LIMIT 1
) c ON true
ORDER BY w.i
"""
# Is there any quote of the batch's series that could be the book of its windows? (Inside
# the writer's transaction, after its series locks: nobody else writes their quotes.)
_BOOK_IN_REACH_SQL = f"""
SELECT EXISTS (
    SELECT 1 FROM unnest($1::text[], $2::text[]) AS s(provider, symbol)
    CROSS JOIN LATERAL (
        SELECT 1 FROM quotes q
        WHERE {_of_series("q", "s")}
          AND q.ts >= $3::timestamptz - $5::interval AND q.ts < $4
        LIMIT 1
    ) x
)
"""

_MS = "$2::bigint * interval '1 millisecond'"
# the longest stretch between two sessions of a calendar (a 1d bucket's start before its ticks)
_CALENDAR_GAP_DAYS = 14

# Flat bars (micro_batch.rollups.empty_intervals: flat) around the windows a batch touched:
# for each series, from its last window with trades before the first touched window to its
# first window with trades after the last one, every window without trades between two
# windows with trades (inside a session of the series' calendar, if it has one) gets a bar
# carrying the close of the window with trades before it, v = 0, trade_count = 0. A pure
# function of the stored ticks: a window that gets trades later is overwritten by its real
# bar (revision + 1), and the flat bars after it then carry its close (revision + 1 too).
_FILL_SQL = f"""
WITH s AS (
    SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[])
        AS s(provider, symbol, calendar, lo, hi)
), r AS (
    SELECT s.provider, s.symbol, s.calendar,
           coalesce((SELECT b.ts FROM bars_ohlcv b
                     WHERE (b.provider, b.symbol, b.interval) = (s.provider, s.symbol, $1)
                       AND b.ts < s.lo AND b.trade_count > 0
                     ORDER BY b.ts DESC LIMIT 1), s.lo) AS t0,
           coalesce((SELECT b.ts FROM bars_ohlcv b
                     WHERE (b.provider, b.symbol, b.interval) = (s.provider, s.symbol, $1)
                       AND b.ts > s.hi AND b.trade_count > 0
                     ORDER BY b.ts LIMIT 1), s.hi) AS t1
    FROM s
), real AS (
    SELECT r.provider, r.symbol, r.calendar, b.ts, b.c,
           lead(b.ts) OVER (PARTITION BY r.provider, r.symbol ORDER BY b.ts) AS next_ts
    FROM r
    JOIN bars_ohlcv b
      ON (b.provider, b.symbol, b.interval) = (r.provider, r.symbol, $1)
     AND b.ts >= r.t0 AND b.ts <= r.t1 AND b.trade_count > 0
), flat AS (
    SELECT x.provider, x.symbol, g.ts, x.c
    FROM real x
    CROSS JOIN LATERAL generate_series(x.ts + {_MS}, x.next_ts - {_MS}, {_MS}) AS g(ts)
    WHERE x.next_ts IS NOT NULL
      AND (x.calendar IS NULL
           OR EXISTS (SELECT 1 FROM (SELECT t.close FROM trading_sessions t
                                     WHERE t.calendar = x.calendar AND t.open <= g.ts
                                     ORDER BY t.open DESC LIMIT 1) p
                      WHERE g.ts + {_MS} <= p.close))
), up AS (
    INSERT INTO bars_ohlcv AS b (provider, symbol, interval, ts, o, h, l, c, v, vwap,
                                 trade_count, revision, updated_at, sum_pv, sum_v)
    SELECT provider, symbol, $1::text, ts, c, c, c, c, 0, NULL, 0, 0, now(), 0, 0
    FROM flat
    ORDER BY provider, symbol, ts
    ON CONFLICT (provider, symbol, interval, ts) DO UPDATE SET {_BAR_SET},
        sum_pv = EXCLUDED.sum_pv, sum_v = EXCLUDED.sum_v,
        revision = b.revision + 1, updated_at = EXCLUDED.updated_at
    WHERE {_BAR_DISTINCT}
    {_BAR_RETURNING}
){_log_changes_ctes(trades=True, quotes=False, quote_part=True)}
SELECT n.windows, 0::bigint AS quote_windows, x.*
FROM (SELECT (SELECT count(*) FROM flat) AS windows) n
LEFT JOIN (
    SELECT ch.seq AS change_seq, ch.provider, ch.symbol, ch.ts,
           t.o, t.h, t.l, t.c, t.v, t.vwap, t.trade_count, t.revision, t.in_session, t.inserted
    FROM ch JOIN up t USING (provider, symbol, interval, ts)
) x ON true
"""

_ROLLUP_QUOTE_CTES = _quote_bar_ctes(
    win="qk",
    end="w.bucket_end",
    name="$1::text",
    carry="$12::interval",
    quotes_lo="$10::timestamptz - $12::interval",
    quotes_hi="$11::timestamptz",
    ticks_lo="$10",
    ticks_hi="$11",
)

# One rollup level ($1, $2 ms; $3: its buckets are the sessions of the series' calendar, the
# 1d level) recomputed for the bucket of every window ($4..$6) the transaction touched, from
# the bars of the level below ($8, $9 ms: the coarsest lower level whose buckets nest in
# this level's, chosen per calendar). Exact: open/close are those of the first/last bar with
# trades (of a flat bar when the bucket has none), high/low their max/min (floats, exact),
# volume and vwap from the exact numeric sums, converted once like the micro-bars', so a
# rollup bar equals the bar computed directly from all its ticks, bit for bit.
#
# The quote-bar columns are not composed: float sums of partial sums would not be the bits of
# one ordered sum, and a book stands across windows below that have no quote bar. They are
# the micro quote-bar computation (``_quote_bar_ctes``) run over the bucket's own quotes and
# the book carried into it ($12, the quote carry), bit for bit the quote bar of a window that
# long. Only the buckets a batch's quotes ($13..$16: per series, its first and last quote)
# can change are recomputed (those holding one of them, and those starting after them within
# the carry, up to the next stored quote: ``qs``), plus buckets touched that have no quote bar
# yet (trades there may give them the carried book). Others keep theirs: a quote bar depends
# on quotes alone, and only its existence on trades.
#
# A calendar's 1d bucket of a window is its session [open, close), or the stretch between
# two sessions [close, next open) (in_session false); outside the stored sessions, UTC days
# clipped to them. An intraday bucket is epoch-aligned; in_session: it lies inside a session.
# Series without a calendar trade 24/7: UTC days, always in session.
_ROLLUP_SQL = f"""
WITH qs AS (
    SELECT s.*,
           least(s.t_max + $12::interval,
                 (SELECT n.ts FROM quotes n
                  WHERE {_of_series("n", "s")}
                    AND n.ts > s.t_max AND n.ts <= s.t_max + $12::interval
                    AND n.ts >= $10 AND n.ts < $11
                  ORDER BY n.ts LIMIT 1)) AS reach
    FROM unnest($13::text[], $14::text[], $15::timestamptz[], $16::timestamptz[], $17::text[],
                $18::text[], $19::bigint[])
        AS s(provider, symbol, t_min, t_max, calendar, src, src_ms)
), w AS (
    SELECT DISTINCT *
    FROM unnest($4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::text[],
                $9::bigint[]) AS w(provider, symbol, ts, calendar, src, src_ms)
    UNION
    -- a point in every bucket a batch's quotes may change: their first, and every bucket
    -- start after it up to their reach (the epoch grid; a calendar's opens and closes)
    SELECT s.provider, s.symbol, p.ts, s.calendar, s.src, s.src_ms
    FROM qs s
    CROSS JOIN LATERAL (
        SELECT s.t_min AS ts
        UNION ALL
        SELECT g.ts
        FROM generate_series(date_bin({_MS}, s.t_min, {_EPOCH}) + {_MS}, s.reach, {_MS})
            AS g(ts)
        UNION ALL
        SELECT b.ts
        FROM trading_sessions t
        CROSS JOIN LATERAL (VALUES (t.open), (t.close)) AS b(ts)
        WHERE $3 AND t.calendar = s.calendar
          AND t.open > s.t_min - interval '{_CALENDAR_GAP_DAYS} days' AND t.open <= s.reach
          AND b.ts > s.t_min AND b.ts <= s.reach
    ) p
), k AS (
    SELECT DISTINCT w.provider, w.symbol, w.src, w.src_ms, z.bucket, z.bucket_end, z.in_session
    FROM w
    CROSS JOIN LATERAL (
        SELECT date_bin({_MS}, w.ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS e
    ) d
    LEFT JOIN LATERAL (
        SELECT t.open, t.close FROM trading_sessions t
        WHERE t.calendar = w.calendar AND t.open <= w.ts
        ORDER BY t.open DESC LIMIT 1
    ) p ON true
    LEFT JOIN LATERAL (
        SELECT t.open FROM trading_sessions t
        WHERE $3 AND t.calendar = w.calendar AND t.open > w.ts
        ORDER BY t.open LIMIT 1
    ) n ON true
    CROSS JOIN LATERAL (
        SELECT
            CASE WHEN w.calendar IS NULL OR NOT $3 THEN d.e
                 WHEN w.ts < p.close THEN p.open
                 WHEN p.close IS NOT NULL AND n.open IS NOT NULL THEN p.close
                 WHEN p.close IS NOT NULL THEN greatest(p.close, d.e)
                 ELSE d.e END AS bucket,
            CASE WHEN w.calendar IS NULL OR NOT $3 THEN d.e + {_MS}
                 WHEN w.ts < p.close THEN p.close
                 WHEN n.open IS NOT NULL AND p.close IS NOT NULL THEN n.open
                 WHEN n.open IS NOT NULL THEN least(n.open, d.e + {_MS})
                 ELSE d.e + {_MS} END AS bucket_end,
            CASE WHEN w.calendar IS NULL THEN true
                 WHEN $3 THEN coalesce(w.ts < p.close, false)
                 ELSE coalesce(p.open <= d.e AND d.e + {_MS} <= p.close, false) END AS in_session
    ) z
), agg AS (
    SELECT k.provider, k.symbol, k.bucket, k.in_session, a.h, a.l, a.sv, a.spv, a.vf, a.n,
           a.inexact, fo.o, fc.c
    FROM k
    CROSS JOIN LATERAL (
        SELECT count(*) AS bars,
               coalesce(max(t.h) FILTER (WHERE t.trade_count > 0), max(t.h)) AS h,
               coalesce(min(t.l) FILTER (WHERE t.trade_count > 0), min(t.l)) AS l,
               sum(t.sum_v) AS sv, sum(t.sum_pv) AS spv, sum(t.v) AS vf,
               sum(t.trade_count) AS n, count(*) FILTER (WHERE t.sum_pv IS NULL) AS inexact
        FROM bars_ohlcv t
        WHERE (t.provider, t.symbol, t.interval) = (k.provider, k.symbol, k.src)
          AND t.ts >= k.bucket AND t.ts < k.bucket_end
          AND t.ts >= $10 AND t.ts < $11
    ) a
    CROSS JOIN LATERAL (
        SELECT f.o FROM bars_ohlcv f
        WHERE (f.provider, f.symbol, f.interval) = (k.provider, k.symbol, k.src)
          AND f.ts >= k.bucket AND f.ts < k.bucket_end
          AND f.ts >= $10 AND f.ts < $11
        ORDER BY f.trade_count > 0 DESC, f.ts LIMIT 1
    ) fo
    CROSS JOIN LATERAL (
        SELECT f.c FROM bars_ohlcv f
        WHERE (f.provider, f.symbol, f.interval) = (k.provider, k.symbol, k.src)
          AND f.ts >= k.bucket AND f.ts < k.bucket_end
          AND f.ts >= $10 AND f.ts < $11
        ORDER BY f.trade_count > 0 DESC, f.ts DESC LIMIT 1
    ) fc
    WHERE a.bars > 0
), up AS (
    INSERT INTO bars_ohlcv AS b (provider, symbol, interval, ts, o, h, l, c, v, vwap,
                                 trade_count, revision, updated_at, sum_pv, sum_v, in_session)
    SELECT provider, symbol, $1::text, bucket, o, h, l, c,
           CASE WHEN inexact = 0 THEN sv::float8 ELSE vf END,
           CASE WHEN inexact = 0 AND sv > 0
                THEN (round(spv, scale(spv) + {VWAP_GUARD_DIGITS}) / sv)::float8 END,
           n::int, 0, now(),
           CASE WHEN inexact = 0 THEN spv END, CASE WHEN inexact = 0 THEN sv END, in_session
    FROM agg
    ORDER BY provider, symbol, bucket
    ON CONFLICT (provider, symbol, interval, ts) DO UPDATE SET {_BAR_SET},
        sum_pv = EXCLUDED.sum_pv, sum_v = EXCLUDED.sum_v, in_session = EXCLUDED.in_session,
        revision = b.revision + 1, updated_at = EXCLUDED.updated_at
    WHERE {_BAR_DISTINCT} OR b.in_session IS DISTINCT FROM EXCLUDED.in_session
    {_BAR_RETURNING}
), qk AS (
    SELECT k.provider, k.symbol, k.bucket, k.bucket_end
    FROM k
    WHERE EXISTS (SELECT 1 FROM qs
                  WHERE (qs.provider, qs.symbol) = (k.provider, k.symbol)
                    AND qs.t_min < k.bucket_end AND qs.reach >= k.bucket)
       OR NOT EXISTS (SELECT 1 FROM quote_bars e
                      WHERE (e.provider, e.symbol, e.interval, e.ts)
                          = (k.provider, k.symbol, $1, k.bucket))
), {_ROLLUP_QUOTE_CTES.strip()}{_log_changes_ctes(trades=True, quotes=True, quote_part=True)}
SELECT n.windows, n.quote_windows, x.*
FROM (SELECT (SELECT count(*) FROM agg) AS windows,
             (SELECT count(*) FROM qagg) AS quote_windows) n
LEFT JOIN (
    SELECT ch.seq AS change_seq, ch.provider, ch.symbol, ch.ts,
           t.o, t.h, t.l, t.c, t.v, t.vwap, t.trade_count, t.revision, t.in_session, t.inserted,
           {", ".join("q." + c for c in _QUOTE_COLS)}, q.revision AS quote_revision,
           q.inserted AS quote_inserted
    FROM ch
    LEFT JOIN up t USING (provider, symbol, interval, ts)
    LEFT JOIN up_q q USING (provider, symbol, interval, ts)
) x ON true
"""

_SYNC_SESSIONS_SQL = """
WITH up AS (
    INSERT INTO trading_sessions AS t (calendar, session, open, close)
    SELECT $1::text, s, o, c
    FROM unnest($2::date[], $3::timestamptz[], $4::timestamptz[]) AS x(s, o, c)
    ON CONFLICT (calendar, session) DO UPDATE SET open = EXCLUDED.open, close = EXCLUDED.close
    WHERE (t.open, t.close) IS DISTINCT FROM (EXCLUDED.open, EXCLUDED.close)
    RETURNING 1
)
SELECT count(*) FROM up
"""

# One relay at a time, across processes: a transaction-scoped advisory lock of its own.
_RELAY_LOCK_NAMESPACE = 0x6D6472
_RELAY_LOCK_SQL = "SELECT pg_try_advisory_xact_lock($1::int4, 0)"
_RELAY_READ_SQL = f"""
SELECT id, provider, symbol, interval, seq, ts, o, h, l, c, v, vwap, trade_count, revision,
       in_session, {", ".join(_QUOTE_COLS)}, quote_revision
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

# Every window of a series in a range: trade bars with their quote bar, and quote bars alone.
WINDOWS_SQL = f"""
SELECT coalesce(b.provider, q.provider) AS provider, coalesce(b.symbol, q.symbol) AS symbol,
       coalesce(b.interval, q.interval) AS interval, coalesce(b.ts, q.ts) AS ts,
       b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count, b.revision, b.in_session,
       {", ".join("q." + c for c in _QUOTE_COLS)}, q.revision AS quote_revision
FROM (SELECT * FROM bars_ohlcv
      WHERE provider = $1 AND symbol = $2 AND interval = $3 AND ts >= $4 AND ts < $5) b
FULL JOIN (SELECT * FROM quote_bars
           WHERE provider = $1 AND symbol = $2 AND interval = $3 AND ts >= $4 AND ts < $5) q
       USING (provider, symbol, interval, ts)
ORDER BY 4
"""
_QUOTE_BARS_RANGE_SQL = f"""
SELECT provider, symbol, interval, ts, {", ".join(_QUOTE_COLS)}, revision AS quote_revision
FROM quote_bars
WHERE provider = $1 AND symbol = $2 AND interval = $3 AND ts >= $4 AND ts < $5
ORDER BY ts
"""

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
    SELECT provider, symbol, interval, ts, o, h, l, c, v, vwap, trade_count, revision, in_session
    FROM bars_ohlcv b
    WHERE b.provider = s.provider AND b.symbol = s.symbol AND b.interval = $1
    ORDER BY b.ts DESC
    LIMIT $2
) x
ORDER BY x.provider, x.symbol, x.ts
"""

# As _LATEST_BARS_SQL, over quote_bars.
_LATEST_QUOTE_BARS_SQL = f"""
WITH RECURSIVE series AS (
    (SELECT provider, symbol FROM quote_bars ORDER BY provider, symbol LIMIT 1)
    UNION ALL
    SELECT n.provider, n.symbol
    FROM series s
    CROSS JOIN LATERAL (
        SELECT b.provider, b.symbol FROM quote_bars b
        WHERE (b.provider, b.symbol) > (s.provider, s.symbol)
        ORDER BY b.provider, b.symbol LIMIT 1
    ) n
)
SELECT x.*
FROM series s
CROSS JOIN LATERAL (
    SELECT provider, symbol, interval, ts, {", ".join(_QUOTE_COLS)}, revision AS quote_revision
    FROM quote_bars b
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


def _bar_from_row(
    row: Any,
    interval: str | None = None,
    change_seq: int | None = None,
    quote: QuoteBar | None = None,
) -> Bar:
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
        quote=quote,
        in_session=row.get("in_session"),
    )


def quote_bar_from_row(
    row: Any, interval: str | None = None, change_seq: int | None = None
) -> QuoteBar:
    """A :class:`QuoteBar` from a row with the quote bar columns (its revision as
    ``quote_revision``)."""
    return QuoteBar(
        provider=row["provider"],
        symbol=row["symbol"],
        interval=interval if interval is not None else row["interval"],
        ts=row["ts"],
        bid=row["bid"],
        ask=row["ask"],
        bid_size=row["bid_size"],
        ask_size=row["ask_size"],
        mid=row["mid"],
        quote_count=row["quote_count"],
        spread_bps=row["spread_bps"],
        spread_bps_min=row["spread_bps_min"],
        spread_bps_max=row["spread_bps_max"],
        spread_bps_mean=row["spread_bps_mean"],
        imbalance=row["imbalance"],
        imbalance_close=row["imbalance_close"],
        revision=row["quote_revision"],
        change_seq=change_seq,
    )


def window_from_row(row: Any, change_seq: int | None = None) -> WindowBar:
    """A window from a row with the trade bar and the quote bar columns (either part null):
    its :class:`Bar` with the quote bar attached, or its :class:`QuoteBar` alone."""
    quote = None if row["bid"] is None else quote_bar_from_row(row)
    if row["o"] is None:
        assert quote is not None, "a window change without a trade or a quote bar"
        return quote_bar_from_row(row, change_seq=change_seq)
    return _bar_from_row(row, change_seq=change_seq, quote=quote)


def _days(epoch_us: npt.NDArray[np.int64]) -> set[date]:
    """The UTC days of some event times."""
    return {from_epoch_us(int(day) * _DAY_US).date() for day in np.unique(epoch_us // _DAY_US)}


def _latest_per_day(epoch_us: npt.NDArray[np.int64]) -> dict[date, datetime]:
    """The latest of some event times on each UTC day."""
    days = epoch_us // _DAY_US
    order = np.argsort(days, kind="stable")
    distinct, first = np.unique(days[order], return_index=True)
    latest = np.maximum.reduceat(epoch_us[order], first)
    return {
        from_epoch_us(int(d) * _DAY_US).date(): from_epoch_us(int(t))
        for d, t in zip(distinct.tolist(), latest.tolist(), strict=True)
    }


def _windows_of(cols: EventColumns, window_us: int) -> set[tuple[str, str, int]]:
    """``(provider, symbol, window start in µs)`` of every window the rows fall in."""
    starts = cols.src_ts - cols.src_ts % window_us
    pairs = np.unique(np.stack((cols.series_idx.astype(np.int64), starts)), axis=1)
    return {
        (*cols.series[s], start)
        for s, start in zip(pairs[0].tolist(), pairs[1].tolist(), strict=True)
    }


def _spans(cols: EventColumns) -> dict[tuple[str, str], tuple[datetime, datetime]]:
    """The first and last event time of each series of ``cols``."""
    out: dict[tuple[str, str], tuple[datetime, datetime]] = {}
    for s in np.unique(cols.series_idx).tolist():
        times = cols.src_ts[cols.series_idx == s]
        out[cols.series[s]] = (from_epoch_us(int(times.min())), from_epoch_us(int(times.max())))
    return out


def _bar_days(tick_days: set[date], window_ms: int) -> set[date]:
    """UTC days of the window starts of ticks on ``tick_days`` (a window that starts before
    midnight holds ticks of the next day when the interval does not divide a day)."""
    days = set(tick_days)
    if _DAY_US % (window_ms * 1000):
        for d in tick_days:
            midnight_us = to_epoch_us(datetime(d.year, d.month, d.day, tzinfo=UTC))
            days.add(from_epoch_us(window_start_us(midnight_us, window_ms)).date())
    return days


def _fold(
    windows: QuoteWindows | None,
    candidates: list[int],
    probe: list[Any],
    window_us: int,
    carry_us: int,
) -> list[list[Any]] | None:
    """The parameters of :data:`_FOLDED_WINDOWS` (one list per column) for the windows of
    ``windows`` whose stored quotes the probe (one row per window of ``candidates``) found to
    be exactly the early ones of ``windows`` (none, for most), or None when there is none."""
    assert windows is not None
    fresh = [
        i for i, r in zip(candidates, probe, strict=True) if r["stored"] == int(windows.n_early[i])
    ]
    if not fresh:
        return None
    books: list[StoredBook | None] = [None] * windows.n
    for i, r in zip(candidates, probe, strict=True):
        if r["ts"] is not None:
            books[i] = (
                to_epoch_us(r["ts"]),
                r["seq"],
                r["bid"],
                r["ask"],
                r["bid_size"],
                r["ask_size"],
            )
    columns = fold_windows(windows, window_us, carry_us, fresh, books)
    columns[2] = [from_epoch_us(b) for b in columns[2]]
    return columns


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


class _StoredKeyInBatch(Exception):
    """A fast-path COPY met an already stored key inside its batch (the batch's first and
    last keys were new): the writer rolls its transaction back and runs it again with
    ``careful`` (see :func:`_insert_ticks_and_quotes`)."""


def _end_keys(cols: EventColumns) -> list[Any]:
    """The first and last row's key, flat: provider, symbol, ts, seq, twice."""
    ends: list[Any] = []
    for i in (0, cols.n - 1):
        ends += [
            *cols.series[int(cols.series_idx[i])],
            from_epoch_us(int(cols.src_ts[i])),
            int(cols.seq[i]),
        ]
    return ends


async def _insert_ticks_and_quotes(
    conn: Any,
    ticks: EventColumns,
    quotes: EventColumns,
    keys: Mapping[tuple[str, str], int],
    *,
    careful: bool = False,
) -> tuple[int, int, dict[str, int]]:
    """Insert raw ticks and quotes (unique keys) into their tables; returns the new ticks,
    the new quotes, and the rows left in each staging table (for :func:`_empty_stages`).
    ``keys``: the ``series_key`` of each series with rows (the client's registry).

    Fast path, a kind whose rows are all new (live data): COPY straight into the table,
    nothing staged. One statement probes each kind's first and last key, so replays take
    the slow path at once: the kind's rows staged, then ``INSERT ... ON CONFLICT DO
    NOTHING``. An already stored key in the middle aborts a fast COPY: this raises
    :class:`_StoredKeyInBatch`, and the writer runs its transaction again with ``careful``
    (every kind the slow path). No savepoint around the COPYs: two round trips less per
    call for a batch that is rare (its ends new, a key between them stored). Writers of one
    series are serialised by their advisory locks, so the COPY never waits on another
    writer's keys. Rows without ``ingest_ts`` get the table's default, ``now()``, as the
    INSERT's ``coalesce(ingest_ts, now())`` gives them. (The bar recompute after it reads
    the rows' window marks from its parameters, not from a staging table: see
    :func:`_recompute_sql`.)

    Every ``COPY`` payload goes to asyncpg as a ``memoryview`` (see :func:`_copy_rows`),
    never a file object: for a file object asyncpg defines a reader class per call,
    a reference cycle holding the file, so each payload (megabytes per commit) stayed alive
    until the next full garbage collection (under the streaming stages' paced collector, up
    to a minute: a worker's RSS rose ~1 MiB/s between them), and was read back in 512 KiB
    chunks on a thread."""
    kinds = [
        (TICKS, ticks, _ANY_TICK_EXISTS_SQL, _INSERT_TICKS_SQL),
        (QUOTES, quotes, _ANY_QUOTE_EXISTS_SQL, _INSERT_QUOTES_SQL),
    ]
    with_rows = [k for k in kinds if k[1].n]
    if careful or not with_rows:
        known = [True] * len(with_rows)
    elif len(with_rows) == 2:
        row = await conn.fetchrow(
            _ANY_TICK_OR_QUOTE_EXISTS_SQL, *_end_keys(ticks), *_end_keys(quotes)
        )
        known = [bool(row[0]), bool(row[1])]
    else:
        raw_cols = with_rows[0][1]
        known = [bool(await conn.fetchval(with_rows[0][2], *_end_keys(raw_cols)))]
    inserted = {TICKS.table: 0, QUOTES.table: 0}
    staged = {TICKS.stage: 0, QUOTES.stage: 0}
    for (raw, cols, _, insert_sql), stored_end in zip(with_rows, known, strict=True):
        if not stored_end:
            try:
                await _copy_new(conn, raw, cols, keys)
            except asyncpg.UniqueViolationError as exc:  # a stored key in the middle
                raise _StoredKeyInBatch from exc
            inserted[raw.table] = cols.n
        else:
            encode = functools.partial(raw.copy, keys=keys)
            await _copy_rows(conn, raw.stage, encode, cols, raw.columns)
            status = await conn.execute(insert_sql)
            inserted[raw.table] = int(status.rsplit(" ", 1)[-1])
            staged[raw.stage] = cols.n
    return inserted[TICKS.table], inserted[QUOTES.table], staged


async def _copy_new(
    conn: Any, raw: RawTable, cols: EventColumns, keys: Mapping[tuple[str, str], int]
) -> None:
    """COPY rows of new keys straight into their table: those with an ``ingest_ts`` with
    it, the others without it (the table's default stamps them)."""
    has_ingest = cols.has("ingest_ts")
    for part, stamped in ((has_ingest, True), (~has_ingest, False)):
        if part.all():
            rows = cols
        elif part.any():
            rows = cols.take(part)
        else:
            continue
        await _copy_rows(
            conn,
            raw.table,
            functools.partial(raw.copy, keys=keys, ingest_ts=stamped),
            rows,
            raw.column_names(ingest_ts=stamped),
        )


# The longest COPY payload the store sends in one statement. asyncpg sends a buffer given to
# ``copy_to_table`` as ONE CopyData message, and PostgreSQL refuses a message over 1 GiB
# (PQ_LARGE_MESSAGE_LIMIT: "invalid message length", then it closes the connection, which the
# store would take for an outage and retry for ever). Not a stream of smaller messages (an
# async iterable or a file object): asyncpg then waits for the socket to drain before each
# one, and a connection lost during that wait leaves the COPY waiting for ever.
_COPY_MESSAGE_BYTES = 16 << 20


async def _copy_rows(
    conn: Any,
    table: str,
    encode: Callable[[EventColumns], bytes],
    cols: EventColumns,
    columns: Sequence[str],
) -> None:
    """``COPY table (columns) FROM STDIN (FORMAT binary)`` of the rows of ``cols`` as
    ``encode`` writes them: one statement if the payload is at most ``_COPY_MESSAGE_BYTES``,
    else one per run of consecutive rows that fits (a longer single row alone), each payload
    sent as one ``memoryview`` (``bytes`` would be taken for a path)."""
    payload = encode(cols)
    if len(payload) <= _COPY_MESSAGE_BYTES or cols.n == 1:
        await conn.copy_to_table(
            table, source=memoryview(payload), columns=columns, format="binary"
        )
        return
    step = -(-cols.n // (len(payload) // _COPY_MESSAGE_BYTES + 1))
    del payload
    for start in range(0, cols.n, step):  # a run still too long (longer rows) is split again
        await _copy_rows(conn, table, encode, cols.slice(start, start + step), columns)


_DAY_MS = 86_400_000
_LAST_TRADED_SQL = """
SELECT min(x.ts) FROM unnest($1::text[], $2::text[]) AS s(provider, symbol)
CROSS JOIN LATERAL (
    SELECT b.ts FROM bars_ohlcv b
    WHERE (b.provider, b.symbol, b.interval) = (s.provider, s.symbol, $3) AND b.ts < $4
      AND b.trade_count > 0
    ORDER BY b.ts DESC LIMIT 1
) x
"""


async def _roll_up(
    conn: Any,
    plan: RollupPlan,
    interval: str,
    window_ms: int,
    touched: set[tuple[str, str, int]],
    carry: timedelta,
    quote_spans: dict[tuple[str, str], tuple[datetime, datetime]],
) -> list[tuple[str, Any]]:
    """The flat bars and every rollup level of the windows ``touched`` ((provider, symbol,
    window start in µs)), in this transaction; returns ``(interval, row)`` of each statement's
    rows (changes, and the counts of windows recomputed). ``quote_spans``: the batch's first
    and last quote time per (provider, symbol) (its quotes' buckets, and those their book is
    carried into within ``carry``, get their quote bars recomputed at every level)."""
    out: list[tuple[str, Any]] = []
    if plan.empty_intervals == "flat":
        spans: dict[tuple[str, str], tuple[int, int]] = {}
        for p, s, us in touched:
            lo, hi = spans.get((p, s), (us, us))
            spans[(p, s)] = (min(lo, us), max(hi, us))
        rows = await conn.fetch(
            _FILL_SQL,
            interval,
            window_ms,
            [k[0] for k in spans],
            [k[1] for k in spans],
            [plan.calendars.get(k[1]) for k in spans],
            [from_epoch_us(v[0]) for v in spans.values()],
            [from_epoch_us(v[1]) for v in spans.values()],
        )
        out += [(interval, r) for r in rows]
        touched = touched | {
            (r["provider"], r["symbol"], to_epoch_us(r["ts"]))
            for r in rows
            if r["provider"] is not None
        }
    windows = sorted(touched)
    providers = [w[0] for w in windows]
    symbols = [w[1] for w in windows]
    starts = [from_epoch_us(w[2]) for w in windows]
    calendars = [plan.calendars.get(s) for s in symbols]
    if not windows:
        return out
    first, last = min(starts), max(starts)
    span_keys = list(quote_spans)
    span_calendars = [plan.calendars.get(k[1]) for k in span_keys]
    for level in plan.intervals:
        level_ms = _interval_ms(level)
        sources = [plan.source_of(c, level) for c in calendars]
        # a bucket starts at most a level (a calendar's 1d: the longest stretch between two
        # sessions) before its windows and ends as far after them
        pad = timedelta(
            days=_CALENDAR_GAP_DAYS
            if level_ms == _DAY_MS and any(c is not None for c in calendars)
            else 0,
            milliseconds=level_ms,
        )
        span_sources = [plan.source_of(c, level) for c in span_calendars]
        rows = await conn.fetch(
            _ROLLUP_SQL,
            level,
            level_ms,
            level_ms == _DAY_MS,
            providers,
            symbols,
            starts,
            calendars,
            sources,
            [_interval_ms(src) for src in sources],
            first - pad,
            # the buckets a carried book reaches start up to the carry after the last quote
            last + pad + carry + timedelta(milliseconds=window_ms),
            carry,
            [k[0] for k in span_keys],
            [k[1] for k in span_keys],
            [v[0] for v in quote_spans.values()],
            [v[1] for v in quote_spans.values()],
            span_calendars,
            span_sources,
            [_interval_ms(src) for src in span_sources],
        )
        out += [(level, r) for r in rows]
    return out


def _rollup_counts(rolled: list[tuple[str, Any]]) -> UpsertResult:
    """What the rollup statements did: windows whose trade or quote bar is new (inserted) or
    changed (updated), and the rest of the buckets they recomputed (unchanged)."""
    buckets: dict[str, int] = {}
    inserted = updated = 0
    for level, r in rolled:
        buckets[level] = max(int(r["windows"]), int(r["quote_windows"]))
        if r["provider"] is None:
            continue
        if r["inserted"] or (r["inserted"] is None and r.get("quote_inserted")):
            inserted += 1
        else:
            updated += 1
    unchanged = max(0, sum(buckets.values()) - inserted - updated)
    return UpsertResult(inserted=inserted, updated=updated, unchanged=unchanged)


async def _empty_stages(conn: Any, staged: dict[str, int]) -> None:
    """Empty the staging tables that hold rows, in one round trip (simple query protocol:
    the statements separated by ``;``)."""
    statements = [
        f"TRUNCATE {stage}" if n >= _TRUNCATE_STAGE_MIN_ROWS else f"DELETE FROM {stage}"
        for stage, n in staged.items()
        if n
    ]
    if statements:
        await conn.execute("; ".join(statements))


def _first_of_each_key(events: EventColumns) -> tuple[EventColumns, EventColumns, EventColumns]:
    """The first row of each key ``(series, src_ts, seq)`` (what ``event_id`` encodes) in row
    order, and of them the ticks and the quotes."""
    unique = events.take(
        first_occurrences(events.series_idx.astype(np.int64), events.src_ts, events.seq)
    )
    ticks = unique.take(unique.kind == KIND_CODES["tick"])
    quotes = unique.take(unique.kind == KIND_CODES["quote"])
    return unique, ticks, quotes


class PgStoreClient(PgClientBase):
    """asyncpg implementation of ``StoreClient``. Create with ``await PgStoreClient.connect``.

    Failure semantics: each call is one transaction; on any error nothing of it is visible.
    Transient failures raise ``StoreUnavailableError`` and the next call, once the server is
    back, reconnects by itself; everything else raises ``StoreError``.
    """

    #: Fold the quote bars of fresh windows from the batch (:mod:`market_data_store.
    #: _quote_fold`: the same bits as the recompute, at a fraction of its cost); False: every
    #: quote bar recomputed by the statement (the reference the fold is tested against).
    fold_quotes: bool = True

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
        self,
        ticks: Sequence[StreamEvent],
        *,
        interval: str,
        quote_carry_ms: int = DEFAULT_QUOTE_CARRY_MS,
    ) -> TickIngestResult:
        """:meth:`ingest_events` for trade ticks only (a quote or a bar is a ``StoreError``)."""
        bad = next((e for e in ticks if e.kind != "tick"), None)
        if bad is not None:
            raise StoreError(f"ingest_ticks got a {bad.kind} event ({bad.event_id})")
        return await self.ingest_events(ticks, interval=interval, quote_carry_ms=quote_carry_ms)

    async def ingest_events(
        self,
        events: Sequence[StreamEvent],
        *,
        interval: str,
        quote_carry_ms: int = DEFAULT_QUOTE_CARRY_MS,
        rollups: RollupPlan | None = None,
    ) -> TickIngestResult:
        """Store trade ticks and quotes (idempotent by ``event_id``; of duplicates in the
        batch the last one counts) and recompute their bars: :meth:`ingest_columns` of the
        events. Raises ``StoreError`` for a provider bar."""
        bad = next((e for e in events if e.kind == "bar"), None)
        if bad is not None:
            raise StoreError(f"ingest_events got a bar event ({bad.event_id})")
        unique = {e.event_id: e for e in events}
        try:
            cols = columns_from_events(unique.values())
        except ValueError as exc:  # a seq beyond bigint: the table cannot hold it
            raise StoreError(f"ingest_events: {exc}") from None
        return await self.ingest_columns(
            cols, interval=interval, quote_carry_ms=quote_carry_ms, rollups=rollups
        )

    async def store_raw(self, events: EventColumns) -> TickIngestResult:
        """Store raw ticks and quotes given as columns (as :meth:`ingest_columns` does,
        idempotent by ``event_id``, the first of rows with one key counting) WITHOUT
        recomputing a bar: for a writer that stores the events of a window while it is still
        open, and recomputes its bars once it closes (``ingest_columns(..., stored=...)``).
        One transaction, serialised per series. Returns the new ticks and quotes (no bars).
        Raises ``StoreError`` for a provider bar."""
        if events.n == 0:
            return TickIngestResult(ticks_inserted=0)
        if np.any(events.kind == KIND_CODES["bar"]):
            raise StoreError("store_raw got a bar event")
        unique, ticks, quotes = _first_of_each_key(events)
        present = np.unique(unique.series_idx)
        locks = series_lock_keys([unique.series[int(i)] for i in present])

        async def attempt(careful: bool) -> tuple[int, int]:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(LOCK_SQL, SERIES_LOCK_NAMESPACE, locks)
                ticks_in, quotes_in, staged = await _insert_ticks_and_quotes(
                    conn, ticks, quotes, self._series.keys, careful=careful
                )
                await _empty_stages(conn, staged)
            return ticks_in, quotes_in

        async def write() -> tuple[int, int]:
            try:
                return await attempt(careful=False)
            except _StoredKeyInBatch:
                return await attempt(careful=True)

        partitions: list[tuple[str, Iterable[date]]] = []
        if ticks.n:
            partitions.append(("ticks", _days(ticks.src_ts)))
        if quotes.n:
            partitions.append(("quotes", _days(quotes.src_ts)))
        with translate_errors("store_raw"):
            ticks_inserted, quotes_inserted = await self._write(
                partitions, write, series=[unique.series[int(i)] for i in present]
            )
        return TickIngestResult(ticks_inserted=ticks_inserted, quotes_inserted=quotes_inserted)

    async def ingest_columns(
        self,
        events: EventColumns,
        *,
        interval: str,
        quote_carry_ms: int = DEFAULT_QUOTE_CARRY_MS,
        rollups: RollupPlan | None = None,
        stored: EventColumns | None = None,
        early_quotes: EventColumns | None = None,
    ) -> TickIngestResult:
        """Store trade ticks and quotes given as columns (valid rows, as
        :func:`~market_data_core.columnar.decode_blocks` returns them; idempotent by
        ``event_id``: of rows with the same key the first one counts) and recompute, in the
        same transaction, the ``interval`` trade bars of every epoch-aligned window
        ``[k*w, (k+1)*w)`` the ticks touch from all stored ticks of that window (open/close =
        first/last by ``(ts, seq)``), and the quote bars (see
        :class:`~market_data_core.contracts.QuoteBar`) of every window the events touch or
        whose carried book the quotes may change (windows starting within ``quote_carry_ms``
        after a quote, up to the next stored quote) from all stored quotes. Windows of
        duplicate-only events are recomputed too (unchanged unless the stored bar was wrong),
        so a replay at a new interval still produces its bars. Returns the new ticks and
        quotes and the bars and quote bars inserted or changed (with their new ``revision``
        and their window's ``change_seq``). ``stored``: rows a :meth:`store_raw` call already
        stored (only their windows matter): their windows are recomputed too, as if they were
        in ``events``. ``early_quotes``: quotes :meth:`store_raw` stored in calls that inserted
        every quote they were given (``quotes_inserted`` equal to their quotes), for windows of
        this batch (they count as ``stored`` too): a window whose stored quotes are, under the
        series lock, exactly as many as its early quotes here holds just those and the batch's,
        and its quote bar is folded from them (see :mod:`market_data_store._quote_fold`); any
        other window is recomputed by the statement. Raises ``StoreError`` for a provider bar.

        With ``rollups`` (see the core ``StoreClient``): then, in the same transaction, the
        flat bars of the empty-interval policy around the windows touched (``_FILL_SQL``),
        then one statement per level, ascending, recomputing the level's bucket of every
        window touched from the level below (``_ROLLUP_SQL``): each sees the rows the
        statements before it wrote. Windows touched are those of the events (duplicates
        included: a replay re-derives rollups that are missing, and changes nothing else),
        those of ``stored``, and those whose bars changed."""
        window_ms = _interval_ms(interval)
        if quote_carry_ms < 0:
            raise StoreError(f"quote_carry_ms must be >= 0, got {quote_carry_ms}")
        if early_quotes is not None and early_quotes.n:
            is_quote = early_quotes.kind == KIND_CODES["quote"]
            if not is_quote.all():
                early_quotes = early_quotes.take(is_quote)
            # their windows are recomputed as ``stored``'s (the first and last of each suffice)
            marks = early_quotes.take(window_marks(early_quotes, window_ms * 1000))
            stored = marks if stored is None else EventColumns.concat([stored, marks])
        else:
            early_quotes = None
        if stored is not None and stored.n:
            # every row of a window the store has seen, for the ranges, days and locks below
            every = EventColumns.concat([events, stored]) if events.n else stored
        else:
            stored, every = None, events
        if every.n == 0:
            return TickIngestResult(ticks_inserted=0)
        if np.any(every.kind == KIND_CODES["bar"]):
            raise StoreError("ingest_columns got a bar event")
        unique, ticks, quotes = _first_of_each_key(events)
        window_us = window_ms * 1000
        if stored is not None:
            kept_ticks = stored.take(stored.kind == KIND_CODES["tick"])
            kept_quotes = stored.take(stored.kind == KIND_CODES["quote"])
            kept_ticks = kept_ticks.take(window_marks(kept_ticks, window_us))
            kept_quotes = kept_quotes.take(window_marks(kept_quotes, window_us))
        else:
            kept_ticks = kept_quotes = every.take(np.zeros(0, np.intp))
        first_us, last_us = int(every.src_ts.min()), int(every.src_ts.max())
        tick_days = _days(ticks.src_ts) | _days(kept_ticks.src_ts)
        quote_days = _days(quotes.src_ts) | _days(kept_quotes.src_ts)
        event_days = tick_days | quote_days
        carry = timedelta(milliseconds=quote_carry_ms)
        # quote bars: the events' windows and those their quotes' carried book reaches (from
        # each quote's day to the day of its time + carry; per day, not over the whole batch,
        # whose series may lie years apart: a replay beside a live source)
        quote_bar_days = _bar_days(event_days, window_ms)
        if quotes.n or kept_quotes.n:
            quote_times = np.concatenate((quotes.src_ts, kept_quotes.src_ts))
            for day, ts in _latest_per_day(quote_times).items():
                reach_day = (ts + carry).date()
                quote_bar_days |= {
                    day + timedelta(days=k) for k in range((reach_day - day).days + 1)
                }
        present = np.unique(every.series_idx)
        series = [every.series[int(i)] for i in present]
        locks = series_lock_keys(series)
        providers = [p for p, _ in series]
        symbols = [s for _, s in series]
        stride = timedelta(milliseconds=window_ms)
        lo = from_epoch_us(window_start_us(first_us, window_ms)) - stride
        hi = from_epoch_us(window_start_us(last_us, window_ms)) + 2 * stride
        has_ticks = bool(ticks.n or kept_ticks.n)
        has_quotes = bool(quotes.n or kept_quotes.n)
        # the recompute's parameters: each kind's window marks, the batch's and those of rows
        # stored before (whose windows are recomputed the same)
        mark_args: list[list[Any]] = []
        for present_kind, batch, kept in (
            (has_ticks, ticks, kept_ticks),
            (has_quotes, quotes, kept_quotes),
        ):
            if present_kind:
                own = _marks_params(batch, window_marks(batch, window_us))
                more = _marks_params(kept)
                mark_args += [a + b for a, b in zip(own, more, strict=True)]
        plan = rollups if rollups is not None and rollups.active else None
        # the rows the roll-ups start from (the batch's and those stored before)
        seen = EventColumns.concat([unique, kept_ticks, kept_quotes]) if plan else unique
        quote_spans = _spans(seen.take(seen.kind == KIND_CODES["quote"])) if plan else {}
        rolled: list[tuple[str, Any]] = []
        # quote windows whose bar may be folded: those of the batch's quotes and the early ones
        # given, unless they hold quotes stored early and not given (``stored``: no need to ask)
        fold_in = quotes
        if early_quotes is not None:
            fold_in = EventColumns.concat([early_quotes, quotes]) if quotes.n else early_quotes
        windows = None
        if fold_in.n and self.fold_quotes:
            n_early = early_quotes.n if early_quotes is not None else 0
            windows = quote_windows(fold_in, window_us, n_early)
            if not windows.unique:  # an early quote given twice, or also in the batch
                windows = None
        candidates: list[int] = []
        probe_args: tuple[list[str], list[str], list[datetime], list[int]] = ([], [], [], [])
        if windows is not None:
            early = {
                (kept_quotes.series[s], t - t % window_us)
                for s, t in zip(
                    kept_quotes.series_idx.tolist(), kept_quotes.src_ts.tolist(), strict=True
                )
            }
            names = [windows.series[s] for s in windows.series_idx.tolist()]
            buckets = windows.bucket_us.tolist()
            expect = windows.n_early.tolist()
            candidates = [
                i for i, b in enumerate(buckets) if expect[i] or (names[i], b) not in early
            ]
            probe_args = (
                [names[i][0] for i in candidates],
                [names[i][1] for i in candidates],
                [from_epoch_us(buckets[i]) for i in candidates],
                [expect[i] for i in candidates],
            )

        async def attempt(careful: bool) -> tuple[int, int, list[Any]]:
            rolled.clear()
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    # the series locks, and every statement after them on generic plans (see
                    # _GENERIC_PLANS_SQL), in one round trip
                    await conn.execute(f"{lock_sql_literal(locks)}; {_GENERIC_PLANS_SQL}")
                    probe = None
                    if candidates:
                        probe = await conn.fetch(
                            _QUOTE_WINDOWS_PROBE_SQL, *probe_args, stride, lo, hi, carry
                        )
                    ticks_in, quotes_in, staged = await _insert_ticks_and_quotes(
                        conn, ticks, quotes, self._series.keys, careful=careful
                    )
                    book = has_quotes or await conn.fetchval(
                        _BOOK_IN_REACH_SQL, providers, symbols, lo, hi, carry
                    )
                    # every quote went in as new: the windows that held no quote before but
                    # the early ones given hold those and the batch's, and are folded here
                    folded = None
                    if probe is not None and quotes_in == quotes.n:
                        folded = _fold(windows, candidates, probe, window_us, quote_carry_ms * 1000)
                    if folded:
                        sql = _RECOMPUTE_FOLDED_SQL[has_ticks]
                        args = [stride, interval, lo, hi, carry, *folded, *mark_args]
                    elif book:
                        sql = _RECOMPUTE_SQL[(has_ticks, has_quotes, book)]
                        args = [stride, interval, lo, hi, carry, *mark_args]
                    else:  # no quote anywhere near: the trade bars alone
                        sql = _RECOMPUTE_SQL[(has_ticks, has_quotes, book)]
                        args = [stride, interval, lo, hi, *mark_args]
                    rows = await conn.fetch(sql, *args)
                    if plan is not None:
                        await conn.execute(_DEFAULT_PLANS_SQL)  # (else the COMMIT resets it)
                        touched = _windows_of(seen, window_us)
                        touched.update(
                            (r["provider"], r["symbol"], to_epoch_us(r["ts"]))
                            for r in rows
                            if r["provider"] is not None
                        )
                        rolled.extend(
                            await _roll_up(
                                conn, plan, interval, window_ms, touched, carry, quote_spans
                            )
                        )
                    await _empty_stages(conn, staged)
                for stage, n in staged.items():
                    if 0 < n < _TRUNCATE_STAGE_MIN_ROWS:
                        await self._janitor.used(conn, stage, n)
            return ticks_in, quotes_in, rows

        async def write() -> tuple[int, int, list[Any]]:
            try:
                return await attempt(careful=False)
            except _StoredKeyInBatch:
                return await attempt(careful=True)

        partitions: list[tuple[str, Iterable[date]]] = [
            ("bars_ohlcv", _bar_days(tick_days, window_ms)),
            ("quote_bars", quote_bar_days),
        ]
        if tick_days:
            partitions.append(("ticks", tick_days))
        if quote_days:
            partitions.append(("quotes", quote_days))
        with translate_errors("ingest_events"):
            if plan is not None:
                days = await self._rollup_days(
                    plan, event_days, set(series), interval, first_us, last_us
                )
                partitions += [("bars_ohlcv", days), ("quote_bars", days)]
            ticks_inserted, quotes_inserted, rows = await self._write(
                partitions, write, series=series
            )
        n_windows = int(rows[0]["windows"]) if rows else 0
        n_quote_windows = int(rows[0]["quote_windows"]) if rows else 0
        changes = [r for r in rows if r["provider"] is not None]
        trade = [r for r in changes if r["inserted"] is not None]
        quote = [r for r in changes if r["quote_inserted"] is not None]
        inserted = sum(1 for r in trade if r["inserted"])
        quote_new = sum(1 for r in quote if r["quote_inserted"])
        return TickIngestResult(
            ticks_inserted=ticks_inserted,
            bars=[_bar_from_row(r, interval, r["change_seq"]) for r in trade],
            bars_result=UpsertResult(
                inserted=inserted,
                updated=len(trade) - inserted,
                unchanged=n_windows - len(trade),
            ),
            quotes_inserted=quotes_inserted,
            quote_bars=[quote_bar_from_row(r, interval, r["change_seq"]) for r in quote],
            quote_bars_result=UpsertResult(
                inserted=quote_new,
                updated=len(quote) - quote_new,
                unchanged=n_quote_windows - len(quote),
            ),
            rollup_bars=[
                _bar_from_row(r, level, r["change_seq"])
                for level, r in rolled
                if r["provider"] is not None and r["inserted"] is not None
            ],
            rollups_result=_rollup_counts(rolled),
        )

    async def _rollup_days(
        self,
        plan: RollupPlan,
        event_days: set[date],
        series: set[tuple[str, str]],
        interval: str,
        first_us: int,
        last_us: int,
    ) -> set[date]:
        """UTC days the rollup and flat bars of a batch may start on: its events' days, the
        days before them that a calendar's 1d bucket (the stretch between two sessions) may
        start on, and the days back to each series' last window with trades for flat bars
        (read here, before the write: only later windows can get trades meanwhile, so it can
        only be too early). Only days near the events: a batch mixing years creates no
        partitions for the years between."""
        back = _CALENDAR_GAP_DAYS if plan.calendars else 1
        out = {d - timedelta(days=k) for d in event_days for k in range(back + 1)}
        if plan.empty_intervals == "flat":
            earliest = await self._pool.fetchval(
                _LAST_TRADED_SQL,
                [p for p, _ in series],
                [s for _, s in series],
                interval,
                from_epoch_us(first_us),
            )
            if earliest is not None:
                start = earliest.date()
                last_day = from_epoch_us(last_us).date()
                out |= {start + timedelta(days=k) for k in range((last_day - start).days + 1)}
        return out

    async def sync_sessions(self, calendar: str, sessions: Sequence[TradingSession]) -> int:
        """Upsert ``calendar``'s sessions into ``trading_sessions`` (by session date); returns
        how many rows were inserted or changed."""
        if not sessions:
            return 0
        with translate_errors("sync_sessions"):
            return int(
                await self._pool.fetchval(
                    _SYNC_SESSIONS_SQL,
                    calendar,
                    [s.session for s in sessions],
                    [s.open for s in sessions],
                    [s.close for s in sessions],
                )
            )

    async def bars_range(
        self, provider: str, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[Bar]:
        """Trade bars with ``start <= ts < end``, oldest first, each with its window's quote
        bar attached (``Bar.quote``) where there is one."""
        with translate_errors("bars_range"):
            rows = await self._pool.fetch(WINDOWS_SQL, provider, symbol, interval, start, end)
        out: list[Bar] = []
        for r in rows:
            window = window_from_row(r)
            if isinstance(window, Bar):
                out.append(window)
        return out

    async def windows_range(
        self, provider: str, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[WindowBar]:
        """Every window with ``start <= ts < end`` that has a trade bar (with its quote bar
        attached) or a quote bar alone, oldest first: what inference scores."""
        with translate_errors("windows_range"):
            rows = await self._pool.fetch(WINDOWS_SQL, provider, symbol, interval, start, end)
        return [window_from_row(r) for r in rows]

    async def quote_bars_range(
        self, provider: str, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[QuoteBar]:
        """Quote bars with ``start <= ts < end``, oldest first."""
        with translate_errors("quote_bars_range"):
            rows = await self._pool.fetch(
                _QUOTE_BARS_RANGE_SQL, provider, symbol, interval, start, end
            )
        return [quote_bar_from_row(r) for r in rows]

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

    async def latest_quote_bars(
        self, interval: str, limit: int
    ) -> dict[tuple[str, str], list[QuoteBar]]:
        """The newest ``limit`` quote bars of ``interval`` per (provider, symbol), oldest
        first."""
        if limit <= 0:
            return {}
        with translate_errors("latest_quote_bars"):
            rows = await self._pool.fetch(_LATEST_QUOTE_BARS_SQL, interval, limit)
        out: dict[tuple[str, str], list[QuoteBar]] = {}
        for r in rows:
            out.setdefault((r["provider"], r["symbol"]), []).append(quote_bar_from_row(r))
        return out

    async def relay_bar_changes(
        self, publish: Callable[[Sequence[WindowBar]], Awaitable[None]], *, limit: int = 1000
    ) -> RelayResult:
        """Publish the oldest unrelayed bar changes, then mark them relayed; see the core
        ``StoreClient`` protocol. The transaction (and the relay lock) stays open while
        ``publish`` runs: a relay that dies mid-way leaves its changes unmarked for the next.
        Each window carries its ``change_seq``."""
        with translate_errors("relay_bar_changes"):
            async with self._pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval(_RELAY_LOCK_SQL, _RELAY_LOCK_NAMESPACE):
                    return RelayResult(busy=True)
                rows = await conn.fetch(_RELAY_READ_SQL, limit)
                if not rows:
                    return RelayResult()
                await publish([window_from_row(r, change_seq=r["seq"]) for r in rows])
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
        if table not in (
            "bars_ohlcv",
            "ticks",
            "signals",
            "job_runs",
            "bar_changes",
            "quotes",
            "quote_bars",
        ):
            raise StoreError(f"unknown table {table!r}")
        with translate_errors("count_rows"):
            return int(await self._pool.fetchval(f"SELECT count(*) FROM {table}"))
