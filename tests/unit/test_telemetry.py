"""The metrics endpoint serves the seed's metric names (as Prometheus exposes them) and /healthz;
logs are JSON lines. Issue 18: the symbol label is bounded (telemetry.symbol_labels) and the
series it costs per symbol are counted from a scrape; telemetry.namespace prefixes every mdp
metric; HELP texts state units; every (component, reason) the code counts exists at 0."""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, get_args, get_type_hints

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from market_data_core.config import TelemetryConfig
from market_data_core.errors import ConfigError
from market_data_pipeline import telemetry
from market_data_pipeline.telemetry import (
    OTHER_SYMBOL,
    HealthRegistry,
    Heartbeat,
    JsonFormatter,
    MetricsServer,
    SymbolLabels,
    setup_logging,
    start_metrics_server,
)
from tests.conftest import ROOT, SHIPPED_CONFIG

PACKAGE = ROOT / "market_data_pipeline"

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
    from market_data_core.protocols import BusRecord, RelayResult
    from market_data_pipeline.consumers.micro_batcher import MicroBatcher
    from market_data_pipeline.telemetry import start_metrics_server

    class IdleConsumer:
        name = "hb-test"
        owned_shards = frozenset({0})
        bus_dead_letters: dict[str, int] = {}

        async def poll(self, max_count: int, block_ms: int) -> list[BusRecord]:
            await asyncio.sleep(block_ms / 1000)
            return []

        async def ack(self, records: object) -> None: ...

        async def aclose(self) -> None: ...

    class IdleBus:
        def consumer(self, topic: str, group: str, name: str) -> IdleConsumer:
            return IdleConsumer()

    class EmptyOutbox:
        async def relay_bar_changes(self, publish: object, *, limit: int) -> RelayResult:
            return RelayResult()

    server = start_metrics_server("127.0.0.1", 0)
    stop = asyncio.Event()
    batcher = MicroBatcher(AppConfig(), IdleBus(), EmptyOutbox(), consumer_name="hb-test")  # type: ignore[arg-type]
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


@pytest.fixture
def configured() -> Iterator[Callable[..., None]]:
    """``configure(**telemetry keys)`` for one test; the defaults come back afterwards."""

    def apply(**keys: Any) -> None:
        telemetry.configure(TelemetryConfig(**keys))

    yield apply
    telemetry.configure(TelemetryConfig())


def scrape() -> str:
    return generate_latest(REGISTRY).decode()


def test_symbol_labels_all_none_and_first_n() -> None:
    every = SymbolLabels("all")
    assert [every(s) for s in ("SPY", "AAPL")] == ["SPY", "AAPL"]
    none = SymbolLabels("none")
    assert {none(s) for s in ("SPY", "AAPL")} == {OTHER_SYMBOL}
    first = SymbolLabels("first_n", n=2, keep=["QQQ"])
    seen = [first(s) for s in ("SPY", "AAPL", "MSFT", "SPY", "QQQ", "TSLA", "AAPL")]
    # a slot is kept for good; keep is on top of n; the rest share one value
    assert seen == ["SPY", "AAPL", OTHER_SYMBOL, "SPY", "QQQ", OTHER_SYMBOL, "AAPL"]
    assert first.labelled == {"SPY", "AAPL"}
    with pytest.raises(ValueError):
        SymbolLabels("first_n", n=-1)


def test_every_symbol_label_is_bounded_whatever_the_call_site_passes(
    configured: Callable[..., None],
) -> None:
    configured(symbol_labels="first_n", symbol_labels_n=1)
    telemetry.MICROBATCH_FLUSH_TOTAL.clear()
    telemetry.FEATURES_UPDATE_DURATION.clear()
    try:
        for symbol in ("AAA", "BBB", "CCC"):
            telemetry.MICROBATCH_FLUSH_TOTAL.labels(window_ms="1000", symbol=symbol).inc()
            telemetry.FEATURES_UPDATE_DURATION.labels(symbol, "vwap_1m").observe(0.001)
        body = scrape()
        assert 'microbatch_flush_total{symbol="AAA",window_ms="1000"} 1.0' in body
        assert f'microbatch_flush_total{{symbol="{OTHER_SYMBOL}",window_ms="1000"}} 2.0' in body
        assert 'symbol="BBB"' not in body and 'symbol="CCC"' not in body
        assert (
            f'features_update_duration_seconds_count{{symbol="{OTHER_SYMBOL}",window="vwap_1m"}}'
            " 2.0" in body
        )
    finally:
        telemetry.MICROBATCH_FLUSH_TOTAL.clear()
        telemetry.FEATURES_UPDATE_DURATION.clear()
    # Every mdp metric with a symbol label goes through the policy (declared with the helpers).
    for metric in mdp_metrics():
        if "symbol" in metric._labelnames:
            assert metric.labels.__func__ is telemetry._SymbolBounded.labels, metric


def mdp_metrics() -> list[MetricWrapperBase]:
    return [
        m
        for m in (getattr(telemetry, a) for a in telemetry.__all__)
        if isinstance(m, MetricWrapperBase)
    ]


