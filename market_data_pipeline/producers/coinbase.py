"""Coinbase Exchange public WebSocket feed -> trade ticks and quotes.

Subscribes to ``matches`` (-> ``kind="tick"``: price, size, ``trade_id``, taker ``side``,
``seq = trade_id``), ``ticker`` (-> ``kind="quote"``: best bid/ask and sizes,
``seq = sequence``) and ``heartbeat`` for ``product_ids``.

Order, repeats and gaps. Trade ids are contiguous per product but the feed does not always
deliver them in order (660, 663, 662, 661, 664). Each product keeps the ids it has actually
seen within the last ``dedupe_window`` ids: an id seen before is a repeat and is skipped (the
``last_match`` replayed after a reconnect, a ``match`` delivered twice); any other id is
emitted, in the order it arrives, whether it is above or below the highest so far. An id older
than the window cannot be told from a repeat and is emitted too (its ``event_id`` is
deterministic, so the store keeps it once). When an id (or a ``heartbeat``'s ``last_trade_id``)
skips ahead, the ids in between are *pending*: those not seen within ``gap_grace_s`` are
missed, counted once per jump in ``errors_total{component="coinbase",reason="sequence_gap"}``
(and in :attr:`CoinbaseProvider.missed_trades`); a missed trade that still arrives later is
emitted and counted in :attr:`CoinbaseProvider.late_trades`. Ticker ``sequence`` numbers
jump by design (they count every message of a product on every channel): they are
de-duplicated the same way, without gap accounting.

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
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from market_data_core.codec import validation_reason
from market_data_core.config import CoinbaseProducerConfig
from market_data_core.contracts import StreamEvent
from market_data_core.errors import ConfigError
from market_data_pipeline import telemetry
from market_data_pipeline.retry import Backoff, sleep_or_stop

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


class _SeenIds:
    """The ids of one stream seen within the last ``window`` ids below the highest one."""

    __slots__ = ("highest", "ids", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.ids: set[int] = set()
        self.highest: int | None = None

    def floor(self) -> int:
        """Ids below this are older than the window: they cannot be told from repeats."""
        return -1 if self.highest is None else self.highest - self.window

    def add(self, seq: int) -> bool:
        """Record ``seq``; False when it was seen before (a repeat)."""
        if seq in self.ids:
            return False
        self.ids.add(seq)
        if self.highest is None or seq > self.highest:
            self.highest = seq
        if len(self.ids) > 2 * self.window:  # amortised O(1): drop what left the window
            floor = self.floor()
            self.ids = {i for i in self.ids if i >= floor}
        return True


@dataclass(slots=True)
class _Hole:
    """Trade ids skipped by one jump, still pending until ``deadline`` (monotonic seconds)."""

    ids: set[int]
    deadline: float
    jump: tuple[int, int] = (0, 0)


@dataclass(slots=True)
class _TradeIds:
    """Per product: the seen-id window and the holes whose grace period is running."""

    seen: _SeenIds
    holes: list[_Hole] = field(default_factory=list)
    missed: set[int] = field(default_factory=set)


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
        dedupe_window: int = 10_000,
        gap_grace_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
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
        if dedupe_window < 1 or gap_grace_s < 0:
            raise ValueError("dedupe_window must be >= 1 and gap_grace_s >= 0")
        self._closed = False
        self._closing = asyncio.Event()  # cuts a reconnect backoff short
        self._dedupe_window = dedupe_window
        self._gap_grace_s = gap_grace_s
        self._clock = clock
        self._trades: dict[str, _TradeIds] = {}
        self._tickers: dict[str, _SeenIds] = {}
        self.connects = 0
        self.reconnects = 0
        self.backoff_delays_s: list[float] = []
        self.gaps = 0
        self.missed_trades = 0
        self.late_trades = 0
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
            await sleep_or_stop(self._closing, delay_s)
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

    def _trade_ids(self, product: str) -> _TradeIds:
        ids = self._trades.get(product)
        if ids is None:
            ids = self._trades[product] = _TradeIds(_SeenIds(self._dedupe_window))
        return ids

    def _expire_holes(self, now: float) -> None:
        """Count the pending ids whose grace period is over as missed (once per jump)."""
        for product, ids in self._trades.items():
            if not ids.holes or ids.holes[0].deadline > now:
                continue
            kept = []
            for hole in ids.holes:
                if hole.deadline > now:
                    kept.append(hole)
                elif hole.ids:
                    self.gaps += 1
                    self.missed_trades += len(hole.ids)
                    ids.missed |= hole.ids
                    telemetry.ERRORS.labels(component=_COMPONENT, reason="sequence_gap").inc()
                    log.warning(
                        "coinbase: %s trade ids jumped from %d to %d; %d not seen within %.1fs "
                        "(%s)",
                        product,
                        *hole.jump,
                        len(hole.ids),
                        self._gap_grace_s,
                        _id_ranges(sorted(hole.ids)),
                    )
            ids.holes = kept
            if len(ids.missed) > self._dedupe_window:
                floor = ids.seen.floor()
                ids.missed = {i for i in ids.missed if i >= floor}

    def _trade_seen(self, product: str, trade_id: int, now: float) -> bool:
        """Record a trade id; False for a repeat. Opens a hole when it skips ahead."""
        ids = self._trade_ids(product)
        highest = ids.seen.highest
        if not ids.seen.add(trade_id):
            return False
        if highest is not None and trade_id > highest + 1:
            self._open_hole(ids, highest, trade_id, now)
        elif highest is not None and trade_id < highest:
            for hole in ids.holes:
                hole.ids.discard(trade_id)
            if trade_id in ids.missed:  # arrived after its grace period: counted as missed
                ids.missed.discard(trade_id)
                self.late_trades += 1
        return True

    def _open_hole(self, ids: _TradeIds, last: int, upto: int, now: float) -> None:
        floor = max(last + 1, upto - self._dedupe_window)
        pending = set(range(floor, upto)) - ids.seen.ids
        if pending:
            ids.holes.append(_Hole(pending, now + self._gap_grace_s, (last, upto)))

    def _handle(self, msg: dict[str, Any]) -> list[StreamEvent]:
        now = self._clock()
        self._expire_holes(now)
        kind = msg.get("type")
        if kind in ("match", "last_match"):
            product = str(msg["product_id"])
            trade_id = int(msg["trade_id"])
            event = StreamEvent.create(
                provider=self._provider,
                symbol=product,
                kind="tick",
                src_ts=_parse_time(msg.get("time")),
                ingest_ts=datetime.now(UTC),
                c=float(msg["price"]),
                v=float(msg["size"]),
                seq=trade_id,
                trade_id=str(trade_id),
                side=_TAKER_SIDE.get(str(msg.get("side"))),
            )
            if not self._trade_seen(product, trade_id, now):
                self.duplicates += 1
                return []
            return [event]
        if kind == "ticker":
            product = str(msg["product_id"])
            sequence = int(msg["sequence"])
            event = StreamEvent.create(
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
            seen = self._tickers.get(product)
            if seen is None:
                seen = self._tickers[product] = _SeenIds(self._dedupe_window)
            if not seen.add(sequence):
                self.duplicates += 1
                return []
            return [event]
        if kind == "heartbeat":
            product = str(msg["product_id"])
            last_trade_id = int(msg["last_trade_id"])
            ids = self._trades.get(product)
            highest = None if ids is None else ids.seen.highest
            if ids is not None and highest is not None and last_trade_id > highest:
                # trades up to last_trade_id happened; those not seen yet are pending
                self._open_hole(ids, highest, last_trade_id + 1, now)
                ids.seen.highest = last_trade_id
            return []
        if kind == "error":
            telemetry.ERRORS.labels(component=_COMPONENT, reason="feed_error").inc()
            log.error("coinbase: feed error: %s %s", msg.get("message"), msg.get("reason", ""))
        return []

    async def aclose(self) -> None:
        self._closed = True
        self._closing.set()


def _id_ranges(ids: list[int], limit: int = 5) -> str:
    """``661-662, 670`` for sorted ids (the first ``limit`` runs)."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    text = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs[:limit])
    return text + (", ..." if len(runs) > limit else "")
