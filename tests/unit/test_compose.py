"""docker-compose.observability.yml: valid Compose, local-only ports, no inline secrets, a
consistent dependency graph, and the files it mounts exist. No Docker needed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from market_data_core.config import load_config
from tests.conftest import ROOT

COMPOSE = ROOT / "docker-compose.observability.yml"
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|PRIVATE_KEY", re.IGNORECASE)
# user:password@ in a URL whose password part is not a ${VAR} interpolation.
INLINE_URL_PASSWORD = re.compile(r"://[^/@\s:]+:(?!\$\{)[^@\s]+@")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_items(service: dict[str, Any]) -> list[tuple[str, str]]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return [tuple(e.split("=", 1)) if "=" in e else (e, "") for e in env]  # type: ignore[misc]
    return [(k, "" if v is None else str(v)) for k, v in env.items()]


def test_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    if not SCHEMA.exists():
        pytest.skip(f"compose spec schema not found at {SCHEMA}")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(compose)


def test_the_stack_has_every_service(services: dict[str, Any]) -> None:
    expected = {"redis", "timescaledb", "prometheus", "grafana", "produce", "micro-batch", "infer"}
    assert expected <= set(services)
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert services["kafka"]["profiles"] == ["kafka"]
    for name in ("produce", "micro-batch", "infer"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"


def test_published_ports_bind_localhost_only(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for port in svc.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} not bound to 127.0.0.1"


def test_no_secret_is_written_inline(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for key, value in env_items(svc):
            if SECRET_KEY.search(key):
                assert INTERPOLATION.fullmatch(value), f"{name}.{key} must come from .env"
            assert not INLINE_URL_PASSWORD.search(value), f"{name}.{key} has a password inline"


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def test_required_variables_are_documented_in_env_example(compose: dict[str, Any]) -> None:
    text = "\n".join(strings(compose))
    example = ROOT / ".env.example"
    documented = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in example.read_text().splitlines()
        if "=" in line
    }
    used = {m.group(1) for m in INTERPOLATION.finditer(text)}
    assert used <= documented, f"undocumented in .env.example: {sorted(used - documented)}"
    required = {m.group(1) for m in INTERPOLATION.finditer(text) if m.group(2) in (":?", "?")}
    assert {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= required
    assert (ROOT / ".gitignore").read_text().splitlines().count(".env") == 1


def one_shot(svc: dict[str, Any]) -> bool:
    """A job that runs to completion (migrations): no healthcheck, never restarted."""
    return svc.get("restart") == "no" and svc.get("healthcheck", {}).get("disable") is True


def test_depends_on_names_existing_services_and_waits_for_health(
    services: dict[str, Any],
) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if one_shot(services[dep]):
                assert spec["condition"] == "service_completed_successfully", f"{name} -> {dep}"
            else:
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
                assert spec["condition"] == "service_healthy", f"{name} -> {dep}"
            if services[dep].get("profiles"):
                assert spec.get("required") is False, f"{name} -> {dep} is only in a profile"


def test_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if not one_shot(svc):
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_stages_start_after_the_schema_migration(services: dict[str, Any]) -> None:
    assert services["migrate"]["command"][:2] == ["db", "upgrade"]
    for name in ("produce", "micro-batch", "infer"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"


def test_bind_mounts_exist(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_redis_has_aof_with_fsync_every_second() -> None:
    conf = (ROOT / "docker" / "redis" / "redis.conf").read_text()
    settings = dict(
        line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "everysec"


def test_dockerfile_is_slim_non_root_with_the_extras() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)
    assert 'pip install ".[kafka,ml]"' in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")


@pytest.mark.parametrize("bus", ["redis", "kafka"])
def test_the_compose_config_loads_for_both_buses(bus: str) -> None:
    env = {
        "MDP_BUS_TYPE": bus,
        "REDIS_URI": "redis://redis:6379/0",
        "DATABASE_URL": "postgresql://mdp:x@timescaledb:5432/mdp",
        "KAFKA_BOOTSTRAP": "kafka:9092",
    }
    cfg = load_config(ROOT / "configs" / "streaming.compose.yaml", env=env)
    assert cfg.bus.type == bus
    assert cfg.telemetry.metrics_host == "0.0.0.0"
    assert cfg.telemetry.metrics_port == 9101


def test_prometheus_scrapes_every_mdp_service(services: dict[str, Any]) -> None:
    prom = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    for name in ("produce", "micro-batch", "infer"):
        assert f"{name}:9101" in targets
        assert "9101" in services[name]["expose"]


def test_grafana_mounts_match_the_provisioning(services: dict[str, Any]) -> None:
    provider = yaml.safe_load(
        (ROOT / "grafana" / "provisioning" / "dashboards" / "mdp.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert mounts[path] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    home = dict(env_items(services["grafana"]))["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "grafana" / "dashboards" / Path(home).name).exists()
    datasources = (
        ROOT / "grafana" / "provisioning" / "datasources" / "datasources.yml"
    ).read_text()
    grafana_env = dict(env_items(services["grafana"]))
    for var in INTERPOLATION.findall(datasources):
        assert var[0] in grafana_env, f"datasources.yml needs {var[0]} in grafana's environment"


def test_services_run_commands_the_cli_has(services: dict[str, Any]) -> None:
    import typer

    from market_data_pipeline.cli.app import app

    root = typer.main.get_command(app)
    for name in ("migrate", "produce", "micro-batch", "infer"):
        group_name, command, *_ = services[name]["command"]
        group = root.commands[group_name]  # type: ignore[attr-defined]
        assert command in group.commands, f"{name}: `mdp {group_name} {command}` does not exist"
        argv = services[name]["command"][2:]
        assert "--config" in argv
        # Parses the options as `mdp` would (unknown flags or bad values raise), without running.
        with group.commands[command].make_context(command, list(argv)) as ctx:
            assert ctx.params["config"] == Path("configs/streaming.compose.yaml")
