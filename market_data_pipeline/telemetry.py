"""Prometheus metrics of mdp, and the conventions every mdp metric follows.

**The contract.** The seed's table (SPEC §11) keeps its names, types and labels: with the
default config ``/metrics`` serves ``stream_events_ingested_total{bus,topic,provider}``,
``stream_consumer_lag_ms``, ``microbatch_window_latency_ms``, ... exactly as the seed wrote
them, ``_ms`` units included. Everything this module adds beyond the table follows Prometheus'
conventions (https://prometheus.io/docs/practices/naming/): base units in the name
(``_seconds``, ``_bytes``), counters end in ``_total`` as exposed, and the HELP text ends with
the unit in parentheses, e.g. ``(seconds)`` or ``(events)`` for a count of things.
``promtool check metrics`` on a real scrape flags only the seed's two ``_ms`` names.

**Adding a metric.** Declare it here with :func:`_counter`, :func:`_gauge` or
:func:`_histogram` (never ``prometheus_client.Counter(...)`` directly): that puts it in mdp's
registry, so it is exposed under ``telemetry.namespace``, and a metric with a ``symbol`` label
gets that label bounded by ``telemetry.symbol_labels`` (see :class:`SymbolLabels`). Every other
label must take values from a set fixed by config or code (a table, an adapter, a reason).
A counter that only moves when something goes wrong must exist at 0 from start-up, or
``increase()``/``rate()`` miss its first increment: errors go to :data:`ERRORS` with a
(component, reason) listed in :data:`ERROR_REASONS`, and the component calls
:func:`init_error_series` when it starts.

**Names at exposition.** prometheus-client exposes a Counter ``x`` as ``x_total`` and a
Histogram ``x`` as ``x_bucket``/``x_sum``/``x_count``; PromQL in the dashboards uses the
exposed names. With ``telemetry.namespace: mdp`` every mdp metric is exposed as ``mdp_<name>``
(``mdp_errors_total``); the client library's own ``process_*``/``python_*`` metrics keep theirs.
The ``_created`` series prometheus-client adds to counters and histograms are not exposed: the
text format gives Prometheus no use for them, and they were one series in twenty.

Also here: :func:`start_metrics_server` (``/metrics`` and ``/healthz`` on
``telemetry.metrics_host:metrics_port``, with health checks components register by name) and
:func:`setup_logging` (JSON-lines logs at ``telemetry.log_level``).
"""

from __future__ import annotations

import json as _json
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from market_data_core.config import TelemetryConfig
from market_data_core.errors import ConfigError

__all__ = [
    "ERRORS",
    "ERROR_REASONS",
    "EVENTS_CONSUMED",
    "EVENTS_INGESTED",
    "FEATURES_ACTIVE_WINDOWS",
    "FEATURES_UPDATE_DURATION",
    "HEALTH",
    "INFERENCE_EVAL_DURATION",
    "MICROBATCH_BATCH_SIZE",
    "MICROBATCH_FLUSH_ROWS",
    "MICROBATCH_FLUSH_TOTAL",
    "MICROBATCH_WINDOW",
    "MICROBATCH_WINDOW_LATENCY",
    "OTHER_SYMBOL",
    "RETRIES",
    "RETRYING_COMPONENTS",
    "SEED_MS_METRICS",
    "SIGNALS_EMITTED",
    "SIGNALS_RETRACTED",
    "SIGNAL_FRESHNESS",
    "STORE_ROWS",
    "STORE_WRITE_DURATION",
    "STREAM_CONSUMER_LAG",
    "HealthCheck",
    "HealthRegistry",
    "Heartbeat",
    "JsonFormatter",
    "MetricsServer",
    "SymbolLabels",
    "configure",
    "init_error_series",
    "metric_prefix",
    "register_health_check",
    "setup_logging",
    "start_metrics_server",
    "symbol_label",
    "unregister_health_check",
]

_log = logging.getLogger(__name__)

OTHER_SYMBOL: Final = "__other__"
"""The ``symbol`` label value of every symbol without series of its own. It cannot be a real
symbol: symbols start with a letter, a digit or ``^``."""

