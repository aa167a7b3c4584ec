"""What every command shares: ``--config``, config loading with overrides, the one parser of
durations and times given as flags, the async runner with its stop event, and one-line errors
with exit code 2."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from market_data_core.config import AppConfig, load_config, override_config
from market_data_core.errors import ConfigError, describe_error, one_line, primary_error
from market_data_core.redaction import redact_url
from market_data_core.timeutil import parse_duration_ms
from market_data_pipeline import telemetry
from market_data_pipeline.gc_pacing import paced_gc
from market_data_pipeline.servers import ServerUrls, configured_database_url, configured_redis_url
from market_data_pipeline.telemetry import MetricsServer, setup_logging, start_metrics_server
from market_data_pipeline.ui import console

__all__ = [
    "DEFAULT_CONFIG",
    "ConfigOpt",
    "DatasetsOpt",
    "JsonOpt",
    "config_file",
    "describe_error",
    "duration_ms",
    "fail",
    "load_app_config",
    "one_line",
    "parse_when",
    "parse_window",
    "primary_error",
    "run_async",
]

T = TypeVar("T")
DEFAULT_CONFIG = Path("configs/streaming.yaml")

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="Config file (YAML); relative paths in it resolve against its folder. Default: "
        "configs/streaming.yaml in the working directory if it exists, else the one shipped "
        "with mdp (mdp init writes an editable copy).",
        show_default=False,
    ),
]
DatasetsOpt = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        help="Your dataset registry (relative to the working directory); default "
        "producers.replay.datasets_file. Names not in it are looked up in the registry "
        "shipped with mdp.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, *, code: int = 2) -> NoReturn:
    """Print one readable line to stderr and exit (2 = bad input)."""
    typer.echo(f"mdp: error: {message}", err=True)
    raise typer.Exit(code)


_FLAG_ENV: dict[str, str] = {}


def set_flag_environment(values: Mapping[str, str | None]) -> None:
    """The server URLs given as global flags (``mdp --redis-uri URL ...``): they stand for their
    variables (``REDIS_URI``), so a flag and its variable are one setting, above the config
    and the embedded servers."""
    _FLAG_ENV.clear()
    _FLAG_ENV.update({name: value for name, value in values.items() if value})


def environment() -> Mapping[str, str]:
    """The process environment, read here at the CLI edge and passed down, with the server
    URLs given as global flags in their variables' place."""
    return {**os.environ, **_FLAG_ENV}


def config_file(path: Path) -> Path:
    """The file ``--config path`` reads: ``path``, except that the default
    (``configs/streaming.yaml``) falls back to the config shipped with mdp when the working
    directory has none."""
    from market_data_pipeline.project import DEFAULT_CONFIG_FILE

    if path == DEFAULT_CONFIG and not path.exists():
        return DEFAULT_CONFIG_FILE
    return path


def load_app_config(
    path: Path, overrides: Mapping[str, Any] | None = None, *, local_servers: bool = True
) -> AppConfig:
    """Load :func:`config_file` of ``path``, apply dotted ``overrides``
    (``{"micro_batch.window_ms": 1000}``), validate. Raises ``ConfigError``.

    ``local_servers``: a server named neither by the environment nor by the config is the
    project's ``mdp up`` server when that one is running (one line on stderr says so). The
    project is that of ``path``: the working directory for the default, even when the shipped
    config is read."""
    env = environment()
    config = load_config(config_file(path), env=env)
    if overrides:
        config = override_config(config, overrides, source=f"{path} + command-line flags")
    if local_servers:
        config = _with_local_servers(config, path, env)
    return config


def _with_local_servers(config: AppConfig, path: Path, env: Mapping[str, str]) -> AppConfig:
    from market_data_pipeline.servers import LocalServers, state_dir_for

    servers = LocalServers(state_dir_for(path, env))
    urls = servers.running_urls()
    if not urls:
        return config
    use: dict[str, str] = {}
    redis_configured = configured_redis_url(config, env)
    if "valkey" in urls and config.bus.type == "redis" and not redis_configured:
        use["bus.redis.uri"] = urls["valkey"]
    if "postgres" in urls and not configured_database_url(config, env):
        use["store.dsn"] = urls["postgres"]
    if not use:
        return config
    console.note(
        f"mdp: using the servers of `mdp up` in {servers.state_dir}: "
        + ", ".join(
            f"{'redis' if key == 'bus.redis.uri' else 'postgres'}={redact_url(url)}"
            for key, url in use.items()
        )
    )
    return override_config(config, use, source=f"{path} + the servers of `mdp up`")


