"""Prometheus metrics of mdp: the seed's table (names, types, labels), plus a few that the
dashboards need. Label values are bounded (symbols come from config or data; reasons and
components are short fixed codes).

Note on names: prometheus-client exposes a Counter ``x`` as ``x_total`` and a Histogram ``x`` as
``x_bucket``/``x_sum``/``x_count``; PromQL in the dashboards uses the exposed names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ERRORS",
    "EVENTS_CONSUMED",
    "EVENTS_INGESTED",
    "FEATURES_ACTIVE_WINDOWS",
    "FEATURES_UPDATE_DURATION",
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
]

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
