"""``mdp run`` (every stage in one process) and ``mdp demo`` (embedded servers, real trades and
quotes plus a minute of synthetic data, live progress, a summary, nothing left running)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import typer

from market_data_core.config import AppConfig
from market_data_core.errors import ConfigError
from market_data_core.timeutil import format_duration_ms
from market_data_pipeline.api import (
    Dataset,
    Live,
    Pipeline,
    SourceSpec,
    Synthetic,
    default_adapter,
)
from market_data_pipeline.cli.apps import app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    DatasetsOpt,
    MetricsPortOpt,
    default_consumer_name,
    duration_ms,
    environment,
    load_app_config,
    parse_window,
    run_async,
    stage_services,
)
from market_data_pipeline.inference.engine import AdapterKind
from market_data_pipeline.runner import Progress, RunSummary
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.stats import percentile
from market_data_pipeline.ui import console
from market_data_pipeline.ui.progress import ProgressLine
from market_data_pipeline.ui.tables import print_fields

# the real trades and the real EUR/USD quotes (the wide_spread rule fires on them)
DEMO_DATASETS = ("binance_btcusdt_trades", "eurusd_quotes")
DEMO_QUOTE_RATIO = 0.5

RunConsumerOpt = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Consumer name of this process in the micro-batch and inference groups. Keep it "
        "across restarts (a rerun re-reads what the last run left pending at once); two live "
        "processes must not share it. Default: <command>-<host>.",
    ),
]


def _progress_detail(p: Progress) -> str:
    """The run's figures after the published count, each with its unit."""
    entries = "?" if p.lag_entries < 0 else f"{p.lag_entries:,}"
    return (
        f"{p.events_per_s:,.0f} ev/s  {p.events_in:,} processed  {p.bars_written:,} bars  "
        f"lag {entries} entries / {p.lag_ms:,.0f} ms  {p.signals:,} signals"
    )


def _summary_rows(s: RunSummary, cfg: AppConfig) -> list[tuple[str, str]]:
    mb, inf = s.microbatch, s.inference
    p95 = percentile(mb.window_latencies_ms, 95)
    rows = [
        ("events published", f"{s.published:,}"),
        ("events processed", f"{mb.events_in:,}"),
        ("raw ticks stored", f"{mb.ticks_inserted:,}"),
        ("raw quotes stored", f"{mb.quotes_inserted:,}"),
        ("duplicates", f"{mb.duplicates:,} (ticks and quotes already stored)"),
        (
            "bars written",
            f"{mb.bars_written:,} ({cfg.micro_batch.window_ms} ms windows"
            f"{f', {mb.provider_bars:,} provider bars' if mb.provider_bars else ''})",
        ),
        ("quote bars written", f"{mb.quote_bars_written:,} (top of book per window)"),
        ("late corrections", f"{mb.late_corrections:,} (bars and quote bars revised)"),
        *(
            [
                (
                    "rollup bars written",
                    f"{mb.rollup_bars_written:,} ({', '.join(cfg.micro_batch.rollups.intervals)}; "
                    f"{mb.rollup_revisions:,} revised)",
                )
            ]
            if cfg.micro_batch.rollups.intervals
            else []
        ),
        ("windows scored", f"{inf.bars_scored:,}"),
        (
            "signals emitted",
            f"{inf.signals:,}"
            + (
                f" ({inf.retracted:,} of them retractions: corrected bars re-scored)"
                if inf.retracted
                else ""
            ),
        ),
        (
            "p95 window latency",
            "n/a (no live windows)" if p95 is None else f"{p95:,.0f} ms (window end -> commit)",
        ),
        ("dead letters", _letters_cell(s, cfg.bus.dlq_topic)),
        ("elapsed", f"{s.elapsed_s:,.1f} s"),
    ]
    return rows


def _letters_cell(s: RunSummary, dlq_topic: str) -> str:
    """``3 this run (late 1, max_deliveries 2); 7 in mdp.dlq``."""
    reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(s.dead_letter_reasons.items()) if n)
    return (
        f"{s.dead_letters:,} this run{f' ({reasons})' if reasons else ''}; "
        f"{s.dlq_size:,} in {dlq_topic}"
    )


async def _sample(p: Pipeline, interval: str) -> str:
    lines = []
    latest = await p.store.latest_bars(interval, 1)
    for (provider, symbol), bars in sorted(latest.items())[:6]:
        b = bars[-1]
        lines.append(
            f"  bar    {provider}/{symbol} {b.ts:%Y-%m-%d %H:%M:%S} o={b.o:g} h={b.h:g} "
            f"l={b.l:g} c={b.c:g} v={'-' if b.v is None else format(b.v, 'g')} "
            f"n={b.trade_count}"
        )
    quotes = await p.store.latest_quote_bars(interval, 1)
    for (provider, symbol), qbars in sorted(quotes.items())[:6]:
        q = qbars[-1]
        imbalance = "-" if q.imbalance is None else f"{q.imbalance:+.3f}"
        lines.append(
            f"  quote  {provider}/{symbol} {q.ts:%Y-%m-%d %H:%M:%S} bid={q.bid:g} ask={q.ask:g} "
            f"spread={q.spread_bps:.3f} bps imbalance={imbalance} n={q.quote_count}"
        )
    now = datetime.now(UTC)
    signals = await p.signals_store.signals_range(
        datetime(1970, 1, 1, tzinfo=UTC), now + timedelta(1)
    )
    for sig in signals[-5:]:
        lines.append(
            f"  signal {sig.provider}/{sig.symbol} {sig.ts:%Y-%m-%d %H:%M:%S} "
            f"{sig.name} value={sig.value:g} score={sig.score:g} ({sig.adapter}"
            f"{', retracted' if sig.state == 'retracted' else ''})"
        )
    return "\n".join(lines)


