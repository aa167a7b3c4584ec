"""Trading sessions (issue 20): an equity symbol on XNYS around the 2020-03-08 and 2020-11-01
daylight-saving changes, the Thanksgiving holiday (2020-11-26) and the half day after it
(2020-11-27). Trades around the clock (pre-market, after hours, weekends, the holiday). The
1d rollups are the sessions and the stretches between them (flagged), the intraday rollups
say whether they lie in a session, and the session VWAP feature resets at each open; both
equal a pandas reference built with ``exchange_calendars`` itself."""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import exchange_calendars as xcals
import pandas as pd
import pytest

from market_data_core.config import FeatureWindowConfig, MicroBatchConfig, RollupsConfig
from market_data_core.contracts import Bar, StreamEvent
from market_data_core.protocols import RollupPlan
from market_data_pipeline.features import FeatureEngine
from market_data_pipeline.sessions import SessionCalendar, load_sessions, rollup_plan
from market_data_store import PgStoreClient

SYMBOL = "SPY"
SPANS = [  # (first day, last day) of trades, UTC
    (datetime(2020, 3, 5, tzinfo=UTC), datetime(2020, 3, 11, tzinfo=UTC)),
    (datetime(2020, 10, 29, tzinfo=UTC), datetime(2020, 11, 4, tzinfo=UTC)),
    (datetime(2020, 11, 24, tzinfo=UTC), datetime(2020, 12, 1, tzinfo=UTC)),
]
LEVELS = ["1m", "30m", "1h", "1d"]


def trades(provider: str) -> list[StreamEvent]:
    """A trade every 3 to 9 minutes around the clock, prices with cents, whole sizes."""
    rng = random.Random(20)
    out: list[StreamEvent] = []
    seq = 0
    for start, end in SPANS:
        t = start + timedelta(seconds=rng.randint(0, 60))
        price = 300.0
        while t < end:
            price = round(max(1.0, price + rng.choice([-0.37, -0.05, 0.0, 0.02, 0.41])), 2)
            seq += 1
            out.append(
                StreamEvent.create(
                    provider=provider,
                    symbol=SYMBOL,
                    kind="tick",
                    src_ts=t,
                    c=price,
                    v=float(rng.randint(1, 500)),
                    seq=seq,
                )
            )
            t += timedelta(seconds=rng.randint(180, 540), microseconds=rng.randint(0, 999_999))
    return out


def plan() -> RollupPlan:
    built = rollup_plan(
        MicroBatchConfig(
            window_ms=2000,
            rollups=RollupsConfig(intervals=LEVELS, calendars={"XNYS": [SYMBOL]}),
        )
    )
    assert built is not None
    return built


def schedule() -> pd.DataFrame:
    with warnings.catch_warnings():  # the library's own use of a pandas 3.1 deprecation
        warnings.filterwarnings("ignore", message="Series.values returning an ndarray")
        return xcals.get_calendar("XNYS", start="2020-01-02", end="2020-12-31").schedule


def reference_daily(events: list[StreamEvent]) -> dict[datetime, tuple[object, ...]]:
    """Each trade's bucket from the calendar's schedule: its session [open, close), else the
    stretch [previous close, next open); per bucket the exact OHLCV, vwap, count and flag."""
    sched = schedule()
    opens = list(sched.open)
    closes = list(sched.close)
    buckets: dict[datetime, list[StreamEvent]] = {}
    flags: dict[datetime, bool] = {}
    for e in events:
        t = pd.Timestamp(e.src_ts)
        i = int(pd.Index(opens).searchsorted(t, side="right")) - 1
        if t < closes[i]:
            key, flag = opens[i].to_pydatetime(), True
        else:
            key, flag = closes[i].to_pydatetime(), False
        buckets.setdefault(key, []).append(e)
        flags[key] = flag
    out = {}
    for key, evs in buckets.items():
        evs.sort(key=lambda e: (e.src_ts, e.seq))
        p = [Decimal(repr(e.c)) for e in evs]
        v = [Decimal(repr(e.v)) for e in evs]
        sv = sum(v, Decimal(0))
        spv = sum((a * b for a, b in zip(p, v, strict=True)), Decimal(0))
        out[key] = (
            float(p[0]), float(max(p)), float(min(p)), float(p[-1]), float(sv),
            float(Fraction(spv) / Fraction(sv)), len(evs), flags[key],
        )  # fmt: skip
    return out


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[PgStoreClient]:
    client = await PgStoreClient.connect(store_url)
    yield client
    await client.aclose()


