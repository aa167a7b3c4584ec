"""The inference stage: closed bars from ``mdp.bars`` -> features -> adapter -> signals in the
``signals`` table and on ``mdp.signals``.

Per poll (as a member of the ``<bus.group>.infer.<adapter>.<interval>`` group on
``bus.bars_topic``; replicas of the same adapter and interval share the bars):

1. decode each entry with ``decode_bar``; an undecodable one, or a bar with a non-positive
   price, goes to the dead-letter stream (``consumer.dead_letter``, which acks it) and the loop
   continues;
2. bars of another interval than ``features.interval`` (default: the micro-batch window) are
   acknowledged untouched (counted as ``skipped``);
3. the first time a (provider, symbol) is seen, its features warm up from the store: its
   stored bars of the ``features.warmup_bars`` intervals *just before* that bar
   (``StoreClient.bars_range``; no signals), so a restarted engine is right at once. Warming
   up to the bar the bus delivers (rather than to the store's latest bars) means a backlog on
   the bus is still scored instead of warmed past, and a consumer that takes over a shard
   warms up its symbols the same way;
4. each bar newer than its symbol's last one updates the features and is evaluated; an older
   or equal one (a redelivery, a second replay, a late correction) changes nothing;
5. the batch's signals that are not in the table yet are published to ``bus.signals_topic``,
   all of them are upserted (idempotent by ``signal_id``), THEN the entries are acknowledged.

Publish-before-upsert makes "in the table" imply "was published": a crash in between leads to a
redelivery that publishes again (at-least-once on the stream, exactly-once in the table), and a
second replay of the same bars adds nothing to either. The store down -> retry with capped
backoff, nothing acknowledged meanwhile. Signal ids are deterministic, so every retry converges.
A batch left unacknowledged by a clean stop (the store was down) is handed back with
:meth:`BusConsumer.release`, so the next start's re-read does not count toward
``bus.max_deliveries``.

Quotes (``spread_bps``/``imbalance``) are not read by this stage yet: those features stay
``nan`` here (rules that use them never fire); :meth:`FeatureEngine.update_quote` is ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from market_data_core.codec import decode_bar, encode_signal
from market_data_core.config import AppConfig
from market_data_core.contracts import Bar, Signal
from market_data_core.errors import BusError, ContractError, StoreError, StoreUnavailableError
from market_data_core.protocols import (
    Bus,
    BusRecord,
    SignalsStoreClient,
    StoreClient,
    routing_key,
)
from market_data_core.timeutil import format_duration_ms, parse_duration_ms
from market_data_pipeline import telemetry
from market_data_pipeline.consumers import sleep_or_stop
from market_data_pipeline.inference.engine import InferenceEngine

__all__ = ["InferenceConsumer", "InferenceStats", "features_interval", "inference_group"]

log = logging.getLogger(__name__)
_COMPONENT = "inference"
_MAX_BATCH = 500
_MAX_STORE_ATTEMPTS_NON_TRANSIENT = 3
_LIVE_WINDOW_S = 3600.0
T = TypeVar("T")


def inference_group(config: AppConfig, adapter: str, interval: str) -> str:
    """The consumer group of one (adapter, interval) on the bars topic: replicas of one adapter
    and interval share the bars; other adapters or intervals each see every bar."""
    return f"{config.bus.group}.infer.{adapter}.{interval}"


def features_interval(config: AppConfig) -> str:
    """The bar interval features run on: ``features.interval``, else the micro-batch window."""
    return config.features.interval or format_duration_ms(config.micro_batch.window_ms)


@dataclass(slots=True)
class InferenceStats:
    """What one run did (also the ``job_runs`` counts)."""

    bars_in: int = 0
    bars_scored: int = 0
    bars_stale: int = 0
    skipped: int = 0
    warmup_bars: int = 0
    signals: int = 0
    signals_published: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    store_retries: int = 0


class InferenceConsumer:
    """One inference worker; see the module docstring for the guarantees."""

    def __init__(
        self,
        config: AppConfig,
        bus: Bus,
        store: StoreClient,
        signals_store: SignalsStoreClient,
        engine: InferenceEngine,
        *,
        consumer_name: str,
        group: str | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        # one group per (adapter, interval): two infer processes that score different bars or
        # with different adapters must each see every bar, not split them between them
        self.group = group or inference_group(config, engine.adapter.name, engine.interval)
        self._bus = bus
        self._store = store
        self._signals_store = signals_store
        self._topic = config.bus.bars_topic
        self._consumer = bus.consumer(self._topic, self.group, consumer_name)
        self._warm: set[tuple[str, str]] = set()
        self._stage_letters: dict[str, int] = {}
        self.stats = InferenceStats()
        self._lag = telemetry.STREAM_CONSUMER_LAG.labels(
            topic=self._topic, group=self.group, consumer=consumer_name
        )
        telemetry.init_error_series(_COMPONENT, "bus")
        self._warmup_span = timedelta(
            milliseconds=parse_duration_ms(engine.interval) * config.features.warmup_bars
        )

    async def run(
        self, stop: asyncio.Event, *, drain: bool = False, idle_s: float = 3.0
    ) -> InferenceStats:
        """Consume until ``stop`` is set (or, with ``drain``, until the input has been idle
        for ``idle_s`` seconds; everything read by then is committed and acknowledged)."""
        idle_since: float | None = None
        backoff_s = 0.1
        heartbeat = telemetry.Heartbeat(max_age_s=30.0)  # /healthz 503 when the loop is stuck
        check_name = f"infer:{self._consumer.name}"
        telemetry.register_health_check(check_name, heartbeat)
        unacked: Sequence[BusRecord] = []
        clean = False
        try:
            while not stop.is_set():
                heartbeat.beat()
                try:
                    records = await self._consumer.poll(_MAX_BATCH, self.config.bus.block_ms)
                    self._count_letters()
                    backoff_s = 0.1
                except BusError as exc:
                    telemetry.ERRORS.labels(component=_COMPONENT, reason="bus").inc()
                    log.warning("bus poll failed (%s); retrying in %.1fs", exc, backoff_s)
                    await sleep_or_stop(stop, backoff_s)
                    backoff_s = min(backoff_s * 2, 5.0)
                    continue
                if records:
                    idle_since = None
                    telemetry.EVENTS_CONSUMED.labels(topic=self._topic, group=self.group).inc(
                        len(records)
                    )
                    if not await self._handle(records, stop):
                        unacked = records  # stopping while the store was down
                        break
                else:
                    idle_since = idle_since if idle_since is not None else time.monotonic()
                    self._lag.set(0.0)
                    if drain and time.monotonic() - idle_since >= idle_s:
                        break
            clean = True
        finally:
            telemetry.unregister_health_check(check_name)
            if clean and unacked:
                try:
                    await self._consumer.release(unacked)
                except BusError as exc:
                    log.warning("could not hand back %d pending entries (%s)", len(unacked), exc)
            await self._consumer.aclose()
            self._count_letters()
        return self.stats

    def _count_letters(self) -> None:
        """Dead letters of this run: this stage's and those the bus layer wrote."""
        reasons = dict(self._stage_letters)
        for reason, n in self._consumer.bus_dead_letters.items():
            reasons[reason] = reasons.get(reason, 0) + n
        self.stats.dead_letter_reasons = reasons
        self.stats.dead_letters = sum(reasons.values())

    async def _handle(self, records: Sequence[BusRecord], stop: asyncio.Event) -> bool:
        try:
            return await self._handle_batch(records, stop)
        except _Stopped:
            return False

    async def _handle_batch(self, records: Sequence[BusRecord], stop: asyncio.Event) -> bool:
        to_ack: list[BusRecord] = []
        signals: list[Signal] = []
        last_bar: Bar | None = None
        interval = self.engine.interval
        for rec in records:
            try:
                bar = _checked(decode_bar(rec.payload), rec.payload)
            except ContractError as exc:
                await self._dead_letter(rec, exc)
                continue
            self.stats.bars_in += 1
            to_ack.append(rec)
            last_bar = bar
            if bar.interval != interval:
                self.stats.skipped += 1
                continue
            key = (bar.provider, bar.symbol)
            if key not in self._warm:
                self._warm.add(key)
                await self._warm_up(bar, stop)
            out = await self.engine.on_bar(bar)
            if out is None:
                self.stats.bars_stale += 1
                continue
            self.stats.bars_scored += 1
            if out:
                signals.extend(out)
                self._observe_freshness(bar, out)
        if last_bar is not None:
            # how far behind wall time the newest bar of the batch closed; only for live data
            # (a replay of last year's bars is not "a year of lag")
            age_s = time.time() - self.engine.bar_end(last_bar)
            if 0.0 <= age_s <= _LIVE_WINDOW_S:
                self._lag.set(age_s * 1000.0)
        if signals and not await self._commit(signals, stop):
            return False
        if to_ack:
            await self._ack(to_ack)
        return True

    async def _warm_up(self, first: Bar, stop: asyncio.Event) -> None:
        """Replay the store's bars just before ``first`` into the features (no signals)."""
        if self.config.features.warmup_bars <= 0:
            return
        start = first.ts - self._warmup_span
        bars = await self._store_call(
            lambda: self._store.bars_range(
                first.provider, first.symbol, first.interval, start, first.ts
            ),
            stop,
        )
        for bar in bars[-self.config.features.warmup_bars :]:
            self.engine.warm(bar)
        self.stats.warmup_bars += len(bars)
        if bars:
            log.info(
                "warmed %s|%s up from %d stored %s bars (%s .. %s)",
                first.provider,
                first.symbol,
                len(bars),
                first.interval,
                bars[0].ts.isoformat(),
                bars[-1].ts.isoformat(),
            )

    def _observe_freshness(self, bar: Bar, signals: Sequence[Signal]) -> None:
        age_s = time.time() - self.engine.bar_end(bar)
        for s in signals:
            telemetry.SIGNAL_FRESHNESS.labels(adapter=s.adapter).observe(max(age_s, 0.0))

    async def _commit(self, signals: list[Signal], stop: asyncio.Event) -> bool:
        unique = list({s.signal_id: s for s in signals}.values())
        start = min(s.ts for s in unique)
        end = max(s.ts for s in unique) + timedelta(microseconds=1)
        try:
            existing = await self._store_call(
                lambda: self._signals_store.signals_range(start, end), stop
            )
            known = {s.signal_id for s in existing}
            fresh = [s for s in unique if s.signal_id not in known]
            if fresh:
                await self._publish(fresh, stop)
            await self._store_call(lambda: self._signals_store.upsert_signals(unique), stop)
        except _Stopped:
            return False
        for s in fresh:
            telemetry.SIGNALS_EMITTED.labels(name=s.name, adapter=s.adapter).inc()
        self.stats.signals += len(unique)
        self.stats.signals_published += len(fresh)
        return True

    async def _publish(self, signals: Sequence[Signal], stop: asyncio.Event) -> None:
        codec = self.config.bus.codec
        items = [(routing_key(s.provider, s.symbol), encode_signal(s, codec)) for s in signals]
        backoff_s = 0.1
        while True:
            try:
                await self._bus.publish(self.config.bus.signals_topic, items)
                return
            except BusError as exc:
                telemetry.ERRORS.labels(component=_COMPONENT, reason="publish_signals").inc()
                log.warning("publishing %d signals failed (%s); retrying", len(items), exc)
                if stop.is_set():
                    raise _Stopped from exc
                await sleep_or_stop(stop, backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    async def _store_call(
        self, call: Callable[[], Awaitable[T]], stop: asyncio.Event | None = None
    ) -> T:
        """Run a store call, retrying transient failures with capped backoff until ``stop``."""
        backoff_s = 0.1
        attempts = 0
        while True:
            attempts += 1
            try:
                return await call()
            except StoreUnavailableError as exc:
                reason = "store_unavailable"
                if stop is not None and stop.is_set():
                    raise _Stopped from exc
                log.warning("store unavailable (%s); retrying in %.1fs", exc, backoff_s)
            except StoreError as exc:
                reason = "store"
                if attempts >= _MAX_STORE_ATTEMPTS_NON_TRANSIENT:
                    raise
                log.warning("store call failed (%s); retrying in %.1fs", exc, backoff_s)
            telemetry.ERRORS.labels(component=_COMPONENT, reason=reason).inc()
            telemetry.RETRIES.labels(component=_COMPONENT).inc()
            self.stats.store_retries += 1
            if stop is not None:
                await sleep_or_stop(stop, backoff_s)
            else:
                await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 5.0)

    async def _ack(self, records: Sequence[BusRecord]) -> None:
        try:
            await self._consumer.ack(records)
        except BusError as exc:
            # the signals are committed; a redelivery is a no-op (stale bars, known ids)
            telemetry.ERRORS.labels(component=_COMPONENT, reason="ack").inc()
            log.warning(
                "ack of %d entries failed (%s); they will be redelivered", len(records), exc
            )

    async def _dead_letter(self, rec: BusRecord, exc: ContractError) -> None:
        telemetry.ERRORS.labels(component=_COMPONENT, reason=exc.reason).inc()
        try:
            await self._consumer.dead_letter(
                rec, reason=exc.reason, detail=exc.detail, component=_COMPONENT
            )
        except BusError as bus_exc:
            # left pending and not renewed: it times out after claim_idle_ms and comes back,
            # and after bus.max_deliveries the bus dead-letters it
            telemetry.ERRORS.labels(component=_COMPONENT, reason="dead_letter").inc()
            log.warning("could not dead-letter %s (%s); left pending", rec.source, bus_exc)
            return
        self._stage_letters[exc.reason] = self._stage_letters.get(exc.reason, 0) + 1
        self._count_letters()


def _checked(bar: Bar, payload: bytes) -> Bar:
    """The bar codec checks types and finiteness; features also need positive prices."""
    if min(bar.o, bar.h, bar.l, bar.c) <= 0 or (bar.v is not None and bar.v < 0) or bar.h < bar.l:
        raise ContractError(
            "validation",
            f"bad bar for features: o={bar.o} h={bar.h} l={bar.l} c={bar.c} v={bar.v}",
            payload,
        )
    return bar


class _Stopped(Exception):
    """Stop was requested while waiting for the store or the bus: leave entries pending."""
