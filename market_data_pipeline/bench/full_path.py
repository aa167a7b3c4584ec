"""The full path of ``mdp bench``: synthetic producers and micro-batch workers as processes
(``mdp stream produce`` / ``mdp stream micro-batch``) on real servers, inference in this
process, sampled every second: throughput, window latency, consumer lag, unread + pending
entries, RSS and CPU per role (psutil), then the exactness check (published = consumed =
stored = Σ trade_count, signals = a clean reference pass)."""

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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import yaml

from market_data_core.config import AppConfig
from market_data_core.contracts import Bar, QuoteBar, WindowBar
from market_data_core.errors import MDPError
from market_data_core.protocols import Bus, SignalsStoreClient, StoreClient
from market_data_core.timeutil import format_duration_ms
from market_data_pipeline.consumers.inference_consumer import features_interval
from market_data_pipeline.inference.engine import build_engine
from market_data_pipeline.runner import group_lag
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.servers.process import die_with_parent
from market_data_pipeline.stats import percentile
from market_data_pipeline.ui.progress import ProgressLine

__all__ = [
    "OTHER_CORES_CONTENDED",
    "STEAL_PCT_CONTENDED",
    "FullPath",
    "MachineLoad",
    "load_between",
    "machine_facts",
    "popen_child",
    "run_full_path",
]


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
    # entries the producers' trims removed before the group read them (bus.maxlen too short
    # for the backlog): gone, so published != consumed
    trimmed_unread: int = 0
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
    # the whole machine over the same span (see MachineLoad); None where not measured
    machine_load: MachineLoad | None = None


# From these on a run is marked contended (MachineLoad.contended)
OTHER_CORES_CONTENDED = 0.1
STEAL_PCT_CONTENDED = 1.0


@dataclass(frozen=True)
class MachineLoad:
    """What the whole machine did over the steady part of a run, from the kernel's CPU time
    counters (``psutil.cpu_times()``: ``/proc/stat`` on Linux), so a run on a busy or shared
    machine can be told from a run on a quiet one.

    ``cpus``: logical CPUs; ``busy_cores``: CPU time spent running anything (user, nice,
    system, irq, softirq) per second of the span, in cores; ``ours_cores``: the run's own
    roles (:data:`_ROLES`) in the same span; ``other_cores``: the rest (processes the run did
    not start); ``steal_pct``: the share of the CPUs' time the hypervisor gave to other
    guests (Linux ``steal``; 0 where the kernel has no such counter), in percent."""

    cpus: int
    busy_cores: float
    ours_cores: float
    other_cores: float
    steal_pct: float

    @property
    def contended(self) -> bool:
        """Other processes took a tenth of a core or more, or the hypervisor 1 % of the
        time: the run's figures are not those of a quiet machine."""
        return self.other_cores >= OTHER_CORES_CONTENDED or self.steal_pct >= STEAL_PCT_CONTENDED


_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")
_GUEST_FIELDS = ("guest", "guest_nice")  # already counted in user and nice


def load_between(first: Any, last: Any, ours_cpu_s: float, cpus: int) -> MachineLoad | None:
    """:class:`MachineLoad` between two ``psutil.cpu_times()`` readings (summed over the
    CPUs) during which the run's roles used ``ours_cpu_s`` CPU seconds; None if no time
    passed between them."""

    def delta(name: str) -> float:
        return float(getattr(last, name, 0.0)) - float(getattr(first, name, 0.0))

    total = sum(delta(name) for name in last._fields if name not in _GUEST_FIELDS)
    if total <= 0 or cpus <= 0:
        return None
    span_s = total / cpus  # every CPU accounts each second to one state
    busy = sum(delta(name) for name in _BUSY_FIELDS) / span_s
    ours = ours_cpu_s / span_s
    return MachineLoad(
        cpus=cpus,
        busy_cores=round(busy, 2),
        ours_cores=round(ours, 2),
        other_cores=round(max(0.0, busy - ours), 2),
        steal_pct=round(100 * delta("steal") / total, 1),
    )


def machine_facts() -> dict[str, Any]:
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
    return popen_child([sys.executable, "-m", "market_data_pipeline.cli.app", *args], env, log)


def popen_child(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
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


async def run_full_path(
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
        return await _full_path_with(
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


async def _full_path_with(
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
        machine: list[Any] = []  # psutil.cpu_times() at each cpu sample
        t0 = time.monotonic()
        while any(p.poll() is None for p in procs):
            await asyncio.sleep(1.0)
            stats = [_read_stats(f) for f in stats_files]
            samples.append((time.monotonic() - t0, sum(st.get("events_in", 0) for st in stats)))
            if all(p.poll() is None for p in procs):
                cpu.append((samples[-1][0], _cpu_by_role(*pids)))
                machine.append(psutil.cpu_times())
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
            trimmed = re.search(r"; ([\d,]+) entries trimmed before", out)
            if trimmed is not None:
                result.trimmed_unread += int(trimmed.group(1).replace(",", ""))
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
        ends = _steady_ends(cpu, steady[0], steady[-1])
        if ends is not None:
            a, b = ends
            ours_s = sum(cpu[b][1][role] - cpu[a][1][role] for role in _ROLES)
            result.machine_load = load_between(
                machine[a], machine[b], ours_s, psutil.cpu_count() or 1
            )
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


def _steady_ends(
    cpu: list[tuple[float, dict[str, float]]], first: tuple[float, int], last: tuple[float, int]
) -> tuple[int, int] | None:
    """Indices of the first and last CPU samples within the steady samples ``first`` and
    ``last``; None if fewer than two are."""
    inside = [i for i, c in enumerate(cpu) if first[0] <= c[0] <= last[0]]
    return (inside[0], inside[-1]) if len(inside) >= 2 else None


def _cpu_split(
    cpu: list[tuple[float, dict[str, float]]],
    first: tuple[float, int],
    last: tuple[float, int],
) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds per role between the steady samples ``first`` and ``last`` (at most a
    sample's distance off), and µs of CPU per event consumed in that span."""
    ends = _steady_ends(cpu, first, last)
    events = last[1] - first[1]
    if ends is None or events <= 0:
        return {}, {}
    (t_a, a), (t_b, b) = cpu[ends[0]], cpu[ends[1]]
    used = {role: round(b[role] - a[role], 2) for role in _ROLES}
    # the CPU samples span slightly less time than the event samples: scale to the same span
    span = (t_b - t_a) / (last[0] - first[0])
    per_event = {role: round(used[role] * 1e6 / (events * span), 2) for role in _ROLES}
    return used, per_event
