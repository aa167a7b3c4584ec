"""Every Grafana panel shows data (SPEC §11, issues 8 and 18): a real Prometheus (Debian's binary)
scrapes a running pipeline — ``mdp stream produce`` -> ``micro-batch`` -> ``infer``, each in its
own process with its own metrics port, and again as ``mdp run`` (one process, with
``telemetry.namespace: mdp`` and 2 symbol slots for 3 symbols), and the stages once more on
Kafka (``bus.type: kafka``, the compose ``kafka`` profile).

First, healthy: EVERY PromQL query of every dashboard panel (``${prefix}`` set for the run's
namespace) must return data before anything goes wrong, error panels included (known error
series exist at 0 from start-up); each symbol label value carries the stated number of series;
``promtool check metrics`` on each stage's scrape reports nothing but the seed's two ``_ms``
names. Then errors are injected — malformed entries (decode), an event that fails validation,
and a short PostgreSQL outage (retries, ``reason="store_unavailable"``) — and every error panel
must move, ``increase()`` must count the first errors, the error alert's rate must see them,
and the window thresholds of the alert rules (generated for the run's namespace) must follow
the configured 1 s window. Every SQL panel query runs against the real PostgreSQL and must
return rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aredis
import typer
import yaml
from prometheus_client.parser import text_string_to_metric_families

from market_data_core.timeutil import format_duration_ms
from market_data_pipeline import alert_rules, telemetry
from market_data_pipeline.cli.app import app
from market_data_pipeline.servers import EmbeddedPostgres, free_port
from tests.conftest import ROOT, SHIPPED_CONFIG

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
SHIPPED = yaml.safe_load(SHIPPED_CONFIG.read_text())
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not installed (apt-get install prometheus; .ci/run does it as root)",
    ),
]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
DEADLINE_S = 120.0  # give up waiting for the last series (or a panel to move) after this long
# Grafana variables -> what a user with "All" selected gets.
PROMQL_VARIABLES = {
    "$__rate_interval": "30s",
    "$__interval": "5s",
    "$__range": "5m",
    "${symbol:regex}": ".*",
    "$symbol": ".*",
}
MDP = [sys.executable, "-m", "market_data_pipeline.cli.app"]
# How the pipeline runs: the three stages in their own processes (as in the compose stack), or
# every stage in one process (`mdp run`, one registry on one port).
LAYOUTS: dict[str, dict[str, list[str]]] = {
    "stages": {
        "produce": ["stream", "produce", "--provider", "synthetic"],
        "micro-batch": ["stream", "micro-batch", "--window", "1s"],
        "infer": ["stream", "infer", "--adapter", "rules"],
    },
    "mdp-run": {"run": ["run", "--window", "1s", "--adapter", "rules"]},
}
# (layout, bus, telemetry overrides) the test runs: both layouts on Redis Streams, the stages
# on Kafka too; `mdp run` with a namespace and fewer symbol slots than symbols.
RUNS: list[tuple[str, str, dict[str, Any]]] = [
    ("stages", "redis", {}),
    ("mdp-run", "redis", {"namespace": "mdp", "symbol_labels_n": 2}),
    ("stages", "kafka", {}),
]
# What one symbol label value costs in series (README, "Metrics"): features_update_duration_
# seconds for the shipped 8 bar windows x (16 buckets + +Inf + _sum + _count), plus
# microbatch_flush_total.
SERIES_PER_SYMBOL = 8 * 19 + 1
WINDOW_S = 1  # the run's micro_batch.window_ms / 1000
WINDOW_MS = WINDOW_S * 1000


@dataclass
class Stage:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.name} (exit {self.proc.poll()}) ---\n" + "\n".join(text[-lines:])


def missing_commands(layout: dict[str, list[str]]) -> list[str]:
    """The commands of ``layout`` the CLI does not have yet."""
    root = typer.main.get_command(app)
    missing = []
    for name, argv in layout.items():
        command: Any = root
        for word in argv:
            if word.startswith("-") or not hasattr(command, "commands"):
                break
            command = command.commands.get(word)
            if command is None:
                missing.append(name)
                break
    return missing


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process for {url} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            if http_get(url, 1.0)[0] == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout_s}s")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def substitute(query: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):
        query = query.replace(name, variables[name])
    leftover = re.findall(r"\$\{?\w+", query)
    assert not leftover, f"unknown Grafana variable(s) {leftover} in {query}"
    return query


def panel_queries(kind: str) -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, query) for every ``expr`` (kind="expr") or ``rawSql``."""
    out = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                if kind in target:
                    out.append((path.name, panel["title"], target[kind]))
    return out


