"""The one retry primitive: :class:`Backoff` (capped exponential delays with jitter),
:func:`retry` (an async call retried through the errors it names) and :func:`sleep_or_stop`
(a sleep that a stop event cuts short).

Every stage retries through this module; the cap (longest delay) depends on what waits
behind the retry:

- bus poll (micro-batcher, inference): ``BusError``, cap 5 s, until stop;
- commit of closed windows (micro-batcher) and store calls (inference): ``StoreError``,
  cap 5 s; an outage (``StoreUnavailableError``) until stop, any other store error 3 times;
- ack and dead letter (micro-batcher): ``BusError``, cap 2 s, for 30 s (then the entries
  stay pending and the worker stops);
- outbox relay (micro-batcher): bus or store errors, cap 5 s, until stop; the final relay
  on stop: cap 2 s, for 10 s (the outbox keeps the rest for the next relay);
- publishing signals (inference): ``BusError``, cap 5 s, until stop;
- publishing a batch (publisher): ``BusError``, cap ``retry_max_delay_s``, for
  ``retry_timeout_s``;
- reconnecting a live feed: cap 30 s (coinbase), 60 s (ibkr), until ``aclose``.

Delays start at 0.1 s (the publisher: 0.05 s; the feeds: 0.5 s and 1 s) and double up to
the cap, each scaled by a random factor in ``[0.5, 1]`` ("equal jitter"). The consumers'
loops doubled without jitter before this module; the jitter is deliberate: workers that lost
the same server do not all come back in the same millisecond. Likewise unified: the
inference stage counted outage retries toward its 3 store attempts; like the micro-batcher,
it now counts only the failures that are not an outage.

:func:`retry` runs on tenacity's ``AsyncRetrying``: its retry predicate, stop conditions and
before-sleep hook; this module adds what tenacity does not have, the stop event. A stop event
set (SIGINT/SIGTERM) ends the retry with :class:`~market_data_core.errors.StoppedError`
instead of waiting out the outage, and it cuts a sleep in progress short (the sleep is
:func:`sleep_or_stop`), so shutdown never waits for a backoff. Loops that do more than retry
one call (a poll loop, the relay, a feed's reconnect) use :class:`Backoff` and
:func:`sleep_or_stop` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import tenacity
import tenacity.stop

from market_data_core.errors import StoppedError, StoreError, StoreUnavailableError

__all__ = [
    "STORE_ATTEMPTS_NON_TRANSIENT",
    "Backoff",
    "next_step",
    "retry",
    "retry_store",
    "sleep_or_stop",
]

T = TypeVar("T")
ErrorTypes = type[BaseException] | tuple[type[BaseException], ...]


class Backoff:
    """Capped exponential backoff with jitter.

    Delay ``n`` (from 0) is ``min(max_s, initial_s * 2**n)`` seconds scaled by a random
    factor in ``[0.5, 1.0]`` ("equal jitter": clients that lost the same server do not
    return in step, yet each waits at least half the nominal delay). :meth:`reset` after a
    success (a healthy connection, a poll that worked). Raises ``ValueError`` unless
    ``0 < initial_s <= max_s``.
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
        """The next delay in seconds (and one more attempt counted)."""
        nominal: float = min(self.max_s, self.initial_s * 2.0 ** min(self.attempt, 62))
        self.attempt += 1
        return nominal * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0


