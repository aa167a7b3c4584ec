"""Coinbase Exchange public WebSocket feed -> trade ticks and quotes.

Subscribes to ``matches`` (-> ``kind="tick"``: price, size, ``trade_id``, taker ``side``,
``seq = trade_id``), ``ticker`` (-> ``kind="quote"``: best bid/ask and sizes,
``seq = sequence``) and ``heartbeat`` for ``product_ids``.

Gap detection. Coinbase ``sequence`` numbers count every message of a product on every channel,
so on the channels we subscribe to they jump by design; trade ids, however, are contiguous per
product. A gap is therefore a ``match`` whose ``trade_id`` skips ahead, or a ``heartbeat`` whose
``last_trade_id`` is ahead of the last trade seen; each counts once in
``errors_total{component="coinbase",reason="sequence_gap"}`` (and the missed trades in
:attr:`CoinbaseProvider.missed_trades`). Messages that go backwards (the ``last_match`` replayed
after a reconnect, a ticker with an old ``sequence``) are duplicates and are skipped.

Connection. Any connection failure or silence longer than ``heartbeat_timeout_s`` closes the
socket and reconnects after a capped exponential backoff with jitter (reset once a connection
delivers data). Undecodable or invalid messages are counted (reason ``parse``/``validation``),
logged and skipped; the feed goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from market_data_core.codec import validation_reason
from market_data_core.config import CoinbaseProducerConfig
from market_data_core.contracts import StreamEvent
from market_data_core.errors import ConfigError
from market_data_pipeline import telemetry
from market_data_pipeline.producers.pacing import Backoff

__all__ = ["CoinbaseProvider"]

log = logging.getLogger(__name__)

_COMPONENT = "coinbase"
_FRACTION = re.compile(r"\.(\d{6})\d+")
# The taker's side is the opposite of the maker order's side that Coinbase reports.
_TAKER_SIDE = {"buy": "sell", "sell": "buy"}


def _parse_time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"missing or non-string time {text!r}")
    ts = datetime.fromisoformat(_FRACTION.sub(r".\1", text).replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone")
    return ts.astimezone(UTC)


class CoinbaseProvider:
    """Live events from the Coinbase Exchange feed (see module doc); ``events()`` never ends
    on its own: it reconnects until :meth:`aclose` (or ``max_reconnects`` is exceeded, after
    which it returns)."""

    def __init__(
        self,
        config: CoinbaseProducerConfig,
        *,
        provider: str = "coinbase",
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        heartbeat_timeout_s: float = 15.0,
        open_timeout_s: float = 10.0,
        max_reconnects: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not config.product_ids:
            raise ConfigError("producers.coinbase.product_ids is empty")
        self._config = config
        self._provider = provider
        telemetry.init_error_series(_COMPONENT)
        self._backoff = Backoff(backoff_initial_s, backoff_max_s, rng=rng)
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._open_timeout_s = open_timeout_s
        self._max_reconnects = max_reconnects
        self._closed = False
        self._last_trade_id: dict[str, int] = {}
        self._last_ticker_seq: dict[str, int] = {}
        self.connects = 0
        self.reconnects = 0
        self.backoff_delays_s: list[float] = []
        self.gaps = 0
        self.missed_trades = 0
        self.duplicates = 0
        self.bad_messages = 0

    @property
    def name(self) -> str:
        return self._provider

    def subscribe_message(self) -> dict[str, Any]:
        return {
            "type": "subscribe",
            "product_ids": list(self._config.product_ids),
            "channels": [*self._config.channels, "heartbeat"],
        }

    async def events(self) -> AsyncIterator[StreamEvent]:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidHandshake, InvalidURI, WebSocketException

        while not self._closed:
            try:
                async with connect(
                    self._config.url,
                    open_timeout=self._open_timeout_s,
                    max_size=2**22,
                    ping_interval=20,
                ) as ws:
                    self.connects += 1
                    await ws.send(json.dumps(self.subscribe_message()))
                    while not self._closed:
                        raw = await asyncio.wait_for(ws.recv(), self._heartbeat_timeout_s)
                        self._backoff.reset()
                        for ev in self.handle(raw):
                            yield ev
            except InvalidURI as exc:
                raise ConfigError(f"bad URL: {exc}", key_path="producers.coinbase.url") from None
            except TimeoutError:
                telemetry.ERRORS.labels(component=_COMPONENT, reason="heartbeat_timeout").inc()
                log.warning(
                    "coinbase: no message for %.1fs; reconnecting", self._heartbeat_timeout_s
                )
            except (OSError, InvalidHandshake, WebSocketException) as exc:
                telemetry.ERRORS.labels(component=_COMPONENT, reason="disconnect").inc()
                log.warning("coinbase: connection lost (%s: %s)", type(exc).__name__, exc)
            if self._closed:
                return
            if self._max_reconnects is not None and self.reconnects >= self._max_reconnects:
                log.error("coinbase: giving up after %d reconnects", self.reconnects)
                return
            delay_s = self._backoff.next_delay_s()
            self.backoff_delays_s.append(delay_s)
            telemetry.RETRIES.labels(component=_COMPONENT).inc()
            await asyncio.sleep(delay_s)
            self.reconnects += 1

    def handle(self, raw: str | bytes) -> list[StreamEvent]:
        """Events from one feed message ([] for control messages, duplicates and bad ones)."""
        try:
            msg = json.loads(raw)
            if not isinstance(msg, dict):
                raise ValueError("not a JSON object")
            return self._handle(msg)
        except ValidationError as exc:
            self._bad("validation", validation_reason(exc), raw)
        except (ValueError, TypeError, KeyError) as exc:
            self._bad("parse", f"{type(exc).__name__}: {exc}", raw)
        return []

    def _bad(self, reason: str, detail: str, raw: str | bytes) -> None:
        self.bad_messages += 1
        telemetry.ERRORS.labels(component=_COMPONENT, reason=reason).inc()
        shown = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        log.warning("coinbase: skipped a message (%s: %s): %.200s", reason, detail, shown)

    def _trade_gap(self, product: str, seen_up_to: int) -> None:
        last = self._last_trade_id.get(product)
        if last is not None and seen_up_to > last + 1:
            self.gaps += 1
            self.missed_trades += seen_up_to - last - 1
            telemetry.ERRORS.labels(component=_COMPONENT, reason="sequence_gap").inc()
            log.warning(
                "coinbase: %s trade ids jumped from %d to %d (%d missed)",
                product,
                last,
                seen_up_to,
                seen_up_to - last - 1,
            )

    def _handle(self, msg: dict[str, Any]) -> list[StreamEvent]:
        kind = msg.get("type")
        if kind in ("match", "last_match"):
            product = str(msg["product_id"])
            trade_id = int(msg["trade_id"])
            last = self._last_trade_id.get(product)
            if last is not None and trade_id <= last:
                self.duplicates += 1
                return []
            self._trade_gap(product, trade_id)
            self._last_trade_id[product] = trade_id
            side = _TAKER_SIDE.get(str(msg.get("side")))
            return [
                StreamEvent.create(
                    provider=self._provider,
                    symbol=product,
                    kind="tick",
                    src_ts=_parse_time(msg.get("time")),
                    ingest_ts=datetime.now(UTC),
                    c=float(msg["price"]),
                    v=float(msg["size"]),
                    seq=trade_id,
                    trade_id=str(trade_id),
                    side=side,
                )
            ]
        if kind == "ticker":
            product = str(msg["product_id"])
            sequence = int(msg["sequence"])
            if sequence <= self._last_ticker_seq.get(product, -1):
                self.duplicates += 1
                return []
            self._last_ticker_seq[product] = sequence
            return [
                StreamEvent.create(
                    provider=self._provider,
                    symbol=product,
                    kind="quote",
                    src_ts=_parse_time(msg.get("time")),
                    ingest_ts=datetime.now(UTC),
                    bid=float(msg["best_bid"]),
                    ask=float(msg["best_ask"]),
                    bid_size=float(msg["best_bid_size"]) if "best_bid_size" in msg else None,
                    ask_size=float(msg["best_ask_size"]) if "best_ask_size" in msg else None,
                    seq=sequence,
                )
            ]
        if kind == "heartbeat":
            product = str(msg["product_id"])
            last_trade_id = int(msg["last_trade_id"])
            if product in self._last_trade_id:
                self._trade_gap(product, last_trade_id + 1)
                self._last_trade_id[product] = max(self._last_trade_id[product], last_trade_id)
            return []
        if kind == "error":
            telemetry.ERRORS.labels(component=_COMPONENT, reason="feed_error").inc()
            log.error("coinbase: feed error: %s %s", msg.get("message"), msg.get("reason", ""))
        return []

    async def aclose(self) -> None:
        self._closed = True
