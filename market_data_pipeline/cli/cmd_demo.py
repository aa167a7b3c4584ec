"""``mdp demo``: embedded servers, a few real events through the bus, a summary.

It grows with the pipeline; it always leaves nothing running.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, cast

import redis.asyncio as aredis
import typer

from market_data_core.codec import decode_events, encode_event
from market_data_core.contracts import StreamEvent
from market_data_pipeline.cli.apps import app
from market_data_pipeline.cli.common import (
    DEFAULT_CONFIG,
    ConfigOpt,
    environment,
    load_app_config,
    run_async,
)
from market_data_pipeline.embedded import resolve_servers


def _events(n: int) -> list[StreamEvent]:
    t0 = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)
    return [
        StreamEvent.create(
            provider="demo",
            symbol=("SPY", "AAPL", "MSFT")[i % 3],
            kind="tick",
            src_ts=t0 + timedelta(milliseconds=137 * i),
            c=100.0 + (i % 17) * 0.01,
            v=1.0 + i % 5,
            seq=i,
        )
        for i in range(n)
    ]


@app.command("demo")
def demo(
    config: ConfigOpt = DEFAULT_CONFIG,
    events: Annotated[int, typer.Option(min=1, max=1_000_000, help="Events to publish.")] = 1000,
) -> None:
    """Start embedded Valkey and PostgreSQL, publish events, read them back, print a summary.

    Example:  mdp demo --events 5000
    """
    cfg = load_app_config(config)

    async def main(stop: asyncio.Event) -> None:
        started = time.monotonic()
        with resolve_servers(cfg, environment()) as urls:
            typer.echo(
                f"servers: {urls.describe()} (embedded: {', '.join(urls.embedded) or 'none'})"
            )
            assert urls.redis_url is not None
            client = aredis.Redis.from_url(urls.redis_url)
            stream = cfg.bus.redis.stream
            try:
                sent = _events(events)
                t = time.perf_counter()
                pipe = client.pipeline(transaction=False)
                for ev in sent:
                    pipe.xadd(stream, {"data": encode_event(ev, cfg.bus.codec)})
                await pipe.execute()
                pub_s = time.perf_counter() - t
                raw = cast(
                    "list[tuple[bytes, dict[bytes, bytes]]]",
                    await client.xrevrange(stream, count=len(sent)),
                )
                got = [e for _id, f in reversed(raw) for e in decode_events(f[b"data"]).events]
                ok = got == sent
            finally:
                await client.aclose()
        typer.echo(f"published {len(sent)} events to {stream} in {pub_s * 1000:.1f} ms")
        typer.echo(f"read back {len(got)} events, identical: {ok}")
        typer.echo(f"done in {time.monotonic() - started:.1f}s; embedded servers stopped")
        if not ok:
            raise typer.Exit(1)

    run_async(main)
