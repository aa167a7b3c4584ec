"""``mdp stream status`` and ``mdp stream dlq list|replay|purge``: look at and re-drive the bus.

These commands inspect an existing server: they refuse to start an embedded one (a fresh,
empty server has nothing to show), so the server must be named by ``REDIS_URI`` /
``KAFKA_BOOTSTRAP`` or the config file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer

from market_data_core.config import AppConfig
from market_data_core.errors import ConfigError, StoreError
from market_data_core.protocols import Bus, DeadLetter, JobRun, StreamStatus
from market_data_pipeline.cli.apps import dlq_app, stream_app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    JsonOpt,
    describe_error,
    environment,
    load_app_config,
    run_async,
)
from market_data_pipeline.servers import ServerUrls, configured_database_url, configured_redis_url
from market_data_pipeline.streaming.dlq import replay_letters
from market_data_pipeline.ui.records import (
    JOB_RUN_HEADER,
    LETTER_HEADER,
    STATUS_HEADER,
    job_run_json,
    job_run_row,
    letter_json,
    letter_row,
    status_json,
    status_row,
)
from market_data_pipeline.ui.tables import print_table

__all__ = ["dlq_list", "dlq_purge", "dlq_replay", "stream_status"]

T = TypeVar("T")

_ALL_LETTERS = 1_000_000  # what --id/--reason look through (the --limit maximum)
LimitOpt = Annotated[
    int,
    typer.Option(
        "--limit", "-n", min=1, max=1_000_000, metavar="N", help="At most this many letters."
    ),
]
IdOpt = Annotated[
    list[str] | None,
    typer.Option("--id", metavar="ID", help="Only this dead-letter id (repeatable)."),
]


def _urls(cfg: AppConfig) -> ServerUrls:
    env = environment()
    if cfg.bus.type == "redis":
        url = configured_redis_url(cfg, env)
        if not url:
            raise ConfigError(
                "no Redis server to inspect: set REDIS_URI or bus.redis.uri",
                source="config",
                key_path="bus.redis.uri",
            )
        return ServerUrls(url, None, None)
    bootstrap = env.get("KAFKA_BOOTSTRAP") or cfg.bus.kafka.bootstrap
    if not bootstrap:
        raise ConfigError(
            "no Kafka broker to inspect: set KAFKA_BOOTSTRAP or bus.kafka.bootstrap",
            source="config",
            key_path="bus.kafka.bootstrap",
        )
    return ServerUrls(None, None, bootstrap)


def _run(cfg: AppConfig, work: Callable[[Bus], Awaitable[T]]) -> T:
    async def main(stop: asyncio.Event) -> T:
        from market_data_pipeline.wiring import open_clients

        async with open_clients(cfg, _urls(cfg)) as c:
            return await work(c.bus)

    return run_async(main)


@dataclass(frozen=True)
class _Runs:
    """``job_runs`` as ``status`` shows them: the running ones, and those it just marked
    abandoned (no heartbeat for ``ABANDON_AFTER_HEARTBEATS`` intervals)."""

    running: list[JobRun]
    abandoned: list[JobRun]


def _store_url(cfg: AppConfig) -> str | None:
    return configured_database_url(cfg, environment())


async def _job_runs(cfg: AppConfig, url: str) -> _Runs:
    from market_data_pipeline.wiring import open_clients

    async with open_clients(cfg, ServerUrls(None, url, None), bus=False, tracker=True) as c:
        abandoned = await c.tracker.abandon_stale()
        return _Runs(await c.tracker.running(), abandoned)


def _print_runs(runs: _Runs, now: datetime) -> None:
    shown = sorted([*runs.running, *runs.abandoned], key=lambda r: r.id)
    if shown:
        print_table(JOB_RUN_HEADER, [job_run_row(r, now) for r in shown])
    else:
        typer.echo("job runs: none running")


@stream_app.command("status")
def stream_status(
    config: ConfigOpt = DEFAULT_CONFIG,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic",
            "-t",
            metavar="TOPIC",
            help="Only this topic (repeatable). Default: all of ours.",
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option("--group", "-g", metavar="GROUP", help="Only this consumer group."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Per stream/shard and consumer group: length, lag, pending, consumers, the age of the
    oldest pending entry, the shard's owner, and the size of the dead-letter stream.

    With a database (DATABASE_URL or store.dsn) also the running job runs; runs whose
    process stopped beating (killed, host lost) are marked abandoned and shown once.

    Examples:

    \b
      mdp stream status
      mdp stream status --group mdp-consumers --json
    """
    cfg = load_app_config(config)
    bus_cfg = cfg.bus
    topics = topic or [bus_cfg.events_topic, bus_cfg.bars_topic, bus_cfg.signals_topic]
    store_url = _store_url(cfg)

    async def work(bus: Bus) -> tuple[list[StreamStatus], int, _Runs | str | None]:
        rows: list[StreamStatus] = []
        for name in topics:
            rows.extend(await bus.status(name, group))
        dlq = await bus.status(bus_cfg.dlq_topic)
        runs: _Runs | str | None = None
        if store_url:
            try:
                runs = await _job_runs(cfg, store_url)
            except StoreError as exc:  # the bus status is still worth showing
                runs = describe_error(exc)
        return rows, sum(s.length for s in dlq), runs

    rows, dlq_size, runs = _run(cfg, work)
    now = datetime.now(UTC)
    if isinstance(runs, str):
        typer.echo(f"mdp: warning: job runs not shown: {runs}", err=True)
    if as_json:
        payload: dict[str, Any] = {
            "bus": bus_cfg.type,
            "streams": [status_json(s) for s in rows],
            "dlq": {"stream": bus_cfg.dlq_topic, "length": dlq_size},
        }
        if isinstance(runs, _Runs):
            payload["job_runs"] = {
                "running": [job_run_json(r, now) for r in runs.running],
                "abandoned_now": [job_run_json(r, now) for r in runs.abandoned],
            }
        typer.echo(json.dumps(payload, indent=2))
        return
    print_table(STATUS_HEADER, [status_row(s) for s in rows])
    typer.echo(f"\ndead letters ({bus_cfg.dlq_topic}): {dlq_size}")
    if isinstance(runs, _Runs):
        typer.echo("")
        _print_runs(runs, now)


