"""The inference stage: bar changes from ``mdp.bars`` -> features -> adapter -> signals in the
``signals`` table and on ``mdp.signals``, a pure function of the final bars.

Guarantee: after any run the ``signals`` table (active rows, features in their ``meta``
included) equals what one clean pass of the same engine over the store's final bars gives,
bit for bit, and ``mdp.signals`` carries every row's last state (at-least-once; the last
event per ``signal_id`` is the row). How:

* **Input = the store's change log.** Every committed bar revision has a per-series
  ``change_seq`` and reaches ``mdp.bars`` through the store's outbox (see the micro-batcher).
  Each series is a :class:`~market_data_pipeline.inference.timeline.SeriesTimeline`: changes
  are applied in ``change_seq`` order; one already reflected (a redelivery, a duplicate
  publish, a backlog older than what was read from the store) is skipped.
* **Resume from the store.** The first change of a series this process sees, a gap in
  ``change_seq``, a change older than the timeline's final state, or a bar without
  ``change_seq`` makes the consumer *resume* the series: the newest checkpoint of this
  engine that no later change invalidates (``SignalsStoreClient.resume_series``; none: the
  series' first bar) and every stored bar after it, re-scored. Warm-up is therefore counted
  in bars, from a state that covers the series' whole history: gaps in time (weekends) do
  not matter, and recursive indicators continue bit for bit.
* **Corrections re-score.** A changed or inserted bar re-scores its series from that bar
  forward (from the engine's exact state before it, at most ``SNAP_EVERY`` bars back).
* **Diff, then write.** The signals of every re-scored range are compared with the table's
  rows of that range (``signals_since``): new or changed ones are emitted, active rows that
  the bars no longer produce are *retracted* (``state = 'retracted'``, and that event on
  ``mdp.signals``). The changes are published first, then upserted, then the bus entries
  acknowledged: a crash in between re-derives and publishes them again.
* **Checkpoints.** A series' state at a final bar (older than
  ``micro_batch.correction_horizon_ms + allow_late_ms`` plus a bar behind its newest bar) is
  stored every ``CHECKPOINT_EVERY`` bars and at a clean stop (``save_checkpoints``).
* **Reconcile.** Every ``_RECONCILE_S``, and before a ``--drain`` run exits, the series'
  change-log heads are compared with what this engine reflects (``series_progress``: the
  applied position of a series seen here, else the progress its newest checkpoint
  recorded): a series still behind a head seen two reconciles earlier (changes lost on
  the bus, e.g. by a Redis restart that lost acknowledged writes, or made while no engine
  ran) is resumed from the store.

A change is a *window*: its trade bar with the window's quote bar (top of book, from which the
``spread_bps``/``imbalance`` features take the window's time-weighted spread and imbalance), or
a window's quote bar alone (a window with quotes and no trades: bar features stay as they were,
quote features move, rules are evaluated). Bars of other intervals than ``features.interval``
(default: the micro-batch window) are acknowledged untouched (``skipped``); undecodable bars and
bars with a non-positive price go to the dead-letter stream. A batch
left unacknowledged by a clean stop (the store was down) is handed back with
:meth:`BusConsumer.release`, so the next start's re-read does not count toward
``bus.max_deliveries``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from market_data_core.codec import decode_window, encode_signal
from market_data_core.config import AppConfig
from market_data_core.contracts import Bar, Signal, WindowBar
from market_data_core.errors import (
    BusError,
    ContractError,
    StoppedError,
    StoreUnavailableError,
)
from market_data_core.protocols import (
    Bus,
    BusRecord,
    FeatureCheckpoint,
    SignalsStoreClient,
    StoreClient,
    routing_key,
)
from market_data_core.timeutil import format_duration_ms
from market_data_pipeline import telemetry
from market_data_pipeline.inference.engine import InferenceEngine
from market_data_pipeline.inference.timeline import Offer, Scored, SeriesTimeline
from market_data_pipeline.retry import Backoff, retry, retry_store, sleep_or_stop

__all__ = ["InferenceConsumer", "InferenceStats", "features_interval", "inference_group"]

log = logging.getLogger(__name__)
_COMPONENT = "inference"
_MAX_BATCH = 500
_LIVE_WINDOW_S = 3600.0
_RECONCILE_S = 5.0
T = TypeVar("T")
Key = tuple[str, str]


def inference_group(config: AppConfig, adapter: str, interval: str) -> str:
    """The consumer group of one (adapter, interval) on the bars topic: replicas of one adapter
    and interval share the bars; other adapters or intervals each see every bar."""
    return f"{config.bus.group}.infer.{adapter}.{interval}"


def features_interval(config: AppConfig) -> str:
    """The bar interval features run on: ``features.interval``, else the micro-batch window."""
    return config.features.interval or format_duration_ms(config.micro_batch.window_ms)


@dataclass(slots=True)
class InferenceStats:
    """What one run did (also the ``job_runs`` counts).

    ``bars_in``: bar entries read; ``bars_stale``: changes already reflected; ``bars_scored``:
    bar evaluations (with signals); ``bars_replayed``: bars replayed without emitting to
    reach the state before a change; ``bars_loaded``: bars read from the store to resume a
    series; ``resumes``: series resumed from the store (``resyncs`` of them after a gap or a
    change older than memory); ``signals``: signal rows written (new, changed or
    retracted), ``signals_published`` of them on the stream, ``retracted`` of them
    retractions; ``rescore_s``: time spent scoring and diffing.
    """

    bars_in: int = 0
    bars_scored: int = 0
    bars_stale: int = 0
    bars_replayed: int = 0
    bars_loaded: int = 0
    skipped: int = 0
    resumes: int = 0
    resyncs: int = 0
    signals: int = 0
    signals_published: int = 0
    retracted: int = 0
    checkpoints: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    store_retries: int = 0
    rescore_s: float = 0.0


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
        self._stage_letters: dict[str, int] = {}
        self._timelines: dict[Key, SeriesTimeline] = {}
        # change-log heads at the two previous reconciles, oldest first
        self._seen_heads: tuple[dict[Key, int], dict[Key, int]] = ({}, {})
        # adapters whose rows this engine writes; it retracts only its own adapter's rows
        # (an sklearn engine falls back to rules signals, which a rules engine also owns; a
        # strategy plugin's rows are its own only)
        own = engine.adapter.name
        self._adapters = sorted({own, "rules"}) if own == "sklearn" else [own]
        mb = config.micro_batch
        self._final_lag_us = (mb.correction_horizon_ms + mb.allow_late_ms) * 1000 + (
            engine.interval_us
        )
        self.stats = InferenceStats()
        self._lag = telemetry.STREAM_CONSUMER_LAG.labels(
            topic=self._topic, group=self.group, consumer=consumer_name
        )
        telemetry.init_error_series(_COMPONENT, "bus")

    async def run(
        self, stop: asyncio.Event, *, drain: bool = False, idle_s: float = 3.0
    ) -> InferenceStats:
        """Consume until ``stop`` is set (or, with ``drain``, until the input has been idle
        for ``idle_s`` seconds and every series seen is at its change-log head; everything
        read by then is committed and acknowledged)."""
        idle_since: float | None = None
        bus_backoff = Backoff(0.1, 5.0)
        next_reconcile = time.monotonic() + _RECONCILE_S
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
                    bus_backoff.reset()
                except BusError as exc:
                    telemetry.ERRORS.labels(component=_COMPONENT, reason="bus").inc()
                    delay_s = bus_backoff.next_delay_s()
                    log.warning("bus poll failed (%s); retrying in %.1fs", exc, delay_s)
                    await sleep_or_stop(stop, delay_s)
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
                        behind = await self._guarded(self._reconcile(stop, settled=False))
                        if behind == 0:
                            break
                        idle_since = None
                        continue
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + _RECONCILE_S
                    await self._guarded(self._reconcile(stop, settled=True))
            await self._guarded(self._save_checkpoints(stop, force=True))
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

    async def _guarded(self, work: Awaitable[int]) -> int | None:
        """Run side work (reconcile, checkpoints) that a stop may cut short."""
        try:
            return await work
        except StoppedError:
            return None

    async def _handle(self, records: Sequence[BusRecord], stop: asyncio.Event) -> bool:
        try:
            return await self._handle_batch(records, stop)
        except StoppedError:
            return False

    async def _handle_batch(self, records: Sequence[BusRecord], stop: asyncio.Event) -> bool:
        to_ack: list[BusRecord] = []
        changes: dict[Key, list[WindowBar]] = {}
        last_bar: WindowBar | None = None
        interval = self.engine.interval
        for rec in records:
            try:
                bar = _checked(decode_window(rec.payload), rec.payload)
            except ContractError as exc:
                await self._dead_letter(rec, exc)
                continue
            self.stats.bars_in += 1
            to_ack.append(rec)
            last_bar = bar
            if bar.interval != interval:
                self.stats.skipped += 1
                continue
            changes.setdefault((bar.provider, bar.symbol), []).append(bar)
        for key, bars in changes.items():
            await self._apply(key, bars, stop)
        if last_bar is not None:
            # how far behind wall time the newest bar of the batch closed; only for live data
            # (a replay of last year's bars is not "a year of lag")
            age_s = time.time() - self.engine.bar_end(last_bar)
            if 0.0 <= age_s <= _LIVE_WINDOW_S:
                self._lag.set(age_s * 1000.0)
        await self._score_and_commit(list(changes), stop)
        if to_ack:
            await self._ack(to_ack)
        return True

    async def _apply(self, key: Key, bars: list[WindowBar], stop: asyncio.Event) -> None:
        """Offer a series' changes of this batch to its timeline (resumed from the store on
        first sight, and again when memory cannot apply one)."""
        timeline = self._timelines.get(key)
        resumed = timeline is None
        if timeline is None:
            timeline = await self._resume(key, stop)
        # in change order; a bar without change_seq (not from the log) sorts last and resyncs
        for bar in sorted(bars, key=lambda b: (b.change_seq is None, b.change_seq or 0)):
            if bar.change_seq is None and resumed:
                # committed before this batch was read, so in the store read that resumed
                # the series during it: one resume serves every such bar of the batch
                self.stats.bars_stale += 1
                continue
            outcome = timeline.offer(bar)
            if outcome is Offer.STALE:
                self.stats.bars_stale += 1
            elif outcome is Offer.RESYNC:
                log.info(
                    "%s|%s: change %s of %s cannot be applied from memory (applied up to %d); "
                    "resuming the series from the store",
                    key[0],
                    key[1],
                    bar.change_seq,
                    bar.ts.isoformat(),
                    timeline.applied_seq,
                )
                # the store read reflects at least this change; later ones still apply
                self.stats.resyncs += 1
                timeline = await self._resume(key, stop)
                resumed = True

    async def _resume(self, key: Key, stop: asyncio.Event) -> SeriesTimeline:
        engine = self.engine
        resume = await self._store_call(
            lambda: self._signals_store.resume_series(
                engine.state_key, key[0], key[1], engine.interval
            ),
            stop,
        )
        timeline = SeriesTimeline.resume(key[0], key[1], resume)
        self._timelines[key] = timeline
        engine.forget(*key)
        self.stats.resumes += 1
        self.stats.bars_loaded += len(resume.bars)
        cp = resume.checkpoint
        log.info(
            "%s|%s: resumed from %s and %d stored %s bars after it (change log at %d)",
            key[0],
            key[1],
            "the series' first bar" if cp is None else f"a checkpoint at {cp.ts.isoformat()}",
            len(resume.bars),
            engine.interval,
            resume.seq,
        )
        return timeline

    async def _reconcile(self, stop: asyncio.Event, *, settled: bool) -> int:
        """Resume every series whose change log is past what this engine reflects: past what
        a timeline here applied, or, for a series not seen by this process, past the progress
        its newest checkpoint recorded (changes whose bus entries were lost, or made while
        no engine ran). Series this engine never scored are left to their first change.
        ``settled``: only count changes the reconcile before the previous one already saw
        (at least ``_RECONCILE_S`` old), so that changes still on their way through the relay
        and the bus are not taken for lost (the periodic check); otherwise every change
        counts (``--drain``, once the bus is idle).
        Returns how many were behind."""
        engine = self.engine
        progress = await self._store_call(
            lambda: self._signals_store.series_progress(engine.state_key, engine.interval),
            stop,
        )
        # heads seen two reconciles ago: changes at least _RECONCILE_S old, which the relay
        # (retrying at most every 5 s) and the bus have had time to deliver
        previous = self._seen_heads[0]
        self._seen_heads = (self._seen_heads[1], {k: h for k, (h, _) in progress.items()})
        behind: list[Key] = []
        for key, (head, saved) in progress.items():
            timeline = self._timelines.get(key)
            done = timeline.applied_seq if timeline is not None else saved
            due = previous.get(key, 0) if settled else head
            if done is not None and due > done:
                behind.append(key)
        for key in behind:
            log.info(
                "%s|%s: the change log is at %d, this engine reflects %d (changes lost on the "
                "bus, or made while it was not running); resuming the series from the store",
                key[0],
                key[1],
                progress[key][0],
                self._timelines[key].applied_seq if key in self._timelines else progress[key][1],
            )
            self.stats.resyncs += 1
            await self._resume(key, stop)
        if behind:
            await self._score_and_commit(behind, stop)
        return len(behind)

    async def _score_and_commit(self, keys: Sequence[Key], stop: asyncio.Event) -> None:
        """Score the series that need it, diff their signals with the table, write the
        difference (publish, then upsert), advance their timelines and store due
        checkpoints."""
        t0 = time.perf_counter()
        scored: dict[Key, Scored] = {}
        for key in keys:
            timeline = self._timelines[key]
            result = await timeline.score(self.engine)
            if result is None:
                continue
            scored[key] = result
            self.stats.bars_scored += result.evaluated
            self.stats.bars_replayed += result.replayed
        if scored:
            await self._write_difference(scored, stop)
        for key in keys:
            self._timelines[key].advance(self._final_lag_us)
        self.stats.rescore_s += time.perf_counter() - t0
        await self._save_checkpoints(stop, force=False)

    async def _write_difference(self, scored: dict[Key, Scored], stop: asyncio.Event) -> None:
        interval = self.engine.interval
        own = self.engine.adapter.name
        series = [(k[0], k[1], r.since) for k, r in scored.items()]
        stored = await self._store_call(
            lambda: self._signals_store.signals_since(series, adapters=self._adapters), stop
        )
        old = {s.signal_id: s for s in stored if s.meta.get("interval") == interval}
        new: dict[str, Signal] = {}
        for result in scored.values():
            for sig in result.signals:
                new[sig.signal_id] = sig
        changed = [s for sid, s in new.items() if old.get(sid) != s]
        fresh = [s for s in changed if s.signal_id not in old or old[s.signal_id].state != s.state]
        retract = [
            o.model_copy(update={"state": "retracted"})
            for sid, o in old.items()
            if sid not in new and o.state == "active" and o.adapter == own
        ]
        out = changed + retract
        if not out:
            return
        await self._publish(out, stop)
        await self._store_call(lambda: self._signals_store.upsert_signals(out), stop)
        self._observe_freshness(fresh)
        for s in fresh:
            telemetry.SIGNALS_EMITTED.labels(name=s.name, adapter=s.adapter).inc()
        for s in retract:
            telemetry.SIGNALS_RETRACTED.labels(name=s.name, adapter=s.adapter).inc()
        self.stats.signals += len(out)
        self.stats.signals_published += len(out)
        self.stats.retracted += len(retract)

    async def _save_checkpoints(self, stop: asyncio.Event, *, force: bool) -> int:
        interval = self.engine.interval
        due: list[FeatureCheckpoint] = []
        for timeline in self._timelines.values():
            cp = timeline.checkpoint(interval, force=force)
            if cp is not None:
                due.append(cp)
        if due:
            await self._store_call(
                lambda: self._signals_store.save_checkpoints(self.engine.state_key, due), stop
            )
            self.stats.checkpoints += len(due)
        return len(due)

    def _observe_freshness(self, signals: Sequence[Signal]) -> None:
        now = time.time()
        for s in signals:
            age_s = now - (s.ts.timestamp() + self.engine.interval_us / 1e6)
            telemetry.SIGNAL_FRESHNESS.labels(adapter=s.adapter).observe(max(age_s, 0.0))

    async def _publish(self, signals: Sequence[Signal], stop: asyncio.Event) -> None:
        codec = self.config.bus.codec
        items = [(routing_key(s.provider, s.symbol), encode_signal(s, codec)) for s in signals]

        def report(exc: BaseException, delay_s: float | None) -> None:
            telemetry.ERRORS.labels(component=_COMPONENT, reason="publish_signals").inc()
            if delay_s is not None:
                log.warning(
                    "publishing %d signals failed (%s); retrying in %.1fs", len(items), exc, delay_s
                )

        await retry(
            lambda: self._bus.publish(self.config.bus.signals_topic, items),
            retry_on=BusError,
            backoff=Backoff(0.1, 5.0),
            stop=stop,
            on_failure=report,
        )

    async def _store_call(
        self, call: Callable[[], Awaitable[T]], stop: asyncio.Event | None = None
    ) -> T:
        """Run a store call, retrying an outage with capped backoff until ``stop`` (raises
        ``StoppedError`` then) and any other store error up to
        ``STORE_ATTEMPTS_NON_TRANSIENT`` times (then it propagates): :func:`retry_store`."""

        def report(exc: BaseException, delay_s: float | None) -> None:
            if isinstance(exc, StoreUnavailableError):
                telemetry.ERRORS.labels(component=_COMPONENT, reason="store_unavailable").inc()
            else:
                telemetry.ERRORS.labels(component=_COMPONENT, reason="store").inc()
            if delay_s is not None:
                log.warning("store call failed (%s); retrying in %.1fs", exc, delay_s)
                telemetry.RETRIES.labels(component=_COMPONENT).inc()
                self.stats.store_retries += 1

        return await retry_store(call, stop=stop, on_failure=report)

    async def _ack(self, records: Sequence[BusRecord]) -> None:
        try:
            await self._consumer.ack(records)
        except BusError as exc:
            # the signals are committed; a redelivery is a no-op (changes already applied)
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


def _checked(bar: WindowBar, payload: bytes) -> WindowBar:
    """The bar codec checks types and finiteness; features also need positive prices."""
    quote = bar if not isinstance(bar, Bar) else bar.quote
    if quote is not None and (min(quote.bid, quote.ask) <= 0 or quote.bid > quote.ask):
        raise ContractError(
            "validation",
            f"bad quote bar for features: bid={quote.bid} ask={quote.ask}",
            payload,
        )
    if isinstance(bar, Bar) and (
        min(bar.o, bar.h, bar.l, bar.c) <= 0 or (bar.v is not None and bar.v < 0) or bar.h < bar.l
    ):
        raise ContractError(
            "validation",
            f"bad bar for features: o={bar.o} h={bar.h} l={bar.l} c={bar.c} v={bar.v}",
            payload,
        )
    return bar
