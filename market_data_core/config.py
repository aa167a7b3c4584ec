"""Configuration: ``configs/streaming.yaml`` in the seed's shape, validated once at the CLI edge.

Flow: YAML -> ``${VAR}`` / ``${VAR:-default}`` expansion on parsed string values -> pydantic
(``frozen=True``, ``extra="forbid"``) -> typed objects passed down. No module reads the
environment on its own: :func:`load_config` receives it.

File paths in a config (:data:`ConfigPath` fields: ``inference.adapters.rules.file``,
``inference.adapters.sklearn.model_path``, ``producers.replay.datasets_file``) that are relative
resolve against the folder of the config file (``base_dir``), never the working directory:
:func:`load_config` passes the file's folder, and the validated config holds absolute paths.
A config parsed from data without ``base_dir`` keeps them as written.

Every failure is a :class:`ConfigError` whose ``str()`` is one line naming the file, the key
path and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from market_data_core.errors import ConfigError
from market_data_core.redaction import SecretUrl, redact_url
from market_data_core.timeutil import format_duration_ms, parse_duration_ms

__all__ = [
    "DEFAULT_QUOTE_CARRY_MS",
    "AppConfig",
    "BusConfig",
    "ConfigPath",
    "EmptyIntervals",
    "FeatureKind",
    "FeaturePluginConfig",
    "FeatureWindowConfig",
    "FeaturesConfig",
    "InferenceConfig",
    "KafkaConfig",
    "MicroBatchConfig",
    "PackAs",
    "PluginAdapterConfig",
    "ProducersConfig",
    "RedisConfig",
    "RollupsConfig",
    "RulesAdapterConfig",
    "SklearnAdapterConfig",
    "StoreConfig",
    "SyntheticProducerConfig",
    "TelemetryConfig",
    "config_hash",
    "expand_env",
    "load_config",
    "override_config",
    "parse_config",
]


DEFAULT_QUOTE_CARRY_MS = 60_000
"""``micro_batch.quote_carry_ms`` unless configured: a book set more than a minute before a
window starts is not carried into it."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _none_if_empty(v: Any) -> Any:
    return None if v == "" else v


def _against_config_folder(value: str | None, info: ValidationInfo) -> str | None:
    """A relative path -> absolute, against ``base_dir`` of the validation context (the config
    file's folder); ``~`` is expanded. Empty, ``None`` and paths without a base stay as given."""
    if not value:
        return value
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if path.is_absolute() or base is None:
        return str(path)
    return str((Path(base) / path).resolve())


# A file named by a config: relative to the config file's folder (see the module docstring).
ConfigPath = Annotated[str, AfterValidator(_against_config_folder)]


class RedisConfig(_Model):
    """Redis Streams settings.

    ``uri`` unset -> the embedded server; ``rediss://`` and passwords are supported. It is a
    :class:`~market_data_core.redaction.SecretUrl`: ``repr``/``str``/JSON show it without its
    password; ``uri.get_secret_value()`` is the real URL.
    """

    uri: SecretUrl | None = None
    stream: str = "mdp.events"
    signals_stream: str = "mdp.signals"
    bars_stream: str = "mdp.bars"
    dlq_stream: str = "mdp.dlq"
    consumer_group: str = "mdp-consumers"
    lease_ttl_ms: int = Field(default=5000, ge=500)
    # a Redis Cluster (also implied by a redis+cluster:// or rediss+cluster:// URI)
    cluster: bool = False
    # WAIT for this many replicas after each publish (0: off); see the README's Redis Cluster
    wait_replicas: int = Field(default=0, ge=0, le=16)
    wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)

    _empty = field_validator("uri", mode="before")(_none_if_empty)

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: SecretUrl | None) -> SecretUrl | None:
        pattern = r"^(redis|rediss|unix|redis\+cluster|rediss\+cluster)://"
        if v is not None and not re.match(pattern, v.get_secret_value()):
            raise ValueError(
                "expected a redis://, rediss://, unix://, redis+cluster:// or rediss+cluster:// URL"
            )
        return v


class KafkaConfig(_Model):
    """Kafka settings (``pip install 'mdp-streaming[kafka]'``). ``bootstrap`` unset ->
    ``KAFKA_BOOTSTRAP``."""

    bootstrap: str | None = None
    topic: str = "mdp.events"
    signals_topic: str = "mdp.signals"
    bars_topic: str = "mdp.bars"
    dlq_topic: str = "mdp.dlq"
    group_id: str = "mdp-consumers"
    compression: Literal["auto", "none", "gzip", "lz4", "zstd", "snappy"] = "auto"
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"

    _empty = field_validator("bootstrap", mode="before")(_none_if_empty)


