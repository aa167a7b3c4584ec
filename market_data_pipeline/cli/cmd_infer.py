"""``mdp stream infer``: closed bars -> features -> rules or a scikit-learn model -> signals."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated, Literal

import typer

from market_data_core.errors import ConfigError
from market_data_pipeline.cli.apps import stream_app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    ConsumerOpt,
    IdleOpt,
    MetricsPortOpt,
    config_file,
    consumer_name,
    dead_letters_text,
    duration_ms,
    environment,
    load_app_config,
    run_async,
    stage_services,
)
from market_data_pipeline.consumer_lock import hold_consumers
from market_data_pipeline.consumers.inference_consumer import (
    InferenceConsumer,
    features_interval,
    inference_group,
)
from market_data_pipeline.inference.engine import build_engine
from market_data_pipeline.servers import resolve_servers
from market_data_pipeline.tracking import RunCounts, tracked_run
from market_data_pipeline.ui.progress import ProgressLine


@stream_app.command("infer")
def infer(
    config: ConfigOpt = DEFAULT_CONFIG,
    adapter: Annotated[
        Literal["rules", "sklearn", "plugin"],
        typer.Option(
            metavar="[rules|sklearn|plugin]",
            help="rules (inference.adapters.rules.file, default the shipped rules), sklearn "
            "(the pinned model of inference.adapters.sklearn; the shipped config's example "
            "model needs the ml extra) or plugin (the strategy plugin of "
            "inference.adapters.plugin).",
        ),
    ] = "rules",
    interval: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="Bar interval to run on (overrides features.interval; default: the "
            "micro-batch window). Bars of other intervals are acknowledged and skipped.",
        ),
    ] = None,
    drain: Annotated[
        bool,
        typer.Option(help="Process everything available, commit, ack, exit 0 once idle."),
    ] = False,
    idle_s: IdleOpt = 3.0,
    consumer: ConsumerOpt = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Score bar changes from mdp.bars with rules or a model; signals go to mdp.signals and
    the signals table (idempotent by signal id; re-scored bars retract what no longer holds).

    Without --drain it runs until Ctrl-C / SIGTERM; a terminal shows a progress line.

    Examples:

    \b
      mdp stream infer --adapter rules --drain --idle-s 1
      mdp stream infer --adapter sklearn --drain --idle-s 1
      mdp stream infer --interval 1m --drain --idle-s 1
    """
    overrides: dict[str, object] = {}
    if interval is not None:
        duration_ms(interval, "--interval")
        overrides["features.interval"] = interval
    if metrics_port is not None:
        overrides["telemetry.metrics_port"] = metrics_port
    cfg = load_app_config(config, overrides)
    if adapter == "sklearn" and not cfg.inference.adapters.sklearn.model_path:
        raise ConfigError(
            "--adapter sklearn needs inference.adapters.sklearn.model_path and sha256 "
            "(the shipped configs/streaming.yaml has an example; mdp init writes a copy)",
            source=str(config_file(config)),
        )
    # loaded before any server starts: a bad rules file, model hash or plugin fails fast (exit 2)
    engine = build_engine(cfg, adapter, interval=features_interval(cfg), base_dir=Path.cwd())
    name = consumer_name(consumer, "infer")
    group = inference_group(cfg, engine.adapter.name, engine.interval)

    async def main(stop: asyncio.Event) -> None:
        from market_data_pipeline.wiring import open_clients

        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(engine.aclose)
            urls = stack.enter_context(resolve_servers(cfg, environment()))
            # a given name may be reused across restarts, never by two live processes
            stack.enter_context(
                hold_consumers(cfg.bus.type, urls.redis_url, [(group, name)] if consumer else [])
            )
            stack.enter_context(stage_services(cfg, urls, "infer"))
            c = await stack.enter_async_context(
                open_clients(cfg, urls, store=True, signals=True, tracker=True)
            )
            worker = InferenceConsumer(
                cfg, c.bus, c.store, c.signals, engine, consumer_name=name, group=group
            )

            def counts() -> RunCounts:
                s = worker.stats
                return RunCounts(s.bars_in, s.signals, s.dead_letters)

            def detail() -> str:
                s = worker.stats
                return (
                    f"{s.bars_scored:,} scored  {s.signals:,} signals  "
                    f"{s.dead_letters:,} dead letters"
                )

            async with tracked_run(c.tracker, f"infer-{adapter}", cfg, counts) as run:
                label = f"infer {adapter}" + (" (drain)" if drain else "")
                with ProgressLine(
                    label, unit="bars", count=lambda: worker.stats.bars_in, detail=detail
                ):
                    stats = await worker.run(stop, drain=drain, idle_s=idle_s)
                run.status = "stopped" if stop.is_set() else "success"
        typer.echo(
            f"infer {name} ({adapter}, {engine.interval} bars): {stats.bars_in} bar changes "
            f"in, {stats.bars_stale} already applied, {stats.skipped} other intervals; "
            f"{stats.resumes} series resumed from the store ({stats.bars_loaded} bars read), "
            f"{stats.bars_scored} bars scored, {stats.bars_replayed} replayed; "
            f"{stats.signals} signal rows written ({stats.retracted} retractions), all on "
            f"{cfg.bus.signals_topic}; {stats.checkpoints} checkpoints, "
            f"{dead_letters_text(stats.dead_letters, stats.dead_letter_reasons)}"
        )

    run_async(main)
