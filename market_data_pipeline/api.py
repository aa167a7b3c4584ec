"""The Python API: run the pipeline in code, with the guarantees of ``mdp run``.

A :class:`Pipeline` is an async context manager. Entering it starts what is configured nowhere
(embedded Valkey and PostgreSQL, as the CLI does), takes the consumer name (one live process
per name on this host), migrates the schema and opens every client; leaving it closes them
all, whatever failed on the way in. :meth:`Pipeline.run` runs producers, the micro-batcher and
the inference stage as asyncio tasks until the sources are done (the finite mode of
``mdp demo``) or until :meth:`Pipeline.stop` (the live mode of ``mdp run``), records the run
in ``job_runs`` and returns a :class:`~market_data_pipeline.runner.RunSummary`::

    import market_data_pipeline as mdp

    sources = [mdp.Dataset("binance_btcusdt_trades")]
    async with mdp.Pipeline(mdp.default_config(), sources=sources) as p:
        summary = await p.run()
        bars = await p.bars("binance-futures", "BTCUSDT")
        signals = await p.signals()

Sources are descriptions (:class:`Dataset`, :class:`Synthetic`, :class:`Trades`,
:class:`Quotes`, :class:`Live`) or a ready :class:`~market_data_pipeline.runner.Source`; the
pipeline builds them once its bus is open, so that bad rows of a dataset or of your records go
to the dead-letter stream with a reason, never silently away.

Servers: ``env`` is read like the CLI reads the process environment (``REDIS_URI``,
``DATABASE_URL``, ``KAFKA_BOOTSTRAP``); the API never reads ``os.environ`` by itself (pass
``env=os.environ`` to get the CLI's behaviour). Then the config's URLs, then embedded servers,
which stop when the block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from market_data_core.config import AppConfig, load_config, override_config
from market_data_core.contracts import Bar, QuoteBar, Signal, WindowBar
from market_data_core.errors import ConfigError
from market_data_core.protocols import (
    Bus,
    DeadLetter,
    SignalsStoreClient,
    StoreClient,
)
from market_data_core.timeutil import EPOCH, format_duration_ms
from market_data_pipeline.consumer_lock import hold_consumers
from market_data_pipeline.consumers.inference_consumer import features_interval, inference_group
from market_data_pipeline.inference.engine import AdapterKind, InferenceEngine, build_engine
from market_data_pipeline.producers.datasets import RowError
from market_data_pipeline.producers.records import MergedRecords, RecordsProvider
from market_data_pipeline.producers.replay_run import dead_letterer
from market_data_pipeline.project import DEFAULT_CONFIG_FILE, dataset_registries
from market_data_pipeline.runner import Progress, RunSummary, Source, run_pipeline
from market_data_pipeline.servers import ServerUrls, resolve_servers
from market_data_pipeline.tracking import RunCounts, tracked_run

if TYPE_CHECKING:
    from market_data_pipeline.wiring import Clients

__all__ = [
    "Dataset",
    "Live",
    "Pipeline",
    "Quotes",
    "SourceSpec",
    "Synthetic",
    "Trades",
    "default_adapter",
    "default_config",
    "load_config",
    "override_config",
]

log = logging.getLogger(__name__)

_FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def default_config(overrides: Mapping[str, Any] | None = None) -> AppConfig:
    """The config shipped with mdp (``market_data_pipeline/defaults/configs/streaming.yaml``),
    with dotted ``overrides`` applied (``{"micro_batch.window_ms": 1000}``). Its ``${VAR}``
    placeholders take their defaults: no environment is read. Raises ``ConfigError``."""
    config = load_config(DEFAULT_CONFIG_FILE, env={})
    if overrides:
        config = override_config(config, overrides, source="default_config overrides")
    return config


def default_adapter(config: AppConfig) -> AdapterKind:
    """``mdp run``'s default: the strategy ``plugin`` when enabled in the config, else
    ``sklearn`` when enabled, else ``rules``."""
    adapters = config.inference.adapters
    if adapters.plugin.enabled:
        return "plugin"
    return "sklearn" if adapters.sklearn.enabled else "rules"


@dataclass(frozen=True, slots=True)
class Dataset:
    """A registered dataset (``mdp stream replay --dataset NAME``): looked up in ``registry``
    (default ``producers.replay.datasets_file``), then in the registry shipped with mdp.
    ``start``/``end`` bound the event times replayed (``start <= ts < end``)."""

    name: str
    registry: Path | None = None
    start: datetime | None = None
    end: datetime | None = None
    max_msgs_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class Synthetic:
    """The synthetic producer of ``producers.synthetic`` (GBM ticks): ``rate_per_s`` events/s
    over all its symbols (default ``tick_rate`` per symbol) for ``duration_s`` seconds or
    ``count`` events (neither: until the pipeline stops). ``quote_ratio`` (0 to 1, default
    ``producers.synthetic.quote_ratio``): the share of those events that are top-of-book
    quotes on the same price path, the rest trades."""

    rate_per_s: float | None = None
    duration_s: float | None = None
    count: int | None = None
    quote_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class Trades:
    """Trades given in code: a pandas DataFrame (columns ``ts``, ``price``, ``size``, optional
    ``symbol``, ``seq``, ``side``, ``trade_id``) or an iterable of such mappings or of
    ``StreamEvent``. ``provider`` and ``symbol`` apply to rows without their own. See
    :mod:`market_data_pipeline.producers.records` for every accepted column."""

    data: Any
    provider: str = "user"
    symbol: str | None = None


@dataclass(frozen=True, slots=True)
class Quotes:
    """Top-of-book quotes given in code (columns ``ts``, ``bid``, ``ask``, optional
    ``bid_size``, ``ask_size``, ``symbol``, ``seq``); like :class:`Trades` otherwise. They take
    the live path of quotes: stored in ``quotes``, and a quote bar per window (book at close,
    spread and imbalance, :class:`~market_data_core.contracts.QuoteBar`) beside the trade
    bars."""

    data: Any
    provider: str = "user"
    symbol: str | None = None


@dataclass(frozen=True, slots=True)
class Live:
    """A live feed configured in ``producers`` (``coinbase`` or ``ibkr``)."""

    name: Literal["coinbase", "ibkr"]


SourceSpec = Dataset | Synthetic | Trades | Quotes | Live | Source
"""What :class:`Pipeline` takes as a source."""


def _build_source(config: AppConfig, bus: Bus, spec: SourceSpec) -> Source:
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, Dataset):
        from market_data_pipeline.producers.datasets import find_dataset
        from market_data_pipeline.producers.replay import DatasetReplayProvider

        found = find_dataset(spec.name, dataset_registries(config, spec.registry))
        provider = DatasetReplayProvider(
            found, start=spec.start, end=spec.end, on_error=dead_letterer(bus)
        )
        rate = spec.max_msgs_per_s or config.producers.replay.max_msgs_per_s
        return Source(provider, max_msgs_per_s=rate)
    if isinstance(spec, Synthetic):
        from market_data_pipeline.producers.synthetic import SyntheticProvider

        try:
            synthetic = SyntheticProvider(
                config.producers.synthetic,
                rate_per_s=spec.rate_per_s,
                quote_ratio=spec.quote_ratio,
            )
        except ValueError as exc:
            raise ConfigError(str(exc), source="producers.synthetic") from None
        return Source(
            synthetic,
            max_msgs_per_s=config.producers.synthetic.max_msgs_per_s,
            duration_s=spec.duration_s,
            count=spec.count,
        )
    if isinstance(spec, Trades | Quotes):
        records = RecordsProvider(
            spec.data,
            kind="tick" if isinstance(spec, Trades) else "quote",
            provider=spec.provider,
            symbol=spec.symbol,
            on_error=dead_letterer(bus),
        )
        return Source(records)
    if spec.name == "coinbase":
        from market_data_pipeline.producers.coinbase import CoinbaseProvider

        cb = config.producers.coinbase
        return Source(CoinbaseProvider(cb), cb.max_msgs_per_s)
    from market_data_pipeline.producers.ibkr import IbkrProvider

    return Source(IbkrProvider(config.producers.ibkr), config.producers.ibkr.max_msgs_per_s)


def _build_sources(config: AppConfig, bus: Bus, specs: Sequence[SourceSpec]) -> list[Source]:
    """The sources of ``specs``; all :class:`Trades` and :class:`Quotes` together are one
    source, their events interleaved by event time (:class:`~market_data_pipeline.producers.
    records.MergedRecords`), where the first of them was."""
    sources = [_build_source(config, bus, s) for s in specs]
    records = [s.provider for s in sources if isinstance(s.provider, RecordsProvider)]
    if len(records) < 2:
        return sources
    first = next(i for i, s in enumerate(sources) if isinstance(s.provider, RecordsProvider))
    rest = [s for s in sources if not isinstance(s.provider, RecordsProvider)]
    return [*rest[:first], Source(MergedRecords(records)), *rest[first:]]


def _row_letters(sources: Sequence[Source]) -> dict[str, int]:
    """Dead letters the producers wrote for bad input rows, by reason."""
    out: dict[str, int] = {}
    for source in sources:
        for err in getattr(source.provider, "errors", ()):
            if isinstance(err, RowError):
                out[err.reason] = out.get(err.reason, 0) + 1
    return out


@dataclass
class _RunState:
    last: Progress | None = None
    summary: RunSummary | None = None
    sources: list[Source] = field(default_factory=list)


class Pipeline:
    """Producers, micro-batcher and inference in this process (see the module docstring).

    ``config``: an :class:`~market_data_core.config.AppConfig` (default: :func:`default_config`).
    ``adapter``: ``rules`` or ``sklearn`` (default :func:`default_adapter`). ``consumer``: this
    process's name in both consumer groups; keep it across restarts (a rerun takes back what
    the last one left pending at once); default ``<job>-<host>``. ``job``: the ``job_runs``
    name. ``base_dir``: where relative paths of a config built in code resolve (default: the
    working directory; a config loaded from a file has absolute paths).

    The engine is built in the constructor: a bad rules file or model raises ``ConfigError``
    before any server starts. Entering raises ``ConfigError`` (the consumer name is held by
    another live process, a bad setting), ``EmbeddedServerError``, ``StoreUnavailableError`` or
    ``BusError``; nothing is left open or running then.
    """

    def __init__(
        self,
        config: AppConfig | None = None,
        *,
        sources: Sequence[SourceSpec] = (),
        adapter: AdapterKind | None = None,
        consumer: str | None = None,
        job: str = "api",
        env: Mapping[str, str] | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.config = config if config is not None else default_config()
        self.job = job
        self.consumer = consumer or f"{job}-{socket.gethostname()}"
        #: the adapter the engine runs: rules, sklearn or plugin
        self.adapter_kind: AdapterKind = adapter or default_adapter(self.config)
        self.engine: InferenceEngine = build_engine(
            self.config,
            self.adapter_kind,
            interval=features_interval(self.config),
            base_dir=base_dir,
        )
        self._specs = list(sources)
        self._env = dict(env or {})
        self._stop = asyncio.Event()
        self._stack: contextlib.AsyncExitStack | None = None
        self._clients: Clients | None = None
        self._urls: ServerUrls | None = None
        self._run = _RunState()
        #: the ``job_runs`` status of the last :meth:`run`: success, stopped or failed
        self.status: Literal["success", "failed", "stopped"] | None = None

    async def __aenter__(self) -> Pipeline:
        from market_data_pipeline.wiring import open_clients, upgrade_schema

        cfg = self.config
        groups = [
            cfg.bus.group,
            inference_group(cfg, self.engine.adapter.name, self.engine.interval),
        ]
        async with contextlib.AsyncExitStack() as stack:
            urls = stack.enter_context(resolve_servers(cfg, self._env))
            stack.enter_context(
                hold_consumers(cfg.bus.type, urls.redis_url, [(g, self.consumer) for g in groups])
            )
            assert urls.database_url is not None
            await asyncio.to_thread(upgrade_schema, urls.database_url, config=cfg)
            c = await stack.enter_async_context(
                open_clients(cfg, urls, store=True, signals=True, tracker=True)
            )
            stack.push_async_callback(self.engine.aclose)
            self._urls = urls
            self._clients = c
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every client and stop the embedded servers (idempotent)."""
        stack, self._stack = self._stack, None
        self._clients = None
        if stack is not None:
            await stack.aclose()

    def _open(self) -> Clients:
        if self._clients is None:
            raise RuntimeError("the pipeline is not open: use `async with Pipeline(...) as p`")
        return self._clients

    @property
    def urls(self) -> ServerUrls:
        """Where the servers are (``repr`` shows them without passwords)."""
        self._open()
        assert self._urls is not None
        return self._urls

    @property
    def bus(self) -> Bus:
        return self._open().bus

    @property
    def store(self) -> StoreClient:
        return self._open().store

    @property
    def signals_store(self) -> SignalsStoreClient:
        return self._open().signals

    @property
    def sources(self) -> list[Source]:
        """The sources of the current or last :meth:`run`, as built (with their counts); all
        :class:`Trades` and :class:`Quotes` are one of them, a
        :class:`~market_data_pipeline.producers.records.MergedRecords`, when there are
        several."""
        return list(self._run.sources)

    def stop(self) -> None:
        """Ask a running :meth:`run` to stop at the next batch boundary (as Ctrl-C does for
        ``mdp run``): producers flush what they accepted, closed windows are committed, open
        ones stay pending for the next run under the same consumer name."""
        self._stop.set()

    async def run(
        self,
        *,
        until: Literal["sources_done", "stopped"] = "sources_done",
        stop_after_s: float | None = None,
        stop: asyncio.Event | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 1.0,
    ) -> RunSummary:
        """Run every stage and return what each did.

        ``until="sources_done"`` (``mdp demo``): when every source is exhausted the
        micro-batcher closes all windows, commits and acknowledges, inference scores the last
        bars, then the run ends. ``"stopped"`` (``mdp run``): run until :meth:`stop`,
        ``stop`` is set, or ``stop_after_s`` seconds passed. ``on_progress`` gets a
        :class:`~market_data_pipeline.runner.Progress` every ``progress_every_s``.

        The run is one ``job_runs`` row (heartbeats with the counts so far); an exception
        finishes it ``failed`` and propagates: a ``StoreError`` that is not transient, a
        ``BusError`` of the relay. Store and bus outages are retried inside the stages.
        """
        c = self._open()
        stop_event = stop or self._stop
        if stop is not None:
            self._stop = stop
        timer = None
        if stop_after_s is not None:
            timer = asyncio.get_running_loop().call_later(stop_after_s, stop_event.set)
        state = self._run = _RunState()
        state.sources = _build_sources(self.config, c.bus, self._specs)

        def progress(p: Progress) -> None:
            state.last = p
            if on_progress is not None:
                on_progress(p)

        def counts() -> RunCounts:
            s = state.summary
            if s is None:
                p = state.last
                return (
                    RunCounts() if p is None else RunCounts(p.events_in, p.rows_written, p.errors)
                )
            mb, inf = s.microbatch, s.inference
            return RunCounts(mb.events_in, mb.rows_written + inf.signals, s.dead_letters)

        tracked = None
        try:
            async with tracked_run(c.tracker, self.job, self.config, counts) as tracked:
                summary = await run_pipeline(
                    self.config,
                    c.bus,
                    c.store,
                    c.signals,
                    self.engine,
                    state.sources,
                    stop_event,
                    finish_when_sources_done=until == "sources_done",
                    consumer=self.consumer,
                    on_progress=progress,
                    progress_every_s=progress_every_s,
                )
                summary.producer_dead_letters = _row_letters(state.sources)
                state.summary = summary
                tracked.status = "stopped" if stop_event.is_set() else "success"
        finally:
            if timer is not None:
                timer.cancel()
            self.status = "failed" if tracked is None else tracked.status
        return summary

    async def bars(
        self,
        provider: str,
        symbol: str,
        *,
        interval: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Bar]:
        """Stored bars of one series with ``start <= ts < end`` (default: all), oldest first,
        each with its window's quote bar attached (``Bar.quote``, ``None`` where the window
        has no book); ``interval`` defaults to the micro-batch window (``2s`` in the shipped
        config)."""
        return await self.store.bars_range(
            provider,
            symbol,
            interval or format_duration_ms(self.config.micro_batch.window_ms),
            start or EPOCH,
            end or _FAR_FUTURE,
        )

    async def quote_bars(
        self,
        provider: str,
        symbol: str,
        *,
        interval: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[QuoteBar]:
        """Stored quote bars of one series (top of book per window: bid/ask at close, spread
        in bps, imbalance; :class:`~market_data_core.contracts.QuoteBar`), like :meth:`bars`
        otherwise."""
        return await self.store.quote_bars_range(
            provider,
            symbol,
            interval or format_duration_ms(self.config.micro_batch.window_ms),
            start or EPOCH,
            end or _FAR_FUTURE,
        )

    async def windows(
        self,
        provider: str,
        symbol: str,
        *,
        interval: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[WindowBar]:
        """Every stored window of one series, oldest first: a trade bar (with its quote bar
        attached) or, for a window with quotes and no trade, its quote bar alone -- what the
        inference stage scores. Arguments as :meth:`bars`."""
        return await self.store.windows_range(
            provider,
            symbol,
            interval or format_duration_ms(self.config.micro_batch.window_ms),
            start or EPOCH,
            end or _FAR_FUTURE,
        )

    async def signals(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        symbol: str | None = None,
        include_retracted: bool = False,
    ) -> list[Signal]:
        """Stored signals with ``start <= ts < end`` (default: all), oldest first; active only
        unless ``include_retracted`` (a retracted row is a signal a corrected bar withdrew)."""
        rows = await self.signals_store.signals_range(
            start or EPOCH, end or _FAR_FUTURE, symbol=symbol
        )
        return rows if include_retracted else [s for s in rows if s.state == "active"]

    async def dead_letters(self, limit: int = 10_000) -> list[DeadLetter]:
        """The dead-letter stream, oldest first (every run's letters, not only the last)."""
        return await self.bus.dlq_list(limit)
