"""Where the servers are: environment (``REDIS_URI``, ``DATABASE_URL``, ``KAFKA_BOOTSTRAP``),
then the config file, then an embedded server started for the block (SPEC §10)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from market_data_core.config import AppConfig
from market_data_core.errors import ConfigError
from market_data_core.redaction import SecretUrl, redact_url
from market_data_pipeline.servers.postgres import EmbeddedPostgres
from market_data_pipeline.servers.process import Server
from market_data_pipeline.servers.tansu import EmbeddedKafka
from market_data_pipeline.servers.valkey import EmbeddedRedis

__all__ = ["ServerUrls", "configured_database_url", "configured_redis_url", "resolve_servers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, repr=False)
class ServerUrls:
    """Where the servers are; ``embedded`` names those mdp started itself.

    The URLs are the real ones (with passwords), for the calls that connect; ``repr`` and
    :meth:`describe` show them redacted."""

    redis_url: str | None
    database_url: str | None
    kafka_bootstrap: str | None
    embedded: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.redis_url:
            parts.append(f"redis={redact_url(self.redis_url)}")
        if self.database_url:
            parts.append(f"postgres={redact_url(self.database_url)}")
        if self.kafka_bootstrap:
            parts.append(f"kafka={self.kafka_bootstrap}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"ServerUrls({self.describe()}, embedded={self.embedded!r})"


def _secret(url: SecretUrl | None) -> str | None:
    return None if url is None else url.get_secret_value()


def configured_redis_url(config: AppConfig, env: Mapping[str, str]) -> str | None:
    """``REDIS_URI``, else ``bus.redis.uri`` (the real URL, password included), else None."""
    return env.get("REDIS_URI") or _secret(config.bus.redis.uri)


def configured_database_url(config: AppConfig, env: Mapping[str, str]) -> str | None:
    """``DATABASE_URL``, else ``store.dsn`` (the real DSN, password included), else None."""
    return env.get("DATABASE_URL") or _secret(config.store.dsn)


@contextlib.contextmanager
def resolve_servers(
    config: AppConfig,
    env: Mapping[str, str],
    *,
    redis: bool = True,
    postgres: bool = True,
    kafka: bool | None = None,
    data_dir: Path | None = None,
    pg_preload: tuple[str, ...] = (),
) -> Iterator[ServerUrls]:
    """Yield server URLs, starting embedded servers for what is configured nowhere.

    ``kafka=None`` means "when ``bus.type`` is kafka"; the embedded broker keeps its data in
    memory only. ``pg_preload``: libraries an embedded PostgreSQL loads
    (``shared_preload_libraries``, e.g. ``pg_stat_statements``); servers configured elsewhere
    are used as they are.

    Embedded servers stop when the block exits (normally, on an exception, or on
    KeyboardInterrupt) and die with this process otherwise.
    """
    started: list[Server] = []
    names: list[str] = []
    try:
        redis_url = configured_redis_url(config, env)
        if redis and not redis_url:
            r = EmbeddedRedis(data_dir=None if data_dir is None else data_dir / "valkey")
            r.start()
            started.append(r)
            names.append("valkey")
            redis_url = r.url
        db_url = configured_database_url(config, env)
        if db_url and not db_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("DATABASE_URL must be a postgresql:// DSN", source="environment")
        if postgres and not db_url:
            pg = EmbeddedPostgres(
                data_dir=None if data_dir is None else data_dir / "pgdata", preload=pg_preload
            )
            pg.start()
            started.append(pg)
            names.append("postgres")
            db_url = pg.url
        kafka_bootstrap = env.get("KAFKA_BOOTSTRAP") or config.bus.kafka.bootstrap
        if kafka is None:
            kafka = config.bus.type == "kafka"
        if kafka and not kafka_bootstrap:
            k = EmbeddedKafka()
            k.start()
            started.append(k)
            names.append("tansu")
            kafka_bootstrap = k.bootstrap
        yield ServerUrls(redis_url, db_url, kafka_bootstrap, tuple(names))
    finally:
        for server in reversed(started):
            try:
                if isinstance(server, EmbeddedPostgres):
                    server.cleanup()
                else:
                    server.stop()
            except Exception:  # stopping is best effort; the kernel reaps the rest
                log.exception("could not stop an embedded server cleanly")
