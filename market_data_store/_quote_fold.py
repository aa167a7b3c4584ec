"""Quote bars of fresh windows folded from the batch itself, bit for bit the statement's.

A quote bar is recomputed by one SQL statement from every stored quote of its window and the
carried book (``_quote_bar_ctes`` in :mod:`market_data_store.store_client`): about twice a
trade bar's cost per row in PostgreSQL (a sort per window for ``lead``, a window function,
thirteen aggregates). A window is *fresh* when the quotes the store held of it before the
batch are exactly the ones its writer stored early (none, for most: ``early_quotes`` of
``ingest_columns``, counted under the series lock) and every quote of the batch went in as new:
its stored quotes are then exactly those and the batch's, and its bar can be computed here,
from their columns and the carried book the store held, with the same IEEE-754 double
operations in the same order as the statement (a window where one of them would raise in
PostgreSQL, an overflow or a division by zero, is left to the statement):

- rows: the carried book (the last quote by ``(ts, seq)`` at most ``carry`` before the
  window, as a state at the window's start), then the window's quotes by ``(ts, seq)``;
- ``d``: whole microseconds until the next row (the window's end for the last row), a float
  (the statement's ``round(date_part('epoch', interval) * 1e6)`` is that integer exactly);
- spread in bps ``(ask - bid) / ((ask + bid) / 2) * 10000``, imbalance
  ``(bid_size - ask_size) / (bid_size + ask_size)`` when both sizes are known and their sum is
  positive (else null: the term is skipped, as PostgreSQL's ``sum`` skips a null);
- ``ssum`` (the window's spreads), ``sp_w`` (spread * d) and ``imb_w`` (imbalance * d):
  sequential sums in row order, as PostgreSQL's ``sum(float8 ORDER BY ...)`` adds them
  (``float8pl``, no compensation): ``numpy.cumsum``, which accumulates one element after the
  other (``numpy.sum`` would sum pairwise and round differently);
- ``d_all``, ``d_imb``: sums of whole microseconds (exact in any order), ``smin``/``smax``,
  the row count, the closing book (the last row).

The statement then takes these per-window values where it would have aggregated them and
computes the bar's columns from them with the same expressions (``sp_w / d_all`` ...), so a
folded bar and a recomputed one are the same bits (property-tested against the statement in
``tests/integration/test_quote_fold.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from market_data_core.columnar import EventColumns

__all__ = ["FOLD_COLUMNS", "QuoteWindows", "StoredBook", "fold_windows", "quote_windows"]

# The per-window values the statement's ``qagg`` aggregates, in its column order.
FOLD_COLUMNS = (
    "n",
    "carried",
    "smin",
    "smax",
    "ssum",
    "sp_w",
    "d_all",
    "imb_w",
    "d_imb",
    "bid",
    "ask",
    "bid_size",
    "ask_size",
)


@dataclass(frozen=True, slots=True)
class QuoteWindows:
    """The quotes of a batch (one kind: quotes, unique keys) sorted by ``(series, ts, seq)``
    and cut into windows: window ``i`` holds sorted rows ``starts[i]:ends[i]`` of series
    ``series[series_idx[i]]``, starts at ``bucket_us[i]`` (µs since the epoch) and has
    ``n_early[i]`` of the rows given as stored early."""

    series: tuple[tuple[str, str], ...]
    series_idx: npt.NDArray[np.int32]
    bucket_us: npt.NDArray[np.int64]
    starts: npt.NDArray[np.intp]
    ends: npt.NDArray[np.intp]
    ts_us: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]
    row_series: npt.NDArray[np.int32]
    bid: npt.NDArray[np.float64]
    ask: npt.NDArray[np.float64]
    bid_size: npt.NDArray[np.float64]
    ask_size: npt.NDArray[np.float64]
    has_bid_size: npt.NDArray[np.bool_]
    has_ask_size: npt.NDArray[np.bool_]
    n_early: npt.NDArray[np.int64]
    unique: bool  # no two rows with one (series, ts, seq): else nothing may be folded

    @property
    def n(self) -> int:
        """The number of windows."""
        return len(self.starts)


def quote_windows(quotes: EventColumns, window_us: int, n_early: int = 0) -> QuoteWindows:
    """Sort ``quotes`` (rows of kind quote, the first ``n_early`` of them stored early, the
    others the batch's) and cut them into the epoch-aligned windows
    ``[k * window_us, (k + 1) * window_us)`` they fall in; ``unique``: whether their keys
    ``(series, ts, seq)`` are (a fold counts on it)."""
    order = np.lexsort((quotes.seq, quotes.src_ts, quotes.series_idx))
    s = quotes.series_idx[order]
    t = quotes.src_ts[order]
    bucket = t - np.mod(t, window_us)  # floor, before the epoch too
    q = quotes.seq[order]
    same_key = (s[1:] == s[:-1]) & (t[1:] == t[:-1]) & (q[1:] == q[:-1])
    new = np.ones(len(t), np.bool_)
    new[1:] = (s[1:] != s[:-1]) | (bucket[1:] != bucket[:-1])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(t)).astype(np.intp)
    return QuoteWindows(
        series=quotes.series,
        series_idx=s[starts],
        bucket_us=bucket[starts],
        starts=starts,
        ends=ends,
        ts_us=t,
        seq=q,
        row_series=s,
        bid=quotes.floats["bid"][order],
        ask=quotes.floats["ask"][order],
        bid_size=quotes.floats["bid_size"][order],
        ask_size=quotes.floats["ask_size"][order],
        has_bid_size=quotes.has("bid_size")[order],
        has_ask_size=quotes.has("ask_size")[order],
        n_early=np.add.reduceat(order < n_early, starts).astype(np.int64)
        if len(starts)
        else np.zeros(0, np.int64),
        unique=not same_key.any(),
    )


# A stored quote as the probe returns it: (ts µs, seq, bid, ask, bid_size, ask_size).
StoredBook = tuple[int, int, float, float, float | None, float | None]

# What a sequential sum costs here, to split the windows between the two ways of adding
# (:func:`_seq_sums`): a window on its own (a few NumPy calls) and a step of the lockstep
# loop over many windows at once. Estimates (µs); they change the speed, never the sums.
_PER_WINDOW_COST = 8.0
_PER_STEP_COST = 6.0


def _seq_sums(
    terms: npt.NDArray[np.float64],
    starts: npt.NDArray[np.intp],
    ends: npt.NDArray[np.intp],
    first: npt.NDArray[np.float64],
    has_first: npt.NDArray[np.bool_],
    *,
    per_window: float | None = None,
    per_step: float | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Per segment ``i``: ``first[i]`` (when ``has_first[i]``) ``+ terms[starts[i]] +
    terms[starts[i] + 1] + ... + terms[ends[i] - 1]``, added one after the other, as
    PostgreSQL's ``sum(float8)`` adds its rows (the first value is the state, no rounding of
    its own); and whether the segment had any term (else its sum is 0.0, for SQL null).

    Long segments are summed one by one with ``numpy.cumsum`` (sequential); the short ones in
    lockstep, one row position of every short segment per step, longest first. The split
    minimises the estimated cost (``per_window``, ``per_step``: the module's estimates when
    None); either way gives the same bits."""
    per_window = _PER_WINDOW_COST if per_window is None else per_window
    per_step = _PER_STEP_COST if per_step is None else per_step
    lengths = ends - starts
    sums = np.where(has_first, first, 0.0)
    started = has_first.copy()
    order = np.argsort(-lengths, kind="stable")
    by_length = lengths[order]
    # c segments one by one, the others in lockstep over by_length[c] steps
    steps = np.append(by_length, 0)
    cost = per_window * np.arange(len(order) + 1) + per_step * steps
    cut = int(np.argmin(cost))
    for i in order[:cut].tolist():
        seg = terms[starts[i] : ends[i]]
        if started[i]:
            seg = np.concatenate((sums[i : i + 1], seg))
        if not len(seg):
            continue
        sums[i] = np.cumsum(seg)[-1]
        started[i] = True
    short = order[cut:]
    if len(short) and by_length[cut] > 0:
        s_starts = starts[short]
        s_len = by_length[cut:]
        acc = sums[short]
        began = started[short]
        # segments still holding a row at step k: those longer than k (a prefix: longest first)
        active = len(s_len) - np.cumsum(np.bincount(s_len, minlength=int(s_len[0]) + 1))
        for k in range(int(s_len[0])):
            m = int(active[k])
            x = terms[s_starts[:m] + k]
            acc[:m] = np.where(began[:m], acc[:m] + x, x)
            began[:m] = True
        sums[short] = acc
        started[short] = began
    return sums, started


def fold_windows(
    w: QuoteWindows,
    window_us: int,
    carry_us: int,
    fresh: Sequence[int],
    stored_books: Sequence[StoredBook | None],
) -> list[list[Any]]:
    """The ``qagg`` values of the windows ``fresh`` (indices into ``w``), each as the store
    would aggregate them once the batch is stored, as columns: provider, symbol, bucket (µs),
    then :data:`FOLD_COLUMNS` (None for SQL null). ``stored_books``: per window of ``w``, the
    last quote the store held before the batch at most ``carry_us`` before the window's start
    (None: none)."""
    t, bid, ask = w.ts_us, w.bid, w.ask
    starts, ends, bucket = w.starts, w.ends, w.bucket_us
    # whole microseconds to the next row of the window, or to its end for its last row
    d_us = np.empty(len(t), np.int64)
    d_us[:-1] = t[1:] - t[:-1]
    d_us[ends - 1] = bucket + window_us - t[ends - 1]
    d = d_us.astype(np.float64)
    rows = _book_terms(bid, ask, w.bid_size, w.ask_size, w.has_bid_size & w.has_ask_size, d)
    ok = rows.ok

    # the carried book: the batch's quote before the window (same series, within the carry)
    # or the store's, whichever is later by (ts, seq)
    j = np.maximum(starts - 1, 0)
    mine = (starts > 0) & (w.row_series[j] == w.row_series[starts]) & (t[j] >= bucket - carry_us)
    st = _stored_columns(stored_books)
    theirs = st["has"] & (~mine | (st["ts"] > t[j]) | ((st["ts"] == t[j]) & (st["seq"] > w.seq[j])))
    carried = mine | st["has"]
    c_bid = np.where(theirs, st["bid"], bid[j])
    c_ask = np.where(theirs, st["ask"], ask[j])
    c_bs = np.where(theirs, st["bid_size"], w.bid_size[j])
    c_as = np.where(theirs, st["ask_size"], w.ask_size[j])
    c_has = np.where(theirs, st["has_sizes"], w.has_bid_size[j] & w.has_ask_size[j])
    d0_us = t[starts] - bucket
    d0 = d0_us.astype(np.float64)
    book = _book_terms(c_bid, c_ask, c_bs, c_as, c_has, d0)
    c_ok = carried & book.ok

    no_first = np.zeros(len(starts), np.bool_)
    with np.errstate(invalid="ignore", over="ignore"):  # such windows are not folded (below)
        ssum, _ = _seq_sums(rows.sp, starts, ends, np.zeros(len(starts)), no_first)
        sp_w, _ = _seq_sums(rows.sp_d, starts, ends, book.sp_d, carried)
        # the imbalance terms of the rows that have one, in order; windows in those coordinates
        at = np.concatenate(([0], np.cumsum(ok)))
        imb_w, has_imb = _seq_sums(rows.imb_d[ok], at[starts], at[ends], book.imb_d, c_ok)
    d_ok = np.concatenate(([0], np.cumsum(np.where(ok, d_us, 0))))
    d_imb = d_ok[ends] - d_ok[starts] + np.where(c_ok, d0_us, 0)
    d_all = bucket + window_us - np.where(carried, bucket, t[starts])
    smin = np.minimum.reduceat(rows.sp, starts)
    smax = np.maximum.reduceat(rows.sp, starts)
    last = ends - 1

    # a window where PostgreSQL would raise (an overflow, an underflow to 0: see _book_terms)
    # is left to the statement, which raises as it always did
    sums_overflow = ~np.isfinite(ssum) | ~np.isfinite(sp_w) | (has_imb & ~np.isfinite(imb_w))
    bad = np.logical_or.reduceat(rows.raises, starts) | (book.raises & carried) | sums_overflow
    pick = np.asarray(fresh, np.intp)
    pick = pick[~bad[pick]]
    names = [w.series[i] for i in w.series_idx[pick].tolist()]
    return [
        [p for p, _ in names],
        [s for _, s in names],
        bucket[pick].tolist(),
        (ends - starts)[pick].tolist(),
        carried[pick].astype(np.int64).tolist(),
        smin[pick].tolist(),
        smax[pick].tolist(),
        ssum[pick].tolist(),
        sp_w[pick].tolist(),
        d_all[pick].astype(np.float64).tolist(),
        _nullable(imb_w[pick], has_imb[pick]),
        _nullable(d_imb[pick].astype(np.float64), has_imb[pick]),
        bid[last[pick]].tolist(),
        ask[last[pick]].tolist(),
        _nullable(w.bid_size[last[pick]], w.has_bid_size[last[pick]]),
        _nullable(w.ask_size[last[pick]], w.has_ask_size[last[pick]]),
    ]


@dataclass(frozen=True, slots=True)
class _Terms:
    """What the statement computes of each book (a row, or a window's carried book), with
    the same float8 operations in the same order: ``sp`` the spread in bps, ``sp_d`` it times
    ``d``, ``imb_d`` the imbalance times ``d`` (meaningful where ``ok``: both sizes known,
    their sum > 0), and ``raises``: would one of those operations raise in PostgreSQL?"""

    sp: npt.NDArray[np.float64]
    sp_d: npt.NDArray[np.float64]
    imb_d: npt.NDArray[np.float64]
    ok: npt.NDArray[np.bool_]
    raises: npt.NDArray[np.bool_]


def _book_terms(
    bid: npt.NDArray[np.float64],
    ask: npt.NDArray[np.float64],
    bid_size: npt.NDArray[np.float64],
    ask_size: npt.NDArray[np.float64],
    has_sizes: npt.NDArray[np.bool_],
    d: npt.NDArray[np.float64],
) -> _Terms:
    """Each book's terms (see :class:`_Terms`), ``d`` the microseconds it stands, as float.
    PostgreSQL's ``float8pl``/``float8mi``/``float8mul``/``float8div`` raise on a result that
    overflows to infinity from finite operands, on a product or quotient that underflows to
    0 from nonzero operands, and on a division by 0 (``src/include/utils/float.h``); NumPy
    gives inf, 0 or nan instead, and ``raises`` marks those books. The floats are finite
    (validated)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
        diff = ask - bid
        total = ask + bid
        half = total / 2
        ratio = diff / half
        sp = ratio * 10000
        sp_d = sp * d
        size_total = bid_size + ask_size
        imb_num = bid_size - ask_size
        imb = imb_num / size_total
        imb_d = imb * d
        ok = has_sizes & (size_total > 0)
        raises: npt.NDArray[np.bool_] = (
            ~np.isfinite(diff)
            | ~np.isfinite(total)
            | (half == 0)
            | ~np.isfinite(ratio)
            | ((ratio == 0) & (diff != 0))
            | ~np.isfinite(sp)
            | ~np.isfinite(sp_d)
            | ((sp_d == 0) & (sp != 0) & (d != 0))
            | (has_sizes & ~np.isfinite(size_total))
            | (ok & (~np.isfinite(imb_num) | ((imb == 0) & (imb_num != 0))))
            | (ok & (~np.isfinite(imb_d) | ((imb_d == 0) & (imb != 0) & (d != 0))))
        )
    return _Terms(sp=sp, sp_d=sp_d, imb_d=imb_d, ok=ok, raises=raises)


def _nullable(values: npt.NDArray[np.float64], has: npt.NDArray[np.bool_]) -> list[float | None]:
    return [v if h else None for v, h in zip(values.tolist(), has.tolist(), strict=True)]


def _stored_columns(books: Sequence[StoredBook | None]) -> dict[str, Any]:
    """The probe's books as columns (zeros where a window has none; ``has_sizes``: both sizes
    known)."""
    n = len(books)
    cols: dict[str, Any] = {
        "has": np.zeros(n, np.bool_),
        "ts": np.zeros(n, np.int64),
        "seq": np.zeros(n, np.int64),
        "bid": np.zeros(n),
        "ask": np.zeros(n),
        "bid_size": np.zeros(n),
        "ask_size": np.zeros(n),
        "has_sizes": np.zeros(n, np.bool_),
    }
    for i, book in enumerate(books):
        if book is None:
            continue
        ts, seq, b, a, bs, as_ = book
        cols["has"][i] = True
        cols["ts"][i], cols["seq"][i], cols["bid"][i], cols["ask"][i] = ts, seq, b, a
        if bs is not None and as_ is not None:
            cols["bid_size"][i], cols["ask_size"][i] = bs, as_
            cols["has_sizes"][i] = True
    return cols
