"""One series' recent past in the inference stage, so that a changed bar re-scores exactly.

A :class:`SeriesTimeline` holds, for one (provider, symbol) at the engine's interval:

- the series' change-log position ``applied_seq``: every change with ``change_seq`` up to it
  is reflected here (changes come from the store's ``bar_changes`` through ``mdp.bars``, or
  from a snapshot read of the store when the series is resumed);
- the *base*: the engine's exact state after a bar that is final (older than the correction
  horizon behind the series' newest bar), or the empty state before the series' first bar;
- the bars after the base, in event-time order, and an exact engine state every
  :data:`SNAP_EVERY` bars along them.

A "bar" here is a window of the series (:data:`~market_data_core.contracts.WindowBar`): its
trade bar with the window's quote bar, or its quote bar alone; a change replaces the window.

A change is *offered* in ``change_seq`` order (:meth:`SeriesTimeline.offer`): a new bar is
appended, a changed or inserted one marks the timeline dirty from its ``ts``. Scoring
(:meth:`SeriesTimeline.score`) then restores the newest state before the earliest change,
replays the unchanged bars up to it without emitting, and evaluates every bar from it to the
newest, so the signals of ``ts >= since`` are exactly those of a clean pass over the current
bars; the caller diffs them with the table (new, changed, retracted). Work per correction is
bounded by the correction horizon plus :data:`SNAP_EVERY` bars.

What memory cannot answer is *resync*: a change older than the base (a redelivered late tick,
a provider bar re-sent with new values), a gap in ``change_seq`` (a lost or reordered bus
entry), or a bar without ``change_seq``. The caller then resumes the series from the store
(the newest checkpoint that no later change invalidates, and the bars after it), which is
never silently wrong: at worst it is a rebuild from the series' first bar.
"""

from __future__ import annotations

import enum
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import datetime

from market_data_core.contracts import Signal, WindowBar
from market_data_core.protocols import FeatureCheckpoint, SeriesResume
from market_data_core.timeutil import from_epoch_us, to_epoch_us
from market_data_pipeline.inference.engine import InferenceEngine

__all__ = ["CHECKPOINT_EVERY", "SNAP_EVERY", "Offer", "Scored", "SeriesTimeline"]

SNAP_EVERY = 32
"""Bars between two in-memory states: a correction replays at most this many unchanged bars."""
CHECKPOINT_EVERY = 256
"""Bars between two persisted checkpoints of a series: a restart re-scores at most this many
bars plus the correction horizon."""


class Offer(enum.Enum):
    APPLIED = "applied"  # a new or changed bar: the timeline needs scoring
    STALE = "stale"  # already reflected (a duplicate, or older than what was read)
    RESYNC = "resync"  # memory cannot apply it: resume the series from the store


@dataclass(frozen=True, slots=True)
class _Snap:
    """The engine's state of the series after the bar at ``ts_us`` (``None``: before the
    first bar, ``state`` ``None``), covering ``bars`` bars, as of change ``as_of_seq``."""

    ts_us: int | None
    bars: int
    as_of_seq: int
    state: bytes | None


@dataclass(frozen=True, slots=True)
class Scored:
    """What :meth:`SeriesTimeline.score` did: every signal of the bars with ``ts >= since``,
    how many bars were evaluated and how many were replayed without emitting."""

    since: datetime
    signals: list[Signal]
    evaluated: int
    replayed: int


