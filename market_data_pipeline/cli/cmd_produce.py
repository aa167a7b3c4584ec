"""``mdp stream produce``, ``mdp stream replay`` and ``mdp stream tail``: flags in, the library
out (:mod:`market_data_pipeline.producers.pump`, :mod:`~market_data_pipeline.producers.replay_run`,
:mod:`market_data_pipeline.ui.records`).

``produce``/``replay`` run one provider into a publisher until the source ends,
``--count``/``--duration`` is reached, or SIGINT/SIGTERM; then they flush what is buffered and
print one summary line. A progress line (events, events/s, ETA) is shown on a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from market_data_core.codec import decode_signal, decode_window
from market_data_core.config import AppConfig
from market_data_core.errors import ConfigError, ContractError, MDPError
from market_data_core.protocols import Bus, BusRecord, Provider
from market_data_core.timeutil import format_duration_ms
from market_data_pipeline.cli.apps import stream_app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    DatasetsOpt,
    JsonOpt,
    MetricsPortOpt,
    duration_ms,
    environment,
    load_app_config,
    parse_when,
    run_async,
    stage_services,
)
from market_data_pipeline.producers.datasets import DatasetSpec, RowError, count_rows, find_dataset
from market_data_pipeline.producers.pump import make_publisher, pump
from market_data_pipeline.producers.replay_run import (
    check_store_source,
    rejection_report,
    replay_dataset,
    replay_store_bars,
)
from market_data_pipeline.project import dataset_registries
from market_data_pipeline.retry import sleep_or_stop
from market_data_pipeline.servers import ServerUrls, configured_redis_url, resolve_servers
from market_data_pipeline.ui.progress import ProgressLine
from market_data_pipeline.ui.records import (
    LETTER_HEADER,
    entry_key,
    letter_json,
    letter_row,
    render_records,
)
from market_data_pipeline.ui.tables import print_table

__all__ = ["produce", "replay", "tail"]

_MAX_SHOWN_ROW_ERRORS = 10


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


def _synthetic_provider(
    cfg: AppConfig,
    seed: int | None,
    kind: KindName | None,
    rate: float | None,
    count: int | None,
    quote_ratio: float | None = None,
) -> Provider:
    from market_data_pipeline.producers.synthetic import SyntheticProvider

    try:
        return SyntheticProvider(
            cfg.producers.synthetic,
            seed=seed,
            kind=kind.value if kind is not None else None,
            rate_per_s=rate,
            count=count,
            quote_ratio=quote_ratio,
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
    from_store = source is SourceName.store

    async def main(stop: asyncio.Event) -> str | None:
        from market_data_pipeline.wiring import open_clients

        with _server_context(cfg, postgres=from_store) as urls, stage_services(cfg, urls, "replay"):
            started = time.monotonic()
            errors: list[RowError] = []
            async with open_clients(cfg, urls, store=from_store) as c:
                with ProgressLine(f"replay {spec.name}", total=total) as progress:
                    if from_store:
                        published = await replay_store_bars(
                            cfg,
                            c.bus,
                            c.store,
                            spec,
                            stop,
                            start=start,
                            end=end,
                            speed=speed,
                            progress=progress,
                        )
                    else:
                        published, errors = await replay_dataset(
                            cfg,
                            c.bus,
                            spec,
                            stop,
                            start=start,
                            end=end,
                            speed=speed,
                            count=count,
                            duration_s=duration_s,
                            progress=progress,
                        )
            elapsed = time.monotonic() - started
            _report_row_errors(errors)
            extra = f"; {len(errors)} bad rows sent to {cfg.bus.dlq_topic}" if errors else ""
            what = f"dataset {spec.name}" + (" from the store" if from_store else "")
            typer.echo(_summary("replayed", what, published, cfg.bus.events_topic, elapsed, extra))
            if from_store:
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


@stream_app.command("produce")
def produce(
    config: ConfigOpt = DEFAULT_CONFIG,
    provider: Annotated[
        ProviderName,
        typer.Option(help="Where events come from.", metavar="[synthetic|replay|coinbase|ibkr]"),
    ] = ProviderName.synthetic,
    seed: Annotated[
        int | None,
        typer.Option(
            metavar="N", help="synthetic: deterministic output (same seed, same events and ids)."
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            metavar="EVENTS_PER_S",
            help="synthetic: aggregate events/s (default tick_rate x symbols).",
        ),
    ] = None,
    count: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Stop after this many events.")
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option(metavar="DURATION", help="Stop after this long, e.g. 30s or 5m."),
    ] = None,
    kind: Annotated[
        KindName | None,
        typer.Option(
            metavar="[tick|quote|bar]",
            help="synthetic: what to make (bar: 1 s bars; default producers.synthetic.kind).",
        ),
    ] = None,
    quote_ratio: Annotated[
        float | None,
        typer.Option(
            "--quote-ratio",
            min=0.0,
            max=1.0,
            metavar="R",
            help="synthetic ticks: this share of the events are quotes (default "
            "producers.synthetic.quote_ratio).",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="replay: registered dataset name (see `mdp stream replay`)."
        ),
    ] = None,
    datasets: DatasetsOpt = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Publish events from a provider (synthetic, replay, coinbase, ibkr) to the events stream.

    Runs until the source ends, --count or --duration is reached, or Ctrl-C / SIGTERM; then
    flushes what is buffered and prints a summary line.

    Examples:

    \b
      mdp stream produce --provider synthetic --seed 7 --rate 2000 --count 10000
      mdp stream produce --kind quote --rate 500 --duration 5s
      mdp stream produce --quote-ratio 0.5 --rate 2000 --duration 10s
    """
    overrides: dict[str, object] = {}
    if metrics_port is not None:
        overrides["telemetry.metrics_port"] = metrics_port
    cfg = load_app_config(config, overrides)
    duration_s = None if duration is None else duration_ms(duration, "--duration") / 1000
    if provider is ProviderName.replay:
        if dataset is None:
            raise ConfigError("--provider replay needs --dataset NAME", source="--dataset")
        spec = _dataset(datasets, cfg, dataset)
        _replay_command(cfg, spec, None, None, None, count, duration_s)
        return
    built: tuple[Provider, float | None]
    if provider is ProviderName.synthetic:
        src = _synthetic_provider(cfg, seed, kind, rate, count, quote_ratio)
        built = (src, cfg.producers.synthetic.max_msgs_per_s)
        what = f"synthetic {src.kind}" if hasattr(src, "kind") else "synthetic"
        mixed = getattr(src, "quote_ratio", 0.0) if getattr(src, "kind", "") == "tick" else 0.0
        if mixed:
            what += f" + quote ({mixed:.0%} quotes)"
    else:
        # Build before starting servers: a missing extra is one line and exit 2.
        built = _live_provider(cfg, provider)
        what = provider.value
    source, max_rate = built

    async def main(stop: asyncio.Event) -> None:
        from market_data_pipeline.wiring import open_clients

        with _server_context(cfg) as urls, stage_services(cfg, urls, "produce"):
            started = time.monotonic()
            async with open_clients(cfg, urls) as c:
                publisher = make_publisher(cfg, c.bus, max_rate)
                with ProgressLine(f"produce {what}", total=count) as progress:
                    await pump(
                        source,
                        publisher,
                        stop,
                        duration_s=duration_s,
                        count=count,
                        progress=progress,
                    )
                trimmed: Mapping[str, int] = getattr(c.bus, "trimmed_unread", {})
            elapsed = time.monotonic() - started
            extra = ""
            if sum(trimmed.values()):
                extra = (
                    f"; {sum(trimmed.values()):,} entries trimmed before a consumer group read "
                    f"them (once per group that had not; bus.maxlen {cfg.bus.maxlen:,} is "
                    "shorter than the backlog)"
                )
            typer.echo(
                _summary("published", what, publisher.published, publisher.topic, elapsed, extra)
            )

    run_async(main)


