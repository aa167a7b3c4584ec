"""``mdp stream produce``, ``mdp stream replay`` and ``mdp stream tail``.

``produce``/``replay`` run one provider into a :class:`Publisher` until the source ends,
``--count``/``--duration`` is reached, or SIGINT/SIGTERM; then they flush what is buffered and
print one summary line. Progress (events/s, ETA) goes to stderr when it is a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from market_data_core.codec import decode_bar, decode_events, decode_signal, event_to_dict
from market_data_core.config import AppConfig
from market_data_core.contracts import StreamEvent
from market_data_core.errors import ConfigError, ContractError, MDPError
from market_data_core.protocols import Bus, BusRecord, DeadLetter, Provider
from market_data_core.timeutil import isoformat_us, parse_duration_ms
from market_data_pipeline import telemetry
from market_data_pipeline.cli.apps import stream_app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    DatasetsOpt,
    JsonOpt,
    MetricsPortOpt,
    environment,
    load_app_config,
    run_async,
    stage_services,
)
from market_data_pipeline.embedded import ServerUrls, resolve_servers
from market_data_pipeline.producers.datasets import (
    DatasetSpec,
    RowError,
    count_rows,
    find_dataset,
)
from market_data_pipeline.producers.publisher import Publisher, WireSource
from market_data_pipeline.project import dataset_registries

__all__ = ["produce", "replay", "tail"]

log = logging.getLogger("mdp.produce")

_MAX_SHOWN_ROW_ERRORS = 10
_TOP_REASONS = 3
# How long a stopped WireSource may take to hand over its last block before it is cancelled.
_CLOSE_GRACE_S = 1.0


class ProviderName(StrEnum):
    synthetic = "synthetic"
    replay = "replay"
    coinbase = "coinbase"
    ibkr = "ibkr"


class KindName(StrEnum):
    tick = "tick"
    quote = "quote"
    bar = "bar"


class SourceName(StrEnum):
    file = "file"
    store = "store"


def parse_when(text: str | None, flag: str) -> datetime | None:
    """``2020-02-22``, ``2020-02-22T01:00``, ``2020-02-22 01:00:00Z`` ... (naive = UTC)."""
    if text is None:
        return None
    try:
        ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"expected a date or ISO-8601 time like 2020-02-22 or 2020-02-22T01:00Z, got {text!r}",
            source=flag,
        ) from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _duration_s(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        ms = parse_duration_ms(text)
    except ValueError as exc:
        raise ConfigError(str(exc), source="--duration") from None
    if ms <= 0:
        raise ConfigError("duration must be > 0", source="--duration")
    return ms / 1000


class Progress:
    """Events/s and ETA on stderr, only when stderr is a terminal; at most twice a second."""

    def __init__(self, total: int | None, *, enabled: bool | None = None) -> None:
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._last_draw = 0.0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.5:
            return
        self._last_draw = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        line = f"\r{done:,} events  {rate:,.0f} ev/s"
        if self.total:
            pct = min(100.0, 100.0 * done / self.total)
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            eta_text = f"{eta:,.0f}s" if eta != float("inf") else "?"
            line += f"  {pct:5.1f}%  ETA {eta_text}"
        sys.stderr.write(line + "   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def make_publisher(config: AppConfig, bus: Bus, max_msgs_per_s: float | None) -> Publisher:
    p = config.producers
    return Publisher(
        bus,
        topic=config.bus.events_topic,
        codec=config.bus.codec,
        batch_size=p.publish_batch_size,
        buffer_max_events=p.buffer_max_events,
        pack_events=p.pack_events,
        max_msgs_per_s=max_msgs_per_s,
    )


async def pump(
    provider: Provider,
    publisher: Publisher,
    stop: asyncio.Event,
    *,
    duration_s: float | None = None,
    count: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Move events from ``provider`` into ``publisher`` until the source ends, ``count``
    events, ``duration_s`` or ``stop``; then flush. Returns how many events were accepted.

    A :class:`WireSource` (the synthetic provider) hands over blocks of events already in
    wire form (``publisher.put_block``: no ``StreamEvent`` and no ``put`` per event); any other
    provider goes event by event. Either way every event the source made is buffered before
    the publisher is flushed, so a stop loses nothing.

    Raises what the provider or the publisher raise (``BusError`` after the publisher's
    retries are exhausted)."""
    accepted = 0

    async def run_blocks(source: WireSource) -> None:
        nonlocal accepted
        blocks = source.wire_blocks(publisher.codec)
        try:
            async for block in blocks:
                if count is not None and accepted + len(block) > count:
                    block = block.head(count - accepted)
                await publisher.put_block(block)
                accepted += len(block)
                if progress is not None:
                    progress.update(accepted)
                if count is not None and accepted >= count:
                    return
        finally:
            await blocks.aclose()

    async def run() -> None:
        nonlocal accepted
        if isinstance(provider, WireSource):
            await run_blocks(provider)
            return
        events = provider.events()
        try:
            async for ev in events:
                await publisher.put(ev)
                accepted += 1
                if progress is not None:
                    progress.update(accepted)
                if count is not None and accepted >= count:
                    return
        finally:
            # Close the source now (a live feed's socket), not whenever it is collected.
            closer = getattr(events, "aclose", None)
            if closer is not None:
                await closer()

    publisher.start()
    task = asyncio.create_task(run(), name=f"pump:{provider.name}")
    stopper = asyncio.create_task(stop.wait(), name="stop-wait")
    try:
        done, _ = await asyncio.wait(
            {task, stopper}, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED
        )
        if task not in done:
            # Stop asked or time is up: stop taking events, keep what was accepted.
            await provider.aclose()
            if isinstance(provider, WireSource):
                # it hands over the events due by now and ends by itself (bounded wait)
                await asyncio.wait({task}, timeout=_CLOSE_GRACE_S)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        else:
            task.result()
    finally:
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await provider.aclose()
        try:
            await publisher.aclose()
        finally:
            if progress is not None:
                progress.close()
    return accepted