def _selected(
    letters: list[DeadLetter], ids: list[str] | None, reasons: list[str] | None
) -> list[DeadLetter]:
    """The letters ``--id`` (every id must exist) and ``--reason`` name; all without them."""
    chosen = letters
    if ids:
        wanted = set(ids)
        chosen = [lt for lt in chosen if lt.entry_id in wanted]
        missing = wanted - {lt.entry_id for lt in chosen}
        if missing:
            raise ConfigError(f"no dead letter with id {', '.join(sorted(missing))}", source="--id")
    if reasons:
        chosen = [lt for lt in chosen if lt.reason in set(reasons)]
    return chosen


@dlq_app.command("list")
def dlq_list(
    config: ConfigOpt = DEFAULT_CONFIG,
    limit: LimitOpt = 100,
    as_json: JsonOpt = False,
) -> None:
    """Dead letters, oldest first: time, component, reason, detail, source.

    Examples:

    \b
      mdp stream dlq list --limit 20
      mdp stream dlq list --json
    """
    cfg = load_app_config(config)
    letters = _run(cfg, lambda bus: bus.dlq_list(limit))
    if as_json:
        typer.echo(json.dumps([letter_json(lt) for lt in letters], indent=2))
        return
    if not letters:
        typer.echo(f"no dead letters in {cfg.bus.dlq_topic}")
        return
    print_table(LETTER_HEADER, [letter_row(lt) for lt in letters])


@dlq_app.command("replay")
def dlq_replay(
    config: ConfigOpt = DEFAULT_CONFIG,
    limit: LimitOpt = 1000,
    entry_id: IdOpt = None,
    reason: Annotated[
        list[str] | None,
        typer.Option(
            "--reason",
            metavar="REASON",
            help="Only letters with this reason, e.g. late or max_deliveries (repeatable).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Also re-send letters that cannot succeed (decode, validation, trimmed, no "
            "payload): after a fix of the consumer, say.",
        ),
    ] = False,
) -> None:
    """Re-publish dead letters to their source topic (routed by their provider and symbol), and
    delete each from the DLQ only after its publish succeeded.

    Letters that would fail again are skipped and stay, each with a line saying why: a payload
    that failed to decode or validate (re-sent unchanged it fails the same way), a trimmed
    entry or one without payload, and bad rows of dataset files (fix the file and replay the
    dataset). --force re-sends the first kinds too. --limit: at most that many of the
    (oldest) letters --id and --reason select.

    Examples:

    \b
      mdp stream dlq replay --limit 100
      mdp stream dlq replay --reason late --reason max_deliveries
    """
    cfg = load_app_config(config)
    shards_of = {cfg.bus.events_topic: cfg.bus.partitions}

    async def work(bus: Bus) -> tuple[int, list[tuple[str, str]]]:
        every = await bus.dlq_list(limit if not (entry_id or reason) else _ALL_LETTERS)
        letters = _selected(every, entry_id, reason)[:limit]
        outcome = await replay_letters(bus, letters, shards_of=shards_of, force=force)
        return len(outcome.replayed), outcome.skipped

    replayed, skipped = _run(cfg, work)
    for letter_id, why in skipped:
        typer.echo(f"skipped {letter_id}: {why}", err=True)
    hint = " (--force re-sends those that can be)" if skipped and not force else ""
    typer.echo(f"replayed {replayed} dead letter(s); {len(skipped)} skipped{hint}")


@dlq_app.command("purge")
def dlq_purge(
    config: ConfigOpt = DEFAULT_CONFIG,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete (required).")] = False,
    entry_id: IdOpt = None,
) -> None:
    """Delete dead letters for good (all of them, or those given with --id). Needs --yes.

    Examples:

    \b
      mdp stream dlq purge --yes
    """
    cfg = load_app_config(config)
    if not yes:
        raise ConfigError(
            "purge deletes dead letters for good; run again with --yes", source="--yes"
        )

    async def work(bus: Bus) -> int:
        deleted = 0
        if entry_id:
            return await bus.dlq_delete(entry_id)
        while True:
            letters = await bus.dlq_list(10_000)
            if not letters:
                return deleted
            deleted += await bus.dlq_delete([lt.entry_id for lt in letters])

    deleted = _run(cfg, work)
    typer.echo(f"purged {deleted} dead letter(s) from {cfg.bus.dlq_topic}")