async def _run_all(
    cfg: AppConfig,
    stop: asyncio.Event,
    *,
    job: str,
    consumer: str,
    sources: list[SourceSpec],
    finite: bool,
    adapter: AdapterKind,
    demo: bool,
) -> None:
    # the engine is built first: a bad rules file, model or plugin fails before servers start
    pipeline = Pipeline(
        cfg,
        sources=sources,
        adapter=adapter,
        consumer=consumer,
        job=job,
        env=environment(),
        base_dir=Path.cwd(),
    )
    async with pipeline as p:
        with stage_services(cfg, p.urls, job, warn_embedded=False) as metrics:
            urls = p.urls
            console.note(
                f"mdp {job}: servers {urls.describe()}"
                f"{' (embedded: ' + ', '.join(urls.embedded) + ')' if urls.embedded else ''}; "
                f"consumer {consumer}; metrics {metrics.url}/metrics"
            )
            last = [
                Progress(
                    elapsed_s=0.0,
                    published=0,
                    events_per_s=0.0,
                    events_in=0,
                    bars_written=0,
                    lag_entries=0,
                    lag_ms=0.0,
                    signals=0,
                )
            ]
            line = ProgressLine(
                job, rate=False, detail=lambda: _progress_detail(last[0]), plain_every_s=5.0
            )

            def on_progress(progress: Progress) -> None:
                last[0] = progress
                line.update(progress.published)

            with line:
                summary = await p.run(
                    until="sources_done" if finite else "stopped",
                    stop=stop,
                    on_progress=on_progress,
                )
            typer.echo(f"\nmdp {job} summary ({p.status}):")
            print_fields(_summary_rows(summary, cfg))
            sample = await _sample(p, format_duration_ms(cfg.micro_batch.window_ms))
            if sample:
                typer.echo(f"\nlatest rows:\n{sample}")
            if demo:
                typer.echo(_where_the_data_is(urls))


def _where_the_data_is(urls: ServerUrls) -> str:
    kept = not urls.embedded
    lines = ["", "where the data is:"]
    if kept:
        lines += [
            f"  bars and signals: psql {urls.database_url} -c 'SELECT * FROM bars_ohlcv "
            "ORDER BY ts DESC LIMIT 20'",
            "  streams:          mdp stream tail --topic mdp.signals --limit 20",
            "  a picture:        mdp report -o report.html",
        ]
    else:
        lines += [
            "  the embedded Valkey and PostgreSQL have stopped (nothing is left running), so",
            "  this run's rows are gone. To keep them: mdp demo --keep (servers of `mdp up`",
            "  with data in .mdp/), or point mdp at your own servers:",
            "    export REDIS_URI=redis://127.0.0.1:6379/0",
            "    export DATABASE_URL=postgresql://user@127.0.0.1:5432/mdp",
            "    mdp demo   # or: mdp run --duration 5m",
            "  then query:  psql $DATABASE_URL -c 'SELECT * FROM bars_ohlcv ORDER BY ts DESC "
            "LIMIT 20'",
            "               mdp stream tail --topic mdp.signals --limit 20",
        ]
    return "\n".join(lines)


