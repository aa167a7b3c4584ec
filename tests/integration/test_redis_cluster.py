"""mdp on a real Redis Cluster (issue 19): three masters and three replicas of Debian's
redis-server 7.0 on loopback, shared by the session (``redis_cluster`` in conftest.py).

* 12 shards spread 4/4/4 over the masters, each with its group, lease and dead letters in one
  slot (asked of the server: ``CLUSTER KEYSLOT``, and the keys found on the shard's master).
* The real trades as 12 series on 12 shards, replayed twice: exact bars, nothing new the
  second time.
* 3 micro-batchers over 12 shards, one killed with ``kill -9``: its shards are taken over
  (the takeover time is printed) and the bars are exact.
* One shard's slot moved to another master while a publisher and 3 micro-batchers run
  (``ASK`` while its keys migrate one by one, ``MOVED`` after): exact bars, each malformed
  entry dead-lettered once, nothing reported lost.
* A master ``kill -9``'d with its replica promoted, its replication link cut just before
  (what asynchronous replication risks): the entries it acknowledged but never replicated are
  lost, mdp's publisher reports exactly those, and the bars are exact for everything the
  cluster kept. With ``bus.redis.wait_replicas: 1`` the same failover loses nothing.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio.cluster import RedisCluster

from market_data_core.codec import decode_events
from market_data_core.config import AppConfig
from market_data_core.contracts import StreamEvent, make_event_id
from market_data_core.protocols import routing_key, shard_for
from market_data_core.timeutil import format_duration_ms
from market_data_pipeline import telemetry
from market_data_pipeline.consumers.micro_batcher import MicroBatcher, MicroBatchStats
from market_data_pipeline.producers.publisher import Publisher
from market_data_pipeline.streaming.bus import open_bus
from market_data_pipeline.streaming.redis_bus import RedisBus
from market_data_pipeline.streaming.redis_layout import slot_of
from market_data_pipeline.wiring import open_store, upgrade_schema
from tests.support.cli import MDP, mdp_env, run_mdp
from tests.support.cli import write_config as write_config_data
from tests.support.pipeline import make_config, publish, urls, write_config
from tests.support.redis_cluster import LocalRedisCluster, Node
from tests.support.trades import SYMBOL, TRADES_CSV, assert_bars_equal_reference, trade_events

SHARDS = 12
WINDOW_MS = 1000
TRADES = 2500  # of the 9,999 real trades, per series: 12 series, 30,000 events
T0 = datetime(2020, 2, 22, tzinfo=UTC)
T1 = datetime(2020, 2, 23, tzinfo=UTC)


@pytest.fixture(scope="module")
def migrated(database_url: str) -> str:
    upgrade_schema(database_url)
    return database_url


@pytest.fixture(scope="module")
def trades_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first ``TRADES`` real trades (the reference bars are computed from this file)."""
    return _subset(tmp_path_factory.mktemp("trades") / "trades.csv", lambda i, _row: i < TRADES)


def _subset(dest: Path, keep: Any) -> Path:
    with TRADES_CSV.open() as f:
        rows = list(csv.DictReader(f))
    with dest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row for i, row in enumerate(rows) if keep(i, row))
    return dest


def series_per_shard(provider: str) -> list[tuple[str, str]]:
    """(provider, symbol) of one series per shard, shard 0 first."""
    found: dict[int, str] = {}
    k = 0
    while len(found) < SHARDS:
        symbol = f"{SYMBOL}.{k}"
        found.setdefault(shard_for(routing_key(provider, symbol), SHARDS), symbol)
        k += 1
    return [(provider, found[shard]) for shard in range(SHARDS)]


@pytest.fixture
def env(
    redis_cluster_url: str, redis_cluster: LocalRedisCluster, migrated: str, unique: str
) -> dict[str, Any]:
    return {
        "url": redis_cluster_url,
        "cluster": redis_cluster,
        "database_url": migrated,
        "unique": unique,
        "provider": f"cl{unique}",
    }


