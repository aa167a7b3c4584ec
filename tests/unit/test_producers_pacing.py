"""Token bucket pacing."""

from __future__ import annotations

import asyncio
import time

import pytest

from market_data_pipeline.producers.pacing import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_charges_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100.0, burst=10.0, clock=clock)
    assert bucket.delay_for(10) == 0.0
    # 50 more tokens at 100/s: the caller owes half a second.
    assert bucket.delay_for(50) == pytest.approx(0.5)
    clock.now = 0.5
    assert bucket.delay_for(0) == pytest.approx(0.0)


def test_bucket_refills_at_rate_and_caps_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, burst=5.0, clock=clock)
    bucket.delay_for(5)
    clock.now = 100.0  # long idle: only `burst` tokens accumulate
    assert bucket.delay_for(5) == 0.0
    assert bucket.delay_for(1) == pytest.approx(0.1)


def test_unpaced_bucket_never_waits() -> None:
    bucket = TokenBucket(None)
    assert bucket.delay_for(1e9) == 0.0


async def test_acquire_holds_the_long_run_rate() -> None:
    bucket = TokenBucket(400.0, burst=1.0)
    started = time.monotonic()
    for _ in range(40):
        await bucket.acquire(5)  # 200 tokens at 400/s
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.5


def test_bucket_rejects_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBucket(0)


async def test_acquire_serves_concurrent_callers() -> None:
    bucket = TokenBucket(1000.0, burst=1.0)
    started = time.monotonic()
    await asyncio.gather(*(bucket.acquire(50) for _ in range(6)))
    assert time.monotonic() - started >= 0.25


def test_bucket_can_start_empty() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100.0, burst=50.0, initial=0.0, clock=clock)
    assert bucket.delay_for(10) == pytest.approx(0.1)
