"""The one error tree of mdp: every exception class defined in ``market_data_core``,
``market_data_pipeline`` and ``market_data_store`` is drawn here under its base class, with the
data it carries (``tests/unit/test_errors.py`` fails when a class is missing or misplaced).

::

    MDPError                      base of everything mdp raises on purpose
    ├── ConfigError               bad config file / CLI input (CLI prints one line, exit 2);
    │   │                         ``source``, ``key_path``
    │   └── ExprError             a rule condition that does not parse (also a ValueError);
    │                             ``column`` (market_data_pipeline.inference.expr)
    ├── ContractError             a payload or event breaks a contract (-> dead letter);
    │   │                         ``reason``, ``detail``, ``payload``
    │   └── LocalTimeError        a naive local time that daylight saving repeats or skips;
    │                             ``wall``, ``zone``, ``rule``
    ├── BusError                  the bus (Redis/Kafka) failed or refused; ``backend``,
    │                             ``operation``
    ├── StoreError                the store failed; ``sqlstate``
    │   └── StoreUnavailableError transient: connection lost/refused; retry with backoff
    ├── InferenceError            an adapter failed to evaluate or load
    ├── EmbeddedServerError       an embedded server could not be found or started
    │                             (market_data_pipeline.servers)
    ├── StoppedError              a stop request ended a retry; the work stays pending
    └── BackpressureError         a bounded buffer is full; ``retry_after_s``

Private signals, each raised and caught inside one module (none leaves a public call)::

    Exception
    ├── _Unsure                   the fast event check defers to pydantic
    │                             (market_data_core.contracts)
    ├── _RowParse                 a dataset row that cannot be parsed -> a RowError and a
    │                             dead letter (market_data_pipeline.producers.datasets)
    ├── _RelayBusy                another worker's relay holds the outbox; the final relay
    │                             waits (market_data_pipeline.consumers.micro_batcher)
    └── _StoredKeyInBatch         a fast COPY met a stored key inside its batch; the write
                                  reruns carefully (market_data_store.store_client)

Third-party exceptions are translated at the boundary (``raise BusError(...) from exc``);
nothing above core ever sees a ``redis`` or ``asyncpg`` exception type.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

__all__ = [
    "BackpressureError",
    "BusError",
    "ConfigError",
    "ContractError",
    "InferenceError",
    "LocalTimeError",
    "MDPError",
    "StoppedError",
    "StoreError",
    "StoreUnavailableError",
    "describe_error",
    "one_line",
    "primary_error",
]


class MDPError(Exception):
    """Base class of every error mdp raises on purpose."""


class ConfigError(MDPError):
    """Configuration or command-line input is invalid.

    ``source`` names the file (or ``"--flag"``), ``key_path`` the dotted key, when known.
    ``str()`` is one readable line.
    """

    def __init__(self, message: str, *, source: str | None = None, key_path: str | None = None):
        self.message = message
        self.source = source
        self.key_path = key_path
        parts = [p for p in (source, key_path) if p]
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ContractError(MDPError):
    """A payload could not be decoded, or decoded into an event that breaks a contract.

    ``reason`` is a short machine-friendly code (``"decode"``, ``"validation"``, ...) used as
    a metric label; ``detail`` says exactly what is wrong; ``payload`` keeps the original bytes.
    """

    def __init__(self, reason: str, detail: str, payload: bytes | None = None):
        self.reason = reason
        self.detail = detail
        self.payload = payload
        super().__init__(f"{reason}: {detail}")


class LocalTimeError(ContractError):
    """A naive wall time that a time-zone rule refuses (:mod:`market_data_core.localtime`).

    ``reason`` is ``"ambiguous_time"`` (the fall-back repeats it) or ``"nonexistent_time"``
    (the spring-forward skips it); ``wall`` is the naive time, ``zone`` the zone's key and
    ``rule`` the policy that refused it (``"ambiguous: raise"``).
    """

    def __init__(self, reason: str, detail: str, *, wall: datetime, zone: str, rule: str):
        self.wall = wall
        self.zone = zone
        self.rule = rule
        super().__init__(reason, detail)


class BusError(MDPError):
    """The bus failed or refused an operation.

    ``backend`` is ``"redis"`` or ``"kafka"``; ``operation`` names what failed, one word a
    metric label or a test can match (``"connect"``, ``"publish"``, ``"poll"``, ``"ack"``,
    ``"dead_letter"``, ...). The driver's exception, if any, is the ``__cause__``.
    """

    def __init__(self, message: str, *, backend: str, operation: str) -> None:
        self.backend = backend
        self.operation = operation
        super().__init__(message)


class StoreError(MDPError):
    """The store failed an operation.

    ``sqlstate`` is the SQLSTATE code PostgreSQL answered with (``"42P01"``: undefined
    table), ``None`` when the failure did not come from the server (a lost connection, a
    bad argument).
    """

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        self.sqlstate = sqlstate
        super().__init__(message)


class StoreUnavailableError(StoreError):
    """The store could not be reached (transient); the caller may retry with backoff."""


class InferenceError(MDPError):
    """An inference adapter failed to load or evaluate."""


class StoppedError(MDPError):
    """A stop (SIGINT/SIGTERM, ``Pipeline.stop()``) ended a retry before the operation
    succeeded: nothing was acknowledged, the work stays pending for the next run. The last
    failure is the ``__cause__``. Raised by :func:`market_data_pipeline.retry.retry`."""


class BackpressureError(MDPError):
    """A bounded buffer is full; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, *, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(f"{message} (retry after {retry_after_s:.3f}s)")


def primary_error(exc: BaseException) -> BaseException:
    """The failure an exception group stands for: ``asyncio.TaskGroup`` wraps whatever a task
    raised (and its siblings' cancellations) in groups, possibly nested. Prefers mdp's own
    errors, then any other failure, then a cancellation."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = list(exc.exceptions)
        exc = (
            next((e for e in leaves if isinstance(e, MDPError)), None)
            or next((e for e in leaves if isinstance(e, BaseExceptionGroup)), None)
            or next((e for e in leaves if not isinstance(e, asyncio.CancelledError)), None)
            or leaves[0]
        )
    return exc


def one_line(message: object) -> str:
    """A message as one line: drivers and SQLAlchemy append hints on lines of their own."""
    lines = [part.strip() for part in str(message).splitlines() if part.strip()]
    return lines[0] if lines else ""


def describe_error(exc: BaseException) -> str:
    """One line saying why a command failed (for ``job_runs.detail`` and the CLI)."""
    exc = primary_error(exc)
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled (a second SIGINT/SIGTERM)"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = one_line(exc)
    if isinstance(exc, MDPError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
