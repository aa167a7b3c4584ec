"""``mdp bench``: the real path against real local servers, beside the bare ceiling measured in
the same run (SPEC §12). Prints a table and appends JSON to ``benchmarks/results/``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, cast

import msgpack
import psutil
import redis.asyncio as aredis
import typer
import yaml

from market_data_core.codec import encode_event, encode_events
from market_data_core.config import AppConfig, PackAs
from market_data_core.contracts import Bar, QuoteBar, StreamEvent, WindowBar
from market_data_core.errors import MDPError
from market_data_core.protocols import Bus, SignalsStoreClient, StoreClient
from market_data_core.timeutil import format_duration_ms
from market_data_pipeline.cli.apps import app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    duration_ms,
    environment,
    load_app_config,
    parse_window,
    percentile,
    run_async,
)
from market_data_pipeline.consumers.inference_consumer import features_interval
from market_data_pipeline.inference.engine import build_engine
from market_data_pipeline.runner import group_lag
from market_data_pipeline.servers import ServerUrls, resolve_servers
from market_data_pipeline.servers.process import die_with_parent
from market_data_pipeline.ui import console
from market_data_pipeline.ui.progress import ProgressLine
from market_data_pipeline.ui.tables import print_fields

# Targets from the issues (21: packed, columnar), printed beside the figures.
TARGET_EVENTS_PER_S = 200_000
TARGET_P95_OVER_WINDOW = 1.2
TARGET_LAG_OVER_WINDOW = 2.0
TARGET_CPU_US_PER_EVENT = 9.0
TARGET_PEAK_RSS_MIB = 600.0
# "flat": over the last RSS_FLAT_S of the run (the last 80 % of a shorter one), the mean of
# the last 30 samples is at most this much above the mean of the first 30 (5 %, +20 MiB)
RSS_FLAT_S = 240.0
RSS_FLAT_GROWTH = 0.05
RSS_FLAT_SLACK_MIB = 20.0


@dataclass
class Ceiling:
    events: int
    xadd_per_s: float
    read_ack_per_s: float
    copy_per_s: float
    path_per_s: float
    packed_xadd_per_s: float | None = None


@dataclass
class FullPath:
    published: int = 0
    events_in: int = 0
    ticks_inserted: int = 0
    quotes_inserted: int = 0
    bars_written: int = 0
    quote_bars_written: int = 0
    bars_trade_count: int = 0
    quote_bars_quote_count: int = 0
    dead_letters: int = 0
    sustained_per_s: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    # window end -> taken for commit (p50/p95); the rest of the latency is the commit
    close_p50_ms: float | None = None
    close_p95_ms: float | None = None
    lag_ms_max: float = 0.0
    lag_ms_p95: float = 0.0
    pending_samples: list[int] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    # (seconds into the run, RSS MiB of bench + producers + workers), one per second
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    # the peak of each role's RSS (all its processes), MiB
    peak_rss_mb_by_role: dict[str, float] = field(default_factory=dict)
    bars_scored: int = 0
    signals: int = 0
    # micro_batch.rollups (--rollups): rollup windows written by the workers, and per level
    # the trades its bars hold (sum of trade_count), which must be every stored tick
    rollup_bars_written: int = 0
    rollup_trade_counts: dict[str, int] = field(default_factory=dict)
    exact: bool = False
    # signals = reference: the active signal rows of the run's series equal one clean pass of
    # a fresh engine over their final bars (inference/reference.py)
    signals_reference: bool = False
    reference_bars: int = 0
    reference_signals: int = 0
    # the cost of the outbox and of re-scoring: bar changes relayed by the workers, wall time
    # in their relay calls; inference's scoring-and-diff time, bars replayed, rows retracted
    bars_relayed: int = 0
    relay_calls: int = 0
    relay_s: float = 0.0
    rescore_s: float = 0.0
    bars_replayed: int = 0
    resumes: int = 0
    retracted: int = 0
    # CPU seconds per role over the steady part of the run, and µs of CPU per event
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


_ROLES = ("producers", "workers", "redis", "postgres", "bench+inference")


def _cpu_by_role(producers: set[int], workers: set[int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role: this process (inference), its
    producer and worker subprocesses, and the embedded servers it started (with PostgreSQL's
    backends). Servers given by URL are not ours to measure and are left out."""
    out = dict.fromkeys(_ROLES, 0.0)
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            name = proc.name()
        except psutil.Error:
            continue  # exited between listing and reading
        if proc.pid in producers:
            role = "producers"
        elif proc.pid in workers:
            role = "workers"
        elif "valkey" in name or "redis" in name:
            role = "redis"
        elif "postgres" in name:
            role = "postgres"
        elif proc.pid == me.pid:
            role = "bench+inference"
        else:
            continue
        out[role] += times.user + times.system
    return out