class SeriesTimeline:
    """See the module docstring. Not thread-safe; one per series per engine."""

    def __init__(
        self,
        provider: str,
        symbol: str,
        *,
        base: _Snap,
        bars: list[WindowBar],
        seq: int,
        persisted: FeatureCheckpoint | None = None,
    ) -> None:
        self.provider = provider
        self.symbol = symbol
        self.applied_seq = seq
        self._base = base
        self._snaps: list[_Snap] = []
        self._bars = bars
        self._ts = [to_epoch_us(b.ts) for b in bars]
        # the engine holds this series' state after the bar at _live_us (covering _live_bars
        # bars, _since_snap of them after the newest snapshot) while _live
        self._live = False
        self._live_us: int | None = None
        self._live_bars = 0
        self._since_snap = 0
        self._dirty_us: int | None = None
        self._persisted_bars = 0 if persisted is None else persisted.bars
        self._persisted_seq = 0 if persisted is None else persisted.progress_seq

    @classmethod
    def resume(cls, provider: str, symbol: str, resume: SeriesResume) -> SeriesTimeline:
        """A timeline from the store: its checkpoint as the base, its bars to score."""
        cp = resume.checkpoint
        base = (
            _Snap(None, 0, 0, None)
            if cp is None
            else _Snap(to_epoch_us(cp.ts), cp.bars, cp.as_of_seq, cp.state)
        )
        return cls(
            provider,
            symbol,
            base=base,
            bars=list(resume.bars),
            seq=resume.seq,
            persisted=cp,
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.provider, self.symbol)

    @property
    def bars_held(self) -> int:
        return len(self._bars)

    @property
    def needs_scoring(self) -> bool:
        if not self._bars:
            return False
        return (
            self._dirty_us is not None
            or not self._live
            or self._live_us is None
            or self._ts[-1] > self._live_us
        )

    def offer(self, bar: WindowBar) -> Offer:
        """Apply one committed change of a window of this series (in ``change_seq`` order):
        its trade bar with its quote bar, or its quote bar alone, replaces what the
        timeline held for the window."""
        seq = bar.change_seq
        if seq is None or seq > self.applied_seq + 1:
            return Offer.RESYNC
        if seq <= self.applied_seq:
            return Offer.STALE
        ts = to_epoch_us(bar.ts)
        if self._base.ts_us is not None and ts <= self._base.ts_us:
            return Offer.RESYNC  # it changes a bar the base already holds
        self.applied_seq = seq
        i = bisect_left(self._ts, ts)
        if i < len(self._ts) and self._ts[i] == ts:
            self._bars[i] = bar
        else:
            self._bars.insert(i, bar)
            self._ts.insert(i, ts)
        if self._live and self._live_us is not None and ts <= self._live_us:
            self._dirty_us = ts if self._dirty_us is None else min(self._dirty_us, ts)
        return Offer.APPLIED

    async def score(self, engine: InferenceEngine) -> Scored | None:
        """Bring the engine's state of this series to its newest bar; the signals of every
        bar from the earliest one that changed (or was never scored) on. ``None`` when there
        is nothing to score."""
        if not self.needs_scoring:
            return None
        p, s = self.provider, self.symbol
        replayed = 0
        if self._dirty_us is not None or not self._live:
            start_us = self._dirty_us if self._dirty_us is not None else self._ts[0]
            self._snaps = [x for x in self._snaps if x.ts_us is not None and x.ts_us < start_us]
            snap = self._snaps[-1] if self._snaps else self._base
            engine.import_state(p, s, snap.state)
            i = 0 if snap.ts_us is None else bisect_right(self._ts, snap.ts_us)
            j = bisect_left(self._ts, start_us)
            for bar in self._bars[i:j]:
                engine.warm(bar)
            replayed = j - i
            count = snap.bars + replayed
            since_snap = replayed
        else:
            assert self._live_us is not None
            j = bisect_right(self._ts, self._live_us)
            start_us = self._ts[j]
            count = self._live_bars
            since_snap = self._since_snap
        signals: list[Signal] = []
        for k in range(j, len(self._bars)):
            out = await engine.on_bar(self._bars[k])
            if out is None:
                raise AssertionError(f"{p}|{s}: bar {self._bars[k].ts} is not after the state")
            signals.extend(out)
            count += 1
            since_snap += 1
            if since_snap >= SNAP_EVERY:
                state = engine.export_state(p, s)
                self._snaps.append(_Snap(self._ts[k], count, self.applied_seq, state))
                since_snap = 0
        self._live, self._live_us, self._live_bars = True, self._ts[-1], count
        self._since_snap = since_snap
        self._dirty_us = None
        return Scored(from_epoch_us(start_us), signals, len(self._bars) - j, replayed)

    def advance(self, final_lag_us: int) -> None:
        """Make the newest state that is at least ``final_lag_us`` behind the newest bar the
        base, and forget the bars and states before it."""
        if not self._live or not self._ts or self._dirty_us is not None:
            return
        horizon_us = self._ts[-1] - final_lag_us
        final = [x for x in self._snaps if x.ts_us is not None and x.ts_us <= horizon_us]
        if not final:
            return
        base = final[-1]
        assert base.ts_us is not None
        self._snaps = self._snaps[len(final) :]
        cut = bisect_right(self._ts, base.ts_us)
        del self._bars[:cut]
        del self._ts[:cut]
        self._base = base

    def checkpoint(self, interval: str, *, force: bool = False) -> FeatureCheckpoint | None:
        """The base as a checkpoint (with ``applied_seq`` as the progress: call it once what
        was scored is written), when it is :data:`CHECKPOINT_EVERY` bars past the last one
        persisted, or with ``force`` when anything moved since; ``None`` otherwise."""
        base = self._base
        if base.state is None or base.ts_us is None or self.needs_scoring:
            return None
        newer = base.bars - self._persisted_bars
        if newer < CHECKPOINT_EVERY and not (
            force and (newer > 0 or self.applied_seq > self._persisted_seq)
        ):
            return None
        self._persisted_bars = base.bars
        self._persisted_seq = self.applied_seq
        return FeatureCheckpoint(
            provider=self.provider,
            symbol=self.symbol,
            interval=interval,
            ts=from_epoch_us(base.ts_us),
            as_of_seq=base.as_of_seq,
            progress_seq=self.applied_seq,
            bars=base.bars,
            state=base.state,
        )
