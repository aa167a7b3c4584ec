"""The outbox relay: every committed bar revision reaches ``bars_topic``, in order.

The store records each inserted or changed bar in its outbox (``bar_changes``) in the
transaction that wrote it; :class:`BarRelay` publishes the records with
:meth:`StoreClient.relay_bar_changes` (one relay at a time across all workers, under the store's
lock; records are marked only after the publish succeeded). It runs when woken after a commit
(:meth:`BarRelay.wake`) and every ``_RELAY_POLL_S`` (changes a dead worker or a failed publish
left), prunes relayed changes older than ``store.changes_retention`` every ``_PRUNE_EVERY_S``,
and retries a :class:`BusError` or :class:`StoreError` with capped backoff: nothing leaves the
outbox unpublished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from market_data_core.codec import encode_bar
from market_data_core.config import AppConfig
from market_data_core.contracts import WindowBar
from market_data_core.errors import BusError, StoreError
from market_data_core.protocols import Bus, StoreClient, routing_key
from market_data_core.timeutil import parse_duration_ms
from market_data_pipeline import telemetry
from market_data_pipeline.consumers.batch_state import MicroBatchStats
from market_data_pipeline.retry import Backoff, next_step, retry, sleep_or_stop

__all__ = ["BarRelay"]

log = logging.getLogger(__name__)

_COMPONENT = "microbatch"
_RELAY_POLL_S = 1.0
_RELAY_BATCH = 1000
_RELAY_FINAL_S = 10.0
_PRUNE_EVERY_S = 600.0


class BarRelay:
    """A micro-batch worker's relay of the store's outbox to ``config.bus.bars_topic``; counts
    in ``stats`` (``bars_relayed``, ``relay_calls``, ``relay_s``, ``relay_retries``)."""

    def __init__(
        self, config: AppConfig, bus: Bus, store: StoreClient, stats: MicroBatchStats
    ) -> None:
        self._config = config
        self._bus = bus
        self._store = store
        self.stats = stats
        self._wake = asyncio.Event()
        self._retention_ms = parse_duration_ms(config.store.changes_retention)

    def wake(self) -> None:
        """Relay now (a commit put changes in the outbox)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay the outbox when woken (:meth:`wake`: after each commit) and every
        ``_RELAY_POLL_S``; prune relayed changes every ``_PRUNE_EVERY_S``. Errors are retried
        with capped backoff: the changes stay in the outbox until a publish succeeded."""
        backoff = Backoff(0.1, 5.0)
        wait_s = _RELAY_POLL_S
        next_prune = time.monotonic() + _PRUNE_EVERY_S
        while not stop.is_set():
            # a commit wakes the relay at once, also while it backs off after a failure:
            # a commit that went through means the store is back
            await sleep_or_stop(self._wake, wait_s)
            self._wake.clear()
            if stop.is_set():
                return
            try:
                await self._pending(confirm=False)
                if time.monotonic() >= next_prune:
                    await self._store.prune_bar_changes(self._retention_ms)
                    next_prune = time.monotonic() + _PRUNE_EVERY_S
                backoff.reset()
                wait_s = _RELAY_POLL_S
            except (BusError, StoreError) as exc:
                wait_s = backoff.next_delay_s()
                self._failed(exc, wait_s)

    def _failed(self, exc: BaseException, delay_s: float | None) -> None:
        self.stats.relay_retries += 1
        telemetry.ERRORS.labels(component=_COMPONENT, reason="relay").inc()
        telemetry.RETRIES.labels(component=_COMPONENT).inc()
        log.warning(
            "relaying bar changes to %s failed (%s); they stay in the outbox, %s",
            self._config.bus.bars_topic,
            exc,
            next_step(delay_s),
        )

    async def _pending(self, *, confirm: bool) -> bool:
        """Relay batches until a batch is not full (``confirm``: until one finds the outbox
        empty); False if another relay holds the outbox (it relays them). Raises
        ``BusError``/``StoreError``; nothing is lost then."""
        while True:
            t0 = time.perf_counter()
            result = await self._store.relay_bar_changes(self._publish_bars, limit=_RELAY_BATCH)
            self.stats.relay_calls += 1
            self.stats.relay_s += time.perf_counter() - t0
            self.stats.bars_relayed += result.relayed
            if result.busy:
                return False
            if result.relayed == 0 or not (confirm or result.more):
                return True

    async def outbox_empty(self) -> bool:
        """``--drain``: is everything committed also published? (Relays what is left.)"""
        try:
            return await self._pending(confirm=True)
        except (BusError, StoreError) as exc:
            self._failed(exc, None)
            return False

    async def final(self) -> None:
        """Stopping: relay what is left for up to ``_RELAY_FINAL_S``; whatever is not
        relayed then stays in the outbox for the next relay of any worker (another worker
        relaying meanwhile counts as a failure here: it is retried like one)."""

        async def relay_all() -> None:
            if not await self._pending(confirm=True):
                raise _RelayBusy

        def report(exc: BaseException, delay_s: float | None) -> None:
            if not isinstance(exc, _RelayBusy):
                self._failed(exc, delay_s)

        with contextlib.suppress(BusError, StoreError, _RelayBusy):
            await retry(
                relay_all,
                retry_on=(BusError, StoreError, _RelayBusy),
                backoff=Backoff(0.1, 2.0),
                give_up_after_s=_RELAY_FINAL_S,
                on_failure=report,
            )

    async def _publish_bars(self, bars: Sequence[WindowBar]) -> None:
        codec = self._config.bus.codec
        items = [(routing_key(b.provider, b.symbol), encode_bar(b, codec)) for b in bars]
        await self._bus.publish(self._config.bus.bars_topic, items)


class _RelayBusy(Exception):
    """Another worker's relay holds the outbox: the final relay waits for it as for a failure."""