@app.command("run")
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    duration: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION", help="Stop by itself after this long (e.g. 5m); default: Ctrl-C."
        ),
    ] = None,
    replay: Annotated[
        list[str] | None,
        typer.Option(metavar="DATASET", help="Also replay this registered dataset (repeatable)."),
    ] = None,
    datasets: DatasetsOpt = None,
    synthetic: Annotated[
        bool | None,
        typer.Option(
            help="Run the synthetic producer (default: producers.synthetic.enabled, true in "
            "the shipped config).",
            show_default=False,
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            min=0.001, metavar="EVENTS_PER_S", help="Synthetic events/s over all symbols."
        ),
    ] = None,
    window: Annotated[
        str | None, typer.Option(metavar="DURATION", help="Micro-batch window, 500ms to 5s.")
    ] = None,
    adapter: Annotated[
        Literal["rules", "sklearn", "plugin"] | None,
        typer.Option(
            metavar="[rules|sklearn|plugin]",
            help="Inference adapter (default: the strategy plugin if enabled in the config, "
            "else sklearn if enabled, else rules).",
        ),
    ] = None,
    consumer: RunConsumerOpt = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Producers, micro-batcher and inference in one process until Ctrl-C (or --duration),
    then a summary. Servers: REDIS_URI / DATABASE_URL, the config, or embedded ones.

    The consumer name (default run-<host>) stays the same across restarts, so a rerun takes
    over what the last run left pending at once; a second live `mdp run` on this host needs
    its own --consumer.

    A terminal shows a progress line; without one, the same figures are printed every 5 s.

    Examples:

    \b
      mdp run --duration 10s
      mdp run --duration 20s --rate 2000 --replay binance_btcusdt_trades
    """
    overrides: dict[str, object] = {}
    if window is not None:
        overrides["micro_batch.window_ms"] = parse_window(window)
    if metrics_port is not None:
        overrides["telemetry.metrics_port"] = metrics_port
    cfg = load_app_config(config, overrides)
    duration_s = None if duration is None else duration_ms(duration, "--duration") / 1000
    use_synthetic = cfg.producers.synthetic.enabled if synthetic is None else synthetic
    live: list[Literal["coinbase", "ibkr"]] = [
        n for n in ("coinbase", "ibkr") if getattr(cfg.producers, n).enabled
    ]
    if not use_synthetic and not replay and not live:
        raise ConfigError(
            "nothing to run: enable a producer in the config, keep --synthetic or give "
            "--replay NAME",
            source="mdp run",
        )
    chosen = adapter or default_adapter(cfg)
    run_consumer = consumer or default_consumer_name("run")

    sources: list[SourceSpec] = [Dataset(name, registry=datasets) for name in replay or []]
    if use_synthetic:
        sources.append(Synthetic(rate_per_s=rate, duration_s=duration_s))
    sources += [Live(name) for name in live]

    async def main(stop: asyncio.Event) -> None:
        if duration_s is not None:
            asyncio.get_running_loop().call_later(duration_s + 0.5, stop.set)
        await _run_all(
            cfg,
            stop,
            job="run",
            consumer=run_consumer,
            sources=sources,
            finite=False,
            adapter=chosen,
            demo=False,
        )

    run_async(main)


@app.command("demo")
def demo(
    config: ConfigOpt = DEFAULT_CONFIG,
    synthetic_s: Annotated[
        float,
        typer.Option(
            "--synthetic-s", min=0, metavar="SECONDS", help="Seconds of live synthetic data."
        ),
    ] = 60.0,
    rate: Annotated[
        float,
        typer.Option(min=1, metavar="EVENTS_PER_S", help="Synthetic events/s over all symbols."),
    ] = 300,
    quote_ratio: Annotated[
        float,
        typer.Option(
            "--quote-ratio",
            min=0.0,
            max=1.0,
            metavar="R",
            help="Share of the synthetic events that are quotes (the rest trades).",
        ),
    ] = DEMO_QUOTE_RATIO,
    datasets: DatasetsOpt = None,
    consumer: RunConsumerOpt = None,
    metrics_port: MetricsPortOpt = None,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Keep the data: run on the servers of `mdp up` (started if needed) and leave "
            "them running for tail, psql and `mdp report`.",
        ),
    ] = False,
) -> None:
    """The whole pipeline on embedded servers: replays the shipped real trades (9,999 Binance
    BTCUSDT trades) and quotes (9,500 EUR/USD top-of-book quotes) and a minute of live
    synthetic trades and quotes, shows progress, prints a summary, and leaves nothing
    running (with --keep, or while `mdp up` runs: its data stays).

    On shared servers (REDIS_URI set, or --keep) the consumer name defaults to demo-<host>,
    like `mdp run`'s. Without options it takes about a minute and a half.

    Examples:

    \b
      mdp demo --synthetic-s 10 --rate 1000
      mdp demo --keep --synthetic-s 5 && mdp report -o report.html
    """
    overrides: dict[str, object] = {}
    if metrics_port is not None:
        overrides["telemetry.metrics_port"] = metrics_port
    if keep:
        from market_data_pipeline.cli.cmd_servers import start_local_servers
        from market_data_pipeline.servers import LocalServers, state_dir_for

        local = LocalServers(state_dir_for(config, environment()))
        start_local_servers(local, load_app_config(config, overrides, local_servers=False))
    cfg = load_app_config(config, overrides)

    sources: list[SourceSpec] = [Dataset(name, registry=datasets) for name in DEMO_DATASETS]
    if synthetic_s > 0:
        sources.append(Synthetic(rate_per_s=rate, duration_s=synthetic_s, quote_ratio=quote_ratio))

    async def main(stop: asyncio.Event) -> None:
        t0 = time.monotonic()
        await _run_all(
            cfg,
            stop,
            job="demo",
            consumer=consumer or default_consumer_name("demo"),
            sources=sources,
            finite=True,
            adapter="rules",
            demo=True,
        )
        left = (
            "the servers of `mdp up` keep running (`mdp down` stops them)"
            if keep
            else "nothing left running"
        )
        typer.echo(f"\ndemo finished in {time.monotonic() - t0:.1f}s; {left}.")

    run_async(main)
