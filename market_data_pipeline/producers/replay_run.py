"""Replaying onto the bus: a registered dataset file (:func:`replay_dataset`) or the bars of one
series already in the store (:func:`replay_store_bars`), and what a file replay says about its
rows (:func:`rejection_report`).

Bad rows of a file are dead-lettered (component ``replay``, the reason of
:class:`~market_data_pipeline.producers.datasets.RowError`, the raw line as the payload, the
file as ``source_topic`` and ``line N`` as ``source_id``) and the replay goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from market_data_core.config import AppConfig
from market_data_core.errors import ConfigError
from market_data_core.protocols import Bus, DeadLetter, StoreClient
from market_data_pipeline import telemetry
from market_data_pipeline.producers.datasets import DatasetSpec, RowError
from market_data_pipeline.producers.pump import ProgressSink, make_publisher, pump

__all__ = [
    "check_store_source",
    "dead_letterer",
    "rejection_report",
    "replay_dataset",
    "replay_store_bars",
    "top_reasons",
]

log = logging.getLogger("mdp.produce")

_TOP_REASONS = 3


def dead_letterer(bus: Bus) -> Callable[[RowError], Awaitable[None]]:
    """The ``on_error`` of a :class:`DatasetReplayProvider`: logs the bad row, counts
    ``errors_total{component="replay", reason}`` and writes its dead letter."""
    telemetry.init_error_series("replay")

    async def dead_letter(err: RowError) -> None:
        log.warning("replay: %s", err)
        telemetry.ERRORS.labels(component="replay", reason=err.reason).inc()
        await bus.dead_letter(
            DeadLetter(
                entry_id="",
                payload=err.raw,
                reason=err.reason,
                detail=err.detail,
                component="replay",
                source_topic=err.path,
                source_shard=0,
                source_id=f"line {err.line}",
                ts=datetime.now(UTC),
            )
        )

    return dead_letter


async def replay_dataset(
    config: AppConfig,
    bus: Bus,
    spec: DatasetSpec,
    stop: asyncio.Event,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    speed: float | None = None,
    count: int | None = None,
    duration_s: float | None = None,
    progress: ProgressSink | None = None,
) -> tuple[int, list[RowError]]:
    """Replay a dataset file onto the events topic (``[start, end)``, ``speed`` times real time
    or as fast as the bus takes it, at most ``count`` events or ``duration_s``). Returns
    ``(events published, bad rows)``; bad rows were dead-lettered. Raises ``ConfigError`` if
    the file cannot be read, ``BusError`` if publishing fails after retries."""
    from market_data_pipeline.producers.replay import DatasetReplayProvider

    provider = DatasetReplayProvider(
        spec, start=start, end=end, speed=speed, on_error=dead_letterer(bus)
    )
    publisher = make_publisher(config, bus, config.producers.replay.max_msgs_per_s)
    await pump(provider, publisher, stop, duration_s=duration_s, count=count, progress=progress)
    return publisher.published, provider.errors


def check_store_source(spec: DatasetSpec, start: datetime | None, end: datetime | None) -> None:
    """``--source store`` replays the bars of one (provider, symbol, interval) in a window;
    ``ConfigError`` otherwise."""
    if spec.symbol is None or spec.kind != "bar" or spec.interval is None:
        raise ConfigError(
            f"--source store replays bars of one symbol; dataset {spec.name!r} is not one "
            "(kind bar, a fixed symbol and an interval)",
            source="--source",
        )
    if start is None or end is None:
        raise ConfigError("--source store needs --from and --to", source="--source")


async def replay_store_bars(
    config: AppConfig,
    bus: Bus,
    store: StoreClient,
    spec: DatasetSpec,
    stop: asyncio.Event,
    *,
    start: datetime | None,
    end: datetime | None,
    speed: float | None = None,
    progress: ProgressSink | None = None,
) -> int:
    """Replay the stored bars of the dataset's series in ``[start, end)``; returns the events
    published. Raises ``ConfigError`` (see :func:`check_store_source`)."""
    from market_data_pipeline.producers.replay import StoreBarsReplayProvider

    check_store_source(spec, start, end)
    assert spec.symbol is not None and spec.interval is not None
    assert start is not None and end is not None
    provider = StoreBarsReplayProvider(
        store,
        provider=spec.provider,
        symbol=spec.symbol,
        interval=spec.interval,
        start=start,
        end=end,
        speed=speed,
    )
    publisher = make_publisher(config, bus, config.producers.replay.max_msgs_per_s)
    await pump(provider, publisher, stop, progress=progress)
    return publisher.published


def top_reasons(errors: Sequence[RowError], limit: int = _TOP_REASONS) -> list[tuple[str, int]]:
    """The most frequent causes of rejected rows, ``(cause, rows)``, most frequent first."""
    counts = Counter(f"{e.reason}: {e.cause or e.detail}" for e in errors)
    return counts.most_common(limit)


def rejection_report(
    dataset: str, accepted: int, errors: Sequence[RowError], dlq: str, max_share: float
) -> tuple[list[str], str | None]:
    """The lines a file replay prints about its rows, and the failure line when more than
    ``max_share`` of them (or every one) was rejected (the command then exits 1)."""
    rejected = len(errors)
    read = accepted + rejected
    share = rejected / read if read else 0.0
    lines = [
        f"rows: {read:,} read, {accepted:,} accepted, {rejected:,} rejected ({share:.1%})"
        + (f" -> {dlq}" if rejected else "")
    ]
    if rejected:
        reasons = "; ".join(f"{cause} ({n:,})" for cause, n in top_reasons(errors))
        lines.append(f"rejected by reason: {reasons}")
    failure = None
    if read and rejected == read:
        failure = f"every row of dataset {dataset} was rejected ({rejected:,})"
    elif share > max_share:
        failure = (
            f"{rejected:,} of {read:,} rows of dataset {dataset} were rejected ({share:.1%}), "
            f"more than producers.replay.max_rejected_share ({max_share:.1%})"
        )
    if failure is not None:
        failure += "; see `mdp stream dlq list`"
    return lines, failure
