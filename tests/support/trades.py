"""The shipped real trades as events, and the offline reference bars (pandas resample)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import cache
from pathlib import Path

import pandas as pd

from market_data_core.contracts import Bar, StreamEvent
from market_data_core.timeutil import from_epoch_us
from tests.conftest import DATA

TRADES_CSV = DATA / "binance-futures-btcusdt-trades-2020-02-22.csv"
SYMBOL = "BTCUSDT"


def trade_events(
    provider: str, path: Path = TRADES_CSV, symbol: str | None = None
) -> list[StreamEvent]:
    """One tick per trade; seq = the exchange trade id (orders trades sharing a timestamp).
    ``symbol`` renames the file's symbol (the same trades as another series)."""
    out = []
    with path.open() as f:
        for row in csv.DictReader(f):
            out.append(
                StreamEvent.create(
                    provider=provider,
                    symbol=symbol or row["symbol"],
                    kind="tick",
                    src_ts=from_epoch_us(int(row["timestamp"])),
                    c=float(row["price"]),
                    v=float(row["amount"]),
                    seq=int(row["id"]),
                    trade_id=row["id"],
                    side=row["side"],
                )
            )
    return out


@dataclass(frozen=True)
class RefBar:
    o: Decimal
    h: Decimal
    l: Decimal  # noqa: E741
    c: Decimal
    v: Decimal
    pv: Decimal
    n: int


@cache
def reference_bars(window_ms: int, path: Path = TRADES_CSV) -> dict[pd.Timestamp, RefBar]:
    """pandas resample of the de-duplicated trades, in exact decimal arithmetic."""
    df = pd.read_csv(path, dtype={"price": str, "amount": str})
    df = df.drop_duplicates("id").sort_values(["timestamp", "id"], kind="stable")
    df["p"] = df.price.map(Decimal)
    df["a"] = df.amount.map(Decimal)
    df["pa"] = df.p * df.a
    df.index = pd.to_datetime(df.timestamp, unit="us", utc=True)
    r = df.resample(f"{window_ms}ms", origin="epoch", closed="left", label="left")
    agg = pd.DataFrame(
        {
            "o": r.p.first(),
            "h": r.p.max(),
            "l": r.p.min(),
            "c": r.p.last(),
            "v": r.a.sum(),
            "pa": r.pa.sum(),
            "n": r.id.count(),
        }
    )
    agg = agg[agg.n > 0]
    return {
        ts: RefBar(row.o, row.h, row.l, row.c, row.v, row.pa, int(row.n))
        for ts, row in agg.iterrows()
    }


def compressed_trades(dest: Path, factor: int, path: Path = TRADES_CSV) -> Path:
    """The trades of ``path`` with their time offsets from the first one divided by ``factor``
    (integer microseconds; order kept, ties ordered by trade id as always), written to
    ``dest``: the same real prices and sizes, ``factor`` times denser per window."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    t0 = int(rows[0]["timestamp"])
    for row in rows:
        row["timestamp"] = str(t0 + (int(row["timestamp"]) - t0) // factor)
    with dest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dest


def assert_bars_equal_reference(bars: list[Bar], window_ms: int, path: Path = TRADES_CSV) -> None:
    """Same rows, same values: o/h/l/c/v/trade_count exactly (as the floats of the exact
    decimals), vwap = sum(p*v)/sum(v) as the float nearest the exact quotient."""
    ref = reference_bars(window_ms, path)
    got = {pd.Timestamp(b.ts): b for b in bars}
    missing = sorted(set(ref) - set(got))[:5]
    extra = sorted(set(got) - set(ref))[:5]
    assert not missing and not extra, f"rows differ: missing {missing}, extra {extra}"
    bad = []
    for ts, r in ref.items():
        b = got[ts]
        exp = (float(r.o), float(r.h), float(r.l), float(r.c), float(r.v), r.n)
        act = (b.o, b.h, b.l, b.c, b.v, b.trade_count)
        vwap = float(Fraction(r.pv) / Fraction(r.v)) if r.v else None
        if exp != act or b.vwap != vwap:
            bad.append((ts, exp, act, vwap, b.vwap))
    assert not bad, f"{len(bad)} bars differ, first: {bad[:3]}"


OHLCV = tuple[float, float, float, float, float, float, int]


def decimal_ohlcv(prices: list[Decimal], sizes: list[Decimal]) -> OHLCV:
    """Exact OHLCV, VWAP and count of one window's trades in (ts, seq) order, as the floats
    nearest the exact values (VWAP: the exact quotient sum(p*v)/sum(v), as a Fraction)."""
    v = sum(map(Fraction, sizes), Fraction(0))
    pv = sum((Fraction(p) * Fraction(s) for p, s in zip(prices, sizes, strict=True)), Fraction(0))
    vwap = pv / v
    return (
        float(prices[0]),
        float(max(prices)),
        float(min(prices)),
        float(prices[-1]),
        float(v),
        float(vwap),
        len(prices),
    )
