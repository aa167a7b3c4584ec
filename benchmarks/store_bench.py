"""Store throughput: bar upserts (fresh, all-unchanged replay) beside a bare COPY into the
same table on the same server, and raw-tick ingestion with bar recompute.

    .venv/bin/python benchmarks/store_bench.py [--rows 100000] [--rounds 3] [--batch 20000]

Uses DATABASE_URL if set (a scratch database is created and dropped on that server),
otherwise an embedded PostgreSQL. Prints a table and writes
``benchmarks/results/store-<UTC timestamp>.json``. Keep it short (well under 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from _scratch_pg import proc_cpu_s, scratch_database, scratch_server

from market_data_core.contracts import Bar, StreamEvent
from market_data_store import PgStoreClient, upgrade_schema

RESULTS = Path(__file__).resolve().parent / "results"
T0 = datetime(2024, 1, 2, tzinfo=UTC)


def make_bars(n: int, provider: str) -> list[Bar]:
    symbols = 50
    return [
        Bar(
            provider,
            f"S{i % symbols}",
            "1s",
            T0 + timedelta(seconds=i // symbols),
            100.0 + i % 97 * 0.01,
            101.0,
            99.0,
            100.5,
            10.0 + i % 13,
            100.2,
            i % 40,
        )
        for i in range(n)
    ]


def make_ticks(n: int, provider: str) -> list[StreamEvent]:
    symbols = 10
    return [
        StreamEvent.create(
            provider=provider,
            symbol=f"S{i % symbols}",
            kind="tick",
            src_ts=T0 + timedelta(microseconds=2500 * i),
            c=100.0 + i * 7919 % 1000 / 100,
            v=(i % 9 + 1) / 1000,
            seq=i,
        )
        for i in range(n)
    ]


def live_chunks(n: int, provider: str, window_ms: int, max_batch: int) -> list[list[StreamEvent]]:
    """Live-like tick batches as the micro-batcher sends them: 20 symbols, one tick every
    50 µs of event time (round robin), cut into whole (symbol, window) units, units packed
    into chunks of at most ``max_batch`` ticks, each chunk sorted by (src_ts, seq)."""
    symbols = 20
    units: dict[tuple[str, int], list[StreamEvent]] = {}
    for i in range(n):
        ts = T0 + timedelta(microseconds=50 * i)
        ev = StreamEvent.create(
            provider=provider,
            symbol=f"S{i % symbols:02d}",
            kind="tick",
            src_ts=ts,
            c=100.0 + i * 7919 % 1000 / 100,
            v=(i % 9 + 1) / 1000,
            seq=i,
            ingest_ts=ts,
        )
        units.setdefault((ev.symbol, 50 * i // (window_ms * 1000)), []).append(ev)
    ordered = sorted(units.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    chunks: list[list[StreamEvent]] = []
    current: list[StreamEvent] = []
    for _key, unit in ordered:
        if current and len(current) + len(unit) > max_batch:
            chunks.append(sorted(current, key=lambda e: (e.src_ts, e.seq)))
            current = []
        current += unit
    if current:
        chunks.append(sorted(current, key=lambda e: (e.src_ts, e.seq)))
    return chunks


def _tree_cpu_s(root_pid: int) -> float:
    """CPU seconds of a process and all its children, living ones (the backends and the
    background workers of a PostgreSQL server)."""
    total = 0.0
    pids = [root_pid]
    while pids:
        pid = pids.pop()
        try:
            total += proc_cpu_s(pid)
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        pids += [int(c) for c in children]
    return total


async def tick_cpu(
    dsn: str, n_ticks: int, window: str, server_pid: int | None, days: int = 0
) -> dict[str, Any]:
    """CPU per tick of ``ingest_ticks`` on live-like batches: the PostgreSQL backend of the
    (single) pool connection, the whole server (when embedded), and this client process.
    Then the same ticks again (all duplicates: the staged path) and batches with one stored
    tick in the middle (fast path attempted, then the staged path). ``days`` > 0 first
    stores one tick on each of that many earlier days (as many more partitions to plan
    over, like a database holding weeks of ticks)."""
    await upgrade_schema(dsn)
    store = await PgStoreClient.connect(dsn, pool_min=1, pool_max=1)
    window_ms = int(window.removesuffix("ms")) if window.endswith("ms") else None
    assert window_ms is not None, "--cpu-window must be given in ms, e.g. 2000ms"
    out: dict[str, Any] = {"cpu_ticks": n_ticks, "cpu_window": window}
    try:
        await store.ingest_ticks(live_chunks(4000, "warm", window_ms, 5000)[0], interval=window)
        for day in range(1, days + 1):
            old = StreamEvent.create(
                provider="old",
                symbol="S",
                kind="tick",
                src_ts=T0 - timedelta(days=day),
                c=1.0,
                v=1.0,
                seq=0,
            )
            await store.ingest_ticks([old], interval=window)
        out["cpu_extra_partition_days"] = days
        async with store._pool.acquire() as conn:
            backend_pid = conn.get_server_pid()
        chunks = live_chunks(n_ticks, "live", window_ms, 5000)
        out["cpu_chunk_ticks_mean"] = n_ticks / len(chunks)

        async def measure(name: str, batches_: list[list[StreamEvent]]) -> None:
            ticks = sum(len(b) for b in batches_)
            b0, s0 = proc_cpu_s(backend_pid), _tree_cpu_s(server_pid) if server_pid else 0.0
            c0, w0 = time.process_time(), time.perf_counter()
            for b in batches_:
                await store.ingest_ticks(b, interval=window)
            c1, w1 = time.process_time(), time.perf_counter()
            b1, s1 = proc_cpu_s(backend_pid), _tree_cpu_s(server_pid) if server_pid else 0.0
            out[f"{name}_pg_backend_us_per_tick"] = (b1 - b0) / ticks * 1e6
            if server_pid:
                out[f"{name}_pg_server_us_per_tick"] = (s1 - s0) / ticks * 1e6
            out[f"{name}_client_us_per_tick"] = (c1 - c0) / ticks * 1e6
            out[f"{name}_wall_us_per_tick"] = (w1 - w0) / ticks * 1e6

        await measure("live", chunks)
        await measure("replay", chunks)
        # one already stored tick in the middle of otherwise new batches
        mixed_src = live_chunks(n_ticks // 4, "mixed", window_ms, 5000)
        stored = [b[len(b) // 2] for b in mixed_src]
        await store.ingest_ticks(stored, interval=window)
        await measure("mixed", mixed_src)
    finally:
        await store.aclose()
    return out


def batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def run(
    dsn: str, rows: int, batch: int, n_ticks: int, window: str, rounds: int
) -> dict[str, Any]:
    await upgrade_schema(dsn)
    store = await PgStoreClient.connect(dsn, pool_min=1, pool_max=2)
    out: dict[str, Any] = {}
    try:
        # Warm-up (prepared statements, partitions for the days used below).
        await store.upsert_bars(make_bars(batch, "warm"))

        # Rounds alternate the three measurements so a burst of load from other processes
        # on a shared machine hits them alike; the median of each is reported.
        fresh, replay, copy = [], [], []
        conn = await asyncpg.connect(dsn)
        try:
            for rnd in range(rounds):
                bars = make_bars(rows, f"fresh{rnd}")
                t = time.perf_counter()
                for b in batches(bars, batch):
                    await store.upsert_bars(b)
                fresh.append(rows / (time.perf_counter() - t))

                t = time.perf_counter()
                for b in batches(bars, batch):
                    res = await store.upsert_bars(b)
                    assert res.changed == 0
                replay.append(rows / (time.perf_counter() - t))

                copy_bars = make_bars(rows, f"copy{rnd}")
                t = time.perf_counter()
                for b in batches(copy_bars, batch):
                    await conn.copy_records_to_table(
                        "bars_ohlcv",
                        records=[
                            (
                                x.provider,
                                x.symbol,
                                x.interval,
                                x.ts,
                                x.o,
                                x.h,
                                x.l,
                                x.c,
                                x.v,
                                x.vwap,
                                x.trade_count,
                            )
                            for x in b
                        ],
                        columns=(
                            "provider",
                            "symbol",
                            "interval",
                            "ts",
                            "o",
                            "h",
                            "l",
                            "c",
                            "v",
                            "vwap",
                            "trade_count",
                        ),
                    )
                copy.append(rows / (time.perf_counter() - t))
        finally:
            await conn.close()

        ticks = make_ticks(n_ticks, "ticks")
        tick_batch = 5000
        t = time.perf_counter()
        bars_written = 0
        for b in batches(ticks, tick_batch):
            bars_written += (await store.ingest_ticks(b, interval=window)).bars_result.changed
        ticks_s = time.perf_counter() - t
        t = time.perf_counter()
        for b in batches(ticks, tick_batch):
            assert (await store.ingest_ticks(b, interval=window)).bars_result.changed == 0
        ticks_replay_s = time.perf_counter() - t

        # Small batches (a quiet micro-batcher flush): per-call latency matters there.
        small = make_ticks(20_000, "small")
        lat_ms = []
        for b in batches(small, 500):
            t = time.perf_counter()
            await store.ingest_ticks(b, interval=window)
            lat_ms.append((time.perf_counter() - t) * 1000)
        lat_ms.sort()

        out = {
            "bars_rows": rows,
            "batch": batch,
            "rounds": rounds,
            "upsert_fresh_rows_per_s": statistics.median(fresh),
            "upsert_replay_rows_per_s": statistics.median(replay),
            "bare_copy_rows_per_s": statistics.median(copy),
            "fresh_vs_copy": statistics.median(fresh) / statistics.median(copy),
            "replay_vs_fresh": statistics.median(replay) / statistics.median(fresh),
            "all_rounds": {"fresh": fresh, "replay": replay, "copy": copy},
            "ticks": n_ticks,
            "tick_batch": tick_batch,
            "tick_window": window,
            "ingest_ticks_fresh_per_s": n_ticks / ticks_s,
            "ingest_ticks_replay_per_s": n_ticks / ticks_replay_s,
            "tick_bars_written": bars_written,
            "ingest_500_ticks_p50_ms": lat_ms[len(lat_ms) // 2],
            "ingest_500_ticks_p95_ms": lat_ms[int(len(lat_ms) * 0.95)],
        }
    finally:
        await store.aclose()
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with (
        scratch_server() as (server_url, admin, pg),
        scratch_database(server_url, admin) as dsn,
    ):
        if args.cpu_only:
            result = await tick_cpu(
                dsn,
                args.cpu_ticks,
                args.cpu_window,
                pg.proc.pid if pg is not None and pg.proc is not None else None,
                args.cpu_days,
            )
        else:
            result = await run(dsn, args.rows, args.batch, args.ticks, args.window, args.rounds)
        result["server"] = "embedded" if pg else "DATABASE_URL"
        result["server_version"] = await admin.fetchval("SHOW server_version")
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="bars per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--ticks", type=int, default=200_000)
    parser.add_argument("--window", default="1s")
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="only measure CPU per tick of ingest_ticks on live-like batches",
    )
    parser.add_argument("--cpu-ticks", type=int, default=200_000)
    parser.add_argument("--cpu-window", default="2000ms")
    parser.add_argument("--cpu-days", type=int, default=0, help="extra partitions first")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    result["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["host"] = {"python": platform.python_version(), "cpus": os.cpu_count()}
    result["load_avg_1m"] = os.getloadavg()[0]
    for key, value in result.items():
        if key == "all_rounds":
            continue
        if isinstance(value, float):
            print(f"{key:28s} {value:>14,.1f}" if value > 10 else f"{key:28s} {value:>14.2f}")
        else:
            print(f"{key:28s} {value!s:>14}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"store-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
