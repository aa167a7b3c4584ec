"""``mdp alerts``: the Prometheus alerting rules for this config's metric names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from market_data_pipeline.alert_rules import render
from market_data_pipeline.cli.apps import app
from market_data_pipeline.cli.common import DEFAULT_CONFIG, ConfigOpt, load_app_config

__all__ = ["alerts"]


@app.command("alerts")
def alerts(
    config: ConfigOpt = DEFAULT_CONFIG,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            metavar="NAME",
            help="Metric name prefix (overrides telemetry.namespace; '' = the seed's names).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write here instead of stdout."),
    ] = None,
) -> None:
    """Print Prometheus alerting rules (YAML) for mdp's metrics as this config names them.

    The shipped docker/prometheus/alerts.yml is the output for the default (no namespace).
    Window thresholds follow micro_batch.window_ms at run time (microbatch_window_seconds).

    Examples:

    \b
      mdp alerts --namespace mdp -o alerts.yml
    """
    overrides = {} if namespace is None else {"telemetry.namespace": namespace}
    cfg = load_app_config(config, overrides)
    text = render(cfg.telemetry.namespace)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