@pytest.fixture
async def client(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    first = redis_cluster_url.replace("redis+cluster://", "redis://").split(",")[0]
    c = RedisCluster.from_url(first)
    yield c
    await c.aclose()


def cluster_config(env: dict[str, Any], **mb: Any) -> AppConfig:
    return make_config(
        env["url"], env["database_url"], env["unique"], WINDOW_MS, partitions=SHARDS, **mb
    )


async def publish_series(
    cfg: AppConfig, series: list[tuple[str, str]], trades_csv: Path
) -> dict[str, list[StreamEvent]]:
    events = {symbol: trade_events(p, trades_csv, symbol=symbol) for p, symbol in series}
    bus = await open_bus(cfg, urls(cfg))
    try:
        for chunk in events.values():
            await publish(bus, cfg, chunk)
    finally:
        await bus.aclose()
    return events


async def drain(cfg: AppConfig, name: str) -> MicroBatchStats:
    bus = await open_bus(cfg, urls(cfg))
    store = await open_store(cfg, urls(cfg))
    try:
        return await MicroBatcher(cfg, bus, store, consumer_name=name).run(
            asyncio.Event(), drain=True, idle_s=1.0
        )
    finally:
        await store.aclose()
        await bus.aclose()


async def stored(cfg: AppConfig, provider: str, symbol: str) -> list[Any]:
    store = await open_store(cfg, urls(cfg))
    try:
        return await store.bars_range(provider, symbol, format_duration_ms(WINDOW_MS), T0, T1)
    finally:
        await store.aclose()


async def stored_event_ids(dsn: str, provider: str, symbol: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT ts, seq FROM ticks WHERE provider = $1 AND symbol = $2", provider, symbol
        )
    finally:
        await conn.close()
    return {make_event_id(provider, symbol, row["ts"], row["seq"]) for row in rows}


async def wait_for(what: str, check: Any, timeout_s: float, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(every_s)


def start_micro_batcher(
    path: Path, name: str, log_path: Path, *extra: str
) -> subprocess.Popen[str]:
    cmd = [*MDP, "stream", "micro-batch", "--config", str(path), "--consumer", name]
    with log_path.open("w") as err:
        return subprocess.Popen(
            [*cmd, "--drain", "--idle-s", "2", *extra],
            env=mdp_env(),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


async def finish(proc: subprocess.Popen[str], log_path: Path, timeout_s: float = 180) -> str:
    out, _ = await asyncio.to_thread(proc.communicate, timeout=timeout_s)
    assert proc.returncode == 0, f"exit {proc.returncode}: {log_path.read_text()[-3000:]}"
    return out


async def test_twelve_shards_spread_over_the_masters_each_in_one_slot(
    env: dict[str, Any], client: RedisCluster
) -> None:
    cluster: LocalRedisCluster = env["cluster"]
    # the checks below run ~70 redis-cli processes without a poll, so without a lease
    # renewal: a 1 s lease could expire before its check on a slow machine
    cfg = cluster_config(env, lease_ttl_ms=60_000)
    bus = await open_bus(cfg, urls(cfg))
    assert isinstance(bus, RedisBus) and bus.cluster
    topic, group = cfg.bus.events_topic, cfg.bus.group
    consumer = bus.consumer(topic, group, "spread")
    try:
        await bus.publish(topic, [(routing_key(p, s), b"x") for p, s in series_per_shard("sp")])
        while len(consumer.owned_shards) < SHARDS:
            await consumer.poll(10, 20)
        per_master: Counter[int] = Counter()
        for stream in bus.streams(topic):
            lease = bus.layout.lease_key(stream, group)
            dlq = bus.layout.dlq_of(stream)
            port = cluster.alive()[0]
            slots = {
                int(cluster.cli_call(port, "cluster", "keyslot", k)) for k in (stream, lease, dlq)
            }
            assert slots == {slot_of(stream)}, (stream, slots)
            master = cluster.master_of_slot(slot_of(stream))
            per_master[master.port] += 1
            # on that master itself (no redirection): the stream, its group and the lease
            assert cluster.cli_call(master.port, "exists", stream).strip() == "1"
            assert group in cluster.cli_call(master.port, "xinfo", "groups", stream)
            assert cluster.cli_call(master.port, "get", lease).strip() == "spread"
        print(f"shards per master: {dict(per_master)}")
        assert sorted(per_master.values()) == [4, 4, 4]
    finally:
        await consumer.aclose()
        await bus.aclose()


async def test_replay_twice_on_twelve_shards_changes_nothing(
    env: dict[str, Any], trades_csv: Path
) -> None:
    cfg = cluster_config(env)
    series = series_per_shard(env["provider"])
    await publish_series(cfg, series, trades_csv)
    first = await drain(cfg, "mb-1")
    assert (first.events_in, first.ticks_inserted) == (SHARDS * TRADES, SHARDS * TRADES)
    await publish_series(cfg, series, trades_csv)
    second = await drain(cfg, "mb-1")
    assert second.events_in == SHARDS * TRADES
    assert (second.ticks_inserted, second.bars_written, second.dead_letters) == (0, 0, 0)
    for provider, symbol in series:
        assert_bars_equal_reference(await stored(cfg, provider, symbol), WINDOW_MS, trades_csv)


async def test_three_micro_batchers_over_twelve_shards_one_killed(
    env: dict[str, Any], client: RedisCluster, trades_csv: Path, tmp_path: Path
) -> None:
    cfg = cluster_config(env, max_batch_size=500)
    series = series_per_shard(env["provider"])
    await publish_series(cfg, series, trades_csv)
    bus = await open_bus(cfg, urls(cfg))
    assert isinstance(bus, RedisBus)
    topic, group = cfg.bus.events_topic, cfg.bus.group
    leases = [bus.layout.lease_key(s, group) for s in bus.streams(topic)]
    path = write_config(tmp_path, cfg)
    names = ["mb-0", "mb-1", "mb-2"]
    procs = [start_micro_batcher(path, n, tmp_path / f"{n}.log") for n in names]
    try:

        async def owners() -> list[str | None]:
            return [None if v is None else v.decode() for v in await client.mget_nonatomic(leases)]

        async def victim_busy() -> bool:
            # all three hold their share, and mb-1 has entries delivered but not acked
            if Counter(await owners()) != Counter({n: 4 for n in names}):
                return False
            for stream in bus.streams(topic):
                summary = await client.xpending(stream, group)
                if any(c["name"] == b"mb-1" and c["pending"] for c in summary["consumers"]):
                    return True
            return False

        await wait_for("4 shards each, mb-1 with entries pending", victim_busy, 60)
        held = {i for i, o in enumerate(await owners()) if o == "mb-1"}
        procs[1].send_signal(signal.SIGKILL)
        procs[1].communicate(timeout=10)
        killed_at = time.monotonic()

        async def taken_over() -> bool:
            current = await owners()
            return all(o in ("mb-0", "mb-2") for o in current)

        await wait_for("the survivors to hold every shard", taken_over, 60, every_s=0.01)
        takeover_s = time.monotonic() - killed_at

        async def claimed() -> bool:
            for stream in bus.streams(topic):
                summary = await client.xpending(stream, group)
                if any(c["name"] == b"mb-1" and c["pending"] for c in summary["consumers"]):
                    return False
            return True

        await wait_for("mb-1's pending entries to be claimed", claimed, 60, every_s=0.01)
        claim_s = time.monotonic() - killed_at
        ttl = cfg.bus.redis.lease_ttl_ms
        print(
            f"mb-1 held shards {sorted(held)}; taken over after {takeover_s:.2f} s "
            f"(bound lease_ttl_ms + lease_ttl_ms/3 + block_ms = "
            f"{(ttl + ttl / 3 + cfg.bus.block_ms) / 1000:.2f} s), its pending entries "
            f"claimed after {claim_s:.2f} s (claim_idle_ms = {cfg.bus.claim_idle_ms} ms)"
        )
        for i in (0, 2):
            await finish(procs[i], tmp_path / f"{names[i]}.log")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        await bus.aclose()
    for provider, symbol in series:
        assert_bars_equal_reference(await stored(cfg, provider, symbol), WINDOW_MS, trades_csv)


async def test_resharding_a_shard_slot_mid_run(
    env: dict[str, Any], client: RedisCluster, trades_csv: Path, tmp_path: Path
) -> None:
    cluster: LocalRedisCluster = env["cluster"]
    cfg = cluster_config(env, max_batch_size=500)
    series = series_per_shard(env["provider"])
    moved_shard = 5
    bus = await open_bus(cfg, urls(cfg))
    assert isinstance(bus, RedisBus)
    topic = cfg.bus.events_topic
    stream = bus.stream_name(topic, moved_shard)
    slot = slot_of(stream)
    source = cluster.master_of_slot(slot)
    target = next(m for m in cluster.masters() if m.id != source.id)
    events = [e for p, s in series for e in trade_events(p, trades_csv, symbol=s)]
    events.sort(key=lambda e: e.src_ts)  # a live feed: every series advances together
    bad_key = routing_key(*series[moved_shard])
    bad = [b"\x00not msgpack %d" % i for i in range(3)]
    path = write_config(tmp_path, cfg)
    names = ["mb-0", "mb-1", "mb-2"]
    procs = [start_micro_batcher(path, n, tmp_path / f"{n}.log", "--idle-s", "4") for n in names]
    published = 0

    chunks = range(0, len(events), 300)
    # before, during and after the move
    bad_after = dict(zip((chunks[0], chunks[len(chunks) // 2], chunks[-2]), bad, strict=True))

    async def produce() -> None:
        nonlocal published
        for i in chunks:
            await publish(bus, cfg, events[i : i + 300])
            published = i + 300
            if i in bad_after:
                await bus.publish(topic, [(bad_key, bad_after[i])])
            await asyncio.sleep(0.02)

    moved = False
    try:
        producer = asyncio.create_task(produce())

        async def a_third_published() -> bool:
            return published >= len(events) // 3

        await wait_for("a third of the events published", a_third_published, 60)
        before = redirections(cluster, source)
        await asyncio.to_thread(cluster.move_slot, slot, target, pause_s=0.2)
        moved = True
        assert cluster.master_of_slot(slot).id == target.id
        await producer
        met = redirections(cluster, source) - before
        print(
            f"slot {slot} ({stream}) moved from {source.port} to {target.port} mid-run; "
            f"the source answered {met['ASK']} ASK and {met['MOVED']} MOVED meanwhile"
        )
        # the clients did meet the redirections (and followed them: nothing is missing below)
        assert met["ASK"] > 0 and met["MOVED"] > 0
        for name, proc in zip(names, procs, strict=True):
            await finish(proc, tmp_path / f"{name}.log")
        letters = await bus.dlq_list(1000)
        assert sorted(lt.payload for lt in letters) == sorted(bad)
        assert {lt.reason for lt in letters} == {"decode"}
        assert bus.lost_writes == {}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        await bus.aclose()
        if moved:  # leave the layout as the session found it
            await asyncio.to_thread(cluster.move_slot, slot, source)
    for provider, symbol in series:
        assert_bars_equal_reference(await stored(cfg, provider, symbol), WINDOW_MS, trades_csv)


def redirections(cluster: LocalRedisCluster, node: Node) -> Counter[str]:
    """``ASK`` and ``MOVED`` replies ``node`` has sent (``INFO errorstats``, Redis 7)."""
    stats = cluster.info(node.port, "errorstats")
    out: Counter[str] = Counter()
    for kind in ("ASK", "MOVED"):
        value = stats.get(f"errorstat_{kind}", "count=0")
        out[kind] = int(value.split("=", 1)[1])
    return out


def isolate_then_kill(cluster: LocalRedisCluster, master: Node) -> Node:
    """Cut ``master``'s replication (its replica paused, the link killed), so that what it
    acknowledges from now on reaches no replica."""
    replica = cluster.replica_of(master)
    cluster.pause(replica.port)
    cluster.cli_call(master.port, "client", "kill", "type", "replica")
    return replica


def kill_and_promote(cluster: LocalRedisCluster, master: Node, replica: Node) -> Node:
    """``kill -9`` ``master``, let its (paused) replica run again and wait until it has been
    promoted."""
    cluster.kill(master.port)
    cluster.resume(replica.port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            promoted = next(n for n in cluster.nodes(replica.port) if n.id == replica.id)
            info = cluster.cli_call(replica.port, "cluster", "info")
        except (RuntimeError, StopIteration, subprocess.TimeoutExpired):
            promoted, info = None, ""
        if promoted and promoted.is_master and promoted.slots and "cluster_state:ok" in info:
            return promoted
        time.sleep(0.05)
    raise AssertionError(f"replica {replica.port} was not promoted")


@pytest.fixture
def restore_cluster(redis_cluster: LocalRedisCluster) -> Iterator[None]:
    yield
    redis_cluster.heal()  # the killed master rejoins as a replica


async def test_master_killed_replica_promoted_loses_what_it_never_replicated(
    env: dict[str, Any],
    trades_csv: Path,
    tmp_path: Path,
    restore_cluster: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster: LocalRedisCluster = env["cluster"]
    cfg = cluster_config(env, max_batch_size=500)
    series = series_per_shard(env["provider"])
    victim_shard = 7
    provider, victim_symbol = series[victim_shard]
    events = {s: trade_events(p, trades_csv, symbol=s) for p, s in series}
    third = TRADES // 3
    a, b, c = (
        events[victim_symbol][:third],
        events[victim_symbol][third : 2 * third],
        events[victim_symbol][2 * third :],
    )
    bus = await open_bus(cfg, urls(cfg))
    assert isinstance(bus, RedisBus)
    stream = bus.stream_name(cfg.bus.events_topic, victim_shard)
    master = cluster.master_of_slot(slot_of(stream))
    lost_before = telemetry.ERRORS.labels(component="bus", reason="lost_writes")._value.get()
    path = write_config(tmp_path, cfg)
    log_path = tmp_path / "mb.log"
    worker = start_micro_batcher(path, "mb-f", log_path, "--idle-s", "3")
    try:
        for symbol, chunk in events.items():
            await publish(bus, cfg, chunk if symbol != victim_symbol else a)

        async def some_stored() -> bool:
            return bool(await stored_event_ids(env["database_url"], provider, victim_symbol))

        await wait_for("the worker to store ticks of the victim shard", some_stored, 60)
        # The worker stops reading while the cluster loses B (a worker that had read B would
        # have committed it to PostgreSQL, hiding the loss from the store).
        worker.send_signal(signal.SIGSTOP)
        replica = isolate_then_kill(cluster, master)
        await publish(bus, cfg, b)  # acknowledged by the master, replicated nowhere
        promoted = await asyncio.to_thread(kill_and_promote, cluster, master, replica)
        print(f"master {master.port} killed; replica {promoted.port} promoted")
        with caplog.at_level(logging.ERROR, logger="market_data_pipeline.streaming.redis_bus"):
            deadline = time.monotonic() + 30
            while True:  # what the publisher does: retry while the cluster settles
                try:
                    await publish(bus, cfg, c)
                    break
                except Exception:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.2)
        worker.send_signal(signal.SIGCONT)
        out = await finish(worker, log_path)
        reported_lost = bus.lost_writes
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
            worker.kill()
        worker.communicate(timeout=10)
        await bus.aclose()
    # What the cluster kept of the victim's stream, read back from the promoted master.
    bus = await open_bus(cfg, urls(cfg))
    try:
        entries = await bus.tail(cfg.bus.events_topic, 1_000_000)
    finally:
        await bus.aclose()
    kept = {
        e.event_id
        for r in entries
        if r.shard == victim_shard
        for e in decode_events(r.payload).events
    }
    b_ids = {e.event_id for e in b}
    assert not kept & b_ids, "the promoted replica never received B"
    assert {e.event_id for e in a + c} <= kept
    # What mdp reported: exactly B, on that stream.
    assert reported_lost == {stream: len(b)}
    reported = telemetry.ERRORS.labels(component="bus", reason="lost_writes")._value.get()
    assert reported - lost_before == len(b)
    lines = [r.getMessage() for r in caplog.records if "acknowledged" in r.getMessage()]
    assert len(lines) == 1 and f"{len(b)} entries of {stream}" in lines[0], lines
    print(f"lost: {len(b)} events of {stream}; mdp reported: {lines[0]}")
    print("worker: " + out.strip().splitlines()[-1])
    # The store holds exactly what the cluster kept, and the bars are exact for it.
    assert await stored_event_ids(env["database_url"], provider, victim_symbol) == {
        e.event_id for e in a + c
    }
    lost_ids = {e.trade_id for e in b}
    kept_csv = _subset(
        tmp_path / "kept.csv", lambda i, row: i < TRADES and row["id"] not in lost_ids
    )
    assert_bars_equal_reference(await stored(cfg, provider, victim_symbol), WINDOW_MS, kept_csv)
    for p, symbol in series:
        if symbol != victim_symbol:
            assert_bars_equal_reference(await stored(cfg, p, symbol), WINDOW_MS, trades_csv)


async def test_with_wait_replicas_the_same_failover_loses_nothing(
    env: dict[str, Any], trades_csv: Path, restore_cluster: None
) -> None:
    cluster: LocalRedisCluster = env["cluster"]
    cfg = cluster_config(env)
    cfg = cfg.model_copy(
        update={
            "bus": cfg.bus.model_copy(
                update={
                    "redis": cfg.bus.redis.model_copy(
                        update={"wait_replicas": 1, "wait_timeout_ms": 200}
                    )
                }
            )
        }
    )
    series = series_per_shard(env["provider"])
    victim_shard = 7
    provider, victim_symbol = series[victim_shard]
    events = trade_events(provider, trades_csv, symbol=victim_symbol)
    half = len(events) // 2
    bus = await open_bus(cfg, urls(cfg))
    assert isinstance(bus, RedisBus)
    stream = bus.stream_name(cfg.bus.events_topic, victim_shard)
    master = cluster.master_of_slot(slot_of(stream))
    publisher = Publisher(bus, topic=cfg.bus.events_topic, batch_size=500)
    try:
        for event in events[:half]:
            await publisher.put(event)
        await publisher.flush()
        assert publisher.retries == 0
        replica = isolate_then_kill(cluster, master)
        for event in events[half:]:
            await publisher.put(event)
        flushed = asyncio.create_task(publisher.flush())

        async def refused() -> bool:
            return publisher.retries > 0

        await wait_for("a publish refused for want of a replica", refused, 30)
        await asyncio.to_thread(kill_and_promote, cluster, master, replica)
        # The promoted master has no replica until the old one rejoins: publishing to its
        # shard waits for that (within the publisher's 30 s of retries).
        await asyncio.to_thread(cluster.heal)
        await asyncio.wait_for(flushed, 60)
        assert bus.lost_writes == {}
        print(f"publisher retried {publisher.retries} times across the failover")
        await publisher.aclose()
    finally:
        await bus.aclose()
    stats = await drain(cfg, "mb-w")
    assert stats.dead_letters == 0
    assert await stored_event_ids(env["database_url"], provider, victim_symbol) == {
        e.event_id for e in events
    }
    assert_bars_equal_reference(await stored(cfg, provider, victim_symbol), WINDOW_MS, trades_csv)


async def test_status_tail_and_dlq_commands_on_the_cluster(
    env: dict[str, Any], trades_csv: Path, tmp_path: Path
) -> None:
    """The operator's commands on a cluster named the other way: ``bus.redis.cluster: true``
    with a plain ``redis://`` URL of one node in ``REDIS_URI``."""
    cluster: LocalRedisCluster = env["cluster"]
    cfg = cluster_config(env)
    series = series_per_shard(env["provider"])[:3]
    bad = [b"\x00junk %d" % i for i in range(2)]
    events = await publish_series(cfg, series, trades_csv)
    bus = await open_bus(cfg, urls(cfg))
    try:
        for payload, (provider, symbol) in zip(bad, series, strict=False):
            await bus.publish(cfg.bus.events_topic, [(routing_key(provider, symbol), payload)])
    finally:
        await bus.aclose()
    stats = await drain(cfg, "mb-cli")
    assert stats.dead_letters == 2
    data = cfg.model_dump(mode="json")
    data["bus"]["redis"]["uri"] = None
    data["bus"]["redis"]["cluster"] = True
    path = write_config_data(tmp_path / "streaming.yaml", data)
    environ = mdp_env({"REDIS_URI": f"redis://127.0.0.1:{cluster.alive()[0]}"})

    def mdp(*args: str) -> str:
        done = run_mdp("stream", *args, "--config", str(path), env=environ)
        assert done.returncode == 0, done.stderr[-2000:]
        return str(done.stdout)

    status = json.loads(mdp("status", "--group", cfg.bus.group, "--json"))
    shards = [s for s in status["streams"] if s["stream"].startswith(cfg.bus.events_topic)]
    assert len(shards) == SHARDS
    assert all(s["lag"] == 0 and s["pending"] == 0 for s in shards if s.get("group"))
    assert sum(s["length"] for s in shards) == 3 * TRADES + 2
    assert status["dlq"]["length"] == 2
    tail = [json.loads(line) for line in mdp("tail", "--limit", "5", "--json").splitlines()]
    assert len(tail) == 5
    assert {t["event_id"] for t in tail if "event_id" in t} <= {
        e.event_id for chunk in events.values() for e in chunk
    }
    letters = json.loads(mdp("dlq", "list", "--json"))
    assert sorted(lt["payload"] for lt in letters) == sorted(b.decode() for b in bad)
    first, second = (lt["id"] for lt in letters)
    assert first.startswith(f"{cfg.bus.dlq_topic}:{{") and "/" in first
    # undecodable letters are skipped unless forced (re-sent unchanged they fail again)
    assert "replayed 0 dead letter(s); 1 skipped" in mdp("dlq", "replay", "--id", first)
    assert "replayed 1 dead letter(s)" in mdp("dlq", "replay", "--id", first, "--force")
    assert [lt["id"] for lt in json.loads(mdp("dlq", "list", "--json"))] == [second]
    assert "purged 1 dead letter(s)" in mdp("dlq", "purge", "--yes")
    assert json.loads(mdp("dlq", "list", "--json")) == []
