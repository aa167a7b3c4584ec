"""Interactive Brokers (TWS / IB Gateway) adapter, behind the optional ``ibkr`` extra
(``pip install 'mdp-streaming[ibkr]'``, which installs ``ib_async``).

For each configured symbol (a US stock on SMART routing) it subscribes to tick-by-tick
``AllLast`` trades (-> ``kind="tick"``) and ``BidAsk`` top of book (-> ``kind="quote"``).
IB sends no trade ids, so ``seq`` numbers the records that share one (symbol, timestamp): the
first is 0, the next 1, ...; ids are unique per (provider, symbol, src_ts) and a recorded session
replays to the same ids.

Without the extra, building the provider raises ``ConfigError`` with the install command (the
CLI prints that one line and exits 2). A lost connection reconnects with capped exponential
backoff and jitter, re-subscribing everything.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from market_data_core.config import IbkrProducerConfig
from market_data_core.contracts import StreamEvent
from market_data_core.errors import ConfigError
from market_data_pipeline import telemetry
from market_data_pipeline.retry import Backoff, sleep_or_stop

__all__ = ["INSTALL_HINT", "IbkrProvider", "TickMapper", "load_ib_async"]

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the ibkr provider needs the optional 'ibkr' extra: pip install 'mdp-streaming[ibkr]' "
    "(installs ib_async), then start TWS or IB Gateway with the API enabled"
)
_COMPONENT = "ibkr"


def load_ib_async() -> ModuleType:
    """Import ``ib_async`` or raise ``ConfigError`` telling how to install it."""
    try:
        return importlib.import_module("ib_async")
    except ImportError:
        raise ConfigError(INSTALL_HINT, source="--provider ibkr") from None


def _aware(ts: Any) -> datetime:
    if not isinstance(ts, datetime):
        raise ValueError(f"tick time is not a datetime: {ts!r}")
    # ib_async delivers UTC datetimes; a naive one is UTC by its convention.
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _size(value: Any) -> float | None:
    if value is None:
        return None
    size = float(value)
    return size if math.isfinite(size) and size >= 0 else None


class TickMapper:
    """Maps ib_async tick-by-tick records (``TickByTickAllLast``/``TickByTickBidAsk``, read by
    attribute name) to events, numbering records that share a timestamp (see module doc)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._last: dict[tuple[str, str], tuple[datetime, int]] = {}

    def _seq(self, symbol: str, stream: str, ts: datetime) -> int:
        prev = self._last.get((symbol, stream))
        seq = prev[1] + 1 if prev is not None and prev[0] == ts else 0
        self._last[(symbol, stream)] = (ts, seq)
        return seq

    def map(self, symbol: str, tick: Any) -> StreamEvent | None:
        """One event, or None for a record that is neither a trade nor a bid/ask.

        Raises ``pydantic.ValidationError``/``ValueError`` for an invalid record."""
        ts = _aware(tick.time)
        if hasattr(tick, "bidPrice") and hasattr(tick, "askPrice"):
            # Quote seqs are numbered apart from trades (odd) so the two never share an id.
            seq = self._seq(symbol, "quote", ts) * 2 + 1
            return StreamEvent.create(
                provider=self.provider,
                symbol=symbol,
                kind="quote",
                src_ts=ts,
                ingest_ts=datetime.now(UTC),
                bid=float(tick.bidPrice),
                ask=float(tick.askPrice),
                bid_size=_size(getattr(tick, "bidSize", None)),
                ask_size=_size(getattr(tick, "askSize", None)),
                seq=seq,
            )
        if hasattr(tick, "price") and hasattr(tick, "size"):
            seq = self._seq(symbol, "trade", ts) * 2
            return StreamEvent.create(
                provider=self.provider,
                symbol=symbol,
                kind="tick",
                src_ts=ts,
                ingest_ts=datetime.now(UTC),
                c=float(tick.price),
                v=float(tick.size),
                seq=seq,
            )
        return None

    def map_many(self, symbol: str, ticks: Iterable[Any]) -> list[StreamEvent]:
        """Events of several records; invalid ones are counted and logged, not raised."""
        out: list[StreamEvent] = []
        for tick in ticks:
            try:
                ev = self.map(symbol, tick)
            except (ValueError, TypeError, AttributeError) as exc:
                telemetry.ERRORS.labels(component=_COMPONENT, reason="validation").inc()
                log.warning(
                    "ibkr: skipped a %s record for %s: %s", type(tick).__name__, symbol, exc
                )
                continue
            if ev is not None:
                out.append(ev)
        return out


class IbkrProvider:
    """Live ticks and quotes from TWS / IB Gateway (``producers.ibkr``)."""

    def __init__(
        self,
        config: IbkrProducerConfig,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        queue_max: int = 100_000,
    ) -> None:
        self._ib_async = load_ib_async()
        if not config.symbols:
            raise ConfigError("producers.ibkr.symbols is empty")
        self._config = config
        self._mapper = TickMapper(config.provider)
        telemetry.init_error_series(_COMPONENT)
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._queue: asyncio.Queue[StreamEvent] = asyncio.Queue(maxsize=queue_max)
        self._closed = False
        self._closing = asyncio.Event()  # cuts a reconnect backoff short
        self._ib: Any = None
        self.dropped = 0

    @property
    def name(self) -> str:
        return self._config.provider

    def _on_tickers(self, tickers: Iterable[Any]) -> None:
        for ticker in tickers:
            symbol = str(ticker.contract.symbol)
            for ev in self._mapper.map_many(symbol, ticker.tickByTicks or ()):
                try:
                    self._queue.put_nowait(ev)
                except asyncio.QueueFull:
                    # ib_async calls us synchronously; we cannot wait, so count the loss.
                    self.dropped += 1
                    telemetry.ERRORS.labels(component=_COMPONENT, reason="queue_full").inc()

    async def _connect(self) -> None:
        ib_mod = self._ib_async
        ib = ib_mod.IB()
        cfg = self._config
        await ib.connectAsync(cfg.host, cfg.port, clientId=cfg.client_id, timeout=10)
        contracts = [ib_mod.Stock(symbol, "SMART", "USD") for symbol in cfg.symbols]
        await ib.qualifyContractsAsync(*contracts)
        for contract in contracts:
            ib.reqTickByTickData(contract, "AllLast")
            ib.reqTickByTickData(contract, "BidAsk")
        ib.pendingTickersEvent += self._on_tickers
        self._ib = ib
        log.info("ibkr: connected to %s:%d, %d symbols", cfg.host, cfg.port, len(contracts))

    def _disconnect(self) -> None:
        if self._ib is not None:
            self._ib.pendingTickersEvent -= self._on_tickers
            self._ib.disconnect()
            self._ib = None

    async def events(self) -> AsyncIterator[StreamEvent]:
        while not self._closed:
            if self._ib is None or not self._ib.isConnected():
                self._disconnect()
                try:
                    await self._connect()
                    self._backoff.reset()
                except (OSError, TimeoutError, ConnectionError) as exc:
                    self._disconnect()
                    telemetry.ERRORS.labels(component=_COMPONENT, reason="disconnect").inc()
                    delay_s = self._backoff.next_delay_s()
                    log.warning("ibkr: cannot connect (%s); retrying in %.1fs", exc, delay_s)
                    await sleep_or_stop(self._closing, delay_s)
                    continue
            try:
                ev = await asyncio.wait_for(self._queue.get(), timeout=1.0)
            except TimeoutError:
                continue
            yield ev
        self._disconnect()

    async def aclose(self) -> None:
        self._closed = True
        self._closing.set()
        self._disconnect()
