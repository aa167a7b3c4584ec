"""Synthetic market data: geometric Brownian motion per symbol.

Prices follow ``p <- p * exp(-sigma**2 * dt / 2 + sigma * sqrt(dt) * Z)`` with
``sigma = price_volatility`` per sqrt(day) (0.02 is
about 2 % a day) and ``dt`` the event-time step of one symbol. Events go round-robin over the
symbols; event ``i`` has ``src_ts = start + i / rate`` (ticks, quotes) or, for 1 s bars,
``start + round`` seconds, so event time never depends on how fast the bus accepts them.

With a ``seed`` the output is a pure function of (config, seed, kind, rate): the same events,
timestamps and ids on every run (``start`` is a fixed instant, ``ingest_ts`` is left unset).
Without one, ``start`` is the wall clock and ``ingest_ts`` is stamped when an event is made.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

from market_data_core.config import SyntheticProducerConfig
from market_data_core.contracts import EventKind, StreamEvent
from market_data_core.timeutil import from_epoch_us, to_epoch_us
from market_data_pipeline.producers.pacing import TokenBucket

__all__ = ["SEEDED_START", "SyntheticProvider"]

SEEDED_START = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)
_SECONDS_PER_DAY = 86_400.0
_BAR_SUBSTEPS = 8


class SyntheticProvider:
    """GBM ticks, quotes or 1 s bars for ``config.symbols`` (see module doc).

    ``rate_per_s`` is the aggregate target (events/s over all symbols); default
    ``tick_rate * len(symbols)``. ``count`` ends the stream after that many events.
    """

    def __init__(
        self,
        config: SyntheticProducerConfig,
        *,
        seed: int | None = None,
        kind: EventKind | None = None,
        rate_per_s: float | None = None,
        count: int | None = None,
        start: datetime | None = None,
    ) -> None:
        if not config.symbols:
            raise ValueError("producers.synthetic.symbols is empty")
        self._config = config
        self.kind: EventKind = kind or config.kind
        self.seed = seed
        self.rate_per_s = rate_per_s or config.tick_rate * len(config.symbols)
        if self.rate_per_s <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate_per_s}")
        self.count = count
        if start is None:
            start = SEEDED_START if seed is not None else datetime.now(UTC)
        if self.kind == "bar":
            start = start.replace(microsecond=0)
        self.start = start
        self._rng = random.Random(seed)
        self._closed = False
        # Events are built with StreamEvent.trusted (no per-event validation): check once here
        # that the configured names make valid events (a pydantic error is a ValueError).
        for symbol in config.symbols:
            StreamEvent.create(
                provider=config.provider,
                symbol=symbol,
                kind="tick",
                src_ts=self.start,
                c=config.start_price,
                v=0.0,
                seq=0,
            )

    @property
    def name(self) -> str:
        return self._config.provider

    def generate(self) -> Iterator[StreamEvent]:
        """Events as fast as they can be made (no pacing); ends after ``count`` if set."""
        cfg = self._config
        symbols = list(cfg.symbols)
        n_symbols = len(symbols)
        rng = self._rng
        sigma = cfg.price_volatility
        prices = dict.fromkeys(symbols, cfg.start_price)
        seqs = dict.fromkeys(symbols, 0)
        start_us = to_epoch_us(self.start)
        step_us = 1_000_000 / self.rate_per_s
        stamp_ingest = self.seed is None
        if self.kind == "bar":
            dt_days = 1.0 / _BAR_SUBSTEPS / _SECONDS_PER_DAY
        else:
            dt_days = n_symbols / self.rate_per_s / _SECONDS_PER_DAY
        drift = -0.5 * sigma * sigma * dt_days
        shock = sigma * math.sqrt(dt_days)
        i = 0
        while self.count is None or i < self.count:
            symbol = symbols[i % n_symbols]
            seq = seqs[symbol]
            seqs[symbol] = seq + 1
            ingest = datetime.now(UTC) if stamp_ingest else None
            p = prices[symbol]
            if self.kind == "bar":
                src_ts = from_epoch_us(start_us + (i // n_symbols) * 1_000_000)
                path = [p]
                for _ in range(_BAR_SUBSTEPS):
                    path.append(path[-1] * math.exp(drift + shock * rng.gauss(0.0, 1.0)))
                prices[symbol] = path[-1]
                o, c = round(path[0], 4), round(path[-1], 4)
                ev = StreamEvent.trusted(
                    provider=cfg.provider,
                    symbol=symbol,
                    kind="bar",
                    interval="1s",
                    src_ts=src_ts,
                    ingest_ts=ingest,
                    o=o,
                    h=max(round(max(path), 4), o, c),
                    l=min(round(min(path), 4), o, c),
                    c=c,
                    v=float(rng.randint(1, 50) * 100),
                    seq=seq,
                )
            else:
                src_ts = from_epoch_us(start_us + round(i * step_us))
                p *= math.exp(drift + shock * rng.gauss(0.0, 1.0))
                prices[symbol] = p
                if self.kind == "tick":
                    ev = StreamEvent.trusted(
                        provider=cfg.provider,
                        symbol=symbol,
                        kind="tick",
                        src_ts=src_ts,
                        ingest_ts=ingest,
                        c=max(round(p, 2), 0.01),
                        v=float(rng.randint(1, 100)),
                        seq=seq,
                        trade_id=str(seq),
                        side="buy" if rng.random() < 0.5 else "sell",
                    )
                else:
                    bid = max(round(p - 0.01 * rng.randint(0, 2), 2), 0.01)
                    ask = round(bid + 0.01 * rng.randint(1, 3), 2)
                    ev = StreamEvent.trusted(
                        provider=cfg.provider,
                        symbol=symbol,
                        kind="quote",
                        src_ts=src_ts,
                        ingest_ts=ingest,
                        bid=bid,
                        ask=ask,
                        bid_size=float(rng.randint(1, 20) * 100),
                        ask_size=float(rng.randint(1, 20) * 100),
                        seq=seq,
                    )
            yield ev
            i += 1

    async def events(self) -> AsyncIterator[StreamEvent]:
        """The same events as :meth:`generate`, paced at ``rate_per_s`` by a token bucket."""
        # A quarter second of burst lets the source catch up after the loop was busy (a
        # publish batch being encoded) instead of losing that time; it starts empty so a run
        # does not open with a spike.
        bucket = TokenBucket(self.rate_per_s, burst=max(1.0, self.rate_per_s / 4), initial=0.0)
        # Pay for small chunks, not single events, so pacing costs little at high rates; cap
        # the chunk so the publisher task gets the loop at least every few hundred events.
        chunk = min(500, max(1, int(self.rate_per_s / 200)))
        source = self.generate()
        while not self._closed:
            wait_s = bucket.delay_for(chunk)
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            else:
                await asyncio.sleep(0)
            for _ in range(chunk):
                ev = next(source, None)
                if ev is None:
                    return
                yield ev

    async def aclose(self) -> None:
        self._closed = True
