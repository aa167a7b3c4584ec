"""Cost of rollup levels over quotes: ``ingest_events`` of the shipped EUR/USD quotes (9,500
over 6 hours, plus a trade every 7.3 s) in event-time order, cut into batches, at a 1 s micro
interval, without rollups and with the given levels; PostgreSQL backend CPU and wall time per
batch (the pool's single connection, read from /proc).

    .venv/bin/python benchmarks/rollup_quotes_bench.py [--levels 1m,5m,1h] [--batch 20]

Uses DATABASE_URL if set (a scratch database is created and dropped on that server),
otherwise an embedded PostgreSQL. Prints one JSON object and writes it to
``benchmarks/results/rollup-quotes-<UTC timestamp>.json``. On a shared machine run the
compared variants back to back, more than once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _scratch_pg import proc_cpu_s, scratch_database, scratch_server

import market_data_store
from market_data_core.config import MicroBatchConfig, RollupsConfig
from market_data_core.contracts import StreamEvent
from market_data_pipeline.producers.datasets import load_registry, read_dataset
from market_data_pipeline.project import SHIPPED_DATASETS_FILE
from market_data_pipeline.sessions import rollup_plan
from market_data_store import PgStoreClient, upgrade_schema

RESULTS = Path(__file__).resolve().parent / "results"
WINDOW_MS = 1000
CARRY_MS = 60_000


def events(provider: str) -> list[StreamEvent]:
    """The EUR/USD quotes as ``mdp stream replay`` reads them, and a trade every 7.3 s."""
    spec = load_registry(SHIPPED_DATASETS_FILE)["eurusd_quotes"]
    quotes = [
        StreamEvent.create(
            provider=provider,
            symbol="EUR/USD",
            kind="quote",
            src_ts=e.src_ts,
            seq=e.seq,
            bid=e.bid,
            ask=e.ask,
        )
        for e in read_dataset(spec)
        if isinstance(e, StreamEvent)
    ]
    trades = []
    t, k = quotes[0].src_ts, 0
    while t < quotes[-1].src_ts:
        trades.append(
            StreamEvent.create(
                provider=provider, symbol="EUR/USD", kind="tick", src_ts=t, c=1.12, v=1.0, seq=k
            )
        )
        t += timedelta(milliseconds=7300)
        k += 1
    return sorted(quotes + trades, key=lambda e: (e.src_ts, e.kind, e.seq))


async def measure(dsn: str, levels: list[str], batch: int) -> dict[str, Any]:
    await upgrade_schema(dsn)
    store = await PgStoreClient.connect(dsn, pool_min=1, pool_max=1)
    plan = None
    if levels:
        plan = rollup_plan(
            MicroBatchConfig(window_ms=WINDOW_MS, rollups=RollupsConfig(intervals=levels))
        )
    try:
        provider = f"b{uuid.uuid4().hex[:6]}"
        evs = events(provider)
        chunks = [evs[i : i + batch] for i in range(0, len(evs), batch)]
        async with store._pool.acquire() as conn:
            backend = conn.get_server_pid()
        cpu0, wall0 = proc_cpu_s(backend), time.perf_counter()
        for chunk in chunks:
            await store.ingest_events(chunk, interval="1s", quote_carry_ms=CARRY_MS, rollups=plan)
        cpu1, wall1 = proc_cpu_s(backend), time.perf_counter()
    finally:
        await store.aclose()
    return {
        "levels": levels,
        "batch_events": batch,
        "batches": len(chunks),
        "events": len(evs),
        "pg_backend_ms_per_batch": (cpu1 - cpu0) / len(chunks) * 1e3,
        "wall_ms_per_batch": (wall1 - wall0) / len(chunks) * 1e3,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with scratch_server() as (server_url, admin, pg):
        runs = []
        for _ in range(args.rounds):
            for levels in ([], [x for x in args.levels.split(",") if x]):
                async with scratch_database(server_url, admin) as dsn:
                    runs.append(await measure(dsn, levels, args.batch))
        return {
            "at": datetime.now(UTC).isoformat(),
            "server": "embedded" if pg else "DATABASE_URL",
            "server_version": await admin.fetchval("SHOW server_version"),
            "store_module": market_data_store.__file__,
            "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
            "runs": runs,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1m,5m,1h", help="rollup levels, comma separated")
    parser.add_argument("--batch", type=int, default=20, help="events per ingest_events call")
    parser.add_argument("--rounds", type=int, default=2, help="alternating no-rollup/rollup runs")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"rollup-quotes-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
