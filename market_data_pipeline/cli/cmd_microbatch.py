"""``mdp stream micro-batch``: events -> exact event-time bars in the store."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from market_data_pipeline.cli.apps import stream_app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    ConsumerOpt,
    IdleOpt,
    MetricsPortOpt,
    consumer_name,
    dead_letters_text,
    environment,
    load_app_config,
    parse_window,
    run_async,
    stage_services,
)
from market_data_pipeline.consumer_lock import hold_consumers
from market_data_pipeline.consumers.micro_batcher import MicroBatcher
from market_data_pipeline.servers import resolve_servers
from market_data_pipeline.stats import percentile
from market_data_pipeline.tracking import RunCounts, tracked_run
from market_data_pipeline.ui.progress import ProgressLine


def _dump_stats(batcher: MicroBatcher, path: Path) -> None:
    data = dataclasses.asdict(batcher.stats)
    data["last_lag_ms"] = batcher.last_lag_ms
    data["updated_at"] = time.time()
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # readers never see a half-written file


async def _write_stats(batcher: MicroBatcher, path: Path) -> None:
    while True:
        _dump_stats(batcher, path)
        await asyncio.sleep(1.0)


@stream_app.command("micro-batch")
def micro_batch(
    config: ConfigOpt = DEFAULT_CONFIG,
    window: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="Window length, 500ms to 5s (overrides micro_batch.window_ms).",
        ),
    ] = None,
    drain: Annotated[
        bool,
        typer.Option(help="Process everything available, close all windows, commit, ack, exit."),
    ] = False,
    idle_s: IdleOpt = 3.0,
    consumer: ConsumerOpt = None,
    metrics_port: MetricsPortOpt = None,
    stats_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Write running stats (events, rows, latencies) as JSON here every second and "
            "at exit, for scripts and benchmarks.",
        ),
    ] = None,
) -> None:
    """Close event-time windows of trade ticks into bars (and upsert provider bars).

    Without --drain it runs until Ctrl-C / SIGTERM; SIGUSR1 switches a running worker to
    --drain (finish, commit, ack, exit once idle). A terminal shows a progress line.

    Examples:

    \b
      mdp stream micro-batch --window 2s --drain
      mdp stream micro-batch --window 1s --drain --idle-s 1
    """
    overrides: dict[str, object] = {}
    if window is not None:
        overrides["micro_batch.window_ms"] = parse_window(window)
    if metrics_port is not None:
        overrides["telemetry.metrics_port"] = metrics_port
    cfg = load_app_config(config, overrides)
    name = consumer_name(consumer, "micro-batch")

    async def main(stop: asyncio.Event) -> None:
        from market_data_pipeline.wiring import open_clients

        async with contextlib.AsyncExitStack() as stack:
            urls = stack.enter_context(resolve_servers(cfg, environment()))
            # a given name may be reused across restarts, never by two live processes
            stack.enter_context(
                hold_consumers(
                    cfg.bus.type, urls.redis_url, [(cfg.bus.group, name)] if consumer else []
                )
            )
            stack.enter_context(stage_services(cfg, urls, "micro-batch"))
            c = await stack.enter_async_context(open_clients(cfg, urls, store=True, tracker=True))
            batcher = MicroBatcher(cfg, c.bus, c.store, consumer_name=name)

            def counts() -> RunCounts:
                s = batcher.stats
                return RunCounts(s.events_in, s.rows_written, s.dead_letters)

            drain_on = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, drain_on.set)
            writer = (
                asyncio.create_task(_write_stats(batcher, stats_file))
                if stats_file is not None
                else None
            )

            def detail() -> str:
                s = batcher.stats
                return (
                    f"{s.bars_written:,} bars  lag {batcher.last_lag_ms:,.0f} ms  "
                    f"{s.dead_letters:,} dead letters"
                )

            try:
                async with tracked_run(c.tracker, "micro-batch", cfg, counts) as run:
                    with ProgressLine(
                        "micro-batch" + (" (drain)" if drain else ""),
                        count=lambda: batcher.stats.events_in,
                        detail=detail,
                    ):
                        stats = await batcher.run(
                            stop, drain=drain, idle_s=idle_s, drain_on=drain_on
                        )
                    run.status = "success" if drain or not stop.is_set() else "stopped"
            finally:
                loop.remove_signal_handler(signal.SIGUSR1)
                if writer is not None:
                    writer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await writer
                    assert stats_file is not None
                    _dump_stats(batcher, stats_file)
        p95 = percentile(stats.window_latencies_ms, 95)
        typer.echo(
            f"micro-batch {name}: {stats.events_in} events in, {stats.ticks_inserted} new ticks, "
            f"{stats.quotes_inserted} new quotes, {stats.duplicates} duplicates, "
            f"{stats.bars_written} bars written ({stats.provider_bars} provider bars), "
            f"{stats.quote_bars_written} quote bars written, "
            f"{stats.late_corrections} late corrections, {stats.too_late} too late, "
            + (
                f"{stats.rollup_bars_written} rollup bars written "
                f"({stats.rollup_revisions} revised), "
                if batcher.rollup_intervals
                else ""
            )
            + f"{dead_letters_text(stats.dead_letters, stats.dead_letter_reasons)}, "
            f"{stats.flushes} flushes"
            + (f", p95 window latency {p95:.0f} ms" if p95 is not None else "")
        )

    run_async(main)
