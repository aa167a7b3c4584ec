"""Translation of asyncpg/SQLAlchemy/OS failures into mdp's error tree, at the boundary.

Transient (retry with backoff) -> ``StoreUnavailableError``: connection refused, lost or
reset; the server shutting down, starting up or out of connection slots (SQLSTATE class
08, 57, 53300); serialization failures and deadlocks (40001, 40P01); timeouts.
Everything else -> ``StoreError``, with ``sqlstate`` when the server gave one.
Messages never contain a DSN (so never a password).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

from market_data_core.errors import MDPError, StoreError, StoreUnavailableError

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


def classify(exc: BaseException, what: str) -> StoreError:
    """The mdp error for a third-party exception raised while doing ``what``."""
    for cur in _chain(exc):
        if isinstance(cur, StoreError):
            return cur
        if isinstance(cur, _TRANSIENT_PG):
            return StoreUnavailableError(f"{what}: store unavailable ({type(cur).__name__}: {cur})")
        if isinstance(cur, OSError):  # refused, reset, timeouts (TimeoutError is an OSError)
            return StoreUnavailableError(f"{what}: store unreachable ({type(cur).__name__}: {cur})")
        if isinstance(cur, asyncpg.InterfaceError) and "connection is closed" in str(cur):
            return StoreUnavailableError(f"{what}: store connection closed ({cur})")
        if isinstance(cur, asyncpg.exceptions.UndefinedTableError):
            err = StoreError(f"{what}: {cur} (is the schema migrated? run `mdp db upgrade`)")
            err.sqlstate = cur.sqlstate  # type: ignore[attr-defined]
            return err
        if isinstance(cur, asyncpg.PostgresError):
            err = StoreError(f"{what}: {type(cur).__name__}: {cur}")
            err.sqlstate = cur.sqlstate  # type: ignore[attr-defined]
            return err
    return StoreError(f"{what}: {type(exc).__name__}: {exc}")


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
