"""Reproduce the operator-level figures of issue 13 (items 2, 3 and 6) against your own servers.

Needs a Redis 7.0 with AOF on and a PostgreSQL migrated with ``mdp db upgrade``, both empty of
anything you want to keep (the streams are deleted and the tables truncated), plus ``psql`` on
the PATH. The config is the shipped one with ``bus.partitions: 4`` and 10 synthetic symbols.

    redis-server --port 6400 --dir /tmp/r13 --appendonly yes --save "" --daemonize yes \\
        --pidfile /tmp/r13/pid
    export REDIS_URI=redis://127.0.0.1:6400/0 DATABASE_URL=postgresql://postgres@127.0.0.1:5450/mdp
    mdp db upgrade -c issue13.yaml
    python scripts/issue13_repro.py config issue13.yaml        # --shipped: another version's
    python scripts/issue13_repro.py backlog issue13.yaml       # item 2
    python scripts/issue13_repro.py aof issue13.yaml --pidfile /tmp/r13/pid \\
        --restart "redis-server --port 6400 --dir /tmp/r13 --appendonly yes --save '' \\
        --daemonize yes --pidfile /tmp/r13/pid"                  # item 3
    python scripts/issue13_repro.py summaries issue13.yaml     # item 6

``--mdp`` names the mdp executable to measure (default: ``mdp`` on the PATH).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import redis
import yaml

from market_data_core.codec import encode_event
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import routing_key, shard_for
from market_data_pipeline.project import DEFAULT_CONFIG_FILE

SHARDS = 4
STREAMS = [f"mdp.events:{n}" for n in range(SHARDS)]
GROUP = "mdp-consumers"


def sql(query: str) -> str:
    dsn = os.environ["DATABASE_URL"]
    done = subprocess.run(
        ["psql", dsn, "-tAc", query],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URI"])


def reset(r: redis.Redis) -> None:
    r.delete(*STREAMS, "mdp.bars", "mdp.signals", "mdp.dlq")
    for key in r.scan_iter("mdp:bus:*"):
        r.delete(key)
    sql("TRUNCATE ticks, bars_ohlcv, job_runs")


def pending_histogram(r: redis.Redis) -> dict[int, int]:
    hist: dict[int, int] = {}
    for stream in STREAMS:
        for row in r.xpending_range(stream, GROUP, "-", "+", 1_000_000):
            hist[row["times_delivered"]] = hist.get(row["times_delivered"], 0) + 1
    return dict(sorted(hist.items()))


def letters(r: redis.Redis) -> dict[str, int]:
    out: dict[str, int] = {}
    for _id, fields in r.xrange("mdp.dlq"):
        reason = fields[b"reason"].decode()
        out[reason] = out.get(reason, 0) + 1
    return out


def write_config(path: Path, shipped: Path) -> None:
    cfg = yaml.safe_load(shipped.read_text())
    cfg["bus"]["partitions"] = SHARDS
    cfg["producers"]["synthetic"]["symbols"] = [f"SYM{i:02d}" for i in range(10)]
    cfg["telemetry"]["metrics_port"] = 0
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"wrote {path}")


def backlog(mdp: str, config: str, min_pending: int) -> None:
    """Item 2: 300,000 events at 30k ev/s; one micro-batcher; SIGTERM at >= 40,000 stored ticks
    (and at least ``min_pending`` entries pending); restart with --drain; count mdp.dlq."""
    r = client()
    reset(r)
    produce = ["--seed", "7", "--rate", "30000", "--count", "300000"]
    subprocess.run([mdp, "stream", "produce", "-c", config, *produce], check=True)
    cmd = [mdp, "stream", "micro-batch", "-c", config, "--window", "1s", "--consumer", "mb-a"]
    worker = subprocess.Popen(cmd)

    def pel() -> int:
        return sum(int(r.xpending(s, GROUP)["pending"]) for s in STREAMS)

    deadline = time.monotonic() + 120
    while int(sql("SELECT count(*) FROM ticks")) < 40_000 or pel() < min_pending:
        if time.monotonic() > deadline:
            sys.exit("the backlog never reached the wanted size")
        time.sleep(0.02)
    stored = int(sql("SELECT count(*) FROM ticks"))
    worker.send_signal(signal.SIGTERM)
    print(f"SIGTERM at {stored:,} stored ticks: exit {worker.wait()}")
    print(f"pending after the stop, by times_delivered: {pending_histogram(r)}")
    started = time.monotonic()
    done = subprocess.run([*cmd, "--drain", "--idle-s", "3"], capture_output=True, text=True)
    print(f"restart --drain: exit {done.returncode} in {time.monotonic() - started:.1f} s")
    print(done.stdout.strip())
    print(f"mdp.dlq: {letters(r)}")
    print(
        "store: ticks",
        sql("SELECT count(*) FROM ticks"),
        "bars",
        sql("SELECT count(*) FROM bars_ohlcv"),
        "revised bars",
        sql("SELECT count(*) FROM bars_ohlcv WHERE revision > 0"),
    )


def aof(mdp: str, config: str, pidfile: str, restart: str, timeout_s: float) -> None:
    """Item 3: producer (30k ev/s, 30 s) and worker live; kill -9 Redis at 12 s, restart it
    from its AOF; when the producer is done, SIGUSR1 (drain) the worker: does it exit?"""
    r = client()
    reset(r)
    produce = ["--seed", "7", "--rate", "30000", "--duration", "30s"]
    producer = subprocess.Popen([mdp, "stream", "produce", "-c", config, *produce])
    worker = subprocess.Popen(
        [mdp, "stream", "micro-batch", "-c", config, "--window", "1s", "--consumer", "mb-a"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(12)
    os.kill(int(Path(pidfile).read_text()), signal.SIGKILL)
    time.sleep(1)
    subprocess.run(shlex.split(restart), check=True)
    print("Redis killed at 12 s and restarted from its AOF")
    producer.wait()
    worker.send_signal(signal.SIGUSR1)
    started = time.monotonic()
    try:
        out, _ = worker.communicate(timeout=timeout_s)
        print(f"drain: exit {worker.returncode} after {time.monotonic() - started:.1f} s")
        print(out.strip())
    except subprocess.TimeoutExpired:
        print(f"drain: not exited after {timeout_s:.0f} s; stopping it with SIGTERM")
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    subprocess.run([mdp, "stream", "status", "-c", config, "-t", "mdp.events"], check=True)
    for stream in STREAMS:
        (g,) = r.xinfo_groups(stream)
        last = r.xrevrange(stream, count=1)[0][0]
        print(
            f"{stream}: XINFO lag {g['lag']}, pending {g['pending']}, last-delivered-id "
            f"{g['last-delivered-id'].decode()}, last entry {last.decode()}"
        )


def summaries(mdp: str, config: str) -> None:
    """Item 6: 15,000 re-sent duplicates into a live worker, then a real late correction seen
    by a fresh process; each summary line against sum(revision) in the store."""
    r = client()
    reset(r)
    cmd = [mdp, "stream", "micro-batch", "-c", config, "--window", "1s", "--consumer", "mb-6"]
    worker = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    produce = ["--seed", "7", "--rate", "30000", "--count", "60000"]
    subprocess.run([mdp, "stream", "produce", "-c", config, *produce], check=True)
    while int(sql("SELECT count(*) FROM ticks")) < 60_000:
        time.sleep(0.1)
    time.sleep(4)  # the last windows close by the wall clock
    pipe = r.pipeline(transaction=False)
    for stream in STREAMS:
        for _id, fields in r.xrange(stream, count=3750):
            pipe.xadd(stream, {"data": fields[b"data"]})
    pipe.execute()

    def idle() -> bool:
        for stream in STREAMS:
            (g,) = r.xinfo_groups(stream)
            unread = r.xrange(stream, "(" + g["last-delivered-id"].decode(), "+", count=1)
            if g["pending"] or unread:
                return False
        return True

    while not idle():
        time.sleep(0.2)
    time.sleep(3)
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    print("re-sent 15,000 entries already stored; the live worker's summary:")
    print(out.strip())
    print("store: sum(revision) =", sql("SELECT coalesce(sum(revision), 0) FROM bars_ohlcv"))
    provider, symbol, ts = sql(
        "SELECT provider, symbol, ts FROM bars_ohlcv ORDER BY ts LIMIT 1 OFFSET 5"
    ).split("|")
    at = datetime.fromisoformat(ts.replace(" ", "T")) + timedelta(microseconds=7)
    late = StreamEvent.create(
        provider=provider, symbol=symbol, kind="tick", src_ts=at, c=100.0, v=1.0, seq=987654321
    )
    shard = shard_for(routing_key(provider, symbol), SHARDS)
    r.xadd(STREAMS[shard], {"data": encode_event(late, "msgpack")})
    done = subprocess.run([*cmd, "--drain", "--idle-s", "2"], capture_output=True, text=True)
    print("one new tick into a written bar; a fresh --drain run's summary:")
    print(done.stdout.strip())
    print("store: sum(revision) =", sql("SELECT coalesce(sum(revision), 0) FROM bars_ohlcv"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("case", choices=["config", "backlog", "aof", "summaries"])
    parser.add_argument("config")
    parser.add_argument("--mdp", default="mdp")
    parser.add_argument("--min-pending", type=int, default=0)
    parser.add_argument("--pidfile", default="")
    parser.add_argument("--restart", default="")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument(
        "--shipped",
        type=Path,
        default=DEFAULT_CONFIG_FILE,
        help="config: the shipped config to start from (that of the mdp version measured)",
    )
    args = parser.parse_args()
    if args.case == "config":
        write_config(Path(args.config), args.shipped)
    elif args.case == "backlog":
        backlog(args.mdp, args.config, args.min_pending)
    elif args.case == "aof":
        aof(args.mdp, args.config, args.pidfile, args.restart, args.timeout_s)
    else:
        summaries(args.mdp, args.config)


if __name__ == "__main__":
    main()