def test_series_per_symbol_from_a_scrape_with_the_shipped_feature_windows(
    configured: Callable[..., None],
) -> None:
    """The README's figure: one symbol label value costs 153 series with the shipped 8 bar
    feature windows (8 x 19 histogram series + 1 flush counter; the quote windows spread_bps,
    spread_5m and imbalance are not timed); first_n caps the values at n + 1."""
    from market_data_core.config import load_config
    from market_data_core.contracts import Bar
    from market_data_pipeline.features import FeatureEngine

    windows = load_config(SHIPPED_CONFIG, env={}).features.windows
    symbols = [f"S{i:03d}" for i in range(40)]

    def series_by_symbol() -> dict[str, int]:
        counts: dict[str, int] = {}
        for family in text_string_to_metric_families(scrape()):
            for sample in family.samples:
                if "symbol" in sample.labels:
                    counts[sample.labels["symbol"]] = counts.get(sample.labels["symbol"], 0) + 1
        return counts

    for policy in ({"symbol_labels": "all"}, {"symbol_labels_n": 3}, {"symbol_labels": "none"}):
        configured(**policy)
        telemetry.MICROBATCH_FLUSH_TOTAL.clear()
        telemetry.FEATURES_UPDATE_DURATION.clear()
        try:
            engine = FeatureEngine(windows)
            ts = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
            for symbol in symbols:
                telemetry.MICROBATCH_FLUSH_TOTAL.labels(window_ms="2000", symbol=symbol).inc()
                engine.update_bar(Bar("p", symbol, "2s", ts, 10.0, 10.0, 10.0, 10.0, 5.0))
            counts = series_by_symbol()
        finally:
            telemetry.MICROBATCH_FLUSH_TOTAL.clear()
            telemetry.FEATURES_UPDATE_DURATION.clear()
        timed = [w for w in windows if w.feature not in ("spread_bps", "imbalance")]
        assert len(timed) == len(windows) - 3
        assert set(counts.values()) == {len(timed) * 19 + 1} == {153}, (policy, counts)
        want = {"all": 40, "none": 1}.get(policy.get("symbol_labels", ""), 3 + 1)
        assert len(counts) == want, (policy, sorted(counts))


def test_namespace_prefixes_every_mdp_metric_and_nothing_else(
    configured: Callable[..., None],
) -> None:
    telemetry.init_error_series("microbatch")
    configured(namespace="mdp")
    assert telemetry.metric_prefix() == "mdp_"
    families = {f.name: f for f in text_string_to_metric_families(scrape())}
    ours = {m.describe()[0].name for m in mdp_metrics()}
    assert {f"mdp_{n}" for n in ours} <= families.keys()
    assert not ours & families.keys()
    assert "process_cpu_seconds" in families  # the client library's own keep their names
    assert any(s.name == "mdp_errors_total" for s in families["mdp_errors"].samples)
    configured()
    names = {f.name for f in text_string_to_metric_families(scrape())}
    assert ours <= names and not {f"mdp_{n}" for n in ours} & names


def test_no_created_series_and_every_help_text_states_a_unit() -> None:
    telemetry.init_error_series("microbatch")
    telemetry.STORE_WRITE_DURATION.labels(table="ticks").observe(0.01)
    body = scrape()
    assert "_created" not in body
    for metric in mdp_metrics():
        family = metric.describe()[0]
        assert re.search(r"\([a-z/ ]+\)$", family.documentation), (
            family.name,
            family.documentation,
        )
        if family.name not in telemetry.SEED_MS_METRICS:
            # beyond the seed's two _ms names: base units only
            assert not re.search(r"_(ms|us|ns|milliseconds|minutes|hours|kb|mb)$", family.name)


def test_known_error_series_exist_at_zero_from_start_up() -> None:
    telemetry.init_error_series(*telemetry.ERROR_REASONS, *telemetry.RETRYING_COMPONENTS)
    samples = {
        (s.labels["component"], s.labels.get("reason")): s.value
        for f in text_string_to_metric_families(scrape())
        if f.name in ("errors", "retries")
        for s in f.samples
    }
    for component, reasons in telemetry.ERROR_REASONS.items():
        for reason in reasons:
            assert (component, reason) in samples, (component, reason)
    for component in telemetry.RETRYING_COMPONENTS:
        assert (component, None) in samples
    before = telemetry.ERRORS.labels(component="microbatch", reason="decode")._value.get()
    telemetry.init_error_series("microbatch")  # idempotent: counts are kept
    assert telemetry.ERRORS.labels(component="microbatch", reason="decode")._value.get() == before
    with pytest.raises(ValueError, match="unknown telemetry component"):
        telemetry.init_error_series("nope")


def _module_constants(tree: ast.Module) -> dict[str, str]:
    return {
        t.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for t in node.targets
        if isinstance(t, ast.Name) and isinstance(node.value.value, str)
    }