class BusConfig(_Model):
    """The log every stage reads and writes; ``type`` selects the backend."""

    type: Literal["redis", "kafka"] = "redis"
    codec: Literal["msgpack", "json"] = "msgpack"
    partitions: int = Field(default=1, ge=1, le=1024)
    maxlen: int = Field(default=1_000_000, ge=1000)
    claim_idle_ms: int = Field(default=30_000, ge=100)
    max_deliveries: int = Field(default=5, ge=1)
    block_ms: int = Field(default=200, ge=1, le=60_000)
    redis: RedisConfig = RedisConfig()
    kafka: KafkaConfig = KafkaConfig()

    @property
    def events_topic(self) -> str:
        return self.redis.stream if self.type == "redis" else self.kafka.topic

    @property
    def signals_topic(self) -> str:
        return self.redis.signals_stream if self.type == "redis" else self.kafka.signals_topic

    @property
    def bars_topic(self) -> str:
        return self.redis.bars_stream if self.type == "redis" else self.kafka.bars_topic

    @property
    def dlq_topic(self) -> str:
        return self.redis.dlq_stream if self.type == "redis" else self.kafka.dlq_topic

    @property
    def group(self) -> str:
        return self.redis.consumer_group if self.type == "redis" else self.kafka.group_id


class SyntheticProducerConfig(_Model):
    """Geometric Brownian motion per symbol."""

    enabled: bool = True
    provider: str = "synthetic"
    symbols: list[str] = ["SPY", "AAPL", "MSFT"]
    tick_rate: float = Field(default=1.0, gt=0)
    price_volatility: float = Field(default=0.02, ge=0)
    start_price: float = Field(default=100.0, gt=0)
    kind: Literal["tick", "quote", "bar"] = "tick"
    # with kind tick: this share of the events are quotes (top of book around the same
    # price path), the rest trades
    quote_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    max_msgs_per_s: float | None = Field(default=None, gt=0)


class ReplayProducerConfig(_Model):
    enabled: bool = True
    # your dataset registry; names not found in it are looked up in the one shipped with mdp.
    # None: only the shipped registry.
    datasets_file: ConfigPath | None = None
    max_msgs_per_s: float | None = Field(default=None, gt=0)
    # a replay exits 1 when more than this share of the rows it read was rejected, and always
    # when every row was (1.0, the default: only then)
    max_rejected_share: float = Field(default=1.0, ge=0.0, le=1.0)

    _empty = field_validator("datasets_file", mode="before")(_none_if_empty)


class CoinbaseProducerConfig(_Model):
    enabled: bool = False
    url: str = "wss://ws-feed.exchange.coinbase.com"
    product_ids: list[str] = ["BTC-USD", "ETH-USD"]
    channels: list[Literal["matches", "ticker"]] = ["matches", "ticker"]
    max_msgs_per_s: float | None = Field(default=None, gt=0)


class IbkrProducerConfig(_Model):
    enabled: bool = False
    provider: str = "ibkr_primary"
    host: str = "127.0.0.1"
    port: int = 7497
    client_id: int = 17
    symbols: list[str] = ["SPY"]
    max_msgs_per_s: float | None = Field(default=50.0, gt=0)


PackAs = Literal["rows", "columns"]


class ProducersConfig(_Model):
    synthetic: SyntheticProducerConfig = SyntheticProducerConfig()
    replay: ReplayProducerConfig = ReplayProducerConfig()
    coinbase: CoinbaseProducerConfig = CoinbaseProducerConfig()
    ibkr: IbkrProducerConfig = IbkrProducerConfig()
    # events per publish call; None: 500 entries' worth (500 x pack_events, at most 100,000:
    # market_data_pipeline.producers.publisher.default_batch_size)
    publish_batch_size: int | None = Field(default=None, ge=1, le=100_000)
    buffer_max_events: int = Field(default=100_000, ge=100)
    pack_events: int = Field(default=1, ge=1, le=10_000)
    # how a pack of events goes on the bus: an array of maps in bus.codec ("rows", what any
    # consumer reads), or a column block (market_data_core.columnar: a consumer decodes and
    # validates it with array operations; mdp consumers of issue 21 on read it). With
    # pack_events 1 an entry is one map either way (a block's fixed cost per event is higher).
    pack_as: PackAs = "rows"