def variable_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard file, variable name, datasource uid, query) of every query variable."""
    out = []
    for path in DASHBOARDS:
        for var in json.loads(path.read_text()).get("templating", {}).get("list", []):
            if var["type"] == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                out.append((path.name, var["name"], var["datasource"]["uid"], query))
    return out


def label_values(prometheus: str, query: str) -> list[str]:
    """Grafana's ``label_values(metric, label)`` through Prometheus' label-values API."""
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert m, f"unsupported variable query {query}"
    params = urllib.parse.urlencode({"match[]": m.group(1)})
    status, body = http_get(f"{prometheus}/api/v1/label/{m.group(2)}/values?{params}")
    assert status == 200, body
    values: list[str] = json.loads(body)["data"]
    return values


def expand_sql(sql: str, start: datetime, end: datetime, symbols: list[str]) -> str:
    """Grafana's macros as Grafana expands them; the symbol variable selects this run's
    symbols, so rows left by other tests cannot satisfy the check."""
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: f"{m.group(1)} BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'",
        sql,
    )
    return substitute(
        sql, {"${symbol:regex}": "|".join(symbols), "${interval}": format_duration_ms(WINDOW_MS)}
    )


RULES = [
    # Level mode: a signal for every closed bar, so the signals table and counters fill up.
    {
        "name": "obs_bar_seen",
        "condition": "close > 0",
        "signal": 1.0,
        "score": 0.5,
        "mode": "level",
    },
    {
        "name": "vwap_cross_up",
        "condition": "crosses_above(close, vwap_1m)",
        "signal": 1.0,
        "score": 0.5,
    },
]


def stage_config(
    bus: str,
    servers: dict[str, str],
    unique: str,
    symbols: list[str],
    port: int,
    rules_file: Path,
    telemetry_overrides: dict[str, Any],
) -> dict[str, Any]:
    return {
        "version": 1,
        "bus": {
            "type": bus,
            "block_ms": 50,
            "claim_idle_ms": 2000,
            "redis": {
                "uri": servers["REDIS_URI"],
                "stream": f"obs.{unique}.events",
                "bars_stream": f"obs.{unique}.bars",
                "signals_stream": f"obs.{unique}.signals",
                "dlq_stream": f"obs.{unique}.dlq",
                "consumer_group": f"obs.{unique}",
            },
            "kafka": {
                "bootstrap": servers.get("KAFKA_BOOTSTRAP", ""),
                "topic": f"obs.{unique}.events",
                "bars_topic": f"obs.{unique}.bars",
                "signals_topic": f"obs.{unique}.signals",
                "dlq_topic": f"obs.{unique}.dlq",
                "group_id": f"obs.{unique}",
                # Group joins on the embedded broker are slow with the 10 s default.
                "session_timeout_ms": 1500,
            },
        },
        "producers": {
            "synthetic": {
                "enabled": True,
                "symbols": symbols,
                "tick_rate": 20.0,
                "price_volatility": 0.02,
                "quote_ratio": 0.5,  # quotes too: the Market dashboard's spread panels
            }
        },
        "micro_batch": {
            "window_ms": WINDOW_S * 1000,
            "allow_late_ms": 200,
            "flush_timeout_ms": 200,
        },
        # The shipped feature windows; rules of our own so that signals are certain within
        # the run (the shipped ones wait for momentum or an RSI extreme).
        "features": {"warmup_bars": 0, "windows": SHIPPED["features"]["windows"]},
        "inference": {"adapters": {"rules": {"enabled": True, "file": str(rules_file)}}},
        "store": {"dsn": servers["DATABASE_URL"]},
        "telemetry": {
            "metrics_host": "127.0.0.1",
            "metrics_port": port,
            "log_level": "INFO",
            "log_format": "json",
            **telemetry_overrides,
        },
    }


@pytest.fixture(
    params=RUNS, ids=lambda run: f"{run[0]}-{run[1]}" + ("-namespace" if run[2] else "")
)
def pipeline(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    unique: str,
) -> Iterator[tuple[list[Stage], dict[str, Any]]]:
    layout_name, bus, telemetry_overrides = request.param
    layout = LAYOUTS[layout_name]
    missing = missing_commands(layout)
    if missing:
        pytest.skip(f"{', '.join(missing)} not available yet")
    servers = {"REDIS_URI": redis_url, "DATABASE_URL": database_url}
    if bus == "kafka":
        if importlib.util.find_spec("market_data_pipeline.streaming.kafka_bus") is None:
            pytest.skip("kafka bus not available yet")
        try:
            servers["KAFKA_BOOTSTRAP"] = request.getfixturevalue("kafka_bootstrap")
        except pytest.FixtureLookupError:
            pytest.skip("kafka_bootstrap fixture not available yet")
    symbols = [f"OB{unique[:4].upper()}{c}" for c in "ABC"]
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(RULES))
    env = {**os.environ, **servers}
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump({"store": {"dsn": database_url}}))
    migrate = subprocess.run(
        [*MDP, "db", "upgrade", "--config", str(schema)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    stages: list[Stage] = []
    config: dict[str, Any] = {}
    try:
        for name, argv in layout.items():
            port = free_port()
            config = stage_config(
                bus, servers, unique, symbols, port, rules_file, telemetry_overrides
            )
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            log = tmp_path / f"{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [*MDP, *argv, "--config", str(path)],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            stages.append(Stage(name, port, proc, log))
        for stage in stages:
            try:
                wait_http(f"http://127.0.0.1:{stage.port}/healthz", 60.0, stage.proc)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{stage.tail()}") from None
        config["symbols"] = symbols
        yield stages, config
    finally:
        for stage in stages:
            stop_process(stage.proc)


@pytest.fixture
def prometheus(tmp_path: Path, pipeline: tuple[list[Stage], dict[str, Any]]) -> Iterator[str]:
    assert PROMETHEUS is not None
    stages, config = pipeline
    port = free_port()
    # The compose stack's own config and alert rules, with the targets pointed at this run's
    # stages and a 1 s scrape: the shipped job and rules are what gets tested.
    cfg = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    # The shipped rules are the generated ones for the seed's names (a unit test keeps them
    # equal); a namespaced run loads what `mdp alerts` generates for its namespace.
    namespace = config["telemetry"].get("namespace", "")
    if namespace:
        rules = tmp_path / "alerts.yml"
        rules.write_text(alert_rules.render(namespace))
        cfg["rule_files"] = [str(rules)]
    else:
        cfg["rule_files"] = [str(PROMETHEUS_DIR / f) for f in cfg["rule_files"]]
    (job,) = (j for j in cfg["scrape_configs"] if j["job_name"] == "mdp")
    job["static_configs"] = [
        {"targets": [f"127.0.0.1:{s.port}"], "labels": {"stage": s.name}} for s in stages
    ]
    cfg["scrape_configs"] = [job]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready", 30.0, proc)
        yield url
    finally:
        stop_process(proc)
        log.close()


def instant_query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    status, body = http_get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "success", f"{expr}: {status} {doc}"
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


MALFORMED = b"\xc1 this is not an event"  # no codec decodes it: reason "decode"
INVALID = b'{"ver": 1, "kind": "tick"}'  # decodes, misses every required field: "validation"
DECODE_ERRORS = 2
VALIDATION_ERRORS = 1


async def inject(bus: dict[str, Any], payloads: list[bytes]) -> None:
    """Entries another producer could have written, straight onto the events topic: the
    micro-batcher must dead-letter and count each one."""
    if bus["type"] == "redis":
        client = aredis.Redis.from_url(bus["redis"]["uri"])
        try:
            for payload in payloads:
                await client.xadd(bus["redis"]["stream"], {b"data": payload})
        finally:
            await client.aclose()
        return
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bus["kafka"]["bootstrap"])
    await producer.start()
    try:
        for payload in payloads:
            await producer.send_and_wait(bus["kafka"]["topic"], payload, key=b"X", partition=0)
    finally:
        await producer.stop()


def panel_value(prometheus: str, expr: str) -> float | None:
    """The largest value an instant query returns (NaN counts as 0; None: no data)."""
    result = instant_query(prometheus, expr)
    if not result:
        return None
    values = [float(r["value"][1]) for r in result]
    return max(0.0 if math.isnan(v) else v for v in values)


def scalar(prometheus: str, expr: str) -> float:
    result = instant_query(prometheus, expr)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def is_error_panel(expr: str) -> bool:
    return "errors_total" in expr or "retries_total" in expr


def promtool_reports(scrape: bytes) -> set[str]:
    """The metric names ``promtool check metrics`` reports in a scrape (one per line)."""
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=scrape, capture_output=True, timeout=60, check=False
    )
    lines = (result.stdout + result.stderr).decode().splitlines()
    return {line.split()[0] for line in lines if line.strip()}


def series_by_symbol(scrapes: list[bytes]) -> dict[str, int]:
    """How many series carry each value of a ``symbol`` label, over every stage's scrape."""
    counts: dict[str, int] = {}
    for body in scrapes:
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if "symbol" in sample.labels:
                    symbol = sample.labels["symbol"]
                    counts[symbol] = counts.get(symbol, 0) + 1
    return counts


