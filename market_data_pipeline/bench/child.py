"""The benchmark's one-off set-up work in a process of its own.

``mdp bench`` counts its own process in the peak RSS of the run (inference runs in it), so
what no streaming process of a deployment does must not stay in it: the schema migration
(SQLAlchemy and Alembic, ~30 MiB once imported and run: ``mdp db upgrade`` is a one-shot
process in a deployment) and the bare ceiling (200,000 events built as objects, ~50 MiB of
heap that Python keeps after they are freed). :func:`in_child` runs such a call in a fresh
``spawn`` process and returns its result; the memory goes with the process.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import pickle
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from market_data_core.errors import MDPError
from market_data_pipeline.gc_pacing import paced_gc
from market_data_pipeline.servers.process import die_with_parent

__all__ = ["in_child"]


async def in_child(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` (a coroutine function: run to completion on an event loop with
    the collector paced as in every ``mdp`` command) in a new ``spawn`` process; returns its
    result. ``fn``, the arguments and the result are pickled (``fn``
    must be a module-level function). The child's exception is raised here as it was
    raised there (its type and message; as an ``MDPError`` naming it when it cannot be
    pickled); a child that dies without a result raises ``MDPError`` with its exit code. The
    child gets SIGTERM when this process dies and is terminated when the caller is
    cancelled (Ctrl-C)."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_serve, args=(sender, fn, args, kwargs), daemon=True)
    proc.start()
    sender.close()
    try:
        try:
            ok, value = await asyncio.to_thread(receiver.recv)
        except EOFError:
            await asyncio.to_thread(proc.join)
            raise MDPError(
                f"{_name(fn)} exited with code {proc.exitcode} in its own process "
                "before returning a result"
            ) from None
    finally:
        if proc.is_alive():
            proc.terminate()
        receiver.close()
    await asyncio.to_thread(proc.join)
    if not ok:
        raise value
    return value


def _serve(
    sender: Connection, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    die_with_parent(signal.SIGTERM)()
    try:
        if inspect.iscoroutinefunction(fn):
            result = asyncio.run(_paced(fn, args, kwargs))
        else:
            result = fn(*args, **kwargs)
    except Exception as exc:  # handed to the parent, which raises it
        try:
            pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes: can the parent rebuild it
        except Exception:  # an exception that does not round-trip
            exc = MDPError(f"{_name(fn)} failed: {type(exc).__name__}: {exc}")
        sender.send((False, exc))
    else:
        sender.send((True, result))
    finally:
        sender.close()


async def _paced(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``fn`` under the collector pacing of every ``mdp`` command's event loop (see
    :mod:`market_data_pipeline.gc_pacing`): the bare ceiling measured here must run as it
    did in the bench process (with CPython's default collector its XREADGROUP+XACK rate was
    16-26 % lower in rounds side by side; paced, the same as in the bench process)."""
    async with paced_gc():
        return await fn(*args, **kwargs)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", repr(fn))