EmptyIntervals = Literal["none", "flat"]


class RollupsConfig(_Model):
    """``micro_batch.rollups``: the coarser bar intervals built from the micro-bars.

    - ``intervals``: e.g. ``["1m", "5m", "1h", "1d"]``; each a multiple of the micro-batch
      window, at most ``1d``, and dividing a day (so every level nests in the day). Sorted and
      de-duplicated on validation. Each level is built from the coarsest lower level whose
      buckets nest in its own (the micro-bars at worst), exactly: see
      ``market_data_store.store_client``.
    - ``calendars``: a trading calendar (an ``exchange_calendars`` name such as ``XNYS``) ->
      the symbols that trade on it. The ``1d`` bars of those symbols are its sessions
      (``[open, close)``, early closes and daylight saving included) and the stretches between
      them (flagged ``in_session = false``); every rollup bar of them says whether it lies
      inside a session. Other symbols trade ``24/7``: UTC days.
    - ``empty_intervals``: ``none`` (an interval without a trade has no bar) or ``flat`` (a
      bar carrying the last close, ``v = 0``, ``trade_count = 0``, no vwap), the same at every
      level: a micro window with no trade gets one when it lies between two windows with
      trades (inside a session for a symbol with a calendar), and a rollup bucket of such
      windows only is flat.
    """

    intervals: list[str] = []
    calendars: dict[str, list[str]] = {}
    empty_intervals: EmptyIntervals = "none"

    @field_validator("intervals")
    @classmethod
    def _intervals_ok(cls, v: list[str]) -> list[str]:
        by_ms: dict[int, str] = {}
        for interval in v:
            ms = parse_duration_ms(interval)
            if ms <= 0 or ms > 86_400_000 or 86_400_000 % ms:
                raise ValueError(
                    f"rollup interval {interval!r} must divide a day (e.g. 1m, 5m, 15m, 1h, 4h, 1d)"
                )
            if ms in by_ms:
                raise ValueError(f"rollup intervals {by_ms[ms]!r} and {interval!r} are the same")
            by_ms[ms] = interval
        return [format_duration_ms(ms) for ms in sorted(by_ms)]

    @field_validator("calendars")
    @classmethod
    def _one_calendar_per_symbol(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[str, str] = {}
        for name, symbols in v.items():
            if name == "24/7":
                raise ValueError("24/7 is every symbol's calendar unless another is given")
            for symbol in symbols:
                if symbol in seen:
                    raise ValueError(
                        f"symbol {symbol!r} is on two calendars ({seen[symbol]}, {name})"
                    )
                seen[symbol] = name
        return v

    def calendar_of(self, symbol: str) -> str | None:
        """The symbol's calendar name, ``None`` for 24/7 (UTC days)."""
        for name, symbols in self.calendars.items():
            if symbol in symbols:
                return name
        return None


class MicroBatchConfig(_Model):
    """Tumbling event-time windows (0.5 s to 5 s) and when they close."""

    window_ms: int = Field(default=2000, ge=500, le=5000)
    max_batch_size: int = Field(default=5000, ge=1)
    allow_late_ms: int = Field(default=500, ge=0)
    flush_timeout_ms: int = Field(default=1000, ge=0)
    correction_horizon_ms: int = Field(default=300_000, ge=0)
    # after a poll that brought fewer than a quarter of the entries asked for, wait this long
    # before the next one: a worker that keeps up would otherwise poll a few hundred entries
    # at a time, each poll's fixed cost shared by few events (one event per entry: 10.5-11.3
    # µs/event in polls of 300 entries, 6.4-6.7 in polls of 5,000)
    poll_linger_ms: int = Field(default=50, ge=0, le=1000)
    # how old the last quote before a window may be for its book to be carried into the
    # window (the book at the window's start; a window with trades and no quote keeps it)
    quote_carry_ms: int = Field(default=DEFAULT_QUOTE_CARRY_MS, ge=0)
    # coarser bars built from the micro-bars in the same transaction (see RollupsConfig)
    rollups: RollupsConfig = RollupsConfig()

    @model_validator(mode="after")
    def _rollups_nest(self) -> MicroBatchConfig:
        for interval in self.rollups.intervals:
            ms = parse_duration_ms(interval)
            if ms <= self.window_ms or ms % self.window_ms:
                raise ValueError(
                    f"rollups.intervals: {interval} is not a multiple of the micro-batch window "
                    f"({format_duration_ms(self.window_ms)}) greater than it"
                )
        if self.rollups.calendars and 60_000 % self.window_ms:
            raise ValueError(
                "rollups.calendars need a micro-batch window that divides a minute (trading "
                f"sessions open and close on the minute); window_ms is {self.window_ms}"
            )
        return self


FeatureKind = Literal[
    "vwap",
    "returns",
    "volatility",
    "rsi",
    "momentum",
    "skewness",
    "kurtosis",
    "sma",
    "ema",
    "macd",
    "bollinger",
    "realized_vol",
    "spread_bps",
    "imbalance",
    "session_vwap",
]

# a session VWAP has no extent of its own: it runs from the session's open
_SESSION_FEATURE_NAMES = ("session_vwap", "svwap")


class FeatureWindowConfig(_Model):
    """A rolling window: ``horizon`` (a duration like ``60s``) or ``periods`` (a bar count).

    ``name`` is the feature name rules and models use. ``feature`` picks the indicator; when
    omitted it is inferred from the name's prefix (``vwap_1m`` -> vwap, ``ret_30s`` -> returns,
    ``vol_5m`` -> volatility; see ``market_data_pipeline.features``). ``num_std`` is the
    Bollinger band width; ``fast_periods``/``signal_periods`` the MACD's (``periods`` = slow).
    """

    name: str
    horizon: str | None = None
    periods: int | None = Field(default=None, ge=1)
    feature: FeatureKind | None = None
    num_std: float = Field(default=2.0, gt=0)
    fast_periods: int = Field(default=12, ge=1)
    signal_periods: int = Field(default=9, ge=1)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z][A-Za-z0-9_]{0,63}$", v):
            raise ValueError(
                f"feature name {v!r} must start with a letter and hold only letters, digits, '_'"
            )
        return v

    @field_validator("horizon")
    @classmethod
    def _horizon_ok(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration_ms(v)
        return v

    @model_validator(mode="after")
    def _one_of(self) -> FeatureWindowConfig:
        session = self.feature == "session_vwap" or (
            self.feature is None and self.name.lower().startswith(_SESSION_FEATURE_NAMES)
        )
        if session:
            if self.horizon is not None or self.periods is not None:
                raise ValueError(
                    "a session VWAP runs from the session's open: give neither 'horizon' nor "
                    "'periods'"
                )
            return self
        if (self.horizon is None) == (self.periods is None):
            raise ValueError("give exactly one of 'horizon' (e.g. '60s') or 'periods' (e.g. 14)")
        return self

    @property
    def horizon_ms(self) -> int | None:
        return None if self.horizon is None else parse_duration_ms(self.horizon)


_PLUGIN_REF = r"^([A-Za-z_][A-Za-z0-9_.\-]*|[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*)$"


class FeaturePluginConfig(_Model):
    """A user feature (:mod:`market_data_core.plugins`): ``plugin`` is an entry point of the
    ``mdp.features`` group or ``module:attribute``; ``name`` its feature name (every output is
    ``name`` or ``name_<suffix>``); ``params`` the factory's keyword arguments."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
    plugin: str = Field(pattern=_PLUGIN_REF)
    params: dict[str, Any] = {}


class FeaturesConfig(_Model):
    windows: list[FeatureWindowConfig] = [
        FeatureWindowConfig(name="vwap_1m", horizon="60s"),
        FeatureWindowConfig(name="ret_30s", horizon="30s"),
        FeatureWindowConfig(name="vol_5m", horizon="300s"),
    ]
    # Accepted for older configs, not read: features start at each series' first bar, and a
    # restarted inference engine resumes from a checkpoint of that history (issue 14).
    warmup_bars: int = Field(default=500, ge=0)
    # The bar interval features run on (bars of other intervals on mdp.bars are skipped);
    # unset -> the micro-batch window (e.g. "2s").
    interval: str | None = None
    plugins: list[FeaturePluginConfig] = []

    @field_validator("interval")
    @classmethod
    def _interval_ok(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration_ms(v)
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> FeaturesConfig:
        names = [w.name for w in self.windows] + [p.name for p in self.plugins]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate feature names: {', '.join(dupes)}")
        return self


class RulesAdapterConfig(_Model):
    """``file``: the rules file; ``None`` (unset) -> the rules shipped with mdp."""

    enabled: bool = True
    file: ConfigPath | None = None

    _empty = field_validator("file", mode="before")(_none_if_empty)


class SklearnAdapterConfig(_Model):
    """``model_path`` (empty: no model) must hash to ``sha256``; see the sklearn adapter."""

    enabled: bool = False
    model_path: ConfigPath = ""
    sha256: str = ""
    timeout_ms: int = Field(default=200, ge=1)
    workers: int = Field(default=1, ge=1)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    signal_name: str = "model_signal"
    threshold: float = 0.5


class PluginAdapterConfig(_Model):
    """A user strategy (:mod:`market_data_core.plugins`): ``plugin`` is an entry point of the
    ``mdp.adapters`` group or ``module:attribute``; ``name`` is the adapter's name in its
    signals (``Signal.adapter``) and consumer group; ``params`` the factory's keyword
    arguments. ``enabled``: the default adapter of ``mdp run`` and the Python API
    (``mdp stream infer --adapter plugin`` chooses it explicitly)."""

    enabled: bool = False
    name: str = Field(default="plugin", pattern=r"^[a-z][a-z0-9_\-]{0,31}$")
    plugin: str = ""
    params: dict[str, Any] = {}

    @model_validator(mode="after")
    def _named(self) -> PluginAdapterConfig:
        if self.enabled and not self.plugin:
            raise ValueError("plugin: give an entry point name or module:attribute")
        if self.plugin and not re.match(_PLUGIN_REF, self.plugin):
            raise ValueError(f"plugin {self.plugin!r} is not an entry point name or module:attr")
        if self.name in ("rules", "sklearn"):
            raise ValueError(f"name {self.name!r} is a built-in adapter's")
        return self


class InferenceAdaptersConfig(_Model):
    rules: RulesAdapterConfig = RulesAdapterConfig()
    sklearn: SklearnAdapterConfig = SklearnAdapterConfig()
    plugin: PluginAdapterConfig = PluginAdapterConfig()


class InferenceConfig(_Model):
    adapters: InferenceAdaptersConfig = InferenceAdaptersConfig()


class StoreConfig(_Model):
    """PostgreSQL/TimescaleDB. ``dsn`` unset -> ``DATABASE_URL`` -> the embedded server.

    ``dsn`` is a :class:`~market_data_core.redaction.SecretUrl` (redacted in ``repr``/``str``/
    JSON; ``dsn.get_secret_value()`` is the real DSN)."""

    dsn: SecretUrl | None = None
    pool_min: int = Field(default=1, ge=1)
    pool_max: int = Field(default=4, ge=1)
    partitioning: Literal["auto", "timescale", "native"] = "auto"
    compress_after: str = "7d"
    # how often a running job updates its job_runs row; silent for 3 intervals -> abandoned
    heartbeat_interval_ms: int = Field(default=10_000, ge=100, le=3_600_000)
    # Relayed bar changes are kept this long: an inference checkpoint older than the changes
    # pruned since cannot be validated, and the series is then rebuilt from its first bar.
    changes_retention: str = "1d"

    _empty = field_validator("dsn", mode="before")(_none_if_empty)

    @field_validator("changes_retention")
    @classmethod
    def _retention_ok(cls, v: str) -> str:
        if parse_duration_ms(v) <= 0:
            raise ValueError("must be a positive duration")
        return v

    @field_validator("dsn")
    @classmethod
    def _scheme(cls, v: SecretUrl | None) -> SecretUrl | None:
        if v is not None and not re.match(r"^postgres(ql)?://", v.get_secret_value()):
            raise ValueError("expected a postgresql:// DSN")
        return v


class TelemetryConfig(_Model):
    """``/metrics`` + ``/healthz`` address (port 0 = any free port), metric naming and
    cardinality, and process logging.

    - ``namespace``: a prefix for every mdp metric, for a Prometheus shared with other
      exporters (``mdp`` -> ``mdp_errors_total``); empty (the default) keeps the seed's names.
    - ``symbol_labels``: which symbols get their own value of a ``symbol`` label (the seed's
      ``microbatch_flush_total`` and ``features_update_duration_seconds``): ``all``, ``none``
      (every symbol is counted under ``__other__``), or ``first_n`` (the symbols in
      ``symbol_labels_keep`` plus the first ``symbol_labels_n`` other symbols a process sees;
      the rest under ``__other__``). A slot, once given, is kept for the life of the process,
      so a symbol's series never changes name mid-run.
    - ``log_format: json`` writes one JSON object per line (for log shippers), ``text`` a
      human-readable line.
    """

    metrics_port: int = Field(default=9101, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    namespace: str = ""
    symbol_labels: Literal["all", "none", "first_n"] = "first_n"
    symbol_labels_n: int = Field(default=20, ge=0)
    symbol_labels_keep: tuple[str, ...] = ()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("namespace")
    @classmethod
    def _metric_prefix(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?", v):
            raise ValueError(
                "expected a Prometheus name prefix: a letter, then letters, digits or _, not "
                "ending in _ (e.g. mdp -> mdp_errors_total), or empty for the seed's names"
            )
        return v

    @model_validator(mode="after")
    def _keep_needs_first_n(self) -> TelemetryConfig:
        if self.symbol_labels_keep and self.symbol_labels != "first_n":
            raise ValueError(
                "symbol_labels_keep only applies to symbol_labels: first_n "
                f"(symbol_labels is {self.symbol_labels!r})"
            )
        return self


class AppConfig(_Model):
    """The whole of ``configs/streaming.yaml``."""

    version: Literal[1] = 1
    bus: BusConfig = BusConfig()
    producers: ProducersConfig = ProducersConfig()
    micro_batch: MicroBatchConfig = MicroBatchConfig()
    features: FeaturesConfig = FeaturesConfig()
    inference: InferenceConfig = InferenceConfig()
    store: StoreConfig = StoreConfig()
    telemetry: TelemetryConfig = TelemetryConfig()


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def expand_env(value: Any, env: Mapping[str, str], path: str = "", source: str = "") -> Any:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in every string value of parsed YAML.

    ``${VAR}`` with VAR unset is a ConfigError naming the key path. Keys are not expanded.
    """
    if isinstance(value, dict):
        return {
            k: expand_env(v, env, f"{path}.{k}" if path else str(k), source)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [expand_env(v, env, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable {name} is not set and ${{{name}}} has no default "
            f"(write ${{{name}:-default}})",
            source=source or None,
            key_path=path or None,
        )

    return _VAR.sub(sub, value)


def _pydantic_error_line(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in err and err["type"] not in ("missing",):
        value = err["input"]
        shown = repr(redact_url(value) if isinstance(value, str) else value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg = f"{msg} (got {shown})"
    more = len(exc.errors()) - 1
    if more:
        msg += f" (+{more} more error{'s' if more > 1 else ''})"
    return loc, msg


def parse_config(
    data: Any,
    *,
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
    base_dir: str | Path | None = None,
) -> AppConfig:
    """Validate already-parsed YAML (a mapping) into an :class:`AppConfig`.

    ``base_dir``: the folder relative file paths in it resolve against (the config file's);
    ``None`` leaves them as written."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping at the top level, got {type(data).__name__}", source=source
        )
    expanded = expand_env(data, env or {}, source=source)
    try:
        context = {"base_dir": None if base_dir is None else Path(base_dir).absolute()}
        return AppConfig.model_validate(expanded, context=context)
    except ValidationError as exc:
        loc, msg = _pydantic_error_line(exc)
        raise ConfigError(msg, source=source, key_path=loc or None) from None


def override_config(
    config: AppConfig, overrides: Mapping[str, Any], *, source: str = "<overrides>"
) -> AppConfig:
    """``config`` with dotted keys replaced (``{"micro_batch.window_ms": 1000}``), validated
    again as a whole. Raises :class:`ConfigError` naming ``source`` and the key."""
    data = config.model_dump()
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError("no such section", source=source, key_path=dotted)
            node = node[part]
        node[leaf] = value
    return parse_config(data, env={}, source=source)


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> AppConfig:
    """Read, expand and validate a config file; relative file paths in it resolve against its
    folder. Raises only :class:`ConfigError`."""
    p = Path(path)
    source = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read file ({exc.__class__.__name__}: {exc})", source=source
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"YAML syntax error at {where}{problem}", source=source) from None
    return parse_config(data, env=env, source=source, base_dir=p.absolute().parent)


def config_hash(config: AppConfig) -> str:
    """Stable short hash of a config (for the ``job_runs`` audit row). Server URLs enter it
    redacted: a password is not configuration, and a hash of it would be a way to guess it."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
