"""Recovery that never dead-letters good data, drains that end, and summaries that equal the
store (issue 13, items 2, 3 and 6), with the stages as separate processes on real servers.

* SIGTERM under backlog, then a restart under the same ``--consumer``: exact bars, no dead
  letter, the clean stop consumed no delivery, and the restart did not wait ``claim_idle_ms``.
* Redis killed (``kill -9``) and restarted from its AOF while a producer and a worker run: the
  worker, switched to drain, exits, and ``status`` shows no lag (Redis 7.0's ``XINFO`` lag is
  stale after such a restart).
* Every count of the micro-batch summary line and its ``job_runs`` row equals a query of the
  store or the DLQ: new ticks, duplicates, late corrections, too late, and dead letters by
  reason, including the ones the bus layer writes (``max_deliveries``, ``trimmed``).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pandas as pd
import pytest
import redis.asyncio as aredis

from market_data_core.codec import decode_events
from market_data_core.config import AppConfig
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import routing_key, shard_for
from market_data_core.timeutil import format_duration_ms
from market_data_pipeline.servers import EmbeddedRedis
from market_data_pipeline.streaming.bus import open_bus
from market_data_pipeline.wiring import open_store
from tests.support.cli import MDP, mdp_env
from tests.support.pipeline import (
    make_config,
    publish,
    urls,
    write_config,
)
from tests.support.trades import (
    SYMBOL,
    assert_bars_equal_reference,
    compressed_trades,
    reference_bars,
    trade_events,
)

T0 = datetime(2020, 2, 22, tzinfo=UTC)
T1 = datetime(2020, 2, 23, tzinfo=UTC)
SUMMARY = re.compile(
    r"micro-batch \S+: (?P<events_in>\d+) events in, (?P<new_ticks>\d+) new ticks, "
    r"(?P<new_quotes>\d+) new quotes, (?P<duplicates>\d+) duplicates, (?P<bars>\d+) bars "
    r"written \((?P<provider_bars>\d+) provider bars\), (?P<quote_bars>\d+) quote bars "
    r"written, (?P<corrections>\d+) late corrections, (?P<too_late>\d+) too late, "
    r"(?P<letters>\d+) dead letters?(?: \((?P<reasons>[^)]*)\))?, (?P<flushes>\d+) flushes"
)


def summary_of(stdout: str) -> dict[str, Any]:
    """The counts of the micro-batch summary line, reasons as a dict."""
    match = SUMMARY.search(stdout)
    assert match is not None, stdout[-2000:]
    out: dict[str, Any] = {k: int(v) for k, v in match.groupdict().items() if k != "reasons"}
    reasons = match.group("reasons") or ""
    out["reasons"] = {
        name: int(n) for name, n in (part.rsplit(" ", 1) for part in reasons.split(", ") if part)
    }
    return out


async def letters_by_reason(cfg: AppConfig) -> Counter[str]:
    bus = await open_bus(cfg, urls(cfg))
    try:
        return Counter(letter.reason for letter in await bus.dlq_list(1_000_000))
    finally:
        await bus.aclose()


async def stored_bars(cfg: AppConfig, provider: str, symbol: str = SYMBOL) -> list[Any]:
    store = await open_store(cfg, urls(cfg))
    try:
        interval = format_duration_ms(cfg.micro_batch.window_ms)
        return await store.bars_range(provider, symbol, interval, T0, T1)
    finally:
        await store.aclose()


async def scalar(dsn: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def wait_for(what: str, check: Any, timeout_s: float, every_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(every_s)


@pytest.fixture(params=["valkey", "redis7"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """The embedded Valkey 9 and Debian's Redis 7.0 (the server of the issue's figures)."""
    fixture = "redis_url" if request.param == "valkey" else "redis7_url"
    url: str = request.getfixturevalue(fixture)
    return url


async def test_sigterm_under_backlog_then_restart_dead_letters_nothing(
    any_redis_url: str, store_url: str, unique: str, tmp_path: Path
) -> None:
    # The real trades, 100 times denser (about 130 per 1 s window), as 4 symbols on the 4
    # shards; polls of at most 100 entries, and 2 s of allowed lateness, so a shard holds
    # more pending entries than one poll reads and its oldest window spans several polls.
    # Before the fix, the restart re-claimed the same oldest pending entries on every poll
    # (their window could not close) until they went to the DLQ as "delivered 5 times".
    window_ms = 1000
    trades = compressed_trades(tmp_path / "trades-x100.csv", 100)
    cfg = make_config(
        any_redis_url,
        store_url,
        unique,
        window_ms,
        partitions=4,
        max_batch_size=100,
        allow_late_ms=2000,
        claim_idle_ms=60_000,
    )
    provider = f"bk{unique}"
    symbols = [f"{SYMBOL}.{k}" for k in "abdf"]
    assert {shard_for(routing_key(provider, s), 4) for s in symbols} == {0, 1, 2, 3}
    total = 0
    bus = await open_bus(cfg, urls(cfg))
    try:
        for symbol in symbols:
            events = trade_events(provider, trades, symbol=symbol)
            total += len(events)
            await publish(bus, cfg, events)
    finally:
        await bus.aclose()
    path = write_config(tmp_path, cfg)
    cmd = [*MDP, "stream", "micro-batch", "--config", str(path), "--consumer", "mb-back"]

    async def ticks() -> int:
        query = "SELECT count(*) FROM ticks WHERE provider = $1"
        return int(await scalar(store_url, query, provider))

    async def enough() -> bool:
        return await ticks() >= total * 2 // 5

    first = subprocess.Popen(cmd, env=mdp_env(), stdout=subprocess.PIPE, text=True)
    try:
        await wait_for("40% of the ticks stored", enough, 120)
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(first.communicate, timeout=60)
    assert first.returncode == 0, out
    stopped_at = await ticks()
    assert stopped_at < total, "stopped too late to leave a backlog"

    raw = aredis.Redis.from_url(any_redis_url)
    try:
        per_shard = [
            await raw.xpending_range(f"{topic}:{n}", cfg.bus.group, "-", "+", 1_000_000)
            for topic in [cfg.bus.events_topic]
            for n in range(cfg.bus.partitions)
        ]
    finally:
        await raw.aclose()
    pending = [row for rows in per_shard for row in rows]
    assert max(map(len, per_shard)) > 100, "a shard must hold more than one poll reads"
    # A clean stop leaves open windows pending on purpose: that consumes no delivery.
    assert {row["times_delivered"] for row in pending} == {0}

    started = time.monotonic()
    done = await asyncio.to_thread(
        subprocess.run,
        [*cmd, "--drain", "--idle-s", "1"],
        env=mdp_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    recovery_s = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    print(
        f"SIGTERM at {stopped_at:,} of {total:,} ticks, {len(pending):,} entries pending; "
        f"restart drained in {recovery_s:.1f} s"
    )
    summary = summary_of(done.stdout)
    assert summary["letters"] == 0 and summary["reasons"] == {}
    assert await letters_by_reason(cfg) == Counter()
    assert await ticks() == total
    for symbol in symbols:
        assert_bars_equal_reference(await stored_bars(cfg, provider, symbol), window_ms, trades)
    # The restart reads its own pending entries at once: it never waits for them to idle.
    assert recovery_s < cfg.bus.claim_idle_ms / 1000


async def test_redis_restarted_from_aof_mid_run_then_drain_exits(
    aof_redis: EmbeddedRedis, store_url: str, unique: str, tmp_path: Path
) -> None:
    cfg = make_config(aof_redis.url, store_url, unique, 1000, partitions=4)
    # A provider of this run's own: the store is the module's, and the other server's run
    # of this test (same seed, same events) left its ticks there. Counted across providers,
    # the waits below passed at once and the kill landed before this producer had connected.
    provider = f"aof{unique}"
    synthetic = cfg.producers.synthetic.model_copy(update={"provider": provider})
    producers = cfg.producers.model_copy(update={"synthetic": synthetic})
    cfg = cfg.model_copy(update={"producers": producers})
    path = write_config(tmp_path, cfg)
    env = mdp_env()
    produce = ["--provider", "synthetic", "--seed", "7", "--rate", "5000", "--duration", "12s"]
    producer = subprocess.Popen(
        [*MDP, "stream", "produce", "--config", str(path), *produce],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    worker = subprocess.Popen(
        [*MDP, "stream", "micro-batch", "--config", str(path), "--consumer", "mb-aof"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    raw = aredis.Redis.from_url(aof_redis.url)
    try:

        async def ticks_stored(n: int) -> bool:
            query = "SELECT count(*) FROM ticks WHERE provider = $1"
            return bool(await scalar(store_url, query, provider) >= n)

        rewrites = int((await raw.info("persistence"))["aof_rewrites"])

        async def rewritten() -> bool:
            info = await raw.info("persistence")
            busy = info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]
            return not busy and int(info["aof_rewrites"]) > rewrites

        await wait_for("ticks stored", lambda: ticks_stored(5000), 60)
        # What the server does by itself once the AOF has doubled: rewrite it. Redis 7.0
        # then restores each group's entries-read from the rewrite, so after the restart
        # XINFO reports as lag every entry read since (11,783 on one shard in the issue).
        await raw.bgrewriteaof()
        await wait_for("the AOF rewrite", rewritten, 60)
        await wait_for("ticks stored after the rewrite", lambda: ticks_stored(20_000), 60)
        await asyncio.sleep(1.5)  # appendfsync everysec: the last reads reach the disk
        aof_redis.kill()
        await asyncio.to_thread(aof_redis.start)
        _, producer_err = await asyncio.to_thread(producer.communicate, timeout=120)
        assert producer.returncode == 0, producer_err[-3000:]
        worker.send_signal(signal.SIGUSR1)  # switch to --drain
        started = time.monotonic()
        _, err = await asyncio.to_thread(worker.communicate, timeout=120)
        drain_s = time.monotonic() - started
    finally:
        await raw.aclose()
        for proc in (producer, worker):
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)  # reaps it and closes its pipes
    assert worker.returncode == 0, err[-3000:]
    print(f"drained in {drain_s:.1f} s after the producer ended")
    bus = await open_bus(cfg, urls(cfg))
    try:
        statuses = await bus.status(cfg.bus.events_topic, cfg.bus.group)
        kept = await bus.tail(cfg.bus.events_topic, 1_000_000)
    finally:
        await bus.aclose()
    assert [(s.lag, s.pending) for s in statuses] == [(0, 0)] * cfg.bus.partitions
    # Every event the restarted server kept is stored (the store may also hold the few the
    # server lost: appendfsync everysec forgets up to a second of writes on kill -9), and
    # nothing was dead-lettered.
    kept_events = {e.event_id: e for r in kept for e in decode_events(r.payload).events}
    assert len(kept_events) >= 10_000
    # the stored key is what event_id encodes: (provider, symbol, ts, seq)
    keys = [(e.provider, e.symbol, e.src_ts, e.seq) for e in kept_events.values()]
    stored = await scalar(
        store_url,
        "SELECT count(*) FROM ticks t JOIN unnest($1::text[], $2::text[], $3::timestamptz[], "
        "$4::bigint[]) AS k(provider, symbol, ts, seq) USING (provider, symbol, ts, seq)",
        *(list(column) for column in zip(*keys, strict=True)),
    )
    assert stored == len(keys)
    assert await letters_by_reason(cfg) == Counter()


async def test_drain_ends_when_nothing_is_left_whatever_xinfo_says(
    any_redis_url: str, store_url: str, unique: str, tmp_path: Path
) -> None:
    # The state the issue found after a restart from the AOF, made on purpose: every shard
    # read to its last entry and nothing pending, yet XINFO's entries-read counter behind
    # (XGROUP SETID ... ENTRIESREAD), so XINFO reports a lag that reading never lowers.
    window_ms = 1000
    cfg = make_config(any_redis_url, store_url, unique, window_ms, partitions=4)
    provider = f"xi{unique}"
    symbols = [f"{SYMBOL}.{k}" for k in "abdf"]  # one on each of the 4 shards
    events = {s: trade_events(provider, symbol=s) for s in symbols}
    path = write_config(tmp_path, cfg)
    drain = [*MDP, "stream", "micro-batch", "--config", str(path), "--drain", "--idle-s", "1"]
    status = [*MDP, "stream", "status", "--config", str(path), "--json"]
    bus = await open_bus(cfg, urls(cfg))
    raw = aredis.Redis.from_url(any_redis_url)
    try:
        for symbol in symbols:
            await publish(bus, cfg, events[symbol][:5000])
        done = await asyncio.to_thread(
            subprocess.run, drain, env=mdp_env(), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        stale = 0
        for shard in range(cfg.bus.partitions):
            stream = f"{cfg.bus.events_topic}:{shard}"
            (group,) = await raw.xinfo_groups(stream)
            if group["entries-read"]:
                behind = min(1000, int(group["entries-read"]))
                await raw.xgroup_setid(
                    stream,
                    cfg.bus.group,
                    group["last-delivered-id"],
                    entries_read=int(group["entries-read"]) - behind,
                )
                stale += behind
        assert stale == 4 * 1000
        xinfo_lag = 0
        for shard in range(cfg.bus.partitions):
            (group,) = await raw.xinfo_groups(f"{cfg.bus.events_topic}:{shard}")
            xinfo_lag += int(group["lag"] or 0)
        assert xinfo_lag == stale  # XINFO's figure, with nothing unread

        for symbol in symbols:
            await publish(bus, cfg, events[symbol][5000:])
        started = time.monotonic()
        done = await asyncio.to_thread(
            subprocess.run, drain, env=mdp_env(), capture_output=True, text=True, timeout=120
        )
        print(f"drained in {time.monotonic() - started:.1f} s with XINFO lag {xinfo_lag:,}")
        assert done.returncode == 0, done.stderr[-3000:]
        for symbol in symbols:
            assert_bars_equal_reference(await stored_bars(cfg, provider, symbol), window_ms)
        shown = await asyncio.to_thread(
            subprocess.run, status, env=mdp_env(), capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0, shown.stderr[-3000:]
        rows = [r for r in json.loads(shown.stdout)["streams"] if r["group"] == cfg.bus.group]
        assert [(r["lag"], r["pending"]) for r in rows] == [(0, 0)] * cfg.bus.partitions
    finally:
        await raw.aclose()
        await bus.aclose()


async def test_summary_counts_equal_the_store_and_the_dlq(
    redis_url: str, store_url: str, unique: str, tmp_path: Path
) -> None:
    window_ms = 1000
    cfg = make_config(redis_url, store_url, unique, window_ms, correction_horizon_ms=10_800_000)
    provider = f"sum{unique}"
    events = trade_events(provider)
    path = write_config(tmp_path, cfg)
    options = ["--drain", "--idle-s", "1", "--consumer", "mb-sum"]
    drain = [*MDP, "stream", "micro-batch", "--config", str(path), *options]
    raw = aredis.Redis.from_url(redis_url)
    bus = await open_bus(cfg, urls(cfg))
    topic, group = cfg.bus.events_topic, cfg.bus.group

    def tick(symbol: str, at: datetime, seq: int) -> StreamEvent:
        return StreamEvent.create(
            provider=provider, symbol=symbol, kind="tick", src_ts=at, c=9700.0, v=0.5, seq=seq
        )

    async def run_once() -> dict[str, Any]:
        done = await asyncio.to_thread(
            subprocess.run, drain, env=mdp_env(), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        print(done.stdout.strip())
        return summary_of(done.stdout)

    async def store_counts() -> tuple[int, int, int]:
        """Ticks stored, bar revisions (one per correction), the last run's job_runs errors."""
        conn = await asyncpg.connect(store_url)
        try:
            ticks = await conn.fetchval("SELECT count(*) FROM ticks WHERE provider = $1", provider)
            revisions = await conn.fetchval(
                "SELECT coalesce(sum(revision), 0) FROM bars_ohlcv WHERE provider = $1", provider
            )
            errors = await conn.fetchval(
                "SELECT errors FROM job_runs WHERE job = 'micro-batch' ORDER BY id DESC LIMIT 1"
            )
        finally:
            await conn.close()
        return int(ticks), int(revisions), int(errors)

    try:
        # Run 1: 6,000 trades and one undecodable entry.
        await publish(bus, cfg, events[:6000])
        await raw.xadd(topic, {"data": b"\x00 not an event"})
        first = await run_once()
        ticks, revisions, errors = await store_counts()
        assert first["new_ticks"] == ticks == 6000
        assert first["duplicates"] == 0
        assert first["corrections"] == revisions
        assert first["reasons"] == dict(await letters_by_reason(cfg)) == {"decode": 1}
        assert first["letters"] == errors == 1

        # Entries this consumer left pending in earlier, failed runs: one delivered 5 times
        # already (max_deliveries=5: a crash loop), one trimmed away meanwhile, one healthy.
        crashy = tick("XSYM", T0 + timedelta(hours=1), 1)
        trimmed = tick("XSYM", T0 + timedelta(hours=1, seconds=1), 2)
        healthy = tick("XSYM", T0 + timedelta(hours=1, seconds=2), 3)
        await publish(bus, cfg, [crashy, trimmed, healthy])
        reply = await raw.xreadgroup(group, "mb-sum", {topic: ">"}, count=3)
        ids = [entry_id for entry_id, _ in reply[0][1]]
        await raw.xclaim(topic, group, "mb-sum", 0, [ids[0]], retrycount=5, justid=True)
        await raw.xdel(topic, ids[1])

        # Run 2: a tick correcting a bar run 1 wrote (the first event this process sees, so
        # not "late" to its clock), the other 3,999 trades, 1,500 of run 1's trades re-sent
        # after them (late to the clock, yet nothing changes), one tick beyond the horizon.
        corrected = events[1000].src_ts.replace(microsecond=0)  # its 1 s window
        correction = tick(SYMBOL, corrected + timedelta(microseconds=1), 1)
        too_late = tick(SYMBOL, T0 - timedelta(days=1), 2)
        await publish(bus, cfg, [correction, *events[6000:], *events[4500:6000], too_late])
        second = await run_once()
        ticks_after, revisions_after, errors = await store_counts()
        letters = await letters_by_reason(cfg)
        assert second["new_ticks"] == ticks_after - ticks == 1 + 3999 + 1  # + healthy
        assert second["duplicates"] == 1500
        assert second["corrections"] == revisions_after - revisions >= 1
        assert second["too_late"] == 1
        assert second["reasons"] == {"late": 1, "max_deliveries": 1, "trimmed": 1}
        assert dict(letters - Counter({"decode": 1})) == second["reasons"]
        assert second["letters"] == errors == 3
        bar = {b.ts: b for b in await stored_bars(cfg, provider)}[corrected]
        assert bar.revision == 1
        assert bar.trade_count == reference_bars(window_ms)[pd.Timestamp(corrected)].n + 1
    finally:
        await bus.aclose()
        await raw.aclose()
