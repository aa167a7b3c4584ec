from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from market_data_core.columnar import first_occurrences
from market_data_pipeline.consumers.windowing import (
    LATE_CODE,
    NO_EVENT_US,
    ON_TIME_CODE,
    TOO_LATE_CODE,
    EventClock,
    Lateness,
    classify_rows,
    running_max_before,
)

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


def test_quiet_is_judged_as_of_the_last_poll_that_read_everything() -> None:
    c = clock()
    c.observe(1 * S, wall_us=1 * S)  # the last arrival
    # the worker has not read all there was since 1.5 s (full polls, or a wait for the
    # store): at 10 s of wall time the symbol has been quiet for only 0.5 s as far as it
    # knows, and its window stays open
    assert not c.closable(0, wall_us=10 * S, read_wall_us=1_500_000)
    assert c.closable(0, wall_us=10 * S, read_wall_us=2 * S)  # read up to 1 s later: quiet
    # the window's own wall-clock bound still counts: end + late + flush = 3.5 s
    assert not c.closable(0, wall_us=3_400_000, read_wall_us=3_400_000)
    # a read time past the wall time (another clock) cannot make it quiet sooner
    assert not c.closable(0, wall_us=1_500_000, read_wall_us=9 * S)


# --- the vectorised decisions agree with EventClock, event by event ---------------------------

batches = st.lists(
    st.tuples(st.integers(0, 3), st.integers(-5 * S, 200 * S)), min_size=1, max_size=60
)


@settings(max_examples=500, deadline=None)
@given(
    batches,
    st.lists(st.integers(-5 * S, 200 * S) | st.none(), min_size=4, max_size=4),
    st.sampled_from([500, 1000, 2000, 5000]),
    st.integers(0, 3000),
    st.integers(0, 20_000),
)
def test_classify_rows_is_eventclock_row_by_row(
    rows: list[tuple[int, int]],
    start_max: list[int | None],
    window_ms: int,
    late_ms: int,
    horizon_ms: int,
) -> None:
    clocks = [clock(window_ms, late_ms, 1000, horizon_ms) for _ in range(4)]
    for c, m in zip(clocks, start_max, strict=True):
        c.max_event_us = m
    series = np.array([s for s, _ in rows], np.int32)
    ts = np.array([t for _, t in rows], np.int64)
    before = running_max_before(
        series, ts, {i: m for i, m in enumerate(start_max) if m is not None}
    )
    starts, codes = classify_rows(ts, before, clocks[0])
    names = {Lateness.ON_TIME: ON_TIME_CODE, Lateness.LATE: LATE_CODE}
    for i, (s, t) in enumerate(rows):
        c = clocks[s]
        lateness = c.classify(t)
        assert codes[i] == names.get(lateness, TOO_LATE_CODE), i
        assert starts[i] == c.window_of(t)
        if lateness is not Lateness.TOO_LATE:  # as the micro-batcher: too late is not observed
            c.observe(t, wall_us=0)
    ends = running_max_before(
        np.concatenate((series, np.arange(4, dtype=np.int32))),
        np.concatenate((ts, np.full(4, NO_EVENT_US))),
        {i: m for i, m in enumerate(start_max) if m is not None},
    )[-4:]
    assert [None if e == NO_EVENT_US else int(e) for e in ends] == [c.max_event_us for c in clocks]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=50))
def test_first_occurrences_keeps_the_first_arrival_of_each_key(
    keys: list[tuple[int, int]],
) -> None:
    first: dict[tuple[int, int], int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    a = np.array([k[0] for k in keys], np.int64)
    b = np.array([k[1] for k in keys], np.int64)
    assert first_occurrences(a, b).tolist() == sorted(first.values())
