"""Prometheus metrics of mdp: the seed's table (names, types, labels), plus a few that the
dashboards need. Label values are bounded (symbols come from config or data; reasons and
components are short fixed codes).

Also here: :func:`start_metrics_server` (``/metrics`` and ``/healthz`` on
``telemetry.metrics_host:metrics_port``, with health checks components register by name) and
:func:`setup_logging` (JSON-lines logs at ``telemetry.log_level``).

Note on names: prometheus-client exposes a Counter ``x`` as ``x_total`` and a Histogram ``x`` as
``x_bucket``/``x_sum``/``x_count``; PromQL in the dashboards uses the exposed names.
"""

from __future__ import annotations

import json as _json
import logging
import os
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from market_data_core.errors import ConfigError

__all__ = [
    "ERRORS",
    "EVENTS_CONSUMED",
    "EVENTS_INGESTED",
    "FEATURES_ACTIVE_WINDOWS",
    "FEATURES_UPDATE_DURATION",
    "HEALTH",
    "INFERENCE_EVAL_DURATION",
    "MICROBATCH_BATCH_SIZE",
    "MICROBATCH_FLUSH_ROWS",
    "MICROBATCH_FLUSH_TOTAL",
    "MICROBATCH_WINDOW_LATENCY",
    "RETRIES",
    "SIGNALS_EMITTED",
    "SIGNAL_FRESHNESS",
    "STORE_ROWS",
    "STORE_WRITE_DURATION",
    "STREAM_CONSUMER_LAG",
    "HealthCheck",
    "HealthRegistry",
    "Heartbeat",
    "JsonFormatter",
    "MetricsServer",
    "register_health_check",
    "setup_logging",
    "start_metrics_server",
    "unregister_health_check",
]

_log = logging.getLogger(__name__)

_MS_BUCKETS = (
    50,
    100,
    250,
    500,
    750,
    1000,
    1500,
    2000,
    2500,
    3000,
    4000,
    5000,
    7500,
    10_000,
    20_000,
    60_000,
)
_FAST_S = (
    0.00001,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

EVENTS_INGESTED = Counter(
    "stream_events_ingested",
    "Total events ingested (published to the bus)",
    ["bus", "topic", "provider"],
)
EVENTS_CONSUMED = Counter(
    "stream_events_consumed", "Total events consumed from the bus", ["topic", "group"]
)
STREAM_CONSUMER_LAG = Gauge(
    "stream_consumer_lag_ms", "Consumer lag in milliseconds", ["topic", "group", "consumer"]
)
MICROBATCH_FLUSH_TOTAL = Counter(
    "microbatch_flush", "Total micro-batch flushes", ["window_ms", "symbol"]
)
MICROBATCH_FLUSH_ROWS = Counter("microbatch_flush_rows", "Total rows flushed", ["window_ms"])
MICROBATCH_WINDOW_LATENCY = Histogram(
    "microbatch_window_latency_ms",
    "Window processing latency: window end to store commit (ms)",
    buckets=_MS_BUCKETS,
)
MICROBATCH_BATCH_SIZE = Histogram(
    "microbatch_batch_size",
    "Events per flush",
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10_000, 50_000),
)
STORE_WRITE_DURATION = Histogram(
    "store_write_duration_seconds",
    "Store write duration",
    ["table"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
STORE_ROWS = Counter("store_rows", "Rows written by the store, by outcome", ["table", "op"])
FEATURES_UPDATE_DURATION = Histogram(
    "features_update_duration_seconds",
    "Feature update duration",
    ["symbol", "window"],
    buckets=_FAST_S,
)
FEATURES_ACTIVE_WINDOWS = Gauge(
    "features_active_windows", "Rolling windows currently held in memory"
)
INFERENCE_EVAL_DURATION = Histogram(
    "inference_eval_duration_seconds",
    "Inference evaluation duration",
    ["adapter"],
    buckets=_FAST_S,
)
SIGNALS_EMITTED = Counter("signals_emitted", "Total signals emitted", ["name", "adapter"])
SIGNAL_FRESHNESS = Histogram(
    "signal_event_freshness_seconds",
    "Event-time freshness at signal emit: now - src_ts of the bar that produced it",
    ["adapter"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 3600, 86_400),
)
ERRORS = Counter("errors", "Total errors", ["component", "reason"])
RETRIES = Counter("retries", "Retries after transient failures", ["component"])


HealthCheck = Callable[[], bool]
"""A component's liveness probe: returns True when healthy; False or an exception is a failure.
It runs on the metrics server's thread, so it must be cheap and thread-safe (read a timestamp or
a flag the component updates; never await or do I/O)."""


class HealthRegistry:
    """Named health checks that ``/healthz`` evaluates on each request (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, HealthCheck] = {}

    def register(self, name: str, check: HealthCheck) -> None:
        """Add or replace the check called ``name``."""
        with self._lock:
            self._checks[name] = check

    def unregister(self, name: str) -> None:
        """Remove the check called ``name`` (no error when absent)."""
        with self._lock:
            self._checks.pop(name, None)

    def evaluate(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Run every check; a check that raises counts as failed and reports the exception."""
        with self._lock:
            checks = list(self._checks.items())
        results: dict[str, dict[str, Any]] = {}
        healthy = True
        for name, check in checks:
            try:
                ok = bool(check())
                results[name] = {"ok": ok}
            except Exception as exc:  # a broken probe is an unhealthy component, not a 500
                ok = False
                results[name] = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
            healthy = healthy and ok
        return healthy, results


class Heartbeat:
    """A loop's liveness as a :data:`HealthCheck`: the loop calls :meth:`beat` once per
    iteration (after each poll, even an empty one); the check passes while the last beat is
    younger than ``max_age_s``. Register it with ``register_health_check(name, heartbeat)``.
    A loop blocked on a dead server or stuck in a flush then turns ``/healthz`` into a 503."""

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self.max_age_s = max_age_s
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        """Record that the loop made progress (one float store; safe from any thread)."""
        self._last = self._clock()

    @property
    def age_s(self) -> float:
        return self._clock() - self._last

    def __call__(self) -> bool:
        return self.age_s <= self.max_age_s


HEALTH = HealthRegistry()
"""The process-wide registry ``start_metrics_server`` uses unless given another."""


def register_health_check(name: str, check: HealthCheck) -> None:
    """Register ``check`` under ``name`` in the process-wide registry served on ``/healthz``."""
    HEALTH.register(name, check)


def unregister_health_check(name: str) -> None:
    """Remove the process-wide check ``name`` (call it when the component stops)."""
    HEALTH.unregister(name)


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsHTTPServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = generate_latest(self.server.registry)
            self._send(200, CONTENT_TYPE_LATEST, body)
        elif path == "/healthz":
            healthy, checks = self.server.health.evaluate()
            payload = {
                "status": "ok" if healthy else "fail",
                "uptime_s": round(time.monotonic() - self.server.started_monotonic, 3),
                "pid": os.getpid(),
                "checks": checks,
            }
            self._send(
                200 if healthy else 503, "application/json", _json.dumps(payload).encode("utf-8")
            )
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # A scrape every second would drown the structured logs; access logs go to DEBUG.
        _log.debug("metrics http: " + format, *args)


class _MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], registry: CollectorRegistry, health: HealthRegistry
    ) -> None:
        self.registry = registry
        self.health = health
        self.started_monotonic = time.monotonic()
        # socketserver reads address_family when it creates the socket in __init__.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN (only used for CGI): a DNS query that
        # can stall start-up for seconds in a container without a resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