SEED_MS_METRICS: Final = ("stream_consumer_lag_ms", "microbatch_window_latency_ms")
"""The seed's metrics whose unit is not a base unit; kept as the seed named them (the only
names ``promtool check metrics`` reports)."""


class SymbolLabels:
    """Which symbols get their own value of a ``symbol`` label (``telemetry.symbol_labels``).

    ``mode="all"``: every symbol. ``mode="none"``: none; every symbol is counted under
    :data:`OTHER_SYMBOL`. ``mode="first_n"``: the symbols in ``keep``, plus the first ``n``
    other symbols seen, in order of arrival; the rest under :data:`OTHER_SYMBOL`. A slot is
    never taken back, so a symbol's series does not move mid-run (a busier symbol arriving
    later does not displace one already labelled: "first", not "top"). Thread-safe.
    """

    def __init__(
        self,
        mode: Literal["all", "none", "first_n"] = "first_n",
        n: int = 20,
        keep: Iterable[str] = (),
    ) -> None:
        if n < 0:
            raise ValueError("n must be >= 0")
        self.mode = mode
        self.n = n
        self.keep = frozenset(keep)
        self._slots: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: TelemetryConfig) -> SymbolLabels:
        return cls(config.symbol_labels, config.symbol_labels_n, config.symbol_labels_keep)

    def __call__(self, symbol: str) -> str:
        """The label value for ``symbol``: itself or :data:`OTHER_SYMBOL`."""
        if self.mode == "all" or symbol in self.keep or symbol in self._slots:
            return symbol
        if self.mode == "none":
            return OTHER_SYMBOL
        with self._lock:
            if symbol in self._slots or len(self._slots) < self.n:
                self._slots.add(symbol)
                return symbol
        return OTHER_SYMBOL

    @property
    def labelled(self) -> frozenset[str]:
        """The symbols given a first_n slot so far (``keep`` not included)."""
        with self._lock:
            return frozenset(self._slots)


_symbol_labels = SymbolLabels.from_config(TelemetryConfig())


def symbol_label(symbol: str) -> str:
    """The ``symbol`` label value this process uses for ``symbol`` (see :class:`SymbolLabels`).
    Metrics declared here apply it themselves; this is for code that shows the same bound."""
    return _symbol_labels(symbol)


_M = TypeVar("_M", bound=MetricWrapperBase)


class _SymbolBounded(MetricWrapperBase):
    """Maps the value of the ``symbol`` label through the process's :class:`SymbolLabels`
    whenever a child is looked up, whatever the call site passes."""

    def labels(self: _M, *labelvalues: object, **labelkwargs: object) -> _M:
        if "symbol" in labelkwargs:
            labelkwargs["symbol"] = _symbol_labels(str(labelkwargs["symbol"]))
        elif labelvalues:
            values = list(labelvalues)
            i = list(self._labelnames).index("symbol")
            if i < len(values):
                values[i] = _symbol_labels(str(values[i]))
            labelvalues = tuple(values)
        return super().labels(*labelvalues, **labelkwargs)


class _SymbolCounter(_SymbolBounded, Counter):
    pass


class _SymbolHistogram(_SymbolBounded, Histogram):
    pass


class _SymbolGauge(_SymbolBounded, Gauge):
    pass


_MDP_REGISTRY = CollectorRegistry(auto_describe=True)
"""Every mdp metric under its own (seed) name; exposed through :class:`_Exposition`."""