def _contract_error_reasons() -> set[str]:
    """Every reason a ContractError is raised with (the first argument, a literal)."""
    reasons = set()
    for path in [*(ROOT / "market_data_core").rglob("*.py"), *PACKAGE.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "ContractError"
            ):
                assert isinstance(node.args[0], ast.Constant), f"{path}: {ast.unparse(node)}"
                reasons.add(node.args[0].value)
    return reasons


def _reasons_of(tree: ast.Module, call: ast.Call, expr: ast.expr) -> set[str]:
    """The values a non-literal ``reason=`` can take: the literals assigned to the local
    variable, the literals passed for the enclosing function's parameter, or a ContractError's
    / RowError's reason (``exc.reason``, ``err.reason``)."""
    func = next(
        f
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        and f.lineno <= call.lineno <= (f.end_lineno or 0)
        and not any(
            isinstance(g, ast.FunctionDef | ast.AsyncFunctionDef)
            and g is not f
            and f.lineno < g.lineno <= call.lineno <= (g.end_lineno or 0)
            for g in ast.walk(f)
        )
    )
    if isinstance(expr, ast.Attribute) and expr.attr == "reason":
        # exc.reason / err.reason: a RowError's if the function says so, else a ContractError's
        # (the decoder's batch.errors)
        owner = ast.unparse(expr.value)
        annotation = next(
            (ast.unparse(a.annotation) for a in func.args.args if a.arg == owner and a.annotation),
            "ContractError",
        )
        if annotation == "RowError":
            from market_data_pipeline.producers.datasets import RowError

            return set(get_args(get_type_hints(RowError)["reason"]))
        assert annotation == "ContractError", annotation
        return _contract_error_reasons()
    assert isinstance(expr, ast.Name), ast.unparse(call)
    assigned = {
        n.value.value
        for n in ast.walk(func)
        if isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == expr.id for t in n.targets)
        and isinstance(n.value, ast.Constant)
    }
    if assigned:
        return assigned
    params = [a.arg for a in func.args.args]
    assert expr.id in params, f"cannot tell the values of {expr.id} in {ast.unparse(call)}"
    position = params.index(expr.id) - (1 if params[0] == "self" else 0)
    values: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = (
            node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        )
        if name != func.name:
            continue
        arg = next((k.value for k in node.keywords if k.arg == expr.id), None)
        if arg is None:
            arg = node.args[position]
        if isinstance(arg, ast.Constant):
            values.add(arg.value)
        else:
            values |= _reasons_of(tree, node, arg)
    return values


def test_every_counted_error_is_a_known_series() -> None:
    """Read every ``ERRORS.labels(...)``/``RETRIES.labels(...)`` call in the package: each
    (component, reason) it can count is in ERROR_REASONS (so it exists at 0 from start-up), and
    each component that counts is started with ``init_error_series`` somewhere."""
    counted: set[tuple[str, str]] = set()
    retrying: set[str] = set()
    initialised: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "telemetry.py":
            continue
        tree = ast.parse(path.read_text())
        constants = _module_constants(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = ast.unparse(node.func)
            if target.endswith("init_error_series"):
                for arg in node.args:
                    value = arg.value if isinstance(arg, ast.Constant) else constants[arg.id]
                    initialised.add(value)
                continue
            if not target.endswith(("ERRORS.labels", "RETRIES.labels")):
                continue
            kw = {k.arg: k.value for k in node.keywords}
            comp = kw["component"]
            component = comp.value if isinstance(comp, ast.Constant) else constants[comp.id]
            if target.endswith("RETRIES.labels"):
                retrying.add(component)
                continue
            reason = kw["reason"]
            reasons = (
                {reason.value}
                if isinstance(reason, ast.Constant)
                else _reasons_of(tree, node, reason)
            )
            assert reasons, f"{path.name}:{node.lineno}"
            counted |= {(component, r) for r in reasons}
    known = {(c, r) for c, reasons in telemetry.ERROR_REASONS.items() for r in reasons}
    assert counted - known == set(), "counted but not in ERROR_REASONS"
    assert known - counted == set(), "in ERROR_REASONS but never counted"
    assert retrying == set(telemetry.RETRYING_COMPONENTS)
    # "bus" is started by the consumers that own the bus consumer; every other component by itself
    assert {c for c, _ in counted} | retrying <= initialised


def test_telemetry_config_validates_namespace_and_symbol_policy() -> None:
    from market_data_core.config import parse_config

    assert parse_config({"telemetry": {"namespace": "mdp"}}).telemetry.namespace == "mdp"
    for bad in ("mdp_", "1mdp", "md-p", "_mdp"):
        with pytest.raises(ConfigError, match=r"telemetry\.namespace"):
            parse_config({"telemetry": {"namespace": bad}})
    with pytest.raises(ConfigError, match="symbol_labels_keep only applies"):
        parse_config({"telemetry": {"symbol_labels": "all", "symbol_labels_keep": ["SPY"]}})
    with pytest.raises(ConfigError, match=r"telemetry\.symbol_labels"):
        parse_config({"telemetry": {"symbol_labels": "top"}})
    with pytest.raises(ConfigError, match=r"telemetry\.symbol_labels_n"):
        parse_config({"telemetry": {"symbol_labels_n": -1}})