@dataclass
class MetricsServer:
    """A running ``/metrics`` + ``/healthz`` endpoint; :meth:`stop` shuts it down."""

    host: str
    port: int
    _server: _MetricsHTTPServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout_s)
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_metrics_server(
    host: str = "127.0.0.1",
    port: int = 9101,
    *,
    registry: CollectorRegistry = REGISTRY,
    health: HealthRegistry = HEALTH,
) -> MetricsServer:
    """Serve ``/metrics`` (Prometheus text format) and ``/healthz`` on ``host:port`` from a
    daemon thread, and return a handle whose ``port`` is the bound one (``port=0`` picks a free
    port). ``/healthz`` answers 200 ``{"status": "ok", ...}`` when every registered check passes,
    503 ``{"status": "fail", ...}`` otherwise.

    Raises :class:`ConfigError` (key ``telemetry.metrics_port``) when the address cannot be bound,
    e.g. the port is taken by another process: each process needs its own port, or 0.
    """
    try:
        server = _MetricsHTTPServer((host, port), registry, health)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
            "choose another port, or 0 for a free one",
            key_path="telemetry.metrics_port",
        ) from exc
    bound_port = int(server.server_address[1])
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.2},
        name=f"mdp-metrics-{bound_port}",
        daemon=True,
    )
    thread.start()
    _log.info(
        "metrics server listening",
        extra={"host": host, "port": bound_port, "paths": ["/metrics", "/healthz"]},
    )
    return MetricsServer(host=host, port=bound_port, _server=server, _thread=thread)


_RESERVED_LOG_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC ISO-8601), ``level``, ``logger``, ``msg``, every
    ``extra={...}`` field, and ``exc`` with the traceback when one is attached. Values that
    are not JSON-serialisable are written with ``str()``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED_LOG_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", json: bool = True) -> None:
    """Configure the root logger once for the process: JSON lines (``json=True``) or a
    human-readable line, on stderr, at ``level`` (``telemetry.log_level``). Replaces handlers
    installed earlier, so calling it again changes level/format instead of duplicating lines.

    Raises :class:`ConfigError` for an unknown level name.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"unknown log level {level!r}", key_path="telemetry.log_level")
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