def _counter(name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
    cls = _SymbolCounter if "symbol" in labelnames else Counter
    return cls(name, documentation, labelnames, registry=_MDP_REGISTRY)


def _gauge(name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
    cls = _SymbolGauge if "symbol" in labelnames else Gauge
    return cls(name, documentation, labelnames, registry=_MDP_REGISTRY)


def _histogram(
    name: str, documentation: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]
) -> Histogram:
    cls = _SymbolHistogram if "symbol" in labelnames else Histogram
    return cls(name, documentation, labelnames, registry=_MDP_REGISTRY, buckets=buckets)


class _Exposition:
    """A collector over mdp's registry that prefixes every family and sample name with the
    configured namespace and leaves out the ``_created`` samples."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source
        self.prefix = ""

    def collect(self) -> Iterable[Metric]:
        prefix = self.prefix
        for family in self._source.collect():
            created = family.name + "_created"
            out = Metric(prefix + family.name, family.documentation, family.type, family.unit)
            out.samples = [
                s._replace(name=prefix + s.name) for s in family.samples if s.name != created
            ]
            yield out


_EXPOSITION = _Exposition(_MDP_REGISTRY)


def metric_prefix() -> str:
    """What this process puts before every mdp metric name: ``""`` or ``"<namespace>_"``."""
    return _EXPOSITION.prefix


def configure(config: TelemetryConfig) -> None:
    """Apply ``telemetry.namespace`` and ``telemetry.symbol_labels`` to this process.

    Call it once at start-up, before a stage looks up a labelled child (``stage_services``
    does, for every command): children already looked up keep the symbol value they got.
    """
    global _symbol_labels
    _EXPOSITION.prefix = f"{config.namespace}_" if config.namespace else ""
    _symbol_labels = SymbolLabels.from_config(config)


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

# The seed's table (names, types and labels are the contract).
EVENTS_INGESTED = _counter(
    "stream_events_ingested",
    "Events published to the bus (events)",
    ["bus", "topic", "provider"],
)
STREAM_CONSUMER_LAG = _gauge(
    "stream_consumer_lag_ms",
    "Consumer lag: wall time minus the newest ingest_ts read (events topic) or the end of the "
    "newest bar read (bars topic); 0 while idle (milliseconds)",
    ["topic", "group", "consumer"],
)
MICROBATCH_FLUSH_TOTAL = _counter(
    "microbatch_flush",
    "Micro-batch flushes that wrote ticks of a symbol; symbol bounded by "
    "telemetry.symbol_labels (flushes)",
    ["window_ms", "symbol"],
)
MICROBATCH_FLUSH_ROWS = _counter(
    "microbatch_flush_rows",
    "Rows written by micro-batch flushes: ticks inserted plus bars written (rows)",
    ["window_ms"],
)
MICROBATCH_WINDOW_LATENCY = _histogram(
    "microbatch_window_latency_ms",
    "Window processing latency: window end to the store commit of its bar (milliseconds)",
    buckets=_MS_BUCKETS,
)
STORE_WRITE_DURATION = _histogram(
    "store_write_duration_seconds",
    "Store write duration (seconds)",
    ["table"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
FEATURES_UPDATE_DURATION = _histogram(
    "features_update_duration_seconds",
    "Feature update duration per bar; symbol bounded by telemetry.symbol_labels (seconds)",
    ["symbol", "window"],
    buckets=_FAST_S,
)
INFERENCE_EVAL_DURATION = _histogram(
    "inference_eval_duration_seconds",
    "Inference evaluation duration per bar (seconds)",
    ["adapter"],
    buckets=_FAST_S,
)
SIGNALS_EMITTED = _counter(
    "signals_emitted", "Signals published to the signals topic (signals)", ["name", "adapter"]
)
SIGNALS_RETRACTED = _counter(
    "signals_retracted",
    "Signals retracted because a re-scored (corrected) bar no longer produces them; each "
    "retraction is also published to the signals topic (signals)",
    ["name", "adapter"],
)
ERRORS = _counter(
    "errors",
    "Errors by component and reason; every pair in ERROR_REASONS exists at 0 from the start "
    "of the component that counts it (errors)",
    ["component", "reason"],
)

# Beyond the seed's table (Prometheus conventions).
EVENTS_CONSUMED = _counter(
    "stream_events_consumed",
    "Bus entries' events read by a consumer group (events)",
    ["topic", "group"],
)
MICROBATCH_BATCH_SIZE = _histogram(
    "microbatch_batch_size",
    "Ticks per store write of a micro-batch flush (events)",
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10_000, 50_000),
)
MICROBATCH_WINDOW = _gauge(
    "microbatch_window_seconds",
    "Configured micro-batch window (micro_batch.window_ms) of a micro-batcher's consumer group; "
    "alert thresholds scale with it (seconds)",
    ["group"],
)
STORE_ROWS = _counter("store_rows", "Rows written by the store, by outcome (rows)", ["table", "op"])
FEATURES_ACTIVE_WINDOWS = _gauge(
    "features_active_windows", "Rolling feature windows held in memory (windows)"
)
SIGNAL_FRESHNESS = _histogram(
    "signal_event_freshness_seconds",
    "Event-time freshness at signal emit: now minus the end of the bar that produced it (seconds)",
    ["adapter"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 3600, 86_400),
)
RETRIES = _counter("retries", "Retries after transient failures (retries)", ["component"])

ERROR_REASONS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        # streaming/redis_bus.py, kafka_bus.py: entries lost to trimming; poison pills;
        # published entries a Redis Cluster failover lost, entries a publish trimmed before a
        # consumer group read them (redis_bus.py)
        "bus": ("trimmed", "trimmed_unread", "max_deliveries", "lost_writes"),
        # consumers/micro_batcher.py (dead-letter reasons: decode, validation, late)
        "microbatch": (
            "bus",
            "decode",
            "validation",
            "late",
            "store_unavailable",
            "store_error",
            "relay",
        ),
        # consumers/inference_consumer.py, and inference/adapters/sklearn.py (timeout,
        # predict_error, breaker_open)
        "inference": (
            "bus",
            "decode",
            "validation",
            "dead_letter",
            "store_unavailable",
            "store",
            "publish_signals",
            "ack",
            "timeout",
            "predict_error",
            "breaker_open",
        ),
        # producers/ibkr.py
        "ibkr": ("validation", "queue_full", "disconnect"),
        # producers/coinbase.py
        "coinbase": (
            "heartbeat_timeout",
            "disconnect",
            "validation",
            "parse",
            "sequence_gap",
            "feed_error",
        ),
        # producers/replay_run.py: bad dataset rows (producers/datasets.py RowError.reason)
        "replay": ("parse", "validation", "ambiguous_time", "nonexistent_time"),
    }
)
"""Every (component, reason) mdp counts in :data:`ERRORS`, by component. A test reads every
``ERRORS.labels(...)`` call in the package and fails on a pair missing here."""

RETRYING_COMPONENTS: Final = frozenset({"microbatch", "inference", "publisher", "coinbase"})
"""The components that count :data:`RETRIES`."""


def init_error_series(*components: str) -> None:
    """Create ``errors_total{component,reason}`` for every reason of each component in
    :data:`ERROR_REASONS`, and ``retries_total{component}`` for those in
    :data:`RETRYING_COMPONENTS`, at 0 (idempotent; existing counts are kept).

    Why: a series that appears at its first error is born at 1, so ``increase()`` and
    ``rate()`` see no increase and dashboards and alerts miss it; a healthy pipeline would
    show "no data" instead of 0. Components call this when they start.

    Raises ValueError for a component that counts neither.
    """
    for component in components:
        if component not in ERROR_REASONS and component not in RETRYING_COMPONENTS:
            raise ValueError(f"unknown telemetry component {component!r}")
        for reason in ERROR_REASONS.get(component, ()):
            ERRORS.labels(component=component, reason=reason)
        if component in RETRYING_COMPONENTS:
            RETRIES.labels(component=component)


REGISTRY.register(_EXPOSITION)


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
    _log.debug(
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
    human-readable line (``<time> <LEVEL> <logger> <message>``), on stderr, at ``level``
    (``telemetry.log_level``). Lines go through the terminal console of
    :mod:`market_data_pipeline.ui.console`, so they never land inside a live progress line.
    Replaces handlers installed earlier, so calling it again changes level/format instead of
    duplicating lines.

    Raises :class:`ConfigError` for an unknown level name.
    """
    from market_data_pipeline.ui.console import ConsoleLogHandler

    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"unknown log level {level!r}", key_path="telemetry.log_level")
    formatter = (
        JsonFormatter()
        if json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    handler = ConsoleLogHandler(formatter, text=not json)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