async def test_xnys_daily_bars_are_its_sessions_around_dst_a_holiday_and_a_half_day(
    store: PgStoreClient, unique: str
) -> None:
    provider = f"eq{unique}"
    events = trades(provider)
    rollups = plan()
    assert rollups.source_of("XNYS", "1d") == "30m"  # XNYS opens at 9:30: 1 h does not nest
    assert rollups.source_of(None, "1d") == "1h"
    assert await store.sync_sessions("XNYS", load_sessions("XNYS")) > 0
    # each span shuffled and ingested in batches of its own (a batch spanning months costs
    # seconds: its statement's partition bounds cover every day between)
    for start, end in SPANS:
        span = [e for e in events if start <= e.src_ts < end]
        random.Random(7).shuffle(span)
        for i in range(0, len(span), 400):
            await store.ingest_events(
                span[i : i + 400], interval="2s", quote_carry_ms=60_000, rollups=rollups
            )
    lo, hi = datetime(2020, 3, 1, tzinfo=UTC), datetime(2020, 12, 2, tzinfo=UTC)
    days = await store.bars_range(provider, SYMBOL, "1d", lo, hi)
    got = {b.ts: (b.o, b.h, b.l, b.c, b.v, b.vwap, b.trade_count, b.in_session) for b in days}
    ref = reference_daily(events)
    assert got == ref
    by_ts = {b.ts: b for b in days}
    # DST: 9:30 New York is 14:30 UTC before 2020-03-08 and 13:30 after; again 14:30 after 11-01
    assert by_ts[datetime(2020, 3, 6, 14, 30, tzinfo=UTC)].in_session
    assert by_ts[datetime(2020, 3, 9, 13, 30, tzinfo=UTC)].in_session
    assert by_ts[datetime(2020, 10, 30, 13, 30, tzinfo=UTC)].in_session
    assert by_ts[datetime(2020, 11, 2, 14, 30, tzinfo=UTC)].in_session
    # the weekend stretch from Friday's close to Monday's open is one flagged bar
    weekend = by_ts[datetime(2020, 3, 6, 21, tzinfo=UTC)]
    assert weekend.in_session is False
    # Thanksgiving: no session on 11-26; the stretch runs from 11-25's close to 11-27's open,
    # and the half day closes at 13:00 New York (18:00 UTC)
    assert by_ts[datetime(2020, 11, 25, 21, tzinfo=UTC)].in_session is False
    assert not any(b.ts.date() == datetime(2020, 11, 26).date() for b in days)
    half = by_ts[datetime(2020, 11, 27, 14, 30, tzinfo=UTC)]
    assert half.in_session
    after_half = by_ts[datetime(2020, 11, 27, 18, tzinfo=UTC)]
    assert after_half.in_session is False
    # intraday rollups: in session when their whole window is
    sched = schedule()
    for level in ("30m", "1h"):
        bars = await store.bars_range(provider, SYMBOL, level, lo, hi)
        width = pd.Timedelta(level)
        for b in bars:
            t = pd.Timestamp(b.ts)
            i = int(pd.Index(sched.open).searchsorted(t, side="right")) - 1
            inside = i >= 0 and t + width <= sched.close.iloc[i]
            assert b.in_session is bool(inside), (level, b.ts)
    # 9:00-10:00 New York straddles the open: not in session; 10:00-11:00 is
    hours = {b.ts: b for b in await store.bars_range(provider, SYMBOL, "1h", lo, hi)}
    straddle = datetime(2020, 3, 9, 13, tzinfo=UTC)
    if straddle in hours:
        assert hours[straddle].in_session is False


async def test_session_vwap_resets_at_each_open_and_equals_the_pandas_reference(
    store: PgStoreClient, unique: str
) -> None:
    provider = f"sv{unique}"
    events = trades(provider)
    await store.sync_sessions("XNYS", load_sessions("XNYS"))
    for start, end in SPANS:
        span = [e for e in events if start <= e.src_ts < end]
        for i in range(0, len(span), 800):
            await store.ingest_events(
                span[i : i + 800], interval="2s", quote_carry_ms=60_000, rollups=plan()
            )
    lo, hi = datetime(2020, 3, 1, tzinfo=UTC), datetime(2020, 12, 2, tzinfo=UTC)
    micro: list[Bar] = await store.bars_range(provider, SYMBOL, "2s", lo, hi)
    sessions = SessionCalendar({SYMBOL: "XNYS"})
    engine = FeatureEngine(
        [FeatureWindowConfig(name="session_vwap")], timed=False, session_of=sessions.session_of
    )
    got = {}
    for b in micro:
        snap = engine.update_bar(b)
        assert snap is not None
        got[b.ts] = snap.values["session_vwap"]
    # reference: per trade, its session from the calendar's schedule; per 2 s window, the
    # running sum(p*v)/sum(v) of the session's trades up to the window's end
    sched = schedule()
    df = pd.DataFrame(
        {
            "ts": [pd.Timestamp(e.src_ts) for e in events],
            "p": [e.c for e in events],
            "v": [e.v for e in events],
        }
    )
    idx = pd.Index(sched.open).searchsorted(df.ts, side="right") - 1
    in_session = df.ts.to_numpy() < sched.close.to_numpy()[idx]
    df["session"] = [
        sched.index[i] if ok else pd.NaT for i, ok in zip(idx, in_session, strict=True)
    ]
    df["window"] = df.ts.dt.floor("2s")
    df["pv"] = [
        Fraction(Decimal(repr(p))) * Fraction(Decimal(repr(v)))
        for p, v in zip(df.p, df.v, strict=True)
    ]
    df["fv"] = [Fraction(Decimal(repr(v))) for v in df.v]
    checked = outside = resets = 0
    sums: dict[object, tuple[Fraction, Fraction]] = {}
    last_session = None
    for window, group in df.groupby("window", sort=True):
        session = group.session.iloc[0]
        value = got[window.to_pydatetime()]
        if pd.isna(session):
            assert math.isnan(value)
            outside += 1
            continue
        if session != last_session:
            resets += 1
            last_session = session
        pv, v = sums.get(session, (Fraction(0), Fraction(0)))
        pv += sum(group.pv, Fraction(0))
        v += sum(group.fv, Fraction(0))
        sums[session] = (pv, v)
        expected = float(pv / v)
        assert abs(value - expected) <= 1e-12 * abs(expected), (window, value, expected)
        checked += 1
    assert checked > 100 and outside > 100
    assert resets == len({s for s in df.session if not pd.isna(s)})
    # the session's last value is its 1d bar's vwap (within rounding)
    days = {b.ts: b for b in await store.bars_range(provider, SYMBOL, "1d", lo, hi)}
    for label, (pv, v) in sums.items():
        day = days[sched.open[label].to_pydatetime()]
        assert day.in_session and day.vwap is not None
        assert abs(day.vwap - float(pv / v)) <= 1e-15 * day.vwap