def _bench_events(n: int, symbols: int) -> list[StreamEvent]:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        StreamEvent.create(
            provider="ceiling",
            symbol=f"S{i % symbols:03d}",
            kind="tick",
            src_ts=t0 + timedelta(microseconds=50 * i),
            c=100.0 + (i % 97) * 0.01,
            v=1.0,
            seq=i,
        )
        for i in range(n)
    ]


async def _ceiling(urls: ServerUrls, n: int, symbols: int, pack: int) -> Ceiling:
    """Bare redis-py XADD -> XREADGROUP+XACK (msgpack unpack, no validation) -> COPY."""
    from market_data_pipeline.wiring import bare_copy_ticks_per_s

    assert urls.redis_url is not None and urls.database_url is not None
    events = _bench_events(n, symbols)
    payloads = [encode_event(e) for e in events]
    stream = f"mdp.bench.ceiling.{uuid.uuid4().hex[:8]}"
    client = aredis.Redis.from_url(urls.redis_url)
    try:
        t = time.perf_counter()
        for i in range(0, n, 1000):
            pipe = client.pipeline(transaction=False)
            for p in payloads[i : i + 1000]:
                pipe.xadd(stream, {"data": p})
            await pipe.execute()
        xadd_s = time.perf_counter() - t
        await client.xgroup_create(stream, "g", id="0")
        t = time.perf_counter()
        read = 0
        while read < n:
            resp = cast(
                "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
                await client.xreadgroup("g", "c", {stream: ">"}, count=1000),
            )
            entries = resp[0][1] if resp else []
            if not entries:
                break
            for _id, fields in entries:
                msgpack.unpackb(fields[b"data"])
            await client.xack(stream, "g", *[eid for eid, _ in entries])
            read += len(entries)
        read_s = time.perf_counter() - t
        packed_rate = None
        if pack > 1:
            packed = [encode_events(events[i : i + pack]) for i in range(0, n, pack)]
            t = time.perf_counter()
            for i in range(0, len(packed), 1000):
                pipe = client.pipeline(transaction=False)
                for p in packed[i : i + 1000]:
                    pipe.xadd(stream + ".packed", {"data": p})
                await pipe.execute()
            packed_rate = n / (time.perf_counter() - t)
        await client.delete(stream, stream + ".packed")
    finally:
        await client.aclose()
    copy_rate = await bare_copy_ticks_per_s(urls.database_url, n)
    return Ceiling(
        events=n,
        xadd_per_s=n / xadd_s,
        read_ack_per_s=n / read_s,
        copy_per_s=copy_rate,
        path_per_s=n / (xadd_s + read_s + n / copy_rate),
        packed_xadd_per_s=packed_rate,
    )


def _producer_config(
    cfg: AppConfig,
    urls: ServerUrls,
    k: int,
    symbols: list[str],
    path: Path,
    quote_ratio: float = 0.0,
    run_tag: str = "",
) -> Path:
    data = cfg.model_dump(mode="json")
    data["bus"]["redis"]["uri"] = urls.redis_url
    data["store"]["dsn"] = urls.database_url
    data["producers"]["synthetic"].update(
        provider=_provider(k, run_tag),
        symbols=symbols,
        enabled=True,
        kind="tick",
        quote_ratio=quote_ratio,
    )
    data["telemetry"]["metrics_port"] = 0
    out = path / f"producer-{k}.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def _provider(k: int, run_tag: str) -> str:
    """The provider name of benchmark producer ``k`` (``bench0-<tag>``): a run's series are
    its own, also on servers that keep earlier runs' rows."""
    return f"bench{k}-{run_tag}" if run_tag else f"bench{k}"


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """Start an ``mdp`` subcommand; its stderr (logs, and the one-line error it exits with)
    goes to ``log`` so that a failure can say why."""
    return _popen([sys.executable, "-m", "market_data_pipeline.cli.app", *args], env, log)