async def wait_until(
    what: str, check: Callable[[], Awaitable[str | None]], stages: list[Stage]
) -> None:
    """Poll ``check`` (None: done, else what is still missing) until done or DEADLINE_S."""
    t0 = time.monotonic()
    while True:
        dead = [s for s in stages if s.proc.poll() is not None]
        assert not dead, "a stage died:\n" + "\n".join(s.tail() for s in dead)
        missing = await check()
        if missing is None:
            return
        if time.monotonic() - t0 > DEADLINE_S:
            raise AssertionError(
                f"{what} after {DEADLINE_S:.0f}s:\n{missing}\n"
                + "\n".join(s.tail(15) for s in stages)
            )
        await asyncio.sleep(1)


async def test_every_panel_has_data_and_every_error_panel_moves(
    pipeline: tuple[list[Stage], dict[str, Any]],
    prometheus: str,
    database_url: str,
    pg_server: EmbeddedPostgres | None,
) -> None:
    stages, config = pipeline
    started = datetime.now(UTC)
    namespace = config["telemetry"].get("namespace", "")
    p = f"{namespace}_" if namespace else ""
    variables = {**PROMQL_VARIABLES, "${prefix}": p}
    promql = [(d, t, substitute(e, variables)) for d, t, e in panel_queries("expr")]
    sql = panel_queries("rawSql")
    assert promql and sql
    error_panels = [q for q in promql if is_error_panel(q[2])]
    assert len(error_panels) >= 8, error_panels  # the 7 Error Monitoring panels + store errors

    async def empty_panels() -> str | None:
        empty = [
            f"  {d} / {t}: {q}"
            for d, t, q in promql
            if not await asyncio.to_thread(instant_query, prometheus, q)
        ]
        return (
            f"{len(empty)} of {len(promql)} panel queries empty:\n" + "\n".join(empty)
            if empty
            else None
        )

    # Healthy: nothing has gone wrong yet, and every panel already has data, the error panels
    # included (their series exist at 0 from start-up).
    await wait_until("panels without data on a healthy pipeline", empty_panels, stages)

    scrapes: list[bytes] = []

    async def every_symbol_complete() -> str | None:
        scrapes[:] = [
            (await asyncio.to_thread(http_get, f"http://127.0.0.1:{s.port}/metrics"))[1]
            for s in stages
        ]
        counts = series_by_symbol(scrapes)
        n = config["telemetry"].get("symbol_labels_n")
        want = len(config["symbols"]) if n is None else n + 1  # n slots + __other__
        ok = len(counts) == want and all(c == SERIES_PER_SYMBOL for c in counts.values())
        return (
            None if ok else f"series per symbol value {counts}, want {want} x {SERIES_PER_SYMBOL}"
        )

    await wait_until("per-symbol series incomplete", every_symbol_complete, stages)
    symbols = set(series_by_symbol(scrapes))
    if "symbol_labels_n" in config["telemetry"]:
        assert telemetry.OTHER_SYMBOL in symbols
        assert len(symbols - {telemetry.OTHER_SYMBOL}) == config["telemetry"]["symbol_labels_n"]
        assert symbols - {telemetry.OTHER_SYMBOL} < set(config["symbols"])
    else:
        assert symbols == set(config["symbols"])

    # Metric conventions on the real scrape: promtool reports the seed's _ms names, nothing else.
    allowed = {p + name for name in telemetry.SEED_MS_METRICS}
    for stage, scrape in zip(stages, scrapes, strict=True):
        if PROMTOOL is not None:
            reported = await asyncio.to_thread(promtool_reports, scrape)
            assert reported <= allowed, (stage.name, reported - allowed)
        names = {f.name for f in text_string_to_metric_families(scrape.decode())}
        assert not {n for n in names if n.endswith("_created")}, stage.name
        if namespace:  # every mdp metric carries the prefix; the client's own do not
            assert f"{p}errors" in names and "errors" not in names, stage.name
            assert "process_cpu_seconds" in names, stage.name

    baseline = {q: await asyncio.to_thread(panel_value, prometheus, q[2]) for q in error_panels}
    alert_expr = next(
        r["expr"]
        for g in alert_rules.alert_rules(namespace)["groups"]
        for r in g["rules"]
        if r["alert"] == "MdpErrorRateHigh"
    )
    error_rate = alert_expr.rsplit(" > ", 1)[0]  # what the alert compares with its threshold
    decode_sel = f'{p}errors_total{{component="microbatch", reason="decode"}}'
    assert await asyncio.to_thread(scalar, prometheus, f"sum({decode_sel})") == 0

    # Now things go wrong: bad entries on the bus, then a short store outage.
    await inject(config["bus"], [MALFORMED] * DECODE_ERRORS + [INVALID] * VALIDATION_ERRORS)
    exempt: set[tuple[str, str, str]] = set()
    if pg_server is not None:
        # The micro-batcher must retry (nothing acked) and count it.
        await asyncio.sleep(2)
        await asyncio.to_thread(pg_server.stop)
        await asyncio.sleep(4)
        await asyncio.to_thread(pg_server.start)
    else:  # an external PostgreSQL cannot be stopped from here
        exempt = {q for q in error_panels if "retries_total" in q[2] or 'reason=~"store' in q[2]}

    async def unmoved_error_panels() -> str | None:
        still = []
        for q in error_panels:
            if q in exempt:
                continue
            now = await asyncio.to_thread(panel_value, prometheus, q[2])
            if now is None or now <= (baseline[q] or 0.0):
                still.append(f"  {q[0]} / {q[1]}: {baseline[q]} -> {now}: {q[2]}")
        return "error panels that did not move:\n" + "\n".join(still) if still else None

    await wait_until("error panels did not move", unmoved_error_panels, stages)

    # The first errors count: exact totals, and increase()/rate() see them (the series were
    # at 0 before, so nothing is lost to a series born at its first error).
    assert await asyncio.to_thread(scalar, prometheus, f"sum({decode_sel})") == DECODE_ERRORS
    validation_sel = f'{p}errors_total{{component="microbatch", reason="validation"}}'
    assert await asyncio.to_thread(scalar, prometheus, f"sum({validation_sel})") == (
        VALIDATION_ERRORS
    )
    increase = await asyncio.to_thread(scalar, prometheus, f"sum(increase({decode_sel}[1h]))")
    assert increase >= DECODE_ERRORS, increase
    rates = await asyncio.to_thread(instant_query, prometheus, error_rate)
    decode_rate = [
        float(r["value"][1])
        for r in rates
        if r["metric"].get("component") == "microbatch" and r["metric"].get("reason") == "decode"
    ]
    assert decode_rate and decode_rate[0] > 0, rates
    # Window thresholds follow the configured window (1 s here), not the seed's 2 s.
    lag_ms = await asyncio.to_thread(scalar, prometheus, alert_rules.lag_threshold_ms(namespace))
    latency_ms = await asyncio.to_thread(
        scalar, prometheus, alert_rules.latency_threshold_ms(namespace)
    )
    assert (lag_ms, latency_ms) == (2 * 1000 * WINDOW_S, 1.5 * 1000 * WINDOW_S)

    for stage in stages:
        status, body = http_get(f"http://127.0.0.1:{stage.port}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok", (stage.name, body)
        # Structured logs: every log record is one JSON object per line.
        records = [
            json.loads(line) for line in stage.log.read_text().splitlines() if line.startswith("{")
        ]
        assert records, stage.tail()
        assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    for dash, name, uid, query in variable_queries():
        if uid == "mdp-prometheus":
            query = substitute(query, variables)
            values = await asyncio.to_thread(label_values, prometheus, query)
            assert set(values) == symbols, (dash, name, query, values)
    figures = {
        "ingest events/min": f"sum(rate({p}stream_events_ingested_total[30s])) * 60",
        "p95 window latency ms": "histogram_quantile(0.95, sum by (le) "
        f"(rate({p}microbatch_window_latency_ms_bucket[1m])))",
        "max consumer lag ms": f"max(max_over_time({p}stream_consumer_lag_ms[1m]))",
        "signals/min": f"sum(rate({p}signals_emitted_total[30s])) * 60",
    }
    for label, expr in figures.items():
        result = instant_query(prometheus, expr)
        print(f"{label}: {float(result[0]['value'][1]):.1f}" if result else f"{label}: -")
    # The alert rules load and evaluate without errors against real series.
    status, body = http_get(f"{prometheus}/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules and all(r["health"] == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
    ]
    up = instant_query(prometheus, 'up{job="mdp"}')
    assert sorted(r["metric"]["stage"] for r in up if r["value"][1] == "1") == sorted(
        s.name for s in stages
    )

    end = datetime.now(UTC) + timedelta(minutes=5)
    conn = await asyncpg.connect(database_url)
    try:
        no_rows = []
        for dash, title, raw in sql:
            query = expand_sql(raw, started - timedelta(hours=1), end, config["symbols"])
            rows = await conn.fetch(query)
            if not rows:
                no_rows.append(f"  {dash} / {title}: {query}")
        for dash, name, uid, query in variable_queries():
            if uid == "mdp-timescaledb":
                rows = await conn.fetch(query)
                # the bar level a Market panel shows: the run's micro-bars are one of them
                wanted = (
                    [format_duration_ms(WINDOW_MS)] if name == "interval" else config["symbols"]
                )
                assert {r[0] for r in rows} >= set(wanted), (dash, name, query)
        assert not no_rows, "SQL panels without rows:\n" + "\n".join(no_rows)
    finally:
        await conn.close()
