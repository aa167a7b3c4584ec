"""Prometheus alerting rules for mdp's metrics, for any ``telemetry.namespace``.

``docker/prometheus/alerts.yml`` is :func:`render` for the default (empty) namespace, byte for
byte (a test keeps them equal); ``mdp alerts --namespace mdp`` prints the same rules for
``mdp_``-prefixed metrics, for a Prometheus shared with other exporters.

Thresholds that depend on the micro-batch window read it from the ``microbatch_window_seconds``
gauge each micro-batcher exports (the largest one when several run; the seed's default of 2 s
while no micro-batcher is scraped), so they follow ``micro_batch.window_ms`` without editing
the rules. The seed's SLA (§6.2, §10.3): p95 window latency <= 1.5 x window; consumer lag
< 2 x window over a rolling minute.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = [
    "DEFAULT_WINDOW_S",
    "alert_rules",
    "lag_threshold_ms",
    "latency_threshold_ms",
    "render",
    "window_seconds",
]

DEFAULT_WINDOW_S = 2
"""The window assumed while no micro-batcher is scraped (the seed's ``window_ms: 2000``)."""

ERROR_RATE_PER_S = 0.1
LAG_OVER_WINDOW = 2
LATENCY_OVER_WINDOW = 1.5


def _prefix(namespace: str) -> str:
    return f"{namespace}_" if namespace else ""


def window_seconds(namespace: str = "") -> str:
    """PromQL: the micro-batch window in seconds (one series, no labels)."""
    p = _prefix(namespace)
    return f"(max({p}microbatch_window_seconds) or vector({DEFAULT_WINDOW_S}))"


def lag_threshold_ms(namespace: str = "") -> str:
    """PromQL: the consumer-lag alert threshold in milliseconds (2 x window)."""
    return f"{LAG_OVER_WINDOW} * 1000 * {window_seconds(namespace)}"


def latency_threshold_ms(namespace: str = "") -> str:
    """PromQL: the p95 window-latency alert threshold in milliseconds (1.5 x window)."""
    return f"{LATENCY_OVER_WINDOW} * 1000 * {window_seconds(namespace)}"


def alert_rules(namespace: str = "") -> dict[str, Any]:
    """The rule file as a mapping (``{"groups": [...]}``) for metrics named with ``namespace``
    (``""``: the seed's names). ``namespace`` is trusted to be valid (``TelemetryConfig``
    validates it)."""
    p = _prefix(namespace)
    rules: list[dict[str, Any]] = [
        {
            "alert": "MdpTargetDown",
            "expr": 'up{job="mdp"} == 0',
            "for": "1m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "mdp stage {{ $labels.stage }} ({{ $labels.instance }}) is not "
                "being scraped",
            },
        },
        {
            "alert": "MdpConsumerLagHigh",
            "expr": (
                f"max by (topic, group) (max_over_time({p}stream_consumer_lag_ms[1m]))\n"
                f"  > on () group_left ()\n  {lag_threshold_ms(namespace)}"
            ),
            "for": "1m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "consumer lag on {{ $labels.topic }}/{{ $labels.group }} is "
                "{{ $value }} ms (> 2x the micro-batch window)",
                "description": "Seed §10.3: consumer lag < 2 x window over a rolling minute. "
                "The window comes from microbatch_window_seconds.",
            },
        },
        {
            "alert": "MdpWindowLatencyP95High",
            "expr": (
                "histogram_quantile(0.95, sum by (le) "
                f"(rate({p}microbatch_window_latency_ms_bucket[5m])))\n"
                f"  > on () group_left ()\n  {latency_threshold_ms(namespace)}"
            ),
            "for": "5m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "p95 micro-batch window latency is {{ $value }} ms "
                "(> 1.5x the micro-batch window)",
                "description": "Seed §6.2: p95 window end -> store commit <= 1.5 x window. "
                "The window comes from microbatch_window_seconds.",
            },
        },
        {
            "alert": "MdpErrorRateHigh",
            "expr": (
                f"sum by (component, reason) (rate({p}errors_total[5m])) > {ERROR_RATE_PER_S}"
            ),
            "for": "5m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $labels.component }} errors ({{ $labels.reason }}) at "
                "{{ $value }}/s",
                "description": "Every known (component, reason) series exists at 0 from "
                "start-up, so the rate counts the first errors too.",
            },
        },
        {
            "alert": "MdpNoEventsIngested",
            "expr": f"sum(rate({p}stream_events_ingested_total[5m])) == 0",
            "for": "5m",
            "labels": {"severity": "warning"},
            "annotations": {"summary": "no events ingested for 5 minutes"},
        },
    ]
    return {"groups": [{"name": "mdp-sla", "rules": rules}]}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(namespace: str = "") -> str:
    """The rule file as YAML text, with a header saying how it was made."""
    metric = f"{_prefix(namespace)}errors_total"
    header = (
        "# Alerting rules for mdp (seed §6.2 SLA targets, §10.3), for metrics named like "
        f"{metric}.\n"
        f"# Generated by `mdp alerts{f' --namespace {namespace}' if namespace else ''}` "
        "(market_data_pipeline/alert_rules.py): edit that, not this.\n"
        "# Validate with: promtool check rules <this file>\n"
    )
    body = yaml.dump(
        alert_rules(namespace), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
    )
    return header + body