def _summary(
    verb: str, what: str, published: int, topic: str, elapsed_s: float, extra: str = ""
) -> str:
    rate = published / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"{verb} {published:,} events ({what}) to {topic} in {elapsed_s:.2f}s "
        f"({rate:,.0f} events/s){extra}"
    )


def _server_context(
    cfg: AppConfig, *, postgres: bool = False
) -> contextlib.AbstractContextManager[ServerUrls]:
    return resolve_servers(cfg, environment(), postgres=postgres, kafka=cfg.bus.type == "kafka")


async def _open_bus(cfg: AppConfig, urls: ServerUrls) -> Bus:
    from market_data_pipeline.streaming.bus import open_bus

    return await open_bus(cfg, urls)


def _synthetic_provider(
    cfg: AppConfig, seed: int | None, kind: KindName | None, rate: float | None, count: int | None
) -> Provider:
    from market_data_pipeline.producers.synthetic import SyntheticProvider

    try:
        return SyntheticProvider(
            cfg.producers.synthetic,
            seed=seed,
            kind=kind.value if kind is not None else None,
            rate_per_s=rate,
            count=count,
        )
    except ValueError as exc:
        raise ConfigError(str(exc), source="producers.synthetic") from None


def _live_provider(cfg: AppConfig, name: ProviderName) -> tuple[Provider, float | None]:
    if name is ProviderName.coinbase:
        from market_data_pipeline.producers.coinbase import CoinbaseProvider

        return CoinbaseProvider(cfg.producers.coinbase), cfg.producers.coinbase.max_msgs_per_s
    from market_data_pipeline.producers.ibkr import IbkrProvider

    return IbkrProvider(cfg.producers.ibkr), cfg.producers.ibkr.max_msgs_per_s


def _dataset(datasets_file: Path | None, cfg: AppConfig, name: str) -> DatasetSpec:
    return find_dataset(name, dataset_registries(cfg, datasets_file))


def _report_row_errors(errors: Sequence[RowError]) -> None:
    for err in errors[:_MAX_SHOWN_ROW_ERRORS]:
        typer.echo(f"mdp: bad row: {err}", err=True)
    if len(errors) > _MAX_SHOWN_ROW_ERRORS:
        typer.echo(
            f"mdp: ... and {len(errors) - _MAX_SHOWN_ROW_ERRORS} more bad rows (see the log "
            "and `mdp stream dlq list`)",
            err=True,
        )


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


def _dead_letterer(bus: Bus) -> Callable[[RowError], Any]:
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


