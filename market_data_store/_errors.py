"""Translation of asyncpg/SQLAlchemy/OS failures into mdp's error tree, at the boundary.

Transient (retry with backoff) -> ``StoreUnavailableError``: connection refused, lost or
reset; the server shutting down, starting up or out of connection slots (SQLSTATE class
08, 57, 53300); serialization failures and deadlocks (40001, 40P01); timeouts.
A malformed DSN -> ``ConfigError`` (the CLI's exit 2): a parameter asyncpg cannot parse or
check (``sslmode=bogus``, a port that is not a number), or one the server refuses at startup
(``?bogus=1``: "unrecognized configuration parameter", "invalid value for parameter").
A wrong password or a missing database stays a ``StoreError``: the DSN is well formed, the
server said no.
Everything else -> ``StoreError``. Both carry ``sqlstate`` when the server gave one.
Messages are one line (the driver's own, never SQLAlchemy's "Background on this error" hint)
and never contain a DSN (so never a password).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

from market_data_core.errors import ConfigError, MDPError, StoreError, StoreUnavailableError

__all__ = ["classify", "translate_errors"]

_TRANSIENT_PG: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08, includes ConnectionDoesNotExistError
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, cannot connect now
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        todo.extend([cur.__cause__, cur.__context__, getattr(cur, "orig", None)])


_DSN_SOURCE = "DATABASE_URL or store.dsn"
# Refused at connection startup: a DSN query parameter becomes a server setting.
_BAD_SETTING = ("unrecognized configuration parameter", "invalid value for parameter")


def _one_line(exc: BaseException) -> str:
    lines = [part.strip() for part in str(exc).splitlines() if part.strip()]
    return lines[0] if lines else ""


def _raised_by_dsn_parser(exc: BaseException) -> bool:
    """A ``ValueError`` from asyncpg's DSN parsing (``int('abc')`` for the port, ...)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and "asyncpg" in last and "connect_utils" in last


def _bad_dsn(cur: BaseException) -> ConfigError | None:
    if isinstance(cur, asyncpg.ClientConfigurationError) or (
        isinstance(cur, ValueError) and _raised_by_dsn_parser(cur)
    ):
        return ConfigError(f"malformed PostgreSQL DSN: {_one_line(cur)}", source=_DSN_SOURCE)
    if isinstance(cur, asyncpg.PostgresError) and str(cur).startswith(_BAD_SETTING):
        return ConfigError(
            f"malformed PostgreSQL DSN: the server refused a parameter: {_one_line(cur)}",
            source=_DSN_SOURCE,
        )
    return None


def classify(exc: BaseException, what: str) -> MDPError:
    """The mdp error for a third-party exception raised while doing ``what``."""
    for cur in _chain(exc):
        if isinstance(cur, MDPError):
            return cur
        bad_dsn = _bad_dsn(cur)
        if bad_dsn is not None:
            return bad_dsn
        if isinstance(cur, _TRANSIENT_PG):
            return StoreUnavailableError(
                f"{what}: store unavailable ({type(cur).__name__}: {_one_line(cur)})",
                sqlstate=getattr(cur, "sqlstate", None),
            )
        if isinstance(cur, OSError):  # refused, reset, timeouts (TimeoutError is an OSError)
            return StoreUnavailableError(
                f"{what}: store unreachable ({type(cur).__name__}: {_one_line(cur)})"
            )
        if isinstance(cur, asyncpg.InterfaceError) and "connection is closed" in str(cur):
            return StoreUnavailableError(f"{what}: store connection closed ({_one_line(cur)})")
        if isinstance(
            cur, asyncpg.exceptions.UndefinedTableError | asyncpg.exceptions.UndefinedColumnError
        ):
            return StoreError(
                f"{what}: {_one_line(cur)} (is the schema migrated? run `mdp db upgrade`)",
                sqlstate=cur.sqlstate,
            )
        if isinstance(cur, asyncpg.PostgresError):
            return StoreError(
                f"{what}: {type(cur).__name__}: {_one_line(cur)}", sqlstate=cur.sqlstate
            )
    driver = _driver_error(exc)
    return StoreError(f"{what}: {type(driver).__name__}: {_one_line(driver)}")


def _driver_error(exc: BaseException) -> BaseException:
    """The innermost cause: SQLAlchemy wraps the driver's error (``.orig``, ``__cause__``)
    and adds its own lines to the message."""
    seen = {id(exc)}
    while True:
        nxt = getattr(exc, "orig", None) or exc.__cause__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Re-raise any non-mdp exception of the block as ``StoreError``/``StoreUnavailableError``."""
    try:
        yield
    except MDPError:
        raise
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise classify(exc, what) from exc
    except Exception as exc:
        # SQLAlchemy wraps driver errors; classify() looks through the chain.
        raise classify(exc, what) from exc
