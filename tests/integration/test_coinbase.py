"""The Coinbase producer against a local WebSocket server playing a recorded session
(tests/integration/data/coinbase_session.jsonl): a disconnect mid-stream, a connection that
dies before any data, a replayed ``last_match``, a trade-id gap and trades delivered out of id
order (908, 911, 910, 909, 912); events land in real Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.server import ServerConnection, serve

from market_data_core.codec import decode_events
from market_data_core.config import AppConfig, BusConfig, CoinbaseProducerConfig, RedisConfig
from market_data_pipeline import telemetry
from market_data_pipeline.cli.app import main
from market_data_pipeline.producers.coinbase import CoinbaseProvider
from market_data_pipeline.producers.publisher import Publisher
from market_data_pipeline.producers.pump import pump
from market_data_pipeline.servers import ServerUrls
from market_data_pipeline.streaming.bus import open_bus

SESSION = Path(__file__).parent / "data" / "coinbase_session.jsonl"


def segments() -> list[tuple[list[str], str | None]]:
    """The recording split at disconnect markers: (messages, how the server hangs up)."""
    out: list[tuple[list[str], str | None]] = []
    current: list[str] = []
    for line in SESSION.read_text().splitlines():
        marker = json.loads(line).get("__disconnect__")
        if marker:
            out.append((current, marker))
            current = []
        else:
            current.append(line)
    out.append((current, None))
    return out


class FeedServer:
    """Plays one segment per connection; the last one stays open."""

    def __init__(self) -> None:
        self.segments = segments()
        self.connections = 0
        self.subscribes: list[dict[str, Any]] = []
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        index = min(self.connections, len(self.segments) - 1)
        self.connections += 1
        self.subscribes.append(json.loads(await ws.recv()))
        messages, hang_up = self.segments[index]
        for message in messages:
            await ws.send(message)
        if hang_up == "abort":
            ws.transport.abort()  # the network drops: no close frame
        elif hang_up == "close":
            await ws.close(code=1011, reason="going away")
        else:
            await ws.wait_closed()


@pytest.fixture
async def feed() -> AsyncIterator[FeedServer]:
    server = FeedServer()
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        server.url = f"ws://127.0.0.1:{port}"
        yield server


def counter(reason: str) -> float:
    return telemetry.ERRORS.labels(component="coinbase", reason=reason)._value.get()


async def test_reconnects_with_backoff_counts_the_gap_and_publishes(
    feed: FeedServer, redis_url: str, unique: str
) -> None:
    cfg = CoinbaseProducerConfig(url=feed.url, product_ids=["BTC-USD"])
    # The gap grace period runs on a clock that counts feed messages, so that which ids are
    # still pending does not depend on how fast the server plays: 2.5 messages of grace.
    provider = CoinbaseProvider(
        cfg,
        backoff_initial_s=0.2,
        backoff_max_s=2.0,
        rng=random.Random(11),
        gap_grace_s=2.5,
        clock=itertools.count().__next__,
    )
    gaps_before = counter("sequence_gap")
    app = AppConfig(bus=BusConfig(redis=RedisConfig(stream=f"mdp.events.cb.{unique}")))
    bus = await open_bus(app, ServerUrls(redis_url, None, None))
    try:
        publisher = Publisher(bus, topic=app.bus.events_topic, batch_size=4, linger_ms=10)
        accepted = await asyncio.wait_for(
            pump(provider, publisher, asyncio.Event(), count=13), timeout=20
        )
        records = await bus.tail(app.bus.events_topic, 100)
    finally:
        await bus.aclose()

    assert accepted == 13
    events = [e for r in records for e in decode_events(r.payload).events]
    assert [(e.kind, e.seq) for e in events] == [
        ("quote", 50100),
        ("tick", 901),
        ("tick", 902),
        ("tick", 903),
        ("quote", 50111),
        ("tick", 904),  # 903 again (last_match after reconnect) was skipped
        ("tick", 907),  # 905 and 906 never come: a gap
        ("quote", 50161),
        ("tick", 908),
        ("tick", 911),  # out of id order: every one emitted, none a repeat or missed
        ("tick", 910),
        ("tick", 909),
        ("tick", 912),
    ]
    assert len({e.event_id for e in events}) == 13
    assert events[1].side == "buy" and events[2].side == "sell"  # taker = opposite of maker

    # Two hang-ups -> three connections, each re-subscribing.
    assert feed.connections == 3 and provider.connects == 3 and provider.reconnects == 2
    assert all(
        s["type"] == "subscribe" and s["product_ids"] == ["BTC-USD"] for s in feed.subscribes
    )
    assert "heartbeat" in feed.subscribes[0]["channels"]
    # Backoff: the 2nd connection delivered nothing, so the delay doubled (with jitter).
    first, second = provider.backoff_delays_s
    assert 0.1 <= first <= 0.2
    assert 0.2 <= second <= 0.4
    assert (provider.gaps, provider.missed_trades, provider.duplicates) == (1, 2, 1)
    assert provider.late_trades == 0
    assert counter("sequence_gap") - gaps_before == 1


async def test_silence_longer_than_the_heartbeat_timeout_reconnects() -> None:
    connections = 0

    async def silent(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await ws.recv()
        await ws.wait_closed()

    before = counter("heartbeat_timeout")
    async with serve(silent, "127.0.0.1", 0) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        cfg = CoinbaseProducerConfig(url=f"ws://127.0.0.1:{port}", product_ids=["BTC-USD"])
        provider = CoinbaseProvider(
            cfg, heartbeat_timeout_s=0.3, backoff_initial_s=0.05, max_reconnects=2
        )
        got = [e async for e in provider.events()]  # ends after max_reconnects
    assert got == []
    assert connections == 3
    assert counter("heartbeat_timeout") - before == 3


async def test_unreachable_server_backs_off_and_gives_up() -> None:
    cfg = CoinbaseProducerConfig(url="ws://127.0.0.1:9", product_ids=["BTC-USD"])
    provider = CoinbaseProvider(cfg, backoff_initial_s=0.05, backoff_max_s=0.1, max_reconnects=3)
    got = [e async for e in provider.events()]
    assert got == [] and provider.connects == 0 and provider.reconnects == 3
    assert all(0.025 <= d <= 0.1 for d in provider.backoff_delays_s)


def test_cli_produce_coinbase(
    redis_url: str,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`mdp stream produce --provider coinbase --count 9` against the recorded feed. The CLI
    runs its own event loop, so the feed server runs on a loop in a worker thread."""
    feed = FeedServer()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop_server = threading.Event()

    async def serve_feed() -> None:
        async with serve(feed.handler, "127.0.0.1", 0) as ws_server:
            feed.url = f"ws://127.0.0.1:{next(iter(ws_server.sockets)).getsockname()[1]}"
            ready.set()
            while not stop_server.is_set():
                await asyncio.sleep(0.05)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve_feed(),))
    thread.start()
    try:
        assert ready.wait(10)
        config = tmp_path / "streaming.yaml"
        config.write_text(
            f"bus:\n  redis:\n    stream: mdp.events.cli-cb.{unique}\n"
            f"producers:\n  coinbase:\n    url: {feed.url}\n    product_ids: [BTC-USD]\n"
            "telemetry:\n  metrics_port: 0\n  log_level: ERROR\n"
        )
        monkeypatch.setenv("REDIS_URI", redis_url)
        args = ["stream", "produce", "--config", str(config), "--provider", "coinbase"]
        assert main([*args, "--count", "9", "--duration", "30s"]) == 0
    finally:
        stop_server.set()
        thread.join(10)
        loop.close()
    assert "published 9 events (coinbase)" in capsys.readouterr().out
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xlen(f"mdp.events.cli-cb.{unique}") == 9
    finally:
        client.close()
