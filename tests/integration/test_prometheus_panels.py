"""Every Grafana panel shows data (SPEC §11, issue 8): a real Prometheus (Debian's binary) scrapes
a running pipeline — ``mdp stream produce`` -> ``micro-batch`` -> ``infer``, each in its own
process with its own metrics port, and again as ``mdp run`` (one process), and the stages once
more on Kafka (``bus.type: kafka``, the compose ``kafka`` profile) — for about 30 s; then EVERY PromQL query of every dashboard
panel runs through Prometheus' HTTP API and must return a non-empty result, and every SQL panel
query runs against the real PostgreSQL and must return rows.

Some series exist only after something goes wrong, so the test makes it happen: a malformed
payload on the events stream (``errors_total``, dead letter) and a short PostgreSQL outage
(``retries_total``, ``errors_total{reason="store_unavailable"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aredis
import typer
import yaml

from market_data_pipeline.cli.app import app
from market_data_pipeline.embedded import EmbeddedPostgres, free_port
from tests.conftest import ROOT

PROMETHEUS = shutil.which("prometheus")
SHIPPED = yaml.safe_load((ROOT / "configs" / "streaming.yaml").read_text())
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not installed (apt-get install prometheus; .ci/run does it as root)",
    ),
]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
RUN_S = 30.0  # how long the pipeline runs before the queries must all have data
DEADLINE_S = 120.0  # give up waiting for the last series after this long
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
# (layout, bus) pairs the test runs: both layouts on Redis Streams, the stages on Kafka too.
RUNS = [("stages", "redis"), ("mdp-run", "redis"), ("stages", "kafka")]


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
    return substitute(sql, {"${symbol:regex}": "|".join(symbols)})


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
            }
        },
        "micro_batch": {"window_ms": 1000, "allow_late_ms": 200, "flush_timeout_ms": 200},
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
        },
    }


@pytest.fixture(params=RUNS, ids=lambda run: f"{run[0]}-{run[1]}")
def pipeline(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    unique: str,
) -> Iterator[tuple[list[Stage], dict[str, Any]]]:
    layout_name, bus = request.param
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
            config = stage_config(bus, servers, unique, symbols, port, rules_file)
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
    stages, _ = pipeline
    port = free_port()
    # The compose stack's own config and alert rules, with the targets pointed at this run's
    # stages and a 1 s scrape: the shipped job and rules are what gets tested.
    cfg = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
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


MALFORMED = b"\xc1 this is not an event"


async def inject_malformed_event(bus: dict[str, Any]) -> None:
    """A payload no codec can decode on the events topic: the micro-batcher must dead-letter
    it and count it."""
    if bus["type"] == "redis":
        client = aredis.Redis.from_url(bus["redis"]["uri"])
        try:
            await client.xadd(bus["redis"]["stream"], {b"data": MALFORMED})
        finally:
            await client.aclose()
        return
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bus["kafka"]["bootstrap"])
    await producer.start()
    try:
        await producer.send_and_wait(bus["kafka"]["topic"], MALFORMED, key=b"X", partition=0)
    finally:
        await producer.stop()


async def test_every_panel_query_returns_data(
    pipeline: tuple[list[Stage], dict[str, Any]],
    prometheus: str,
    database_url: str,
    pg_server: EmbeddedPostgres | None,
) -> None:
    stages, config = pipeline
    started = datetime.now(UTC)
    t0 = time.monotonic()
    promql = panel_queries("expr")
    sql = panel_queries("rawSql")
    assert promql and sql

    await asyncio.sleep(3)
    await inject_malformed_event(config["bus"])
    if pg_server is not None:
        # A short store outage: the micro-batcher must retry (nothing acked) and count it.
        await asyncio.sleep(3)
        await asyncio.to_thread(pg_server.stop)
        await asyncio.sleep(4)
        await asyncio.to_thread(pg_server.start)
    exempt = (
        set()
        if pg_server is not None
        else {q for q in promql if "retries_total" in q[2] or 'reason=~"store' in q[2]}
    )

    empty: list[tuple[str, str, str]] = []
    while True:
        dead = [s for s in stages if s.proc.poll() is not None]
        assert not dead, "a stage died:\n" + "\n".join(s.tail() for s in dead)
        elapsed = time.monotonic() - t0
        if elapsed >= RUN_S:
            empty = []
            for dash, title, expr in promql:
                if (dash, title, expr) in exempt:
                    continue
                query = substitute(expr, PROMQL_VARIABLES)
                if not await asyncio.to_thread(instant_query, prometheus, query):
                    empty.append((dash, title, query))
            if not empty or elapsed > DEADLINE_S:
                break
        await asyncio.sleep(2)
    assert not empty, (
        f"{len(empty)} of {len(promql)} panel queries returned no data after {elapsed:.0f}s:\n"
        + "\n".join(f"  {d} / {t}: {q}" for d, t, q in empty)
        + "\n"
        + "\n".join(s.tail(15) for s in stages)
    )

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
            values = await asyncio.to_thread(label_values, prometheus, query)
            assert set(config["symbols"]) <= set(values), (dash, name, query, values)
    figures = {
        "ingest events/min": "sum(rate(stream_events_ingested_total[30s])) * 60",
        "p95 window latency ms": "histogram_quantile(0.95, sum by (le) "
        "(rate(microbatch_window_latency_ms_bucket[1m])))",
        "max consumer lag ms": "max(max_over_time(stream_consumer_lag_ms[1m]))",
        "signals/min": "sum(rate(signals_emitted_total[30s])) * 60",
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
                assert {r[0] for r in rows} >= set(config["symbols"]), (dash, name, query)
        assert not no_rows, "SQL panels without rows:\n" + "\n".join(no_rows)
    finally:
        await conn.close()
