"""All stages in one process (``mdp run``, ``mdp demo``, ``mdp bench``): producers, the
micro-batcher and the inference consumer as asyncio tasks sharing one stop event.

Two ways to end:

* **live** (``finish_when_sources_done=False``): run until ``stop`` (Ctrl-C / SIGTERM). The
  producers flush what they accepted; the micro-batcher commits closed windows and leaves open
  ones pending (a restart re-reads them); inference commits what it read.
* **finite** (``True``): when every source is exhausted, the micro-batcher drains (closes all
  windows, commits, acks), then inference consumes the last bars, then everything stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from market_data_core.config import AppConfig
from market_data_core.protocols import Bus, Provider, SignalsStoreClient, StoreClient
from market_data_pipeline.consumers.inference_consumer import InferenceConsumer, InferenceStats
from market_data_pipeline.consumers.micro_batcher import MicroBatcher, MicroBatchStats
from market_data_pipeline.inference.engine import InferenceEngine
from market_data_pipeline.producers.pump import make_publisher, pump
from market_data_pipeline.retry import sleep_or_stop

__all__ = ["Progress", "RunSummary", "Source", "group_lag", "run_pipeline"]


@dataclass
class Source:
    """One producer: a provider, its pacing, and when it stops by itself."""

    provider: Provider
    max_msgs_per_s: float | None = None
    duration_s: float | None = None
    count: int | None = None


@dataclass(frozen=True)
class Progress:
    """A snapshot for a live progress line. ``lag_entries``: entries of the events topic the
    micro-batch group has not read or not acknowledged (-1: the bus did not answer);
    ``lag_ms``: the micro-batcher's ``stream_consumer_lag_ms``. ``rows_written`` (store rows
    plus signals) and ``errors`` (dead letters of both stages) are the ``job_runs`` heartbeat
    counts."""

    elapsed_s: float
    published: int
    events_per_s: float
    events_in: int
    bars_written: int
    lag_entries: int
    lag_ms: float
    signals: int
    rows_written: int = 0
    errors: int = 0


@dataclass
class RunSummary:
    """What a run did. ``dlq_size`` is the whole dead-letter stream (earlier runs included);
    ``dead_letter_reasons`` only this run's letters."""

    published: int = 0
    elapsed_s: float = 0.0
    microbatch: MicroBatchStats = field(default_factory=MicroBatchStats)
    inference: InferenceStats = field(default_factory=InferenceStats)
    dlq_size: int = 0
    producer_dead_letters: dict[str, int] = field(default_factory=dict)

    @property
    def dead_letter_reasons(self) -> dict[str, int]:
        """This run's dead letters by reason: the producers' (bad dataset rows), the
        micro-batcher's and the inference stage's, and those the bus layer wrote for them."""
        out = dict(self.producer_dead_letters)
        for reasons in (self.microbatch.dead_letter_reasons, self.inference.dead_letter_reasons):
            for reason, n in reasons.items():
                out[reason] = out.get(reason, 0) + n
        return out

    @property
    def dead_letters(self) -> int:
        return sum(self.dead_letter_reasons.values())


async def group_lag(bus: Bus, topic: str, group: str) -> int:
    """Entries of ``topic`` that ``group`` has not read or not acknowledged, over all shards
    (-1 when the bus did not answer: a progress figure, never a reason to stop)."""
    try:
        statuses = await bus.status(topic, group)
    except Exception:  # progress is best effort; a failing status call must not stop the run
        return -1
    return sum((s.lag or 0) + s.pending for s in statuses if s.group is not None)


async def run_pipeline(
    config: AppConfig,
    bus: Bus,
    store: StoreClient,
    signals_store: SignalsStoreClient,
    engine: InferenceEngine,
    sources: Sequence[Source],
    stop: asyncio.Event,
    *,
    finish_when_sources_done: bool,
    consumer: str,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every_s: float = 1.0,
) -> RunSummary:
    """Run every stage until the run ends (see module doc); returns what each stage did.

    ``consumer`` names this process in both groups it joins (the events group of the
    micro-batcher and the bars group of inference): a run restarted under the same name
    re-reads its own pending entries at once. Two live processes must never share it."""
    started = time.monotonic()
    stage_stop = asyncio.Event()
    mb_drain = asyncio.Event()
    batcher = MicroBatcher(config, bus, store, consumer_name=consumer)
    inference = InferenceConsumer(config, bus, store, signals_store, engine, consumer_name=consumer)
    publishers = [make_publisher(config, bus, s.max_msgs_per_s) for s in sources]
    summary = RunSummary()

    async def produce() -> None:
        await asyncio.gather(
            *(
                pump(s.provider, pub, stop, duration_s=s.duration_s, count=s.count)
                for s, pub in zip(sources, publishers, strict=True)
            )
        )

    async def finish() -> None:
        await produce()
        if not finish_when_sources_done or stop.is_set():
            await stop.wait()
            return
        mb_drain.set()
        await mb_task
        # inference is done when its group has read and acknowledged every closed bar
        while not stop.is_set() and await group_lag(  # noqa: ASYNC110 - polls the bus
            bus, config.bus.bars_topic, inference.group
        ):
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.2)

    reporting_over = asyncio.Event()

    async def report() -> None:
        # Ends on ``reporting_over``, not only on cancel: a library may swallow a cancel that
        # lands while it awaits (Python 3.11 ``wait_for``), and the run would wait for ever.
        last_t, last_n = time.monotonic(), 0
        while not reporting_over.is_set():
            await sleep_or_stop(reporting_over, progress_every_s)
            if reporting_over.is_set():
                return
            now = time.monotonic()
            published = sum(p.published for p in publishers)
            lag = await group_lag(bus, config.bus.events_topic, config.bus.group)
            if on_progress is not None:
                on_progress(
                    Progress(
                        elapsed_s=now - started,
                        published=published,
                        events_per_s=(published - last_n) / max(now - last_t, 1e-9),
                        events_in=batcher.stats.events_in,
                        bars_written=batcher.stats.bars_written,
                        lag_entries=lag,
                        lag_ms=batcher.last_lag_ms,
                        signals=inference.stats.signals,
                        rows_written=batcher.stats.rows_written + inference.stats.signals,
                        errors=batcher.stats.dead_letters + inference.stats.dead_letters,
                    )
                )
            last_t, last_n = now, published

    async def propagate_stop() -> None:
        await stop.wait()
        stage_stop.set()

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(propagate_stop())
        mb_task = tg.create_task(batcher.run(stage_stop, drain_on=mb_drain, idle_s=1.0))
        inf_task = tg.create_task(inference.run(stage_stop))
        reporter = tg.create_task(report())
        try:
            await finish()
        finally:
            stage_stop.set()
            reporting_over.set()
            for task in (reporter, watcher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        summary.microbatch = await mb_task
        summary.inference = await inf_task
    summary.published = sum(p.published for p in publishers)
    summary.elapsed_s = time.monotonic() - started
    with contextlib.suppress(Exception):
        summary.dlq_size = len(await bus.dlq_list(1_000_000))
    return summary