async def run_replay(
    cfg: AppConfig,
    bus: Bus,
    spec: DatasetSpec,
    stop: asyncio.Event,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    speed: float | None = None,
    count: int | None = None,
    duration_s: float | None = None,
    progress: Progress | None = None,
) -> tuple[int, list[RowError]]:
    """Replay a dataset file onto the bus; bad rows are dead-lettered (component ``replay``)
    and returned. Returns ``(events published, bad rows)``."""
    from market_data_pipeline.producers.replay import DatasetReplayProvider

    provider = DatasetReplayProvider(
        spec, start=start, end=end, speed=speed, on_error=_dead_letterer(bus)
    )
    publisher = make_publisher(cfg, bus, cfg.producers.replay.max_msgs_per_s)
    await pump(provider, publisher, stop, duration_s=duration_s, count=count, progress=progress)
    return publisher.published, provider.errors


def check_store_source(spec: DatasetSpec, start: datetime | None, end: datetime | None) -> None:
    """``--source store`` replays the bars of one (provider, symbol, interval) in a window."""
    if spec.symbol is None or spec.kind != "bar" or spec.interval is None:
        raise ConfigError(
            f"--source store replays bars of one symbol; dataset {spec.name!r} is not one "
            "(kind bar, a fixed symbol and an interval)",
            source="--source",
        )
    if start is None or end is None:
        raise ConfigError("--source store needs --from and --to", source="--source")


async def _replay_from_store(
    cfg: AppConfig,
    urls: ServerUrls,
    bus: Bus,
    spec: DatasetSpec,
    stop: asyncio.Event,
    start: datetime | None,
    end: datetime | None,
    speed: float | None,
    progress: Progress,
) -> int:
    from market_data_pipeline.producers.replay import StoreBarsReplayProvider

    check_store_source(spec, start, end)
    assert spec.symbol is not None and spec.interval is not None
    assert start is not None and end is not None
    from market_data_pipeline.cli.wiring import open_store

    store = await open_store(cfg, urls)
    try:
        provider = StoreBarsReplayProvider(
            store,
            provider=spec.provider,
            symbol=spec.symbol,
            interval=spec.interval,
            start=start,
            end=end,
            speed=speed,
        )
        publisher = make_publisher(cfg, bus, cfg.producers.replay.max_msgs_per_s)
        await pump(provider, publisher, stop, progress=progress)
        return publisher.published
    finally:
        await store.aclose()


