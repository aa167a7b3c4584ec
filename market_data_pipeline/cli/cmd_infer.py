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
        list[str] | None,
        typer.Option(
            metavar="DURATION",
            help="Bar interval to run on (overrides features.interval; default: the "
            "micro-batch window), e.g. a rollup level (5m). Repeat it to score several "
            "intervals in this process, each with its own feature state and consumer group. "
            "Bars of other intervals are acknowledged and skipped.",
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
      mdp stream infer --interval 2s --interval 5m --drain --idle-s 1
    """
    overrides: dict[str, object] = {}
    if metrics_port is not None:
        overrides["telemetry.metrics_port"] = metrics_port
    intervals = list(dict.fromkeys(interval or [None]))  # type: ignore[list-item]
    configs = []
    for each in intervals:
        if each is not None:
            duration_ms(each, "--interval")
        configs.append(
            load_app_config(config, overrides | ({"features.interval": each} if each else {}))
        )
    cfg = configs[0]
    if adapter == "sklearn" and not cfg.inference.adapters.sklearn.model_path:
        raise ConfigError(
            "--adapter sklearn needs inference.adapters.sklearn.model_path and sha256 "
            "(the shipped configs/streaming.yaml has an example; mdp init writes a copy)",
            source=str(config_file(config)),
        )
    # loaded before any server starts: a bad rules file, model hash or plugin fails fast
    # (exit 2); one engine per interval: each its own feature state, checkpoints and group
    engines = [
        build_engine(c, adapter, interval=features_interval(c), base_dir=Path.cwd())
        for c in configs
    ]
    name = consumer_name(consumer, "infer")
    groups = [inference_group(cfg, e.adapter.name, e.interval) for e in engines]

    async def main(stop: asyncio.Event) -> None:
        from market_data_pipeline.wiring import open_clients

        async with contextlib.AsyncExitStack() as stack:
            for engine in engines:
                stack.push_async_callback(engine.aclose)
            urls = stack.enter_context(resolve_servers(cfg, environment()))
            # a given name may be reused across restarts, never by two live processes
            stack.enter_context(
                hold_consumers(
                    cfg.bus.type, urls.redis_url, [(g, name) for g in groups] if consumer else []
                )
            )
            stack.enter_context(stage_services(cfg, urls, "infer"))
            c = await stack.enter_async_context(
                open_clients(cfg, urls, store=True, signals=True, tracker=True)
            )
            workers = [
                InferenceConsumer(
                    each, c.bus, c.store, c.signals, engine, consumer_name=name, group=group
                )
                for each, engine, group in zip(configs, engines, groups, strict=True)
            ]

            def total(field: str) -> int:
                return sum(int(getattr(w.stats, field)) for w in workers)

            def counts() -> RunCounts:
                return RunCounts(total("bars_in"), total("signals"), total("dead_letters"))

            def detail() -> str:
                return (
                    f"{total('bars_scored'):,} scored  {total('signals'):,} signals  "
                    f"{total('dead_letters'):,} dead letters"
                )

            async with tracked_run(c.tracker, f"infer-{adapter}", cfg, counts) as run:
                label = f"infer {adapter}" + (" (drain)" if drain else "")
                with ProgressLine(
                    label, unit="bars", count=lambda: total("bars_in"), detail=detail
                ):
                    # a worker that fails stops the others (TaskGroup cancels them)
                    async with asyncio.TaskGroup() as group_tasks:
                        tasks = [
                            group_tasks.create_task(w.run(stop, drain=drain, idle_s=idle_s))
                            for w in workers
                        ]
                    all_stats = [t.result() for t in tasks]
                run.status = "stopped" if stop.is_set() else "success"
        for engine, stats in zip(engines, all_stats, strict=True):
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