def _popen(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """Start a child of the benchmark that gets SIGTERM when the benchmark dies, however it
    dies (``PR_SET_PDEATHSIG``): a ``kill -9`` of ``mdp bench`` leaves no producer or worker
    retrying against servers that are gone. The child has a process group of its own, so a
    Ctrl-C reaches the benchmark alone, which stops its children in order."""
    with log.open("w") as err:
        return subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )


def _last_error(log: Path) -> str:
    """The ``mdp: error: ...`` line a subprocess exited with, else its last log line."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("mdp: error:")]
    return (errors or lines or ["no output"])[-1]


def _read_stats(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


async def _full_path(
    cfg: AppConfig,
    urls: ServerUrls,
    *,
    duration_s: float,
    rate: float,
    symbols: int,
    producers: int,
    workers: int,
    workdir: Path,
    progress: ProgressLine | None = None,
    quote_ratio: float = 0.0,
    run_tag: str = "",
) -> FullPath:
    """Producers and micro-batch workers as processes (``mdp stream produce`` /
    ``mdp stream micro-batch``), inference in this process; samples every second (shown on
    ``progress``: seconds of the run, events consumed so far)."""
    from market_data_pipeline.wiring import open_clients

    async with open_clients(cfg, urls, store=True, signals=True) as c:
        return await _full_path_on(
            cfg,
            urls,
            c.bus,
            c.store,
            c.signals,
            duration_s=duration_s,
            rate=rate,
            symbols=symbols,
            producers=producers,
            workers=workers,
            workdir=workdir,
            progress=progress,
            quote_ratio=quote_ratio,
            run_tag=run_tag,
        )


async def _full_path_on(
    cfg: AppConfig,
    urls: ServerUrls,
    bus: Bus,
    store: StoreClient,
    signals_store: SignalsStoreClient,
    *,
    duration_s: float,
    rate: float,
    symbols: int,
    producers: int,
    workers: int,
    workdir: Path,
    progress: ProgressLine | None,
    quote_ratio: float,
    run_tag: str,
) -> FullPath:
    from market_data_pipeline.consumers.inference_consumer import InferenceConsumer

    names = [f"S{i:03d}" for i in range(symbols)]
    stage_stop = asyncio.Event()
    engine = build_engine(cfg, "rules", interval=features_interval(cfg), base_dir=Path.cwd())
    inference = InferenceConsumer(cfg, bus, store, signals_store, engine, consumer_name="bench-inf")
    result = FullPath()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URI", "DATABASE_URL")}
    started_at = datetime.now(UTC)
    me = psutil.Process()
    stats_files = [workdir / f"worker-{k}.json" for k in range(workers)]
    worker_conf = _producer_config(cfg, urls, 0, names, workdir)
    procs: list[subprocess.Popen[str]] = []
    workers_p: list[subprocess.Popen[str]] = []
    inf_task = asyncio.create_task(inference.run(stage_stop))
    try:
        for k in range(workers):
            workers_p.append(
                _spawn(
                    [
                        "stream",
                        "micro-batch",
                        "--config",
                        str(worker_conf),
                        "--consumer",
                        f"bench-mb-{k}",
                        "--stats-file",
                        str(stats_files[k]),
                        "--idle-s",
                        "1",
                    ],
                    env,
                    workdir / f"worker-{k}.log",
                )
            )
        await asyncio.sleep(1.5)  # workers join the group and take their shards first
        for k in range(producers):
            conf = _producer_config(
                cfg, urls, k, names[k::producers], workdir, quote_ratio, run_tag
            )
            procs.append(
                _spawn(
                    [
                        "stream",
                        "produce",
                        "--provider",
                        "synthetic",
                        "--rate",
                        str(rate / producers),
                        "--duration",
                        f"{duration_s}s",
                        "--config",
                        str(conf),
                    ],
                    env,
                    workdir / f"producer-{k}.log",
                )
            )
        samples: list[tuple[float, int]] = []
        lags: list[float] = []
        pids = ({p.pid for p in procs}, {w.pid for w in workers_p})
        cpu: list[tuple[float, dict[str, float]]] = []
        t0 = time.monotonic()
        while any(p.poll() is None for p in procs):
            await asyncio.sleep(1.0)
            stats = [_read_stats(f) for f in stats_files]
            samples.append((time.monotonic() - t0, sum(st.get("events_in", 0) for st in stats)))
            if all(p.poll() is None for p in procs):
                cpu.append((samples[-1][0], _cpu_by_role(*pids)))
            lags.append(max((st.get("last_lag_ms", 0.0) for st in stats), default=0.0))
            result.pending_samples.append(await group_lag(bus, cfg.bus.events_topic, cfg.bus.group))
            if progress is not None:
                elapsed, consumed = samples[-1]
                progress.update(
                    elapsed,
                    detail=f"{consumed:,} events consumed  {consumed / max(elapsed, 1e-9):,.0f} "
                    "ev/s",
                )
            by_role = {"bench+inference": me.memory_info().rss / 2**20}
            for role, group in (("producers", procs), ("workers", workers_p)):
                for p in group:
                    with contextlib.suppress(psutil.Error):
                        mb = psutil.Process(p.pid).memory_info().rss / 2**20
                        by_role[role] = by_role.get(role, 0.0) + mb
            for role, mb in by_role.items():
                result.peak_rss_mb_by_role[role] = round(
                    max(result.peak_rss_mb_by_role.get(role, 0.0), mb), 1
                )
            rss = sum(by_role.values()) * 2**20
            result.peak_rss_mb = max(result.peak_rss_mb, rss / 2**20)
            result.rss_samples.append((round(samples[-1][0], 1), round(rss / 2**20, 1)))
            if time.monotonic() - t0 > duration_s + 60:
                break
        for k, p in enumerate(procs):
            out, _ = p.communicate(timeout=60)
            found = re.search(r"published ([\d,]+) events", out)
            if found is None:
                why = _last_error(workdir / f"producer-{k}.log")
                raise MDPError(f"a benchmark producer failed (exit {p.returncode}): {why}")
            result.published += int(found.group(1).replace(",", ""))
        if progress is not None:
            progress.label = "draining the workers and inference"
        for w in workers_p:
            w.send_signal(signal.SIGUSR1)  # drain: close every window, commit, ack, exit
        for k, w in enumerate(workers_p):
            await asyncio.to_thread(w.wait, 300)
            if w.returncode != 0:
                why = _last_error(workdir / f"worker-{k}.log")
                raise MDPError(f"micro-batch worker {k} failed (exit {w.returncode}): {why}")
        while True:  # polls the bus: there is no event to wait on
            if not await group_lag(bus, cfg.bus.bars_topic, inference.group):
                break
            await asyncio.sleep(0.2)
    finally:
        stage_stop.set()
        for p in [*procs, *workers_p]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(inf_task, 30)
    steady = [s for s in samples if 3.0 <= s[0] <= duration_s - 1.0] or samples
    if len(steady) >= 2:
        result.sustained_per_s = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
        result.cpu_s, result.cpu_us_per_event = _cpu_split(cpu, steady[0], steady[-1])
    final = [_read_stats(f) for f in stats_files]
    latencies = [x for st in final for x in st.get("window_latencies_ms", [])]
    result.events_in = sum(st.get("events_in", 0) for st in final)
    result.ticks_inserted = sum(st.get("ticks_inserted", 0) for st in final)
    result.quotes_inserted = sum(st.get("quotes_inserted", 0) for st in final)
    result.bars_written = sum(st.get("bars_written", 0) for st in final)
    result.quote_bars_written = sum(st.get("quote_bars_written", 0) for st in final)
    result.rollup_bars_written = sum(st.get("rollup_bars_written", 0) for st in final)
    result.dead_letters = sum(st.get("dead_letters", 0) for st in final)
    result.latency_p50_ms = percentile(latencies, 50)
    result.latency_p95_ms = percentile(latencies, 95)
    result.latency_p99_ms = percentile(latencies, 99)
    closes = [x for st in final for x in st.get("window_close_ms", [])]
    result.close_p50_ms = percentile(closes, 50)
    result.close_p95_ms = percentile(closes, 95)
    result.lag_ms_max = max(lags, default=0.0)
    result.lag_ms_p95 = percentile(lags, 95) or 0.0
    inf = inference.stats
    result.bars_scored, result.signals = inf.bars_scored, inf.signals
    result.rescore_s, result.bars_replayed = round(inf.rescore_s, 3), inf.bars_replayed
    result.resumes, result.retracted = inf.resumes, inf.retracted
    result.bars_relayed = sum(st.get("bars_relayed", 0) for st in final)
    result.relay_calls = sum(st.get("relay_calls", 0) for st in final)
    result.relay_s = round(sum(st.get("relay_s", 0.0) for st in final), 3)
    interval = format_duration_ms(cfg.micro_batch.window_ms)
    end = datetime.now(UTC) + timedelta(minutes=1)
    final_bars: list[WindowBar] = []
    for k in range(producers):
        for name in names[k::producers]:
            windows = await store.windows_range(
                _provider(k, run_tag), name, interval, started_at - timedelta(1), end
            )
            for window in windows:
                quote = window if isinstance(window, QuoteBar) else window.quote
                if isinstance(window, Bar):
                    result.bars_trade_count += window.trade_count or 0
                if quote is not None:
                    result.quote_bars_quote_count += quote.quote_count
            final_bars += windows
    for level in cfg.micro_batch.rollups.intervals:
        n = 0
        for k in range(producers):
            for name in names[k::producers]:
                bars = await store.bars_range(
                    _provider(k, run_tag), name, level, started_at - timedelta(1), end
                )
                n += sum(b.trade_count or 0 for b in bars)
        result.rollup_trade_counts[level] = n
    result.exact = (
        all(n == result.ticks_inserted for n in result.rollup_trade_counts.values())
        and result.published
        == result.events_in
        == result.ticks_inserted + result.quotes_inserted
        == result.bars_trade_count + result.quote_bars_quote_count
        and result.ticks_inserted == result.bars_trade_count
        and result.dead_letters == 0
    )
    await _check_signals(cfg, result, final_bars, signals_store, started_at - timedelta(1), end)
    return result


async def _check_signals(
    cfg: AppConfig,
    result: FullPath,
    bars: list[WindowBar],
    signals_store: SignalsStoreClient,
    start: datetime,
    end: datetime,
) -> None:
    """signals = reference: the run's active signal rows against a fresh engine's one clean
    pass over the run's final bars (the same rows, every field and feature bit for bit)."""
    from market_data_pipeline.inference.reference import clean_pass, signal_rows

    engine = build_engine(cfg, "rules", interval=features_interval(cfg), base_dir=Path.cwd())
    reference = await clean_pass(engine, bars)
    series = {(b.provider, b.symbol) for b in bars}
    rows = [
        s
        for s in await signals_store.signals_range(start, end)
        if (s.provider, s.symbol) in series and s.state == "active"
    ]
    result.reference_bars = len(bars)
    result.reference_signals = len(reference.signals)
    result.signals_reference = signal_rows(rows) == signal_rows(reference.signals)


