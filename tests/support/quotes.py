"""The shipped real EUR/USD quotes as events, and the offline reference quote bars (pandas).

The reference follows the definitions of ``market_data_core.contracts.QuoteBar`` and is
computed independently of the store's SQL: quotes sorted by (timestamp, seq); every quote of
a window counts and gives the spread min/max/mean; the book is the last quote of each
instant; each window starts with the book of the last instant before it if that instant is
at most ``carry_ms`` before the window start; each book state is weighted by how long it
stands inside the window (microseconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from market_data_core.contracts import QUOTE_BAR_COLUMNS, QuoteBar, StreamEvent
from market_data_core.timeutil import to_epoch_us
from market_data_store import store_client
from tests.conftest import SHIPPED_REGISTRY

QUOTE_COLUMNS = QUOTE_BAR_COLUMNS
# columns computed with a division of sums: equal within this relative error; the others
# are the same floats computed the same way, hence exactly equal
DIVIDED = frozenset({"spread_bps", "spread_bps_mean", "imbalance"})
REL_TOL = 1e-12


def quote_events(
    provider: str,
    *,
    sizes: bool = False,
    floor_ms: int | None = None,
    symbol: str = "EUR/USD",
) -> list[StreamEvent]:
    """The shipped ``eurusd_quotes`` dataset as ``mdp stream replay`` reads it (seq = line
    number), for ``provider``. ``sizes``: give each quote deterministic sizes (the file has
    none; 1 in 20 quotes gets both sizes 0, an undefined imbalance). ``floor_ms``: floor the
    timestamps to that resolution, so that many instants hold several quotes (ordered by
    seq), as in the quote files the issue measured."""
    from market_data_pipeline.producers.datasets import load_registry, read_dataset

    spec = load_registry(SHIPPED_REGISTRY)["eurusd_quotes"]
    events = [e for e in read_dataset(spec) if isinstance(e, StreamEvent)]
    rng = np.random.default_rng(3)
    bid_sizes = rng.integers(1, 50, len(events)).astype(float)
    ask_sizes = rng.integers(1, 50, len(events)).astype(float)
    out = []
    for i, e in enumerate(events):
        ts = e.src_ts
        if floor_ms is not None:
            us = to_epoch_us(ts)
            ts = ts - timedelta(microseconds=us % (floor_ms * 1000))
        extra: dict[str, float] = {}
        if sizes:
            zero = i % 20 == 7
            extra = {
                "bid_size": 0.0 if zero else float(bid_sizes[i]),
                "ask_size": 0.0 if zero else float(ask_sizes[i]),
            }
        out.append(
            StreamEvent.create(
                provider=provider,
                symbol=symbol,
                kind="quote",
                src_ts=ts,
                seq=e.seq,
                bid=e.bid,
                ask=e.ask,
                **extra,
            )
        )
    return out


def _spread(bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    result: np.ndarray = (ask - bid) / ((ask + bid) / 2) * 1e4
    return result


def _imbalance(bid_size: np.ndarray, ask_size: np.ndarray) -> np.ndarray:
    total = bid_size + ask_size
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray = np.where(total > 0, (bid_size - ask_size) / total, np.nan)
    return out


def reference_quote_bars(
    events: list[StreamEvent],
    window_ms: int,
    carry_ms: int,
    trade_times: list[datetime] | None = None,
) -> dict[pd.Timestamp, dict[str, float | int | None]]:
    """The quote bars of ``events`` (quotes; duplicates by event_id dropped) at ``window_ms``,
    for the windows holding quotes and those holding one of ``trade_times`` with a carried
    book, by window start."""
    rows = {e.event_id: e for e in events if e.kind == "quote"}.values()
    df = pd.DataFrame(
        {
            "ts": [to_epoch_us(e.src_ts) for e in rows],
            "seq": [e.seq for e in rows],
            "bid": [e.bid for e in rows],
            "ask": [e.ask for e in rows],
            "bid_size": [np.nan if e.bid_size is None else e.bid_size for e in rows],
            "ask_size": [np.nan if e.ask_size is None else e.ask_size for e in rows],
        }
    ).sort_values(["ts", "seq"], kind="stable", ignore_index=True)
    w_us = window_ms * 1000
    df["window"] = df.ts - df.ts % w_us
    df["spread"] = _spread(df.bid.to_numpy(), df.ask.to_numpy())
    per_window = df.groupby("window").agg(
        n=("spread", "size"), smin=("spread", "min"), smax=("spread", "max")
    )
    # the mean as sum / count in (ts, seq) order, each window's quotes summed left to right
    sums = {w: math.fsum(g.to_numpy()) for w, g in df.groupby("window").spread}
    states = df.groupby("ts").last()  # the book at each instant: its last quote by seq
    s_ts = states.index.to_numpy()
    s_spread = _spread(states.bid.to_numpy(), states.ask.to_numpy())
    s_imb = _imbalance(states.bid_size.to_numpy(), states.ask_size.to_numpy())
    windows = set(per_window.index)
    for t in trade_times or []:
        us = to_epoch_us(t)
        windows.add(us - us % w_us)
    out: dict[pd.Timestamp, dict[str, float | int | None]] = {}
    for start in sorted(windows):
        end = start + w_us
        i0 = int(np.searchsorted(s_ts, start, side="left"))  # first instant in the window
        i1 = int(np.searchsorted(s_ts, end, side="left"))
        carried = i0 > 0 and start - s_ts[i0 - 1] <= carry_ms * 1000
        n = int(per_window.n.get(start, 0))
        if n == 0 and not carried:
            continue  # a trade window without a book: no quote bar
        begins = ([start] if carried else []) + list(s_ts[i0:i1])
        idx = ([i0 - 1] if carried else []) + list(range(i0, i1))
        ends = [*begins[1:], end]
        dur = np.array([b - a for a, b in zip(begins, ends, strict=True)], dtype=float)
        sp = s_spread[idx]
        imb = s_imb[idx]
        known = ~np.isnan(imb)
        close = idx[-1]
        bid, ask = float(states.bid.iloc[close]), float(states.ask.iloc[close])
        bs, asz = states.bid_size.iloc[close], states.ask_size.iloc[close]
        imb_close = s_imb[close]
        out[pd.Timestamp(start, unit="us", tz="UTC")] = {
            "bid": bid,
            "ask": ask,
            "bid_size": None if np.isnan(bs) else float(bs),
            "ask_size": None if np.isnan(asz) else float(asz),
            "mid": (bid + ask) / 2,
            "quote_count": n,
            "spread_bps": float(np.sum(sp * dur) / np.sum(dur)),
            "spread_bps_min": float(per_window.smin[start]) if n else None,
            "spread_bps_max": float(per_window.smax[start]) if n else None,
            "spread_bps_mean": sums[start] / n if n else None,
            "imbalance": (
                float(np.sum(imb[known] * dur[known]) / np.sum(dur[known]))
                if known.any() and np.sum(dur[known]) > 0
                else None
            ),
            "imbalance_close": None if np.isnan(imb_close) else float(imb_close),
        }
    return out


def assert_quote_bars_equal_reference(
    bars: list[QuoteBar], reference: dict[pd.Timestamp, dict[str, float | int | None]]
) -> None:
    """Same windows; every column equal (within ``REL_TOL`` relative for the divided
    sums, exactly otherwise)."""
    got = {pd.Timestamp(b.ts): b for b in bars}
    missing = sorted(set(reference) - set(got))[:5]
    extra = sorted(set(got) - set(reference))[:5]
    assert not missing and not extra, f"windows differ: missing {missing}, extra {extra}"
    bad = []
    for ts, ref in reference.items():
        bar = got[ts]
        for name in QUOTE_COLUMNS:
            want, have = ref[name], getattr(bar, name)
            if want is None or have is None:
                ok = want is None and have is None
            elif name in DIVIDED:
                ok = math.isclose(have, want, rel_tol=REL_TOL, abs_tol=0.0)
            else:
                ok = have == want
            if not ok:
                bad.append((ts, name, want, have))
    assert not bad, f"{len(bad)} values differ, first: {bad[:5]}"


@dataclass
class FoldSpy:
    """What the store client folded (``market_data_store._quote_fold``), per fold call: the
    windows folded, and of the windows it was asked to fold those with quotes stored early."""

    folded: list[int] = field(default_factory=list)
    early: list[int] = field(default_factory=list)


def spy_on_folds(monkeypatch: pytest.MonkeyPatch) -> FoldSpy:
    """Count the store client's folds (its ``fold_windows`` calls) for the rest of a test."""
    spy = FoldSpy()
    real = store_client.fold_windows

    def counting(*args: Any, **kwargs: Any) -> Any:
        rows = real(*args, **kwargs)
        windows, fresh = args[0], args[3]
        spy.folded.append(len(rows[0]))
        spy.early.append(sum(1 for i in fresh if windows.n_early[i]))
        return rows

    monkeypatch.setattr(store_client, "fold_windows", counting)
    return spy