async def sleep_or_stop(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile (at once if it already is);
    ``stop=None`` is a plain ``asyncio.sleep``. Never raises ``TimeoutError``."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class _GiveUp(tenacity.stop.stop_base):
    """When the retry ends: stop set, the ``max_failures``-th failure that is not transient,
    or a next sleep that would end after ``give_up_after_s`` (from the first attempt)."""

    def __init__(
        self,
        stop: asyncio.Event | None,
        give_up_after_s: float | None,
        max_failures: int | None,
        transient: ErrorTypes,
    ) -> None:
        self.stop = stop
        self.give_up_after_s = give_up_after_s
        self.max_failures = max_failures
        self.transient = transient
        self.failures = 0
        self.stopped = False

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        assert retry_state.outcome is not None
        if not isinstance(retry_state.outcome.exception(), self.transient):
            self.failures += 1
        if self.stop is not None and self.stop.is_set():
            self.stopped = True
            return True
        if self.max_failures is not None and self.failures >= self.max_failures:
            return True
        if self.give_up_after_s is None:
            return False
        elapsed_s = retry_state.seconds_since_start or 0.0
        return elapsed_s + retry_state.upcoming_sleep > self.give_up_after_s


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    retry_on: ErrorTypes,
    backoff: Backoff,
    stop: asyncio.Event | None = None,
    give_up_after_s: float | None = None,
    max_failures: int | None = None,
    transient: ErrorTypes = (),
    on_failure: Callable[[BaseException, float | None], None] | None = None,
) -> T:
    """``await call()`` until it returns; return what it returned.

    An error of ``retry_on`` is retried after ``backoff.next_delay_s()`` seconds; any other
    error (and a cancellation) propagates at once. The retry ends:

    * when ``stop`` is set: raises :class:`~market_data_core.errors.StoppedError` (its
      ``__cause__`` the last error); a sleep in progress ends at once;
    * at the ``max_failures``-th failure that is not ``transient`` (``StoreError`` but not
      ``StoreUnavailableError``: a bad write is tried a few times, an outage as long as it
      lasts): that error propagates;
    * when the next sleep would end more than ``give_up_after_s`` seconds after the first
      attempt started: the last error propagates.

    ``on_failure(error, delay_s)`` sees every failure of ``retry_on``, with the delay before
    the next attempt, or ``None`` when the retry ends on it (for logs and metrics).
    """
    give_up = _GiveUp(stop, give_up_after_s, max_failures, transient)

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        if on_failure is not None:
            assert retry_state.outcome is not None
            error = retry_state.outcome.exception()
            assert error is not None
            on_failure(error, retry_state.upcoming_sleep)

    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        stop=give_up,
        wait=lambda _state: backoff.next_delay_s(),
        sleep=functools.partial(sleep_or_stop, stop),
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> T:
        # tenacity awaits only what a coroutine function returns: a lambda returning an
        # awaitable would come back un-awaited
        return await call()

    try:
        return cast(T, await retrying(attempt))
    except retry_on as exc:
        if on_failure is not None:
            on_failure(exc, None)
        if give_up.stopped:
            raise StoppedError("stopped while retrying") from exc
        raise


def next_step(delay_s: float | None) -> str:
    """What follows a failure reported to ``on_failure``, for a log line: ``"giving up"``
    (``delay_s`` is ``None``) or ``"retrying in 1.6s"``."""
    return "giving up" if delay_s is None else f"retrying in {delay_s:.1f}s"


STORE_ATTEMPTS_NON_TRANSIENT = 3
"""Attempts a store write gets when it fails for another reason than an outage."""


async def retry_store(
    call: Callable[[], Awaitable[T]],
    *,
    stop: asyncio.Event | None,
    on_failure: Callable[[BaseException, float | None], None] | None = None,
) -> T:
    """:func:`retry` as the streaming stages retry a store write: an outage
    (``StoreUnavailableError``) for as long as it lasts, any other ``StoreError``
    :data:`STORE_ATTEMPTS_NON_TRANSIENT` times, with backoff from 0.1 s doubling to 5 s; ends
    with ``StoppedError`` when ``stop`` is set."""
    return await retry(
        call,
        retry_on=StoreError,
        backoff=Backoff(0.1, 5.0),
        stop=stop,
        max_failures=STORE_ATTEMPTS_NON_TRANSIENT,
        transient=StoreUnavailableError,
        on_failure=on_failure,
    )
