"""Token-bucket pacing: at most ``rate_per_s`` tokens per second on average, bursts up to
``burst`` tokens.

A caller may take more tokens than the bucket holds (a whole publish batch); the bucket then
goes into debt and the caller sleeps until the debt is repaid, so the long-run rate holds for
any batch size.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

__all__ = ["Backoff", "TokenBucket"]


class TokenBucket:
    """``await bucket.acquire(n)`` returns once ``n`` tokens have been paid for.

    ``rate_per_s=None`` disables pacing (``acquire`` returns at once). The bucket starts with
    ``initial`` tokens (default: full). ``clock`` is injectable for tests; it must be monotonic
    and in seconds.
    """

    def __init__(
        self,
        rate_per_s: float | None,
        *,
        burst: float | None = None,
        initial: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
        self.rate_per_s = rate_per_s
        # Default burst: a tenth of a second of traffic, at least one token.
        self.burst = burst if burst is not None else max(1.0, (rate_per_s or 0.0) / 10)
        self._clock = clock
        self._tokens = self.burst if initial is None else min(initial, self.burst)
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        assert self.rate_per_s is not None
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now

    def delay_for(self, tokens: float) -> float:
        """Take ``tokens`` now and return how long (s) the caller must wait to honour the rate."""
        if self.rate_per_s is None:
            return 0.0
        self._refill()
        self._tokens -= tokens
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s

    async def acquire(self, tokens: float = 1.0) -> None:
        """Wait until ``tokens`` may be spent; callers are served in arrival order."""
        if self.rate_per_s is None:
            return
        async with self._lock:
            wait_s = self.delay_for(tokens)
            if wait_s > 0:
                await asyncio.sleep(wait_s)


class Backoff:
    """Capped exponential backoff with jitter for reconnect loops.

    Delay ``n`` (from 0) is ``min(max_s, initial_s * 2**n)`` scaled by a random factor in
    ``[0.5, 1.0]`` ("equal jitter": clients that lost the same server do not return in step,
    yet each waits at least half the nominal delay). :meth:`reset` after a healthy connection.
    """

    def __init__(
        self, initial_s: float = 0.5, max_s: float = 30.0, *, rng: random.Random | None = None
    ) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay_s(self) -> float:
        nominal: float = min(self.max_s, self.initial_s * 2.0 ** min(self.attempt, 62))
        self.attempt += 1
        return nominal * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0
