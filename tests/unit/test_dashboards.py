"""Grafana dashboards: the six of the seed §14.2 plus Market; every panel has a title, a
datasource the provisioning defines, and a unit (a Prometheus panel says what it counts, not
just "short"); every metric a PromQL expression names is one mdp exposes (counters end in
``_total``, histograms in ``_bucket``/``_sum``/``_count``) and carries the ``${prefix}``
variable, so the dashboards work with ``telemetry.namespace`` set or not. The alert rules name
only metrics mdp exposes, for the seed's names and for a namespace."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from market_data_pipeline import alert_rules, telemetry
from tests.conftest import ROOT

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yml"
PREFIX = "${prefix}"
SEED_TITLES = {
    "Streaming Overview",
    "Micro-batch Performance",
    "Store Operations",
    "Feature Computation",
    "Inference Engine",
    "Error Monitoring",
}
# Series Prometheus itself adds to every scrape.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
}


def exposed_names() -> set[str]:
    """Sample names prometheus-client exposes for the metric objects in telemetry.py."""
    names: set[str] = set()
    for attr in telemetry.__all__:
        metric = getattr(telemetry, attr)
        if not isinstance(metric, MetricWrapperBase):
            continue
        for family in metric.describe():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
            else:
                names.add(family.name)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (a small scanner, enough for our dashboards):
    drop strings, label matchers, ranges, groupings and Grafana variables; what is left and is
    not a function call or keyword is a metric name."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+(:\w+)?\}?", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?", text):
        if m.group(2) or m.group(1).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(1))
    return names


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def provisioned_uids() -> dict[str, str]:
    doc = yaml.safe_load(DATASOURCES.read_text())
    return {ds["uid"]: ds["type"] for ds in doc["datasources"]}


def test_the_seed_dashboards_and_the_market_view_exist() -> None:
    titles = {load(p)["title"].removeprefix("mdp / ") for p in DASHBOARDS}
    assert SEED_TITLES | {"Market"} <= titles
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


def test_provisioning_defines_prometheus_and_postgresql_with_fixed_uids() -> None:
    uids = provisioned_uids()
    assert uids["mdp-prometheus"] == "prometheus"
    assert uids["mdp-timescaledb"] in ("grafana-postgresql-datasource", "postgres")
    doc = yaml.safe_load(DATASOURCES.read_text())
    pg = next(ds for ds in doc["datasources"] if ds["uid"] == "mdp-timescaledb")
    assert pg["secureJsonData"]["password"] == "${POSTGRES_PASSWORD}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_has_title_datasource_and_unit(path: Path) -> None:
    uids = provisioned_uids()
    dashboard = load(path)
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] in uids, variable["name"]
    for panel in panels(dashboard):
        where = f"{path.name} panel {panel.get('id')}"
        assert panel.get("title", "").strip(), f"{where}: no title"
        ds = panel.get("datasource") or {}
        assert ds.get("uid") in uids, f"{where}: datasource {ds} not provisioned"
        assert ds.get("type") == uids[ds["uid"]], f"{where}: datasource type mismatch"
        assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), f"{where}: no unit"
        assert panel.get("targets"), f"{where}: no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == ds["uid"], f"{where}: mixed datasources"
            query = target.get("expr") or target.get("rawSql")
            assert query and query.strip(), f"{where}: empty query"


def test_promql_names_only_metrics_mdp_exposes() -> None:
    known = exposed_names() | PROMETHEUS_SERIES
    seen: set[str] = set()
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            for target in panel["targets"]:
                if "expr" in target:
                    names = metric_names(target["expr"])
                    assert names, f"{path.name}/{panel['title']}: no metric in {target['expr']}"
                    unknown = names - known
                    assert not unknown, f"{path.name}/{panel['title']}: unknown {unknown}"
                    seen |= names
    # The seed's table is on the dashboards, every metric at least once.
    for family in (
        "stream_events_ingested_total",
        "stream_consumer_lag_ms",
        "microbatch_flush_total",
        "microbatch_flush_rows_total",
        "microbatch_window_latency_ms_bucket",
        "store_write_duration_seconds_bucket",
        "features_update_duration_seconds_bucket",
        "inference_eval_duration_seconds_bucket",
        "signals_emitted_total",
        "errors_total",
        "signal_event_freshness_seconds_bucket",
    ):
        assert family in seen, f"{family} is on no dashboard"


@pytest.mark.parametrize("namespace", ["", "mdp"])
def test_alert_rules_name_only_metrics_mdp_exposes(namespace: str) -> None:
    prefix = f"{namespace}_" if namespace else ""
    known = {prefix + n for n in exposed_names()} | PROMETHEUS_SERIES
    for group in alert_rules.alert_rules(namespace)["groups"]:
        for rule in group["rules"]:
            assert metric_names(rule["expr"]) <= known, rule["alert"]
            # no window hard-coded: thresholds scale with microbatch_window_seconds
            assert "2000" not in rule["expr"], rule["alert"]


def prometheus_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and Prometheus query variable."""
    for panel in panels(dashboard):
        for target in panel["targets"]:
            if "expr" in target:
                yield panel["title"], target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] == "query" and var["datasource"]["uid"] == "mdp-prometheus":
            yield f"variable {var['name']}", var["query"]["query"]
            yield f"variable {var['name']} (definition)", var["definition"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_mdp_metric_carries_the_prefix_variable(path: Path) -> None:
    dashboard = load(path)
    exprs = list(prometheus_exprs(dashboard))
    if not exprs:
        return
    variables = dashboard["templating"]["list"]
    (prefix,) = (v for v in variables if v["name"] == "prefix")
    # a text box, empty by default: the seed's names unless the user types e.g. mdp_
    assert prefix["type"] == "textbox" and prefix["query"] == "" == prefix["current"]["value"]
    assert variables[0] is prefix  # before the variables whose queries use it
    ours = exposed_names()
    for where, expr in exprs:
        for name in metric_names(expr) & ours:
            bare = re.findall(rf"(?<![\w}}]){name}\b", expr.replace(PREFIX + name, ""))
            assert not bare, f"{path.name} / {where}: {name} without {PREFIX}: {expr}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_prometheus_panels_state_what_they_count(path: Path) -> None:
    for panel in panels(load(path)):
        if panel["datasource"]["uid"] == "mdp-prometheus":
            unit = panel["fieldConfig"]["defaults"]["unit"]
            assert unit not in ("short", "none", ""), f"{path.name} / {panel['title']}: {unit}"


def test_the_scanner_finds_metrics_and_ignores_the_rest() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, table) (rate(store_write_duration_seconds_bucket"
        '{table=~"$table", job="mdp"}[$__rate_interval]))) / on (x) group_left '
        "sum(up) * 2 > bool 1"
    )
    assert metric_names(expr) == {"store_write_duration_seconds_bucket", "up"}
    assert "microbatch_flush_total" in exposed_names()
    assert "microbatch_flush" not in exposed_names()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_fit_the_grid_without_overlapping(path: Path) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(load(path)):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]