@stream_app.command("replay")
def replay(
    dataset: Annotated[str, typer.Option(metavar="NAME", help="Registered dataset name.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    datasets: DatasetsOpt = None,
    from_: Annotated[
        str | None,
        typer.Option("--from", metavar="TIME", help="Start (inclusive), e.g. 2020-02-22T00:30Z."),
    ] = None,
    to: Annotated[str | None, typer.Option(metavar="TIME", help="End (exclusive).")] = None,
    speed: Annotated[
        float | None,
        typer.Option(
            min=0.001, metavar="FACTOR", help="N times real time (default: as fast as possible)."
        ),
    ] = None,
    source: Annotated[
        SourceName,
        typer.Option(
            metavar="[file|store]", help="file: the dataset's file; store: its bars in the store."
        ),
    ] = SourceName.file,
    count: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Stop after this many events.")
    ] = None,
    max_rejected_share: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            metavar="SHARE",
            help="Exit 1 when more than this share (0 to 1) of the rows is rejected (default "
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

    Examples:

    \b
      mdp stream replay --dataset binance_btcusdt_trades
      mdp stream replay --dataset ftx_btc_perp_1m --from 2022-01-03 --to 2022-01-04
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


_TOPIC_ALIASES = ("mdp.events", "mdp.bars", "mdp.signals", "mdp.dlq")


def _topics(cfg: AppConfig) -> dict[str, str]:
    """The names ``--topic`` takes for our streams: each alias and the configured name."""
    named = {
        "mdp.events": cfg.bus.events_topic,
        "mdp.bars": cfg.bus.bars_topic,
        "mdp.signals": cfg.bus.signals_topic,
        "mdp.dlq": cfg.bus.dlq_topic,
    }
    return {**{real: real for real in named.values()}, **named}


async def _known_topic(cfg: AppConfig, bus: Bus, topic: str) -> str:
    """``topic`` as a stream name: one of ours (by alias or name), or another stream that
    exists on the server. Anything else (a typo) is a ``ConfigError`` listing ours."""
    ours = _topics(cfg)
    if topic in ours:
        return ours[topic]
    if await bus.topic_exists(topic):
        return topic
    listed = ", ".join(
        alias if ours[alias] == alias else f"{alias} ({ours[alias]})" for alias in _TOPIC_ALIASES
    )
    raise ConfigError(
        f"no stream {topic!r} on the bus; mdp's topics are {listed} (or name any existing stream)",
        source="--topic",
    )


def _at(record: BusRecord, level: str) -> bool:
    """Is a bus entry a bar of ``level`` (``mdp.bars``) or a signal scored at it
    (``mdp.signals``: ``meta.interval``)? Entries that decode as neither are kept."""
    try:
        window = decode_window(record.payload)
    except ContractError:
        try:
            signal = decode_signal(record.payload)
        except ContractError:
            return True
        return bool(signal.meta.get("interval", level) == level)
    return window.interval == level


@stream_app.command("tail")
def tail(
    config: ConfigOpt = DEFAULT_CONFIG,
    topic: Annotated[
        str,
        typer.Option(
            metavar="TOPIC",
            help="mdp.events, mdp.signals, mdp.bars or mdp.dlq (each stands for the stream "
            "the config names for it), or any other existing stream.",
        ),
    ] = "mdp.events",
    limit: Annotated[
        int, typer.Option(min=1, max=100_000, metavar="N", help="Entries to show.")
    ] = 50,
    follow: Annotated[bool, typer.Option(help="Keep printing new entries until Ctrl-C.")] = False,
    as_json: JsonOpt = False,
    poll_s: Annotated[
        float,
        typer.Option("--poll-s", min=0.05, metavar="SECONDS", help="With --follow: poll interval."),
    ] = 0.5,
    interval: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="With mdp.bars: only bars of this interval (a micro-batch window or a rollup "
            "level such as 1m); with mdp.signals: only signals scored at it.",
        ),
    ] = None,
) -> None:
    """Print the last entries of a stream, decoded (events, signals, bars or dead letters).

    An entry written by another producer without mdp's `data` field shows the fields it has.
    With --follow it keeps printing new entries until Ctrl-C.

    Examples:

    \b
      mdp stream tail --topic mdp.events --limit 20
      mdp stream tail --topic mdp.signals --json
      mdp stream tail --topic mdp.bars --interval 1m --limit 10
    """
    cfg = load_app_config(config)
    level = None if interval is None else format_duration_ms(duration_ms(interval, "--interval"))
    if cfg.bus.type == "redis" and not configured_redis_url(cfg, environment()):
        raise ConfigError(
            "tail reads an existing bus: set REDIS_URI (or bus.redis.uri), or start `mdp up`; "
            "an embedded server would be empty",
            source="REDIS_URI",
        )

    def emit(header: list[str], rows: list[list[str]], lines: list[str], first: bool) -> None:
        if as_json:
            for line in lines:
                typer.echo(line)
        elif rows:
            print_table(header, rows, show_header=first)

    async def main(stop: asyncio.Event) -> None:
        import json

        from market_data_pipeline.wiring import open_clients

        with _server_context(cfg) as urls:
            async with open_clients(cfg, urls) as c:
                bus = c.bus
                name = await _known_topic(cfg, bus, topic)
                if name == cfg.bus.dlq_topic:
                    letters = (await bus.dlq_list(max(limit, 10_000)))[-limit:]
                    rows = [letter_row(letter) for letter in letters]
                    emit(LETTER_HEADER, rows, [json.dumps(letter_json(lt)) for lt in letters], True)
                    if not letters and not as_json:
                        typer.echo(f"{name}: empty")
                    return
                if level is not None:
                    # the newest `limit` entries of the level among the newest 100,000
                    found = [r for r in await bus.tail(name, 100_000) if _at(r, level)]
                    records = found[-limit:]
                else:
                    records = await bus.tail(name, limit)
                h, rows, lines = render_records(cfg, name, records)
                if not records and not as_json:
                    typer.echo(f"{name}: no entries")
                emit(h, rows, lines, True)
                last: dict[int, tuple[int, ...]] = {}
                for rec in records:
                    last[rec.shard] = max(last.get(rec.shard, ()), entry_key(rec.entry_id))
                while follow and not stop.is_set():
                    await sleep_or_stop(stop, poll_s)
                    if stop.is_set():
                        break
                    fresh = [
                        r
                        for r in await bus.tail(name, max(limit, 1000))
                        if entry_key(r.entry_id) > last.get(r.shard, ())
                    ]
                    for rec in fresh:
                        last[rec.shard] = max(last.get(rec.shard, ()), entry_key(rec.entry_id))
                    if level is not None:
                        fresh = [r for r in fresh if _at(r, level)]
                    h, rows, lines = render_records(cfg, name, fresh)
                    emit(h, rows, lines, False)

    run_async(main)
