"""The compose stack's Prometheus config and alert rules, and every dashboard's PromQL, pass
``promtool`` (Debian package ``prometheus``; .ci/run installs it)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

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
def test_every_dashboard_promql_expression_parses(tmp_path: Path) -> None:
    """Each panel's PromQL (Grafana variables filled in) as a recording rule: promtool parses
    them all, so a syntax error fails here, before any server runs."""
    variables = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}
    variables |= {"${symbol:regex}": ".*", "$symbol": ".*"}
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
