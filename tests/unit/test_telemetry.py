"""The metrics endpoint serves the seed's metric names (as Prometheus exposes them) and /healthz;
logs are JSON lines."""

from __future__ import annotations

import io
import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from market_data_core.errors import ConfigError
from market_data_pipeline import telemetry
from market_data_pipeline.telemetry import (
    HealthRegistry,
    Heartbeat,
    JsonFormatter,
    MetricsServer,
    setup_logging,
    start_metrics_server,
)

# The seed's §6.1 table: exposed sample name -> label names (plus SPEC §11's freshness, below).
SEED_SAMPLES = {
    "stream_events_ingested_total": {"bus", "topic", "provider"},
    "stream_consumer_lag_ms": {"topic", "group", "consumer"},
    "microbatch_flush_total": {"window_ms", "symbol"},
    "microbatch_flush_rows_total": {"window_ms"},
    "microbatch_window_latency_ms_bucket": {"le"},
    "store_write_duration_seconds_bucket": {"table", "le"},
    "features_update_duration_seconds_bucket": {"symbol", "window", "le"},
    "inference_eval_duration_seconds_bucket": {"adapter", "le"},
    "signals_emitted_total": {"name", "adapter"},
    "errors_total": {"component", "reason"},
}


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = start_metrics_server("127.0.0.1", 0, health=HealthRegistry())
    yield srv
    srv.stop()


