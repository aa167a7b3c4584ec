"""Event-time windowing: which window an event belongs to, when a window closes, what is late.

Windows are tumbling and aligned to the epoch: ``[k*w, (k+1)*w)`` in microseconds.

Watermarks are kept per (provider, symbol) — the unit whose order the bus guarantees — rather than
per shard: a symbol's windows never wait for, nor are made late by, another symbol sharing the
shard (a backfill of one symbol next to another's live data is not "late"). The **watermark** is
the largest event time seen for the symbol minus ``allow_late_ms``. A window closes when

* the watermark reaches its end (``end <= watermark``), or
* the wall clock has passed ``end + allow_late_ms + flush_timeout_ms`` **and** the symbol has been
  quiet (no new events) for ``flush_timeout_ms``: quiet markets and idle symbols still close
  their windows, while a busy symbol — including a replay of old data, whose event times are far
  behind the wall clock — closes windows by its watermark alone and so writes each bar once.

An event whose window has already closed is *late*. Inside ``correction_horizon_ms`` (measured in
event time, behind the watermark) it corrects the stored bar; beyond it, it is *too late* and goes
to the dead-letter stream with reason ``late``. Nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from market_data_core.timeutil import window_start_us

__all__ = ["EventClock", "Lateness"]


class Lateness(Enum):
    ON_TIME = "on_time"
    LATE = "late"  # window closed, within the correction horizon: corrects the bar
    TOO_LATE = "too_late"  # beyond the horizon: dead letter


@dataclass(slots=True)
class EventClock:
    """Watermark and close decisions for one (provider, symbol) (times in epoch microseconds)."""

    window_us: int
    allow_late_us: int
    flush_timeout_us: int
    horizon_us: int
    max_event_us: int | None = None
    last_arrival_wall_us: int = 0

    @classmethod
    def from_ms(
        cls, window_ms: int, allow_late_ms: int, flush_timeout_ms: int, horizon_ms: int
    ) -> EventClock:
        return cls(
            window_ms * 1000, allow_late_ms * 1000, flush_timeout_ms * 1000, horizon_ms * 1000
        )

    @property
    def watermark_us(self) -> int | None:
        return None if self.max_event_us is None else self.max_event_us - self.allow_late_us

    def window_of(self, event_us: int) -> int:
        return window_start_us(event_us, self.window_us // 1000)

    def classify(self, event_us: int) -> Lateness:
        """Lateness of an event against the watermark *before* it is observed."""
        wm = self.watermark_us
        end = self.window_of(event_us) + self.window_us
        if wm is None or end > wm:
            return Lateness.ON_TIME
        if end > wm - self.horizon_us:
            return Lateness.LATE
        return Lateness.TOO_LATE

    def observe(self, event_us: int, wall_us: int) -> None:
        if self.max_event_us is None or event_us > self.max_event_us:
            self.max_event_us = event_us
        self.last_arrival_wall_us = wall_us

    def closable(self, window_start: int, wall_us: int) -> bool:
        end = window_start + self.window_us
        wm = self.watermark_us
        if wm is not None and end <= wm:
            return True
        quiet = wall_us - self.last_arrival_wall_us >= self.flush_timeout_us
        return quiet and wall_us >= end + self.allow_late_us + self.flush_timeout_us
