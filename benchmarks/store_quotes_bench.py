"""PostgreSQL's CPU per event for trades against quotes: the store's write of closed windows
(``ingest_columns``: the raw rows' ``COPY`` and the bar or quote bar recompute of each window,
one transaction per window close, as the micro-batcher commits a closed window) of synthetic
trades, then of as many synthetic quotes (twice with bars: their quote bars folded by the store
client, then recomputed by the statement alone), each in a fresh database, alternating for
``--rounds`` rounds. The figure is the backend's own CPU time per event
(``/proc/<pid>/schedstat``), so neither the Python side nor another process on the machine counts.

    .venv/bin/python benchmarks/store_quotes_bench.py [--symbols 10] [--per-window 1000]
        [--windows 20] [--rounds 3] [--no-bars] [--early K]

``--no-bars``: ``store_raw`` instead, the rows' ``COPY`` alone (what the micro-batcher does
for an open window's events), to split the two. ``--early K``: each window's events in K + 1
parts by time, the first K stored while the window is open (``store_raw``), the last at its
close with the bars (``ingest_columns(stored=..., early_quotes=...)``), as the micro-batcher
does when a window holds more than ``max_batch_size`` events (at 200,000 events/s a series' 2 s
window holds ~20,000, stored in chunks of 5,000).

Uses DATABASE_URL if set (a scratch database is created and dropped on that server per run),
otherwise an embedded PostgreSQL. Prints one JSON object (every run, and per kind the best
and the median of the rounds) and writes it to
``benchmarks/results/store-quotes-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _scratch_pg import proc_cpu_s, scratch_database, scratch_server

import market_data_store
from market_data_core.columnar import KIND_CODES, EventColumns, columns_from_events
from market_data_core.contracts import StreamEvent
from market_data_store import PgStoreClient, upgrade_schema

RESULTS = Path(__file__).resolve().parent / "results"
WINDOW_MS = 2000
CARRY_MS = 60_000


def windows(kind: str, symbols: int, per_window: int, count: int) -> list[list[StreamEvent]]:
    """``count`` windows of ``per_window`` events per symbol, evenly spaced in event time
    (symbols offset by a microsecond each), all ``kind`` (``tick`` or ``quote``); each list
    one 2 s window an hour ago, aligned as the micro-batcher's windows are (a list straddling
    two windows would recompute the earlier one from what the list before it stored)."""
    hour_ago_ms = int((time.time() - 3600) * 1000)
    t0 = datetime.fromtimestamp(hour_ago_ms // WINDOW_MS * WINDOW_MS / 1000, UTC)
    step_us = WINDOW_MS * 1000 // per_window
    out = []
    i = 0
    for w in range(count):
        batch = []
        for k in range(per_window):
            for s in range(symbols):
                ts = t0 + timedelta(milliseconds=w * WINDOW_MS, microseconds=k * step_us + s)
                price = 100.0 + i * 7919 % 1000 / 100
                if kind == "quote":
                    ev = StreamEvent.create(
                        provider="qbench",
                        symbol=f"S{s:03d}",
                        kind="quote",
                        src_ts=ts,
                        seq=i,
                        bid=price,
                        ask=price + (i % 3 + 1) / 100,
                        bid_size=float(i % 20 + 1) * 100,
                        ask_size=float(i * 7 % 20 + 1) * 100,
                    )
                else:
                    ev = StreamEvent.create(
                        provider="qbench",
                        symbol=f"S{s:03d}",
                        kind="tick",
                        src_ts=ts,
                        seq=i,
                        c=price,
                        v=(i % 9 + 1) / 1000,
                    )
                batch.append(ev)
                i += 1
        out.append(batch)
    return out


async def measure(
    dsn: str,
    kind: str,
    batches: list[list[StreamEvent]],
    bars: bool,
    *,
    fold: bool = True,
    early: int = 0,
) -> dict[str, Any]:
    """Ingest ``batches`` (one window close each) through one connection; the backend's CPU
    and the client's (this process: building the COPY, folding quote bars). ``bars`` False:
    ``store_raw`` of the rows only (the ``COPY``), no bar recompute; ``fold`` False: every
    quote bar recomputed by the statement (``PgStoreClient.fold_quotes``); ``early``: parts of
    each window stored before its close (``store_raw``)."""
    await upgrade_schema(dsn)
    store = await PgStoreClient.connect(dsn, pool_min=1, pool_max=1)
    store.fold_quotes = fold
    parts = [
        [
            columns_from_events(
                batch[k * len(batch) // (early + 1) : (k + 1) * len(batch) // (early + 1)]
            )
            for k in range(early + 1)
        ]
        for batch in batches
    ]
    try:
        async with store._pool.acquire() as conn:
            backend = conn.get_server_pid()

        async def write(i: int) -> None:
            *opened, last = parts[i]
            if not bars:
                for cols in parts[i]:
                    await store.store_raw(cols)
                return
            # as the micro-batcher: the quotes of early calls that inserted all theirs kept
            kept = []
            for cols in opened:
                result = await store.store_raw(cols)
                quotes = cols.take(cols.kind == KIND_CODES["quote"])
                if result.quotes_inserted == quotes.n and quotes.n:
                    kept.append(quotes)
            await store.ingest_columns(
                last,
                interval="2s",
                quote_carry_ms=CARRY_MS,
                stored=EventColumns.concat(opened) if opened else None,
                early_quotes=EventColumns.concat(kept) if kept else None,
            )

        await write(0)  # outside the figures (partitions, catalog caches, prepared plans)
        cpu0, wall0, own0 = proc_cpu_s(backend), time.perf_counter(), time.process_time()
        for i in range(1, len(parts)):
            await write(i)
        cpu1, wall1, own1 = proc_cpu_s(backend), time.perf_counter(), time.process_time()
    finally:
        await store.aclose()
    n = sum(len(b) for b in batches[1:])
    return {
        "kind": kind,
        "events": n,
        "pg_backend_us_per_event": round((cpu1 - cpu0) * 1e6 / n, 3),
        "client_us_per_event": round((own1 - own0) * 1e6 / n, 3),
        "wall_us_per_event": round((wall1 - wall0) * 1e6 / n, 3),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    data = {
        kind: windows(kind, args.symbols, args.per_window, args.windows)
        for kind in ("tick", "quote")
    }
    # quotes twice with bars: folded by the client (the default) and by the statement alone
    plan = [("tick", "tick", True), ("quote", "quote", True)]
    if not args.no_bars:
        plan.append(("quote_statement", "quote", False))
    async with scratch_server() as (server_url, admin, pg):
        runs = []
        for _ in range(args.rounds):
            for name, kind, fold in plan:
                async with scratch_database(server_url, admin) as dsn:
                    runs.append(
                        await measure(
                            dsn, name, data[kind], not args.no_bars, fold=fold, early=args.early
                        )
                    )
        summary = {}
        for name, _kind, _fold in plan:
            figures = [r["pg_backend_us_per_event"] for r in runs if r["kind"] == name]
            client = [r["client_us_per_event"] for r in runs if r["kind"] == name]
            summary[name] = {
                "best": min(figures),
                "median": statistics.median(figures),
                "client_median": statistics.median(client),
            }
        return {
            "at": datetime.now(UTC).isoformat(),
            "server": "embedded" if pg else "DATABASE_URL",
            "server_version": await admin.fetchval("SHOW server_version"),
            "store_module": market_data_store.__file__,
            "params": vars(args),
            "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
            "pg_backend_us_per_event": summary,
            "quote_over_trade_best": round(summary["quote"]["best"] / summary["tick"]["best"], 3),
            "runs": runs,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=10, help="series per kind")
    parser.add_argument(
        "--per-window", type=int, default=1000, help="events per symbol per 2 s window"
    )
    parser.add_argument("--windows", type=int, default=20, help="window closes per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating trade/quote runs")
    parser.add_argument(
        "--no-bars", action="store_true", help="store_raw: the rows' COPY only, no recompute"
    )
    parser.add_argument(
        "--early",
        type=int,
        default=0,
        metavar="K",
        help="store each window in K parts while open, the rest at its close",
    )
    args = parser.parse_args()
    if args.early < 0:
        parser.error("--early must be >= 0")
    result = asyncio.run(main_async(args))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"store-quotes-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