def _cpu_split(
    cpu: list[tuple[float, dict[str, float]]],
    first: tuple[float, int],
    last: tuple[float, int],
) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds per role between the steady samples ``first`` and ``last`` (at most a
    sample's distance off), and µs of CPU per event consumed in that span."""
    inside = [c for c in cpu if first[0] <= c[0] <= last[0]]
    events = last[1] - first[1]
    if len(inside) < 2 or events <= 0:
        return {}, {}
    (_, a), (_, b) = inside[0], inside[-1]
    used = {role: round(b[role] - a[role], 2) for role in _ROLES}
    # the CPU samples span slightly less time than the event samples: scale to the same span
    span = (inside[-1][0] - inside[0][0]) / (last[0] - first[0])
    per_event = {role: round(used[role] * 1e6 / (events * span), 2) for role in _ROLES}
    return used, per_event


def rss_flat(samples: list[tuple[float, float]]) -> tuple[bool, float, float]:
    """Whether RSS stayed flat over the last ``RSS_FLAT_S`` of the run (its last 80 % when
    shorter): ``(flat, mean of the first 30 samples of that span, of the last 30)``."""
    if len(samples) < 10:
        return False, 0.0, 0.0
    end = samples[-1][0]
    span = min(RSS_FLAT_S, 0.8 * end)
    tail = [mb for t, mb in samples if t >= end - span]
    k = max(1, min(30, len(tail) // 3))
    first, last = sum(tail[:k]) / k, sum(tail[-k:]) / k
    return last <= first * (1 + RSS_FLAT_GROWTH) + RSS_FLAT_SLACK_MIB, first, last


def _rss_row(f: FullPath) -> tuple[str, str]:
    flat, first, last = rss_flat(f.rss_samples)
    span = min(RSS_FLAT_S, 0.8 * (f.rss_samples[-1][0] if f.rss_samples else 0.0))
    return (
        "peak RSS (bench + producers + workers)",
        f"{f.peak_rss_mb:,.0f} MiB (target <= {TARGET_PEAK_RSS_MIB:,.0f}: "
        f"{_ok(f.peak_rss_mb <= TARGET_PEAK_RSS_MIB)}; peaks "
        + ", ".join(f"{role} {mb:,.0f}" for role, mb in f.peak_rss_mb_by_role.items())
        + f"); over the last {span:,.0f} s {first:,.0f} -> {last:,.0f} MiB (flat: {_ok(flat)})",
    )


def _ok(flag: bool) -> str:
    return "ok" if flag else "MISSED"


def _per_event(seconds: float, events: int) -> str:
    return f"{seconds * 1e6 / events:.2f}" if events else "n/a"


def _rows(
    c: Ceiling | None,
    f: FullPath,
    window_ms: int,
    rate: float,
    pack: int,
    procs: str,
    quote_ratio: float = 0.0,
    pack_as: str = "rows",
) -> list[tuple[str, str]]:
    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:,.0f} ms"

    p95_target = TARGET_P95_OVER_WINDOW * window_ms
    rows = [
        (
            "mode",
            f"{'packed ' + str(pack) + ' events/entry' if pack > 1 else '1 event/entry'} "
            f"({'column blocks' if pack_as == 'columns' else 'msgpack arrays'}), "
            f"window {window_ms} ms, requested {rate:,.0f} ev/s "
            f"({f'{quote_ratio:.0%} quotes' if quote_ratio else 'trades only'}), {procs}",
        ),
        (
            "full path: sustained",
            f"{f.sustained_per_s:,.0f} ev/s  (target >= {TARGET_EVENTS_PER_S:,}: "
            f"{_ok(f.sustained_per_s >= TARGET_EVENTS_PER_S)})",
        ),
        (
            "window latency p50/p95/p99",
            f"{ms(f.latency_p50_ms)} / {ms(f.latency_p95_ms)} / "
            f"{ms(f.latency_p99_ms)}  (p95 target <= {p95_target:,.0f} ms: "
            f"{_ok(f.latency_p95_ms is not None and f.latency_p95_ms <= p95_target)})",
        ),
        (
            "  of it: end -> taken p50/p95",
            f"{ms(f.close_p50_ms)} / {ms(f.close_p95_ms)}  (watermark or flush timeout, "
            "then a commit in flight; the rest is the window's own commit)",
        ),
        (
            "consumer lag p95 / max",
            f"{f.lag_ms_p95:,.0f} / {f.lag_ms_max:,.0f} ms  (target < "
            f"{TARGET_LAG_OVER_WINDOW * window_ms:,.0f} ms: "
            f"{_ok(f.lag_ms_p95 < TARGET_LAG_OVER_WINDOW * window_ms)})",
        ),
        (
            "unread+pending entries (first/max/last)",
            f"{(f.pending_samples or [0])[0]:,} / {max(f.pending_samples, default=0):,} / "
            f"{(f.pending_samples or [0])[-1]:,}",
        ),
        _rss_row(f),
        (
            "exact",
            f"{f.published:,} published = {f.events_in:,} consumed = {f.ticks_inserted:,} "
            f"ticks + {f.quotes_inserted:,} quotes stored = {f.bars_trade_count:,} in bars + "
            f"{f.quote_bars_quote_count:,} in quote bars, {f.dead_letters} dead letters: "
            f"{_ok(f.exact)}; signals = reference ({f.reference_signals:,} signals over "
            f"{f.reference_bars:,} final bars): {_ok(f.signals_reference)}",
        ),
        *(
            [
                (
                    "rollups",
                    f"{f.rollup_bars_written:,} rollup windows written; trades in the bars of "
                    + ", ".join(f"{k}: {v:,}" for k, v in f.rollup_trade_counts.items())
                    + f" (= {f.ticks_inserted:,} ticks: "
                    f"{_ok(all(v == f.ticks_inserted for v in f.rollup_trade_counts.values()))})",
                )
            ]
            if f.rollup_trade_counts
            else []
        ),
        (
            "bars -> features -> inference",
            f"{f.bars_written:,} bars and {f.quote_bars_written:,} quote bars written; "
            f"{f.bars_scored:,} windows scored, {f.signals:,} signals",
        ),
        (
            "outbox relay (workers)",
            f"{f.bars_relayed:,} bar changes in {f.relay_calls:,} relay calls, "
            f"{f.relay_s:.2f} s of wall time in them (waits for a store connection and the "
            f"bus included) = {_per_event(f.relay_s, f.events_in)} µs per event",
        ),
        (
            "scoring and re-scoring (inference)",
            f"{f.rescore_s:.2f} s of wall time (store round trips included) = "
            f"{_per_event(f.rescore_s, f.events_in)} µs per event; "
            f"{f.bars_replayed:,} bars replayed, {f.resumes:,} series resumed, "
            f"{f.retracted:,} signals retracted",
        ),
    ]
    if f.cpu_us_per_event:
        total = sum(f.cpu_us_per_event.values())
        rows.append(
            (
                "CPU per event (steady part)",
                ", ".join(f"{role} {us:.1f}" for role, us in f.cpu_us_per_event.items())
                + f" = {total:.1f} µs ({total * f.sustained_per_s / 1e6:.2f} cores busy)  "
                f"(target <= {TARGET_CPU_US_PER_EVENT:g} µs: "
                f"{_ok(total <= TARGET_CPU_US_PER_EVENT)})",
            )
        )
    if c is not None:
        rows += [
            (
                "bare ceiling: XADD",
                f"{c.xadd_per_s:,.0f} ev/s (1 event/entry)"
                + (f", {c.packed_xadd_per_s:,.0f} ev/s packed" if c.packed_xadd_per_s else ""),
            ),
            ("bare ceiling: XREADGROUP+XACK", f"{c.read_ack_per_s:,.0f} ev/s"),
            ("bare ceiling: COPY", f"{c.copy_per_s:,.0f} rows/s"),
            (
                "bare ceiling: whole path",
                f"{c.path_per_s:,.0f} ev/s, 1 event/entry  (full path = "
                f"{f.sustained_per_s / c.path_per_s:.0%} of it; goal past it: "
                f"{_ok(f.sustained_per_s > c.path_per_s)})",
            ),
        ]
    return rows


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
    )

    async def main(stop: asyncio.Event) -> None:
        import tempfile

        from market_data_pipeline.wiring import upgrade_schema

        with resolve_servers(cfg, environment()) as urls, tempfile.TemporaryDirectory() as tmp:
            assert urls.database_url is not None
            await asyncio.to_thread(upgrade_schema, urls.database_url, config=cfg)
            console.note(f"mdp bench: servers {urls.describe()}")
            c = None
            if ceiling:
                console.note("measuring the bare ceiling ...")
                with ProgressLine("bare ceiling (200,000 events)", unit=""):
                    c = await _ceiling(urls, 200_000, symbols, pack)
            console.note(f"running the full path for {duration_s:g}s at {rate:,.0f} ev/s ...")
            with ProgressLine("full path", total=duration_s, unit="") as progress:
                f = await _full_path(
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
        procs = f"{producers} producer + {workers} micro-batch processes"
        typer.echo(f"\nmdp bench ({run_id}):")
        print_fields(_rows(c, f, window_ms, rate, pack, procs, quote_ratio, pack_as))
        record = {
            "run": run_id,
            "machine": _machine(),
            "params": {
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
            },
            "targets": {
                "events_per_s": TARGET_EVENTS_PER_S,
                "cpu_us_per_event": TARGET_CPU_US_PER_EVENT,
                "peak_rss_mib": TARGET_PEAK_RSS_MIB,
                "p95_latency_ms": TARGET_P95_OVER_WINDOW * window_ms,
                "lag_ms": TARGET_LAG_OVER_WINDOW * window_ms,
            },
            "full_path": asdict(f),
            "ceiling": None if c is None else asdict(c),
        }
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"bench-{run_id}.json"
        path.write_text(json.dumps(record, indent=2))
        typer.echo(f"\nresults appended to {path}")

    run_async(main)
