"""Token-bucket pacing: at most ``rate_per_s`` tokens per second on average, bursts up to
``burst`` tokens.

A caller may take more tokens than the bucket holds (a whole publish batch); the bucket then
goes into debt and the caller sleeps until the debt is repaid, so the long-run rate holds for
any batch size.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


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
