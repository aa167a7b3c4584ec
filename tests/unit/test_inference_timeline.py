"""SeriesTimeline: corrections re-score exactly, resumes continue exactly, memory is bounded.

The reference everywhere is ``clean_pass``: a fresh engine over the final bars, in order. A
small in-memory change log stands in for the store's ``bar_changes`` (what arrives on
``mdp.bars``): every committed revision gets the series' next ``change_seq``.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from market_data_core.config import FeatureWindowConfig
from market_data_core.contracts import Bar, QuoteBar, Signal, WindowBar
from market_data_core.protocols import SeriesResume
from market_data_pipeline.features import FeatureEngine
from market_data_pipeline.inference.adapters.rules import RulesAdapter, parse_rules
from market_data_pipeline.inference.engine import InferenceEngine
from market_data_pipeline.inference.reference import clean_pass, signal_rows
from market_data_pipeline.inference.timeline import SNAP_EVERY, Offer, SeriesTimeline
from tests.conftest import DATA

WINDOWS = [
    FeatureWindowConfig(name="vwap_1h", horizon="1h"),
    FeatureWindowConfig(name="momentum", feature="momentum", periods=10),
    FeatureWindowConfig(name="rsi", periods=14),
    FeatureWindowConfig(name="ema_20", periods=20),
    FeatureWindowConfig(name="macd", periods=26),
    FeatureWindowConfig(name="sma_fast", feature="sma", periods=10),
    FeatureWindowConfig(name="sma_slow", feature="sma", periods=30),
]
RULES = [
    {"name": "macd_up", "condition": "crosses_above(macd, macd_signal)", "signal": 1, "score": 1},
    {
        "name": "macd_down",
        "condition": "crosses_below(macd, macd_signal)",
        "signal": -1,
        "score": 1,
    },
    {"name": "rsi_hot", "condition": "rsi > 70", "signal": -1, "score": 0.7},
    {"name": "trend", "condition": "close > ema_20 and momentum > 0", "signal": 1, "score": 0.5},
    {"name": "cross", "condition": "crosses_above(sma_fast, sma_slow)", "signal": 1, "score": 0.6},
    {"name": "vwap", "condition": "close > vwap_1h", "signal": 1, "score": 0.4, "cooldown_s": 600},
]
LAG_US = 6 * 60 * 1_000_000  # a 5 min horizon plus a 1 min bar, as the consumer computes it


def engine() -> InferenceEngine:
    features = FeatureEngine(WINDOWS, timed=False)
    return InferenceEngine(
        features, RulesAdapter(parse_rules(RULES, features.feature_names)), interval="1m"
    )


def real_bars(n: int) -> list[Bar]:
    df = pd.read_csv(Path(DATA / "ftx-btc-perp-1m-2022-01.csv"), nrows=n)
    return [
        Bar(
            "ftx",
            "BTC-PERP",
            "1m",
            pd.Timestamp(r.timestamp, tz="UTC").to_pydatetime(),
            r.open,
            r.high,
            r.low,
            r.close,
            r.volume,
        )
        for r in df.itertuples()
    ]


class Log:
    """The store's side: the final bars and the change log (one entry per revision)."""

    def __init__(self) -> None:
        self.bars: dict[object, Bar] = {}
        self.seq = 0

    def commit(self, bar: Bar) -> Bar:
        old = self.bars.get(bar.ts)
        self.seq += 1
        bar = dataclasses.replace(
            bar, revision=0 if old is None else old.revision + 1, change_seq=self.seq
        )
        self.bars[bar.ts] = bar
        return bar

    def final(self) -> list[Bar]:
        return [dataclasses.replace(b, change_seq=None) for _, b in sorted(self.bars.items())]


async def run_batches(timeline: SeriesTimeline, eng: InferenceEngine, changes: list[Bar]) -> None:
    """Offer changes in batches of 50, score and diff each batch like the consumer does, and
    keep the 'table' (signal id -> signal) in ``timeline.table``."""
    for i in range(0, len(changes), 50):
        for bar in changes[i : i + 50]:
            assert timeline.offer(bar) is Offer.APPLIED
        await score_into_table(timeline, eng)


async def score_into_table(timeline: SeriesTimeline, eng: InferenceEngine) -> None:
    table: dict[str, Signal] = timeline.table  # type: ignore[attr-defined]
    scored = await timeline.score(eng)
    if scored is not None:
        new = {s.signal_id: s for s in scored.signals}
        for sid, s in list(table.items()):
            if s.ts >= scored.since and sid not in new:
                del table[sid]  # retracted
        table.update(new)
        timeline.last = scored  # type: ignore[attr-defined]
    timeline.advance(LAG_US)


