"""Research and live agree: trades (and quotes) given in code -> the exact bars, features and
signals the live pipeline makes of them, through the same code.

:func:`run_offline` runs the live path itself, not a re-implementation of it: the records are
published to a bus, the micro-batcher assigns them to event-time windows (lateness, dead
letters and all) and the store computes the bars in SQL from the stored ticks, exactly as
``mdp run`` does; the inference stage scores every committed bar revision and writes its
signals. The servers are throwaway embedded ones (Valkey and PostgreSQL, whatever the config
says: research never writes into a configured database), started for the call and stopped
after it. Start-up (both servers, initdb, the migration, the clients) took 0.7 to 2.8 s on the
shared 2-core machine of the README (:attr:`OfflineResult.startup_s` measures it each call).

What comes back: the final bars and quote bars from the store; the features after each window
(a trade bar with its quote bar, or a quote bar alone), from a fresh engine's clean pass over
those windows (:func:`~market_data_pipeline.inference.reference.clean_pass`, the same
:class:`~market_data_pipeline.features.FeatureEngine` the inference stage runs; features are
not stored); the active signals from the ``signals`` table, which the signals guarantee says
equal that clean pass's signals -- checked on every call, a difference raises
:class:`~market_data_core.errors.InferenceError`; every dead letter (bad rows, events too late
for the correction horizon) with its reason; and the run's
:class:`~market_data_pipeline.runner.RunSummary`. Trades and quotes are published as one
stream interleaved by event time (:class:`~market_data_pipeline.producers.records.
MergedRecords`), so quotes of a symbol are not late behind its trades or the other way round.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from market_data_core.config import AppConfig, override_config
from market_data_core.contracts import Bar, QuoteBar, Signal, WindowBar
from market_data_core.errors import ConfigError, InferenceError
from market_data_core.protocols import DeadLetter, FeatureSnapshot
from market_data_core.timeutil import format_duration_ms
from market_data_pipeline.api import Pipeline, Quotes, SourceSpec, Trades, default_config
from market_data_pipeline.consumers.inference_consumer import features_interval
from market_data_pipeline.inference.engine import AdapterKind, build_engine
from market_data_pipeline.inference.reference import clean_pass, signal_rows
from market_data_pipeline.producers.records import MergedRecords, RecordsProvider
from market_data_pipeline.runner import RunSummary
from market_data_pipeline.wiring import run_blocking

__all__ = ["OfflineResult", "run_offline", "run_offline_async"]

# research runs on its own throwaway servers, never on configured ones
_NO_SERVERS = {
    "bus.type": "redis",
    "bus.redis.uri": None,
    "bus.redis.cluster": False,
    "bus.kafka.bootstrap": None,
    "store.dsn": None,
}


@dataclass(frozen=True, slots=True)
class OfflineResult:
    """What :func:`run_offline` computed (see the module docstring).

    ``bars``: every final trade bar of the input's series at the micro-batch window, per
    series oldest first, each with its window's quote bar attached (``Bar.quote``).
    ``quote_bars``: every final quote bar (top of book per window, from the quotes; a window
    with trades and no quote carries the last book at most ``micro_batch.quote_carry_ms``
    old), in the same order. ``features``: the feature snapshot after each window of the
    features interval (``features.interval``, default the window): a window with a trade bar
    or a quote bar, per series oldest first. ``signals``: the active signals, oldest first.
    ``startup_s``/``run_s``: seconds to start the servers, migrate and connect / to run the
    pipeline and read the results back."""

    bars: list[Bar]
    quote_bars: list[QuoteBar]
    features: list[FeatureSnapshot]
    signals: list[Signal]
    dead_letters: list[DeadLetter]
    summary: RunSummary
    startup_s: float
    run_s: float

    def frames(self) -> dict[str, Any]:
        """``{"bars", "quote_bars", "features", "signals", "dead_letters"}`` as pandas
        DataFrames (needs pandas: ``pip install 'mdp-streaming[ml]'``). Feature columns are
        the feature names; a value not ready yet is NaN; quote bar columns are the
        :class:`~market_data_core.contracts.QuoteBar` fields (a value that does not exist,
        such as the imbalance of a book without sizes, is None)."""
        import pandas as pd  # type: ignore[import-untyped]

        bars = pd.DataFrame(
            [
                {
                    "provider": b.provider,
                    "symbol": b.symbol,
                    "interval": b.interval,
                    "ts": b.ts,
                    "open": b.o,
                    "high": b.h,
                    "low": b.l,
                    "close": b.c,
                    "volume": b.v,
                    "vwap": b.vwap,
                    "trade_count": b.trade_count,
                    "revision": b.revision,
                }
                for b in self.bars
            ]
        )
        quote_columns = [f.name for f in dataclasses.fields(QuoteBar) if f.name != "change_seq"]
        quote_bars = pd.DataFrame(
            [{n: getattr(q, n) for n in quote_columns} for q in self.quote_bars],
            columns=quote_columns,
        )
        features = pd.DataFrame(
            [
                {"provider": f.provider, "symbol": f.symbol, "ts": f.ts, **dict(f.values)}
                for f in self.features
            ]
        )
        signals = pd.DataFrame(
            [s.model_dump(exclude={"ver", "state"}) for s in self.signals],
            columns=[
                "provider",
                "symbol",
                "ts",
                "name",
                "value",
                "score",
                "meta",
                "adapter",
                "signal_id",
            ],
        )
        letters = pd.DataFrame(
            [
                {
                    "reason": d.reason,
                    "detail": d.detail,
                    "component": d.component,
                    "source": f"{d.source_topic}/{d.source_id}",
                }
                for d in self.dead_letters
            ]
        )
        return {
            "bars": bars,
            "quote_bars": quote_bars,
            "features": features,
            "signals": signals,
            "dead_letters": letters,
        }


def offline_config(config: AppConfig | None) -> AppConfig:
    """``config`` (default: the shipped one) with its servers removed: embedded ones only."""
    return override_config(
        config if config is not None else default_config(),
        _NO_SERVERS,
        source="run_offline (embedded servers)",
    )


async def run_offline_async(
    trades: Any = None,
    *,
    quotes: Any = None,
    config: AppConfig | None = None,
    adapter: AdapterKind | None = None,
    provider: str = "user",
    symbol: str | None = None,
    base_dir: Path | None = None,
) -> OfflineResult:
    """Bars, features and signals of ``trades`` (and ``quotes``) as the live pipeline makes
    them (see the module docstring): each a pandas DataFrame or an iterable of mappings or
    ``StreamEvent`` (columns in :mod:`market_data_pipeline.producers.records`: ``ts``,
    ``price``, ``size`` for trades; ``ts``, ``bid``, ``ask``, sizes for quotes; ``symbol`` per
    row or for all). Times are event times (UTC); rows need not be sorted, but a row later
    than the correction horizon behind its symbol's newest event is dead-lettered (``late``),
    as it would be live.

    Raises ``ConfigError`` (bad config, rules or model; nothing given), ``EmbeddedServerError``
    (the embedded servers are not installed: ``pip install 'mdp-streaming[embedded]'``),
    ``InferenceError`` when the stored signals and the clean pass disagree (a broken
    guarantee, never expected)."""
    if trades is None and quotes is None:
        raise ConfigError("nothing to compute: give trades= or quotes=", source="run_offline")
    cfg = offline_config(config)
    specs: list[SourceSpec] = []
    if trades is not None:
        specs.append(Trades(trades, provider=provider, symbol=symbol))
    if quotes is not None:
        specs.append(Quotes(quotes, provider=provider, symbol=symbol))
    t0 = time.monotonic()
    async with Pipeline(
        cfg, sources=specs, adapter=adapter, consumer="offline", job="offline", base_dir=base_dir
    ) as pipe:
        t1 = time.monotonic()
        summary = await pipe.run(until="sources_done")
        series = sorted(
            {
                key
                for source in pipe.sources
                if isinstance(source.provider, RecordsProvider | MergedRecords)
                for key in source.provider.series
            }
        )
        window = format_duration_ms(cfg.micro_batch.window_ms)
        scored_interval = features_interval(cfg)
        bars: list[Bar] = []
        quote_bars: list[QuoteBar] = []
        scored: list[WindowBar] = []
        for p, s in series:
            bars += await pipe.bars(p, s, interval=window)
            quote_bars += await pipe.quote_bars(p, s, interval=window)
            scored += await pipe.windows(p, s, interval=scored_interval)
        signals = await pipe.signals()
        letters = await pipe.dead_letters()
        run_s = time.monotonic() - t1
    engine = build_engine(cfg, pipe.adapter_kind, interval=scored_interval, base_dir=base_dir)
    try:
        reference = await clean_pass(engine, scored)
    finally:
        await engine.aclose()
    _check_agree(signals, reference.signals)
    return OfflineResult(
        bars=bars,
        quote_bars=quote_bars,
        features=reference.snapshots,
        signals=signals,
        dead_letters=letters,
        summary=summary,
        startup_s=t1 - t0,
        run_s=run_s,
    )


def _check_agree(stored: Sequence[Signal], clean: Sequence[Signal]) -> None:
    if signal_rows(stored) != signal_rows(clean):
        ids_stored = {s.signal_id for s in stored}
        ids_clean = {s.signal_id for s in clean}
        raise InferenceError(
            "the stored signals differ from a clean pass over the final bars "
            f"({len(ids_stored - ids_clean)} only stored, {len(ids_clean - ids_stored)} only "
            "in the clean pass): the signals guarantee is broken, please report it"
        )


def run_offline(
    trades: Any = None,
    *,
    quotes: Any = None,
    config: AppConfig | None = None,
    adapter: AdapterKind | None = None,
    provider: str = "user",
    symbol: str | None = None,
    base_dir: Path | None = None,
) -> OfflineResult:
    """:func:`run_offline_async` from synchronous code (a script, or a notebook whose event
    loop is running: then on a fresh loop in a worker thread). Same arguments and errors."""
    return run_blocking(
        run_offline_async(
            trades,
            quotes=quotes,
            config=config,
            adapter=adapter,
            provider=provider,
            symbol=symbol,
            base_dir=base_dir,
        )
    )
