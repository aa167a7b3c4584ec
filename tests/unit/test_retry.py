"""The one retry primitive: Backoff's delays, retry's ends (success, stop, a limit of
non-transient failures, a time budget) and a sleep that a stop event cuts short."""

from __future__ import annotations

import asyncio
import random

import pytest

from market_data_core.errors import BusError, StoppedError, StoreError, StoreUnavailableError
from market_data_pipeline.retry import Backoff, retry, sleep_or_stop


def test_backoff_grows_exponentially_with_jitter_and_caps() -> None:
    backoff = Backoff(0.5, 4.0, rng=random.Random(3))
    delays = [backoff.next_delay_s() for _ in range(8)]
    nominal = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for got, nom in zip(delays, nominal, strict=True):
        assert nom / 2 <= got <= nom
    assert len(set(delays)) == len(delays)  # jitter: no two alike
    backoff.reset()
    assert 0.25 <= backoff.next_delay_s() <= 0.5


def test_backoff_jitter_differs_between_clients() -> None:
    a = Backoff(1.0, 30.0, rng=random.Random(1))
    b = Backoff(1.0, 30.0, rng=random.Random(2))
    assert [a.next_delay_s() for _ in range(3)] != [b.next_delay_s() for _ in range(3)]


def test_backoff_validates_bounds() -> None:
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)


class Flaky:
    """Fails with the given errors in turn, then returns ``"done"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def _bus_error() -> BusError:
    return BusError("refused", backend="redis", operation="publish")


async def test_retry_returns_once_the_call_succeeds_and_reports_each_delay() -> None:
    call = Flaky(_bus_error(), _bus_error())
    seen: list[tuple[str, float | None]] = []
    result = await retry(
        call,
        retry_on=BusError,
        backoff=Backoff(0.001, 0.002, rng=random.Random(1)),
        on_failure=lambda exc, delay_s: seen.append((type(exc).__name__, delay_s)),
    )
    assert result == "done"
    assert call.calls == 3
    assert [name for name, _ in seen] == ["BusError", "BusError"]
    first, second = (d for _, d in seen)
    assert first is not None and second is not None
    assert 0.0005 <= first <= 0.001 and 0.001 <= second <= 0.002  # equal jitter, doubled


async def test_an_error_not_retried_propagates_at_once() -> None:
    call = Flaky(ValueError("bug"), _bus_error())
    with pytest.raises(ValueError, match="bug"):
        await retry(call, retry_on=BusError, backoff=Backoff(0.001, 0.001))
    assert call.calls == 1


async def test_non_transient_failures_are_limited_but_an_outage_is_not() -> None:
    outage = [StoreUnavailableError("down") for _ in range(5)]
    call = Flaky(*outage, StoreError("bad row"), StoreError("bad row"), StoreError("third"))
    reported: list[float | None] = []
    with pytest.raises(StoreError, match="third"):
        await retry(
            call,
            retry_on=StoreError,
            backoff=Backoff(0.001, 0.001),
            max_failures=3,
            transient=StoreUnavailableError,
            on_failure=lambda _exc, delay_s: reported.append(delay_s),
        )
    assert call.calls == 8  # five outages, then the third non-transient failure ends it
    assert reported[-1] is None and None not in reported[:-1]


async def test_give_up_after_s_ends_with_the_last_error() -> None:
    calls = 0

    async def always_down() -> None:
        nonlocal calls
        calls += 1
        raise BusError(f"down {calls}", backend="kafka", operation="publish")

    with pytest.raises(BusError) as info:
        await retry(
            always_down, retry_on=BusError, backoff=Backoff(0.01, 0.02), give_up_after_s=0.1
        )
    assert calls >= 2
    assert str(info.value) == f"down {calls}"


async def test_a_stop_cuts_the_backoff_short_and_raises_stopped_error() -> None:
    stop = asyncio.Event()
    failed = asyncio.Event()

    async def down() -> None:
        failed.set()
        raise StoreUnavailableError("connection refused")

    task = asyncio.create_task(
        retry(down, retry_on=StoreError, backoff=Backoff(3600.0, 3600.0), stop=stop)
    )
    await failed.wait()
    stop.set()
    # an hour of backoff ahead: only the stop event can end it within the guard
    async with asyncio.timeout(30):
        with pytest.raises(StoppedError) as info:
            await task
    assert isinstance(info.value.__cause__, StoreUnavailableError)


async def test_a_stop_set_before_the_first_failure_ends_on_that_failure() -> None:
    stop = asyncio.Event()
    stop.set()
    call = Flaky(_bus_error(), _bus_error())
    with pytest.raises(StoppedError):
        await retry(call, retry_on=BusError, backoff=Backoff(0.001, 0.001), stop=stop)
    assert call.calls == 1


async def test_a_success_is_returned_even_with_stop_set() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await retry(Flaky(), retry_on=BusError, backoff=Backoff(), stop=stop) == "done"


async def test_cancellation_is_never_retried() -> None:
    started = asyncio.Event()
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(retry(slow, retry_on=Exception, backoff=Backoff(0.001, 0.001)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1


async def test_sleep_or_stop_returns_when_stop_is_set() -> None:
    stop = asyncio.Event()
    sleeper = asyncio.create_task(sleep_or_stop(stop, 3600.0))
    await asyncio.sleep(0)
    assert not sleeper.done()
    stop.set()
    async with asyncio.timeout(30):
        await sleeper


async def test_sleep_or_stop_without_an_event_is_a_plain_sleep() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await sleep_or_stop(None, 0.02)
    assert loop.time() - t0 >= 0.02


async def test_a_lambda_returning_an_awaitable_is_awaited() -> None:
    call = Flaky(_bus_error())
    result = await retry(lambda: call(), retry_on=BusError, backoff=Backoff(0.001, 0.001))
    assert result == "done"
    assert call.calls == 2
