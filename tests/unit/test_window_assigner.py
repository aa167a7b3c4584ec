from __future__ import annotations

from market_data_pipeline.consumers.windowing import EventClock, Lateness

S = 1_000_000


def clock(
    window_ms: int = 2000, late_ms: int = 500, flush_ms: int = 1000, horizon_ms: int = 60_000
) -> EventClock:
    return EventClock.from_ms(window_ms, late_ms, flush_ms, horizon_ms)


def test_windows_are_epoch_aligned_half_open() -> None:
    c = clock(window_ms=2000)
    assert c.window_of(0) == 0
    assert c.window_of(2 * S - 1) == 0
    assert c.window_of(2 * S) == 2 * S
    c = clock(window_ms=500)
    assert c.window_of(1_582_329_602_111_000) == 1_582_329_602_000_000


def test_watermark_closes_window_only_after_allowed_lateness() -> None:
    c = clock()
    c.observe(2 * S + 400_000, wall_us=10**18)  # wm = 1.9 s < end 2 s
    assert not c.closable(0, wall_us=0)
    c.observe(2 * S + 500_000, wall_us=0)  # wm = 2.0 s == end
    assert c.closable(0, wall_us=0)
    assert not c.closable(2 * S, wall_us=0)


def test_event_inside_allowed_lateness_is_on_time() -> None:
    c = clock()
    c.observe(2 * S + 499_999, wall_us=0)
    assert c.classify(1 * S) is Lateness.ON_TIME


def test_late_within_horizon_and_too_late_beyond() -> None:
    c = clock(horizon_ms=10_000)
    c.observe(100 * S, wall_us=0)  # wm = 99.5 s
    assert c.classify(99 * S) is Lateness.ON_TIME  # window [98,100): end 100 > wm 99.5
    assert c.classify(96 * S) is Lateness.LATE
    assert c.classify(80 * S) is Lateness.TOO_LATE
    assert c.classify(100 * S) is Lateness.ON_TIME


def test_wall_clock_fallback_needs_a_quiet_symbol() -> None:
    c = clock()
    c.observe(1 * S, wall_us=1 * S)  # live: event time == wall time
    # end 2 s + late 0.5 + flush 1.0 = 3.5 s
    assert not c.closable(0, wall_us=3 * S)
    assert c.closable(0, wall_us=3_500_000)
    # busy symbol replaying old data: arrivals keep coming -> no wall-clock close
    c.observe(1 * S + 1, wall_us=3_400_000)
    assert not c.closable(0, wall_us=3_500_000)
    assert c.closable(0, wall_us=4_400_000)