def test_port_zero_binds_a_free_port_and_reports_it(server: MetricsServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    status, _, _ = get(server.url + "/metrics")
    assert status == 200


def test_metrics_serves_every_seed_metric_with_its_labels(server: MetricsServer) -> None:
    # Touch one child of each labelled metric so it has a series, as the running stages do.
    telemetry.EVENTS_INGESTED.labels(bus="redis", topic="mdp.events", provider="synthetic").inc()
    telemetry.STREAM_CONSUMER_LAG.labels(topic="mdp.events", group="g", consumer="c").set(12)
    telemetry.MICROBATCH_FLUSH_TOTAL.labels(window_ms="2000", symbol="SPY").inc()
    telemetry.MICROBATCH_FLUSH_ROWS.labels(window_ms="2000").inc(3)
    telemetry.MICROBATCH_WINDOW_LATENCY.observe(120)
    telemetry.STORE_WRITE_DURATION.labels(table="bars_ohlcv").observe(0.01)
    telemetry.FEATURES_UPDATE_DURATION.labels(symbol="SPY", window="vwap_1m").observe(0.0001)
    telemetry.INFERENCE_EVAL_DURATION.labels(adapter="rules").observe(0.0002)
    telemetry.SIGNALS_EMITTED.labels(name="vwap_cross", adapter="rules").inc()
    telemetry.ERRORS.labels(component="micro_batch", reason="decode").inc()
    telemetry.SIGNAL_FRESHNESS.labels(adapter="rules").observe(1.2)

    status, ctype, body = get(server.url + "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    for name, labels in SEED_SAMPLES.items():
        assert name in samples, f"{name} not exposed"
        assert samples[name] == labels, f"{name}: labels {samples[name]} != {labels}"
    assert samples["signal_event_freshness_seconds_bucket"] == {"adapter", "le"}


def test_healthz_ok_then_503_when_a_registered_check_fails() -> None:
    health = HealthRegistry()
    state = {"alive": True}
    health.register("micro_batch", lambda: state["alive"])
    with start_metrics_server("127.0.0.1", 0, health=health) as srv:
        status, ctype, body = get(srv.url + "/healthz")
        assert (status, ctype) == (200, "application/json")
        doc = json.loads(body)
        assert doc["status"] == "ok"
        assert doc["checks"] == {"micro_batch": {"ok": True}}

        state["alive"] = False
        status, _, body = get(srv.url + "/healthz")
        assert status == 503
        assert json.loads(body)["status"] == "fail"

        def broken() -> bool:
            raise RuntimeError("loop stalled")

        health.register("micro_batch", broken)
        status, _, body = get(srv.url + "/healthz")
        assert status == 503
        assert "loop stalled" in json.loads(body)["checks"]["micro_batch"]["error"]

        health.unregister("micro_batch")
        status, _, _ = get(srv.url + "/healthz")
        assert status == 200


def test_heartbeat_turns_unhealthy_when_the_loop_stops_beating() -> None:
    now = [100.0]
    beat = Heartbeat(max_age_s=5.0, clock=lambda: now[0])
    health = HealthRegistry()
    health.register("infer", beat)
    assert health.evaluate() == (True, {"infer": {"ok": True}})
    now[0] += 5.1
    assert health.evaluate() == (False, {"infer": {"ok": False}})
    beat.beat()
    assert beat() and beat.age_s == 0
    with pytest.raises(ValueError):
        Heartbeat(max_age_s=0)


def test_custom_registry_and_unknown_path() -> None:
    registry = CollectorRegistry()
    Counter("only_here", "x", registry=registry).inc()
    with start_metrics_server("127.0.0.1", 0, registry=registry, health=HealthRegistry()) as srv:
        _, _, body = get(srv.url + "/metrics")
        assert "only_here_total 1.0" in body
        assert "errors_total" not in body
        status, _, _ = get(srv.url + "/nope")
        assert status == 404


def test_stop_releases_the_port() -> None:
    srv = start_metrics_server("127.0.0.1", 0, health=HealthRegistry())
    port = srv.port
    srv.stop()
    srv.stop()  # idempotent
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_port_in_use_is_a_config_error(server: MetricsServer) -> None:
    with pytest.raises(ConfigError, match=r"telemetry\.metrics_port.*choose another port"):
        start_metrics_server("127.0.0.1", server.port, health=HealthRegistry())


def test_json_log_lines_carry_extras_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("mdp.test.json")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("flush slow", extra={"window_ms": 2000, "symbol": "SPY"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("flush failed")
    finally:
        log.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "WARNING"
    assert first["logger"] == "mdp.test.json"
    assert first["msg"] == "flush slow"
    assert (first["window_ms"], first["symbol"]) == (2000, "SPY")
    assert first["ts"].endswith("+00:00")
    assert "ValueError: boom" in second["exc"]


def test_setup_logging_sets_level_and_rejects_unknown_levels() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        setup_logging("warning", json=True)
        assert root.level == logging.WARNING
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        setup_logging("DEBUG", json=False)
        assert root.level == logging.DEBUG
        assert len(root.handlers) == 1
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
        with pytest.raises(ConfigError, match=r"telemetry\.log_level"):
            setup_logging("LOUD", json=True)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[1]:
            root.addHandler(h)
        root.setLevel(saved[0])


async def test_stage_loops_register_a_heartbeat_on_healthz() -> None:
    """A running micro-batcher shows up in /healthz and leaves it when it stops."""
    import asyncio
    import json
    import urllib.request

    from market_data_core.config import AppConfig
    from market_data_core.protocols import BusRecord
    from market_data_pipeline.consumers.micro_batcher import MicroBatcher
    from market_data_pipeline.telemetry import start_metrics_server

    class IdleConsumer:
        name = "hb-test"
        owned_shards = frozenset({0})

        async def poll(self, max_count: int, block_ms: int) -> list[BusRecord]:
            await asyncio.sleep(block_ms / 1000)
            return []

        async def ack(self, records: object) -> None: ...

        async def aclose(self) -> None: ...

    class IdleBus:
        def consumer(self, topic: str, group: str, name: str) -> IdleConsumer:
            return IdleConsumer()

    server = start_metrics_server("127.0.0.1", 0)
    stop = asyncio.Event()
    batcher = MicroBatcher(AppConfig(), IdleBus(), object(), consumer_name="hb-test")  # type: ignore[arg-type]
    task = asyncio.create_task(batcher.run(stop))
    try:
        await asyncio.sleep(0.3)
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"{server.url}/healthz").read()
        )
        assert "micro-batch:hb-test" in json.loads(body)["checks"]
    finally:
        stop.set()
        await task
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"{server.url}/healthz").read()
        )
        server.stop()
    assert "micro-batch:hb-test" not in json.loads(body)["checks"]