def fresh_timeline() -> SeriesTimeline:
    t = SeriesTimeline.resume("ftx", "BTC-PERP", SeriesResume(None, [], 0))
    t.table = {}  # type: ignore[attr-defined]
    return t


async def reference(final: list[Bar]) -> list[tuple[object, ...]]:
    return signal_rows((await clean_pass(engine(), final)).signals)


async def test_in_order_batches_equal_the_clean_pass() -> None:
    log, eng, t = Log(), engine(), fresh_timeline()
    await run_batches(t, eng, [log.commit(b) for b in real_bars(1500)])
    assert signal_rows(list(t.table.values())) == await reference(log.final())  # type: ignore[attr-defined]
    assert len(t.table) > 50  # type: ignore[attr-defined]
    # memory holds the horizon and at most a few snapshots' worth of bars, not the series
    assert t.bars_held <= 6 + 2 * SNAP_EVERY


@pytest.mark.parametrize("back", [1, 3, 5])
async def test_a_corrected_bar_rescores_from_it_and_equals_the_clean_pass(back: int) -> None:
    log, eng, t = Log(), engine(), fresh_timeline()
    bars = real_bars(1500)
    await run_batches(t, eng, [log.commit(b) for b in bars])
    before = signal_rows(list(t.table.values()))  # type: ignore[attr-defined]
    # a late tick inside the horizon: bar -back gets a new close (high/low widened to fit),
    # one that changes what the clean pass gives
    old = bars[-back]
    corrected = old
    for factor in (1.2, 0.8, 1.05, 0.95, 1.5, 0.5):
        c = old.c * factor
        candidate = dataclasses.replace(old, c=c, h=max(old.h, c), l=min(old.l, c))
        if await reference([*bars[:-back], candidate, *bars[len(bars) - back + 1 :]]) != before:
            corrected = candidate
            break
    assert corrected is not old
    change = log.commit(corrected)
    assert change.revision == 1
    await run_batches(t, eng, [change])
    scored = t.last  # type: ignore[attr-defined]
    assert scored.since == old.ts and scored.evaluated == back
    assert scored.replayed < SNAP_EVERY  # from the state before it, not from the start
    after = signal_rows(list(t.table.values()))  # type: ignore[attr-defined]
    assert after == await reference(log.final())
    assert after != before


async def test_a_bar_inserted_between_two_rescores_the_rest() -> None:
    log, eng, t = Log(), engine(), fresh_timeline()
    bars = real_bars(800)
    missing = bars.pop(-3)  # a window that closed empty, filled later by a late tick
    await run_batches(t, eng, [log.commit(b) for b in bars])
    await run_batches(t, eng, [log.commit(missing)])
    assert t.last.since == missing.ts and t.last.evaluated == 3  # type: ignore[attr-defined]
    assert signal_rows(list(t.table.values())) == await reference(log.final())  # type: ignore[attr-defined]


async def test_duplicates_gaps_and_changes_older_than_memory() -> None:
    log, eng, t = Log(), engine(), fresh_timeline()
    bars = real_bars(600)
    changes = [log.commit(b) for b in bars]
    await run_batches(t, eng, changes)
    assert t.offer(changes[-1]) is Offer.STALE  # a redelivery or a duplicate publish
    assert t.offer(changes[10]) is Offer.STALE  # a backlog older than what is applied
    old = dataclasses.replace(bars[5], c=bars[5].c + 1, h=bars[5].h + 1)
    assert t.offer(log.commit(old)) is Offer.RESYNC  # older than the final state
    gap = log.commit(dataclasses.replace(bars[-1], c=bars[-1].c + 1, h=bars[-1].h + 1))
    assert t.offer(gap) is Offer.RESYNC  # change_seq skipped one: lost on the bus
    assert t.offer(dataclasses.replace(gap, change_seq=None)) is Offer.RESYNC  # not from the log


