"""The compose stack's Prometheus config and alert rules, and every dashboard's PromQL, pass
``promtool`` (Debian package ``prometheus``; .ci/run installs it), with and without
``telemetry.namespace``; the shipped alerts.yml is what ``mdp alerts`` generates; ``promtool
check metrics`` on a scrape of every mdp metric reports only the seed's two ``_ms`` names."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from market_data_core.config import TelemetryConfig
from market_data_pipeline import telemetry
from market_data_pipeline.alert_rules import render
from market_data_pipeline.cli.app import main
from market_data_pipeline.telemetry import HealthRegistry, start_metrics_server
from tests.conftest import ROOT

PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (apt-get install prometheus; .ci/run does it as root)",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_check_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # The rule file is referenced and was checked along with the config.
    assert "1 rule files found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rejects_a_broken_config(tmp_path: Path) -> None:
    bad = tmp_path / "prometheus.yml"
    bad.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: soon\n")
    assert promtool("check", "config", str(bad)).returncode != 0


@needs_promtool
@pytest.mark.parametrize("prefix", ["", "mdp_"])
def test_every_dashboard_promql_expression_parses(tmp_path: Path, prefix: str) -> None:
    """Each panel's PromQL (Grafana variables filled in) as a recording rule: promtool parses
    them all, so a syntax error fails here, before any server runs."""
    variables = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}
    variables |= {"${symbol:regex}": ".*", "$symbol": ".*", "${prefix}": prefix}
    rules = []
    for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if "expr" in target:
                    expr = target["expr"]
                    for name in sorted(variables, key=len, reverse=True):
                        expr = expr.replace(name, variables[name])
                    rules.append({"record": f"mdp:panel_{len(rules)}", "expr": expr})
    assert rules
    rules_file = tmp_path / "panels.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_shipped_alert_rules_are_the_generated_ones(capsys: pytest.CaptureFixture[str]) -> None:
    """docker/prometheus/alerts.yml is `mdp alerts` for the default config, byte for byte."""
    assert (PROMETHEUS_DIR / "alerts.yml").read_text() == render("")
    assert main(["alerts", "--namespace", "mdp"]) == 0
    out = capsys.readouterr().out
    assert out == render("mdp")
    assert "mdp_errors_total" in out and " errors_total" not in out


def test_mdp_alerts_rejects_a_bad_namespace(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "--namespace", "mdp_"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mdp: error:") and "telemetry.namespace" in err


@needs_promtool
def test_promtool_check_rules_for_a_namespace(tmp_path: Path) -> None:
    rules = tmp_path / "alerts.yml"
    assert main(["alerts", "--namespace", "mdp", "-o", str(rules)]) == 0
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def touch_every_metric() -> None:
    """One series for every mdp metric, as a running pipeline makes them."""
    telemetry.init_error_series(*telemetry.ERROR_REASONS, *telemetry.RETRYING_COMPONENTS)
    telemetry.EVENTS_INGESTED.labels(bus="redis", topic="mdp.events", provider="synthetic").inc()
    telemetry.EVENTS_CONSUMED.labels(topic="mdp.events", group="g").inc()
    telemetry.STREAM_CONSUMER_LAG.labels(topic="mdp.events", group="g", consumer="c").set(12)
    telemetry.MICROBATCH_FLUSH_TOTAL.labels(window_ms="2000", symbol="SPY").inc()
    telemetry.MICROBATCH_FLUSH_ROWS.labels(window_ms="2000").inc(3)
    telemetry.MICROBATCH_WINDOW_LATENCY.observe(120)
    telemetry.MICROBATCH_BATCH_SIZE.observe(40)
    telemetry.MICROBATCH_WINDOW.labels(group="g").set(2)
    telemetry.STORE_WRITE_DURATION.labels(table="bars_ohlcv").observe(0.01)
    telemetry.STORE_ROWS.labels(table="bars_ohlcv", op="inserted").inc()
    telemetry.FEATURES_UPDATE_DURATION.labels(symbol="SPY", window="vwap_1m").observe(0.0001)
    telemetry.FEATURES_ACTIVE_WINDOWS.set(8)
    telemetry.INFERENCE_EVAL_DURATION.labels(adapter="rules").observe(0.0002)
    telemetry.SIGNALS_EMITTED.labels(name="vwap_cross", adapter="rules").inc()
    telemetry.SIGNAL_FRESHNESS.labels(adapter="rules").observe(1.2)


@needs_promtool
@pytest.mark.parametrize("namespace", ["", "mdp"])
def test_promtool_check_metrics_reports_only_the_seed_ms_names(namespace: str) -> None:
    """A scrape over HTTP of every mdp metric (plus the client's process and GC metrics):
    promtool's lint reports the seed's two _ms names and nothing else, with or without a
    namespace. (The integration panels test runs the same check on a live pipeline.)"""
    touch_every_metric()
    telemetry.configure(TelemetryConfig(namespace=namespace))
    try:
        with (
            start_metrics_server("127.0.0.1", 0, health=HealthRegistry()) as srv,
            urllib.request.urlopen(f"{srv.url}/metrics", timeout=5) as resp,
        ):
            scrape = resp.read()
    finally:
        telemetry.configure(TelemetryConfig())
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=scrape, capture_output=True, timeout=60, check=False
    )
    lines = (result.stdout + result.stderr).decode().splitlines()
    reported = {line.split()[0] for line in lines if line.strip()}
    prefix = f"{namespace}_" if namespace else ""
    assert reported == {prefix + name for name in telemetry.SEED_MS_METRICS}, lines
