"""``mdp report``: write one self-contained HTML page of what the store (and the DLQ) holds."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from market_data_core.config import AppConfig
from market_data_core.errors import BusError, ConfigError
from market_data_core.protocols import Bus
from market_data_core.timeutil import format_duration_ms
from market_data_pipeline.cli.apps import app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    duration_ms,
    environment,
    load_app_config,
    parse_when,
    run_async,
)
from market_data_pipeline.servers import ServerUrls, configured_database_url, configured_redis_url


def _urls(cfg: AppConfig) -> ServerUrls:
    env = environment()
    db = configured_database_url(cfg, env)
    if not db:
        raise ConfigError(
            "mdp report reads an existing database: set DATABASE_URL (or store.dsn), or start "
            "the local servers with `mdp up`",
            source="DATABASE_URL",
        )
    redis = configured_redis_url(cfg, env)
    kafka = env.get("KAFKA_BOOTSTRAP") or cfg.bus.kafka.bootstrap
    return ServerUrls(redis, db, kafka)


@app.command("report")
def report(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The HTML file to write.", metavar="FILE")
    ],
    config: ConfigOpt = DEFAULT_CONFIG,
    symbol: Annotated[
        list[str] | None,
        typer.Option(
            help="Only this symbol (SYM or provider/SYM; repeatable). Default: all.",
            metavar="SYM",
        ),
    ] = None,
    interval: Annotated[
        str | None,
        typer.Option(
            help="Bars of this interval (e.g. 2s, 1m). Default: the micro-batch window's if "
            "stored, else the finest stored.",
            metavar="INTERVAL",
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="Event time from (ISO-8601, UTC if no zone).", metavar="TIME"),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--to", help="Event time to (exclusive).", metavar="TIME"),
    ] = None,
    last: Annotated[
        str,
        typer.Option(
            help="Without --from: each symbol's newest DURATION of bars.", metavar="DURATION"
        ),
    ] = "6h",
    min_gap: Annotated[
        str,
        typer.Option(help="Report gaps between bars of at least DURATION.", metavar="DURATION"),
    ] = "1m",
    max_series: Annotated[
        int, typer.Option(min=1, max=200, help="Draw at most N symbols.", metavar="N")
    ] = 12,
) -> None:
    """Write one self-contained HTML report (opens without a network): candlesticks with
    volume and VWAP, signals as markers, spread where quotes are stored, per-symbol
    freshness and gaps, dead letters by reason, throughput and window latency.

    Reads DATABASE_URL / store.dsn (or the servers of `mdp up`) and the bus for the DLQ.

    Examples:

    \b
      mdp report -o report.html
      mdp report --symbol BTCUSDT --from 2020-02-22 --to 2020-02-23 -o btc.html
    """
    cfg = load_app_config(config)
    t0, t1 = parse_when(start, "--from"), parse_when(end, "--to")
    if (t0 is None) != (t1 is None):
        raise ConfigError("give both --from and --to, or neither", source="--from/--to")
    if t0 is not None and t1 is not None and t0 >= t1:
        raise ConfigError("--from must be before --to", source="--from/--to")
    if interval is not None:
        duration_ms(interval, "--interval")
    last_ms, min_gap_ms = duration_ms(last, "--last"), duration_ms(min_gap, "--min-gap")
    if importlib.util.find_spec("plotly") is None:
        raise ConfigError(
            "mdp report needs plotly: pip install 'mdp-streaming[report]'", source="mdp report"
        )
    if output.is_dir():
        raise ConfigError("is a folder; give a file name like report.html", source=str(output))
    urls = _urls(cfg)

    async def main(stop: asyncio.Event) -> tuple[int, str]:
        from market_data_pipeline.reporting import gather_report, render_html
        from market_data_pipeline.wiring import open_clients

        # the bus is optional: without one the report says why its DLQ panel is empty
        dlq_note = None
        if cfg.bus.type == "redis" and not urls.redis_url:
            dlq_note = "no Redis configured (REDIS_URI, bus.redis.uri or `mdp up`)"
        elif cfg.bus.type == "kafka" and not urls.kafka_bootstrap:
            dlq_note = "no Kafka configured (KAFKA_BOOTSTRAP or bus.kafka.bootstrap)"
        async with contextlib.AsyncExitStack() as stack:
            c = await stack.enter_async_context(
                open_clients(cfg, urls, bus=False, reader=True, signals=True)
            )
            bus: Bus | None = None
            if dlq_note is None:
                try:
                    bus = (await stack.enter_async_context(open_clients(cfg, urls))).bus
                except BusError as exc:
                    dlq_note = f"the bus is unreachable ({exc})"
            data = await gather_report(
                c.reader,
                c.signals,
                bus,
                now=datetime.now(UTC),
                source=urls.describe(),
                symbols=symbol or (),
                interval=interval,
                preferred_interval=format_duration_ms(cfg.micro_batch.window_ms),
                start=t0,
                end=t1,
                last_ms=last_ms,
                min_gap_ms=min_gap_ms,
                max_series=max_series,
                dlq_note=dlq_note,
            )
        page = await asyncio.to_thread(render_html, data)
        return len(data.series), page

    shown, page = run_async(main)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, output)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write: {exc.strerror or exc}", source=str(output)) from None
    typer.echo(
        f"wrote {output} ({shown} symbol{'s' if shown != 1 else ''}, {len(page) / 1e6:.1f} MB)"
    )