@stream_app.command("produce")
def produce(
    config: ConfigOpt = DEFAULT_CONFIG,
    provider: Annotated[
        ProviderName, typer.Option(help="Where events come from.")
    ] = ProviderName.synthetic,
    seed: Annotated[
        int | None,
        typer.Option(help="synthetic: deterministic output (same seed, same events and ids)."),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="synthetic: aggregate events/s (default tick_rate x symbols)."
        ),
    ] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    duration: Annotated[
        str | None, typer.Option(help="Stop after this long, e.g. 30s or 5m.")
    ] = None,
    kind: Annotated[
        KindName | None,
        typer.Option(help="synthetic: tick, quote or 1 s bar (default producers.synthetic.kind)."),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="replay: registered dataset name (see `mdp stream replay`).")
    ] = None,
    datasets: DatasetsOpt = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Publish events from a provider (synthetic, replay, coinbase, ibkr) to the events stream.

    Runs until the source ends, --count or --duration is reached, or Ctrl-C / SIGTERM; then
    flushes what is buffered and prints a summary line.

    Example:  mdp stream produce --provider synthetic --seed 7 --rate 2000 --count 100000

    Example:  REDIS_URI=redis://127.0.0.1:6379 mdp stream produce --provider coinbase
    """
    overrides: dict[str, object] = {}
    if metrics_port is not None:
        overrides["telemetry.metrics_port"] = metrics_port
    cfg = load_app_config(config, overrides)
    duration_s = _duration_s(duration)
    if provider is ProviderName.replay:
        if dataset is None:
            raise ConfigError("--provider replay needs --dataset NAME", source="--dataset")
        spec = _dataset(datasets, cfg, dataset)
        _replay_command(cfg, spec, None, None, None, count, duration_s)
        return
    built: tuple[Provider, float | None]
    if provider is ProviderName.synthetic:
        src = _synthetic_provider(cfg, seed, kind, rate, count)
        built = (src, cfg.producers.synthetic.max_msgs_per_s)
        what = f"synthetic {src.kind}" if hasattr(src, "kind") else "synthetic"
    else:
        # Build before starting servers: a missing extra is one line and exit 2.
        built = _live_provider(cfg, provider)
        what = provider.value
    source, max_rate = built
    total = count

    async def main(stop: asyncio.Event) -> None:
        with _server_context(cfg) as urls, stage_services(cfg, urls, "produce"):
            bus = await _open_bus(cfg, urls)
            started = time.monotonic()
            try:
                publisher = make_publisher(cfg, bus, max_rate)
                await pump(
                    source,
                    publisher,
                    stop,
                    duration_s=duration_s,
                    count=count,
                    progress=Progress(total),
                )
            finally:
                await bus.aclose()
            elapsed = time.monotonic() - started
            typer.echo(_summary("published", what, publisher.published, publisher.topic, elapsed))

    run_async(main)


def _replay_command(
    cfg: AppConfig,
    spec: DatasetSpec,
    start: datetime | None,
    end: datetime | None,
    speed: float | None,
    count: int | None,
    duration_s: float | None,
    source: SourceName = SourceName.file,
) -> None:
    total = count_rows(spec) if source is SourceName.file else None
    if count is not None:
        total = min(total, count) if total is not None else count

    async def main(stop: asyncio.Event) -> str | None:
        from_store = source is SourceName.store
        with _server_context(cfg, postgres=from_store) as urls, stage_services(cfg, urls, "replay"):
            bus = await _open_bus(cfg, urls)
            started = time.monotonic()
            errors: list[RowError] = []
            try:
                if source is SourceName.store:
                    published = await _replay_from_store(
                        cfg, urls, bus, spec, stop, start, end, speed, Progress(total)
                    )
                else:
                    published, errors = await run_replay(
                        cfg,
                        bus,
                        spec,
                        stop,
                        start=start,
                        end=end,
                        speed=speed,
                        count=count,
                        duration_s=duration_s,
                        progress=Progress(total),
                    )
            finally:
                await bus.aclose()
            elapsed = time.monotonic() - started
            _report_row_errors(errors)
            extra = f"; {len(errors)} bad rows sent to {cfg.bus.dlq_topic}" if errors else ""
            what = f"dataset {spec.name}" + (
                " from the store" if source is SourceName.store else ""
            )
            typer.echo(_summary("replayed", what, published, cfg.bus.events_topic, elapsed, extra))
            if source is SourceName.store:
                return None
            lines, failure = rejection_report(
                spec.name,
                published,
                errors,
                cfg.bus.dlq_topic,
                cfg.producers.replay.max_rejected_share,
            )
            for line in lines:
                typer.echo(line)
            return failure

    failure = run_async(main)
    if failure is not None:
        raise MDPError(failure)  # one line, exit 1: the replay ran, the data was bad


@stream_app.command("replay")
def replay(
    dataset: Annotated[str, typer.Option(help="Registered dataset name.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    datasets: DatasetsOpt = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="Start (inclusive), e.g. 2020-02-22T00:30Z.")
    ] = None,
    to: Annotated[str | None, typer.Option(help="End (exclusive).")] = None,
    speed: Annotated[
        float | None,
        typer.Option(min=0.001, help="N times real time (default: as fast as possible)."),
    ] = None,
    source: Annotated[
        SourceName, typer.Option(help="file: the dataset's file; store: its bars in the store.")
    ] = SourceName.file,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.")] = None,
    max_rejected_share: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Exit 1 when more than this share of the rows is rejected (default "
            "producers.replay.max_rejected_share: 1.0, i.e. only when every row is).",
        ),
    ] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Re-enqueue a registered dataset (your registry, then the shipped one) onto the events
    stream.

    Event ids are deterministic, so replaying twice changes nothing downstream. Bad rows are
    reported (file, line, reason), sent to the dead-letter stream, and the replay goes on; at
    the end it prints the rows read, accepted and rejected with the top reasons, and exits 1
    when too many were rejected (--max-rejected-share).

    Example:  mdp stream replay --dataset binance_btcusdt_trades

    Example:  mdp stream replay --dataset ftx_btc_perp_1m --from 2022-01-03 --to 2022-01-04
    """
    overrides: dict[str, object] = {}
    if metrics_port is not None:
        overrides["telemetry.metrics_port"] = metrics_port
    if max_rejected_share is not None:
        overrides["producers.replay.max_rejected_share"] = max_rejected_share
    cfg = load_app_config(config, overrides)
    start = parse_when(from_, "--from")
    end = parse_when(to, "--to")
    if start is not None and end is not None and end <= start:
        raise ConfigError("--to must be after --from", source="--to")
    spec = _dataset(datasets, cfg, dataset)
    if source is SourceName.store:
        check_store_source(spec, start, end)
    _replay_command(cfg, spec, start, end, speed, count, None, source)


