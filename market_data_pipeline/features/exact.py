"""Exact rolling sums: a window of samples with running power sums that never drift.

Windows: a ``horizon`` window at event time t holds the samples with ts in (t - horizon, t]
(pandas' ``rolling("60s")``); a ``periods`` window the last ``periods`` samples, and is ``nan``
until full. Running sums (of p*v, v, and powers 1..4 of the samples) are kept *exactly* as
float partials (Shewchuk, as ``math.fsum``) and evicted exactly: O(1) per update, no drift,
and every value is a pure function of the window's contents, so a restarted engine warmed up
from the store reproduces the same features bit for bit (and therefore the same signals, even
where a condition is an exact tie such as close == vwap). Variance is E[x^2] - E[x]^2 of those
exact sums: for prices its relative error is about 1e-16 * mean^2 / variance.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["NAN", "Moments", "add_exact"]

NAN: Final = math.nan


def add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to an exact sum kept as non-overlapping float partials (Shewchuk's algorithm,
    as in ``math.fsum``): adding and later subtracting the same value leaves no trace."""
    i = 0
    for y in partials:
        hi = x + y  # Knuth's branch-free two-sum: hi + lo == x + y exactly
        yy = hi - x
        lo = (x - (hi - yy)) + (y - yy)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


class Moments:
    """A window of samples with exact running power sums (order 1..4).

    ``horizon_us`` evicts by time ((t - horizon, t]); ``periods`` by count. Each sum is kept
    exactly (:func:`add_exact`) and read correctly rounded (``math.fsum``), so a value is a
    pure function of the window's contents: no drift over any number of updates, and a
    restarted (warmed-up) engine computes bit-identical features, hence identical signals.
    """

    __slots__ = ("horizon_us", "order", "p1", "p2", "p3", "p4", "periods", "xs")

    def __init__(self, order: int, horizon_us: int | None, periods: int | None) -> None:
        self.order = order
        self.horizon_us = horizon_us
        self.periods = periods
        self.xs: deque[tuple[int, float]] = deque()
        self.p1: list[float] = []
        self.p2: list[float] = []
        self.p3: list[float] = []
        self.p4: list[float] = []

    def push(self, ts_us: int, x: float) -> list[tuple[int, float]]:
        """Add a sample; returns the samples a ``periods`` window evicted for it (a horizon
        window's evictions depend on the time alone: see :meth:`advance`)."""
        xs = self.xs
        xs.append((ts_us, x))
        self._add(x, False)
        evicted: list[tuple[int, float]] = []
        if self.periods is not None:
            while len(xs) > self.periods:
                old = xs.popleft()
                self._add(old[1], True)
                evicted.append(old)
        else:
            self.advance(ts_us)
        return evicted

    def advance(self, ts_us: int) -> None:
        """Evict, by time, the samples a horizon window no longer holds at ``ts_us`` (none
        for a ``periods`` window)."""
        if self.horizon_us is None:
            return
        xs = self.xs
        cutoff = ts_us - self.horizon_us
        while xs and xs[0][0] <= cutoff:
            self._add(xs.popleft()[1], True)

    def pop_last(self) -> None:
        """Remove the newest sample (exactly: the sums are as if it was never added)."""
        self._add(self.xs.pop()[1], True)

    def restore(self, evicted: Sequence[tuple[int, float]]) -> None:
        """Put back, oldest first, samples a push evicted (undoing that push's evictions)."""
        for item in reversed(evicted):
            self.xs.appendleft(item)
            self._add(item[1], False)

    def _add(self, x: float, evict: bool) -> None:
        order = self.order
        x2 = x * x
        if evict:
            add_exact(self.p1, -x)
            if order >= 2:
                add_exact(self.p2, -x2)
                if order >= 3:
                    add_exact(self.p3, -x2 * x)
                    if order >= 4:
                        add_exact(self.p4, -x2 * x2)
        else:
            add_exact(self.p1, x)
            if order >= 2:
                add_exact(self.p2, x2)
                if order >= 3:
                    add_exact(self.p3, x2 * x)
                    if order >= 4:
                        add_exact(self.p4, x2 * x2)

    def state(self) -> list[Any]:
        xs = self.xs
        return [
            [t for t, _ in xs],
            [x for _, x in xs],
            self.p1[:],
            self.p2[:],
            self.p3[:],
            self.p4[:],
        ]

    def load(self, state: Sequence[Any]) -> None:
        ts, xs, p1, p2, p3, p4 = state
        self.xs = deque(zip(ts, xs, strict=True))
        self.p1, self.p2, self.p3, self.p4 = list(p1), list(p2), list(p3), list(p4)

    @property
    def n(self) -> int:
        return len(self.xs)

    def ready(self, minimum: int) -> bool:
        n = len(self.xs)
        return n >= (self.periods if self.periods is not None else minimum) and n >= minimum

    def total(self) -> float:
        return math.fsum(self.p1)

    def mean(self) -> float:
        return math.fsum(self.p1) / len(self.xs)

    def _central(self) -> tuple[int, float, float]:
        """(n, mean, population variance); the variance is 0 for a constant window."""
        n = len(self.xs)
        mean = math.fsum(self.p1) / n
        ex2 = math.fsum(self.p2) / n
        m2 = ex2 - mean * mean
        return n, mean, 0.0 if m2 <= 1e-14 * ex2 else m2

    def var(self, ddof: int) -> float:
        n, _, m2 = self._central()
        return m2 * n / (n - ddof)

    def skew(self) -> float:
        n, d, m2 = self._central()
        if m2 == 0.0:
            return NAN
        ex2 = math.fsum(self.p2) / n
        ex3 = math.fsum(self.p3) / n
        m3 = ex3 - 3 * d * ex2 + 2 * d * d * d
        g1: float = m3 / (m2 * math.sqrt(m2))
        return g1 * math.sqrt(n * (n - 1)) / (n - 2)

    def kurt(self) -> float:
        n, d, m2 = self._central()
        if m2 == 0.0:
            return NAN
        ex2 = math.fsum(self.p2) / n
        ex3 = math.fsum(self.p3) / n
        ex4 = math.fsum(self.p4) / n
        m4 = ex4 - 4 * d * ex3 + 6 * d * d * ex2 - 3 * d * d * d * d
        g2 = m4 / (m2 * m2) - 3.0
        return ((n + 1) * g2 + 6.0) * (n - 1) / ((n - 2) * (n - 3))