def duration_ms(text: str, flag: str, *, min_ms: int = 1) -> int:
    """The one parser of duration flags (``--duration 30s``, ``--last 6h``, ``--interval 1m``):
    milliseconds (:func:`~market_data_core.timeutil.parse_duration_ms`), at least ``min_ms``.
    Raises ``ConfigError`` naming the flag (one line, exit 2)."""
    try:
        ms = parse_duration_ms(text)
    except ValueError as exc:
        raise ConfigError(str(exc), source=flag) from None
    if ms < min_ms:
        least = "must be positive" if min_ms == 1 else f"must be at least {min_ms} ms"
        raise ConfigError(f"{least}, got {text}", source=flag)
    return ms


def parse_window(text: str, flag: str = "--window") -> int:
    """``--window 2s`` -> 2000 (ms), 0.5 s to 5 s; ConfigError otherwise."""
    ms = duration_ms(text, flag, min_ms=0)
    if not 500 <= ms <= 5000:
        raise ConfigError(f"window must be between 500ms and 5s, got {text}", source=flag)
    return ms


def parse_when(text: str | None, flag: str) -> datetime | None:
    """``--from``/``--to``: ``2020-02-22``, ``2020-02-22T01:00``, ``2020-02-22 01:00:00Z`` ...
    (naive = UTC); ``None`` stays ``None``. Raises ``ConfigError`` naming the flag."""
    if text is None:
        return None
    try:
        ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"expected a date or ISO-8601 time like 2020-02-22 or 2020-02-22T01:00Z, got {text!r}",
            source=flag,
        ) from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def run_async(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run ``main(stop)`` on a fresh event loop; SIGINT/SIGTERM set ``stop`` (a second one
    cancels). Loops check ``stop`` at batch boundaries, then drain, flush, ack and close.
    Garbage collection is paced by time while ``main`` runs (``market_data_pipeline.gc_pacing``)."""

    async def runner() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            stop.set()
            if hits > 1 and task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal)
        try:
            async with paced_gc():
                return await main(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)

    return asyncio.run(runner())


MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        max=65535,
        metavar="PORT",
        help="Serve /metrics and /healthz here (overrides telemetry.metrics_port; 0 = any free).",
    ),
]


def dead_letters_text(total: int, reasons: Mapping[str, int]) -> str:
    """``"3 dead letters (late 1, max_deliveries 2)"``: a summary's dead-letter count with its
    reasons, so it reads like ``mdp stream dlq list`` grouped by reason."""
    noun = "dead letter" if total == 1 else "dead letters"
    parts = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items()) if n)
    return f"{total} {noun}" + (f" ({parts})" if parts else "")


@contextlib.contextmanager
def stage_services(
    config: AppConfig, urls: ServerUrls, stage: str, *, warn_embedded: bool = True
) -> Iterator[MetricsServer]:
    """Logging (at ``mdp -q|-v|--log-level``, else ``telemetry.log_level``), the metrics
    namespace and symbol-label policy, the metrics endpoint, and a warning when the bus is
    embedded (its data dies with this command). Where the metrics and servers are is logged
    at DEBUG with text logs (``mdp -v``), at INFO with JSON logs (a service's log collector)."""
    level = console.log_level(config.telemetry.log_level)
    json_logs = config.telemetry.log_format == "json"
    setup_logging(level, json=json_logs)
    console.tame_libraries()
    if level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)  # one line per migration step
    log = logging.getLogger(f"mdp.{stage}")
    if warn_embedded and "valkey" in urls.embedded:
        log.warning(
            "%s is using an embedded Redis that stops with this command; to share a bus "
            "between commands start `mdp up` or set REDIS_URI (or use `mdp run`)",
            stage,
        )
    telemetry.configure(config.telemetry)  # before any stage looks up a labelled series
    # raises ConfigError (one line, exit 2) when the port cannot be bound
    server = start_metrics_server(config.telemetry.metrics_host, config.telemetry.metrics_port)
    # a person at a terminal does not need it (-v shows it); a log collector reading JSON
    # lines of a service does: where its metrics and servers are
    log.log(
        logging.INFO if json_logs else logging.DEBUG,
        "%s: metrics on %s/metrics, servers: %s",
        stage,
        server.url,
        urls.describe(),
    )
    try:
        yield server
    finally:
        server.stop()


IdleOpt = Annotated[
    float,
    typer.Option(
        "--idle-s", min=0.1, metavar="SECONDS", help="With --drain: exit after this idle time."
    ),
]
ConsumerOpt = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Consumer name in the group (keep it across restarts to re-read its own pending "
        "entries first). Default: <stage>-<host>-<pid>.",
    ),
]


def consumer_name(given: str | None, stage: str) -> str:
    """``--consumer`` if given, else ``<stage>-<host>-<pid>`` (unique per live process)."""
    return given or f"{stage}-{socket.gethostname()}-{os.getpid()}"


def default_consumer_name(command: str) -> str:
    """``<command>-<host>``: the same for every run of ``command`` on this host, so a restart
    takes its pending entries back at once. A second live one on the host is refused by
    :func:`market_data_pipeline.consumer_lock.hold_consumers`."""
    return f"{command}-{socket.gethostname()}"