def _short(value: float | None) -> str:
    """Shortest exact text of a number (``9682``, ``0.132``, ``2300413.7295``)."""
    if value is None:
        return ""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def event_row(ev: StreamEvent) -> list[str]:
    """time, symbol, kind, prices, volume, id."""
    if ev.kind == "quote":
        prices = f"{_short(ev.bid)} / {_short(ev.ask)}"
        volume = (
            f"{_short(ev.bid_size)} / {_short(ev.ask_size)}"
            if ev.bid_size is not None or ev.ask_size is not None
            else ""
        )
    elif ev.kind == "bar":
        prices = f"o {_short(ev.o)} h {_short(ev.h)} l {_short(ev.l)} c {_short(ev.c)}"
        volume = _short(ev.v)
    else:
        prices = _short(ev.c)
        volume = _short(ev.v) + (f" {ev.side}" if ev.side else "")
    kind = ev.kind if ev.interval is None else f"{ev.kind} {ev.interval}"
    return [isoformat_us(ev.src_ts), ev.symbol, kind, prices, volume, ev.event_id]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def render_records(
    cfg: AppConfig, topic: str, records: Sequence[BusRecord], as_json: bool
) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, table rows, JSON lines) for records of ``topic``; undecodable payloads show
    as one row with the reason."""
    rows: list[list[str]] = []
    out_json: list[str] = []
    if topic == cfg.bus.signals_topic:
        header = ["time", "symbol", "name", "value", "score", "adapter", "id"]
        for rec in records:
            try:
                sig = decode_signal(rec.payload)
            except ContractError as exc:
                rows.append(["?", "?", f"<undecodable: {exc}>", "", "", "", rec.entry_id])
                out_json.append(json.dumps({"entry_id": rec.entry_id, "error": str(exc)}))
                continue
            rows.append(
                [
                    isoformat_us(sig.ts),
                    sig.symbol,
                    sig.name,
                    _short(sig.value),
                    _short(sig.score),
                    sig.adapter,
                    sig.signal_id,
                ]
            )
            d = sig.model_dump()
            d["ts"] = isoformat_us(sig.ts)
            out_json.append(json.dumps(d))
        return header, rows, out_json
    if topic == cfg.bus.bars_topic:
        header = ["time", "symbol", "interval", "prices", "volume", "revision"]
        for rec in records:
            try:
                bar = decode_bar(rec.payload)
            except ContractError as exc:
                rows.append(["?", "?", f"<undecodable: {exc}>", "", "", rec.entry_id])
                out_json.append(json.dumps({"entry_id": rec.entry_id, "error": str(exc)}))
                continue
            rows.append(
                [
                    isoformat_us(bar.ts),
                    f"{bar.provider}|{bar.symbol}",
                    bar.interval,
                    f"o {_short(bar.o)} h {_short(bar.h)} l {_short(bar.l)} c {_short(bar.c)}",
                    _short(bar.v),
                    str(bar.revision),
                ]
            )
            out_json.append(
                json.dumps(
                    {
                        "provider": bar.provider,
                        "symbol": bar.symbol,
                        "interval": bar.interval,
                        "ts": isoformat_us(bar.ts),
                        "o": bar.o,
                        "h": bar.h,
                        "l": bar.l,
                        "c": bar.c,
                        "v": bar.v,
                        "vwap": bar.vwap,
                        "trade_count": bar.trade_count,
                        "revision": bar.revision,
                    }
                )
            )
        return header, rows, out_json
    header = ["time", "symbol", "kind", "prices", "volume", "id"]
    for rec in records:
        batch = decode_events(rec.payload)
        for ev in batch.events:
            rows.append(event_row(ev))
            out_json.append(json.dumps(event_to_dict(ev, codec="json")))
        for err in batch.errors:
            rows.append(["?", "?", "?", f"<{err.reason}: {err.detail[:80]}>", "", rec.entry_id])
            out_json.append(json.dumps({"entry_id": rec.entry_id, "error": str(err)}))
    return header, rows, out_json


def render_letters(
    letters: Sequence[DeadLetter], as_json: bool
) -> tuple[list[str], list[list[str]], list[str]]:
    header = ["time", "component", "reason", "source", "detail"]
    rows = []
    out_json = []
    for letter in letters:
        rows.append(
            [
                isoformat_us(letter.ts),
                letter.component,
                letter.reason,
                f"{letter.source_topic} {letter.source_id}",
                letter.detail[:100],
            ]
        )
        out_json.append(
            json.dumps(
                {
                    "entry_id": letter.entry_id,
                    "ts": isoformat_us(letter.ts),
                    "component": letter.component,
                    "reason": letter.reason,
                    "detail": letter.detail,
                    "source_topic": letter.source_topic,
                    "source_shard": letter.source_shard,
                    "source_id": letter.source_id,
                    "deliveries": letter.deliveries,
                    "payload": letter.payload.decode("utf-8", errors="replace"),
                }
            )
        )
    return header, rows, out_json


def _entry_key(entry_id: str) -> tuple[int, ...]:
    """Order of entry ids within one shard: Redis ``ms-seq`` or a Kafka offset."""
    try:
        return tuple(int(part) for part in entry_id.split("-"))
    except ValueError:
        return (0,)


@stream_app.command("tail")
def tail(
    config: ConfigOpt = DEFAULT_CONFIG,
    topic: Annotated[
        str,
        typer.Option(
            help="mdp.events, mdp.signals, mdp.bars or mdp.dlq (each stands for the stream "
            "the config names for it), or any other stream name."
        ),
    ] = "mdp.events",
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Entries to show.")] = 50,
    follow: Annotated[bool, typer.Option(help="Keep printing new entries until Ctrl-C.")] = False,
    as_json: JsonOpt = False,
    poll_s: Annotated[
        float, typer.Option("--poll-s", min=0.05, help="With --follow: poll interval.")
    ] = 0.5,
) -> None:
    """Print the last entries of a stream, decoded (events, signals, bars or dead letters).

    Example:  mdp stream tail --topic mdp.events --limit 20

    Example:  mdp stream tail --topic mdp.signals --follow --json
    """
    cfg = load_app_config(config)
    topic = {
        "mdp.events": cfg.bus.events_topic,
        "mdp.signals": cfg.bus.signals_topic,
        "mdp.bars": cfg.bus.bars_topic,
        "mdp.dlq": cfg.bus.dlq_topic,
    }.get(topic, topic)
    env = environment()
    if not (env.get("REDIS_URI") or cfg.bus.redis.uri) and cfg.bus.type == "redis":
        raise ConfigError(
            "tail reads an existing bus: set REDIS_URI (or bus.redis.uri); an embedded server "
            "would be empty",
            source="REDIS_URI",
        )

    def emit(header: list[str], rows: list[list[str]], lines: list[str], first: bool) -> None:
        if as_json:
            for line in lines:
                typer.echo(line)
        elif rows:
            text = _table(header, rows)
            typer.echo(text if first else "\n".join(text.splitlines()[1:]))

    async def main(stop: asyncio.Event) -> None:
        with _server_context(cfg) as urls:
            bus = await _open_bus(cfg, urls)
            try:
                if topic == cfg.bus.dlq_topic:
                    letters = (await bus.dlq_list(max(limit, 10_000)))[-limit:]
                    h, rows, lines = render_letters(letters, as_json)
                    emit(h, rows, lines, True)
                    if not letters and not as_json:
                        typer.echo(f"{topic}: empty")
                    return
                records = await bus.tail(topic, limit)
                h, rows, lines = render_records(cfg, topic, records, as_json)
                if not records and not as_json:
                    typer.echo(f"{topic}: no entries")
                emit(h, rows, lines, True)
                last: dict[int, tuple[int, ...]] = {}
                for rec in records:
                    last[rec.shard] = max(last.get(rec.shard, ()), _entry_key(rec.entry_id))
                while follow and not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=poll_s)
                    if stop.is_set():
                        break
                    fresh = [
                        r
                        for r in await bus.tail(topic, max(limit, 1000))
                        if _entry_key(r.entry_id) > last.get(r.shard, ())
                    ]
                    for rec in fresh:
                        last[rec.shard] = max(last.get(rec.shard, ()), _entry_key(rec.entry_id))
                    h, rows, lines = render_records(cfg, topic, fresh, as_json)
                    emit(h, rows, lines, False)
            finally:
                await bus.aclose()

    run_async(main)
