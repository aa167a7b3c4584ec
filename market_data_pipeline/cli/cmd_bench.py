"""``mdp bench``: the real path against real local servers, beside the bare ceiling measured in
the same run (SPEC §12). Prints a table and appends JSON to ``benchmarks/results/``. The
measuring is :mod:`market_data_pipeline.bench`; this module parses the flags."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from market_data_core.config import PackAs
from market_data_pipeline.bench import (
    in_child,
    measure_ceiling,
    result_record,
    result_rows,
    run_full_path,
    statement_rows,
)
from market_data_pipeline.cli.apps import app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    duration_ms,
    environment,
    load_app_config,
    parse_window,
    run_async,
)
from market_data_pipeline.servers import resolve_servers
from market_data_pipeline.ui import console
from market_data_pipeline.ui.progress import ProgressLine
from market_data_pipeline.ui.tables import print_fields, print_table


@app.command("bench")
def bench(
    config: ConfigOpt = DEFAULT_CONFIG,
    duration: Annotated[
        str, typer.Option(metavar="DURATION", help="How long the producers run.")
    ] = "30s",
    rate: Annotated[
        float,
        typer.Option(min=1, metavar="EVENTS_PER_S", help="Requested events/s (all producers)."),
    ] = 40_000,
    symbols: Annotated[
        int, typer.Option(min=1, max=10_000, metavar="N", help="Synthetic symbols.")
    ] = 20,
    window: Annotated[
        str, typer.Option(metavar="DURATION", help="Micro-batch window, 500ms to 5s.")
    ] = "2s",
    pack: Annotated[
        int, typer.Option(min=1, max=1000, metavar="N", help="Events per stream entry.")
    ] = 1,
    pack_as: Annotated[
        PackAs,
        typer.Option(
            "--pack-as",
            metavar="[columns|rows]",
            help="An entry as a column block (the columnar hot path) or an array of maps; "
            "sets producers.pack_as.",
        ),
    ] = "columns",
    producers: Annotated[
        int, typer.Option(min=1, max=16, metavar="N", help="Producer processes.")
    ] = 2,
    workers: Annotated[
        int,
        typer.Option(
            min=1, max=16, metavar="N", help="Micro-batch worker processes (shards = 2 x this)."
        ),
    ] = 2,
    quote_ratio: Annotated[
        float,
        typer.Option(
            "--quote-ratio",
            min=0.0,
            max=1.0,
            metavar="R",
            help="Share of the synthetic events that are quotes (the rest trades).",
        ),
    ] = 0.0,
    rollups: Annotated[
        str,
        typer.Option(
            metavar="LEVELS",
            help="Rollup levels the workers build in the same transaction, comma-separated "
            "(e.g. 1m,5m,1h; micro_batch.rollups.intervals); empty: the config's.",
        ),
    ] = "",
    ceiling: Annotated[bool, typer.Option(help="Measure the bare ceiling too.")] = True,
    pg_stats: Annotated[
        int,
        typer.Option(
            "--pg-stats",
            min=0,
            max=100,
            metavar="N",
            help="Also print PostgreSQL's N statements with the most execution time over the "
            "full path (pg_stat_statements: the bench then starts its own servers, not those "
            "of mdp up; a server of DATABASE_URL or store.dsn must have it in "
            "shared_preload_libraries). 0: off.",
        ),
    ] = 0,
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for the JSON results.")] = Path(
        "benchmarks/results"
    ),
) -> None:
    """Benchmark the full path (synthetic producers -> Redis -> micro-batcher -> PostgreSQL,
    and bars -> features -> inference -> signals) beside the bare ceiling, on the servers of
    REDIS_URI/DATABASE_URL or embedded ones.

    A terminal shows the phase and the full path's progress. The README's Benchmarks section
    has the runs behind its figures (e.g. --duration 5m --rate 60000 --pack 50).

    Examples:

    \b
      mdp bench --duration 5s --rate 2000 --no-ceiling
      mdp bench --duration 5s --rate 5000 --pack 50 --window 1s --no-ceiling
      mdp bench --duration 5s --rate 2000 --rollups 1m,5m,1h --no-ceiling
      mdp bench --duration 5s --rate 5000 --pack 50 --no-ceiling --pg-stats 5
    """
    window_ms = parse_window(window)
    duration_s = duration_ms(duration, "--duration") / 1000
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    tag = uuid.uuid4().hex[:6]
    cfg = load_app_config(
        config,
        {
            "micro_batch.window_ms": window_ms,
            "producers.pack_events": pack,
            "producers.pack_as": pack_as,
            "bus.partitions": 2 * workers,
            "bus.redis.stream": f"mdp.bench.{tag}.events",
            "bus.redis.bars_stream": f"mdp.bench.{tag}.bars",
            "bus.redis.signals_stream": f"mdp.bench.{tag}.signals",
            "bus.redis.dlq_stream": f"mdp.bench.{tag}.dlq",
            "bus.redis.consumer_group": f"bench-{tag}",
            "telemetry.metrics_port": 0,
        }
        | (
            {"micro_batch.rollups.intervals": [x.strip() for x in rollups.split(",") if x.strip()]}
            if rollups
            else {}
        ),
        # --pg-stats: the servers of `mdp up` do not load pg_stat_statements, throwaway ones do
        local_servers=not pg_stats,
    )

    async def main(stop: asyncio.Event) -> None:
        import tempfile

        from market_data_pipeline.wiring import (
            StatementStat,
            reset_statement_stats,
            top_statements,
            upgrade_schema,
        )

        preload = ("pg_stat_statements",) if pg_stats else ()
        statements: list[StatementStat] = []
        with (
            resolve_servers(cfg, environment(), pg_preload=preload) as urls,
            tempfile.TemporaryDirectory() as tmp,
        ):
            assert urls.database_url is not None
            # the migration and the bare ceiling in processes of their own: their memory
            # (SQLAlchemy, 200,000 event objects) is no streaming process's (see bench.child)
            await in_child(upgrade_schema, urls.database_url, config=cfg)
            console.note(f"mdp bench: servers {urls.describe()}")
            if pg_stats:  # fails before anything is measured when the server lacks it
                await reset_statement_stats(urls.database_url)
            c = None
            if ceiling:
                console.note("measuring the bare ceiling ...")
                with ProgressLine("bare ceiling (3 rounds of 200,000 events)", unit=""):
                    c = await in_child(measure_ceiling, urls, 200_000, symbols, pack, cfg.bus)
            if pg_stats:
                await reset_statement_stats(urls.database_url)  # the full path only
            console.note(f"running the full path for {duration_s:g}s at {rate:,.0f} ev/s ...")
            with ProgressLine("full path", total=duration_s, unit="") as progress:
                f = await run_full_path(
                    cfg,
                    urls,
                    duration_s=duration_s,
                    rate=rate,
                    symbols=symbols,
                    producers=producers,
                    workers=workers,
                    workdir=Path(tmp),
                    progress=progress,
                    quote_ratio=quote_ratio,
                    run_tag=tag,
                )
            if pg_stats:
                statements = await top_statements(urls.database_url, pg_stats)
        procs = f"{producers} producer + {workers} micro-batch processes"
        typer.echo(f"\nmdp bench ({run_id}):")
        print_fields(result_rows(c, f, window_ms, rate, pack, procs, quote_ratio, pack_as))
        if pg_stats:
            typer.echo(
                f"\nPostgreSQL statements with the most execution time over the full path "
                f"(pg_stat_statements, top {pg_stats}; µs per event = over all "
                f"{f.events_in:,} events consumed):"
            )
            header, rows = statement_rows(statements, f.events_in)
            print_table(header, rows, indent=2)
        params = {
            "duration_s": duration_s,
            "rate": rate,
            "symbols": symbols,
            "window_ms": window_ms,
            "pack": pack,
            "pack_as": pack_as,
            "quote_ratio": quote_ratio,
            "rollups": cfg.micro_batch.rollups.intervals,
            "producers": producers,
            "workers": workers,
        }
        record = result_record(run_id, params, window_ms, c, f)
        if pg_stats:
            record["pg_statements"] = [asdict(st) for st in statements]
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"bench-{run_id}.json"
        path.write_text(json.dumps(record, indent=2))
        typer.echo(f"\nresults appended to {path}")

    run_async(main)