@pytest.mark.parametrize("cut", [40, 300, 700])
async def test_resume_from_a_checkpoint_continues_bit_for_bit(cut: int) -> None:
    # a restart: the first process checkpoints its final state; the second resumes from it
    # with the stored bars after it, and ends with exactly the uninterrupted run's features
    # and signals, recursive indicators included
    bars = real_bars(1200)
    log, eng, t = Log(), engine(), fresh_timeline()
    await run_batches(t, eng, [log.commit(b) for b in bars[:cut]])
    cp = t.checkpoint("1m", force=True)
    first_table = dict(t.table)  # type: ignore[attr-defined]
    if cut < SNAP_EVERY + 6:
        assert cp is None  # nothing final yet: the next process starts at the first bar
    else:
        assert cp is not None and cp.ts < bars[cut - 1].ts
    after_cp = [b for b in log.final() if cp is None or b.ts > cp.ts]
    resumed = SeriesTimeline.resume("ftx", "BTC-PERP", SeriesResume(cp, after_cp, log.seq))
    resumed.table = first_table  # type: ignore[attr-defined]
    eng2 = engine()  # a new process
    await score_into_table(resumed, eng2)
    await run_batches(resumed, eng2, [log.commit(b) for b in bars[cut:]])
    assert signal_rows(list(resumed.table.values())) == await reference(log.final())  # type: ignore[attr-defined]
    # the whole state, features and rule memories, equals the uninterrupted engine's: floats
    # compared bit for bit (msgpack keeps float64 as is)
    ref_engine = engine()
    await clean_pass(ref_engine, log.final())
    assert ref_engine.export_state("ftx", "BTC-PERP") == eng2.export_state("ftx", "BTC-PERP")


async def test_a_weekend_hole_changes_nothing() -> None:
    # bars two days apart are just consecutive bars: the state carries over in bars
    bars = real_bars(900)
    shifted = bars[:450] + [dataclasses.replace(b, ts=b.ts + timedelta(days=2)) for b in bars[450:]]
    log, eng, t = Log(), engine(), fresh_timeline()
    await run_batches(t, eng, [log.commit(b) for b in shifted])
    assert signal_rows(list(t.table.values())) == await reference(log.final())  # type: ignore[attr-defined]


QUOTE_WINDOWS = [
    *WINDOWS,
    FeatureWindowConfig(name="spread_bps", periods=1),
    FeatureWindowConfig(name="spread_30m", feature="spread_bps", horizon="30m"),
]
QUOTE_RULES = [
    *RULES,
    {"name": "wide", "condition": "spread_bps > 1.5 * spread_30m", "signal": 0, "score": 0.9},
]


def quote_engine() -> InferenceEngine:
    features = FeatureEngine(QUOTE_WINDOWS, timed=False)
    return InferenceEngine(
        features, RulesAdapter(parse_rules(QUOTE_RULES, features.feature_names)), interval="1m"
    )


def quote_bar(bar: Bar, spread: float) -> QuoteBar:
    mid = bar.c
    return QuoteBar(
        bar.provider, bar.symbol, bar.interval, bar.ts, mid - 0.5, mid + 0.5, 2.0, 1.0, mid,
        4, spread, spread / 2, spread * 2, spread, 1 / 3, 1 / 3,
    )  # fmt: skip


def windows_with_quotes(n: int) -> list[WindowBar]:
    """Real bars with a quote bar each (a spike every 37th window); every 9th window has
    quotes and no trades."""
    out: list[WindowBar] = []
    for i, bar in enumerate(real_bars(n)):
        q = quote_bar(bar, 4.0 if i % 37 == 36 else 1.0 + (i * 7 % 13) / 26)
        out.append(q if i % 9 == 4 else dataclasses.replace(bar, quote=q))
    return out


async def test_windows_with_quotes_and_a_late_quote_equal_the_clean_pass() -> None:
    """Trade bars with their quote bars and quote bars alone: the wide-spread rule fires in
    event time; a late quote that changes a window's quote bar (the window's next change on
    the log) re-scores from it, and the signals equal a clean pass over the final windows."""
    log, eng, t = Log(), quote_engine(), fresh_timeline()
    windows = windows_with_quotes(900)
    await run_batches(t, eng, [log.commit(w) for w in windows])  # type: ignore[arg-type]
    fired = [s for s in t.table.values() if s.name == "wide"]  # type: ignore[attr-defined]
    assert len(fired) >= 10
    ref = signal_rows((await clean_pass(quote_engine(), log.final())).signals)
    assert signal_rows(list(t.table.values())) == ref  # type: ignore[attr-defined]
    # a late quote widens the spread of the third window from the end: its next change
    target = next(w for w in windows[-4:] if isinstance(w, Bar))
    assert target.quote is not None
    late = dataclasses.replace(target, quote=dataclasses.replace(target.quote, spread_bps=9.0))
    await run_batches(t, eng, [log.commit(late)])  # type: ignore[arg-type]
    assert t.last.since == target.ts  # type: ignore[attr-defined]
    ref = signal_rows((await clean_pass(quote_engine(), log.final())).signals)
    assert signal_rows(list(t.table.values())) == ref  # type: ignore[attr-defined]
    assert any(s.name == "wide" and s.ts == target.ts for s in t.table.values())  # type: ignore[attr-defined]
