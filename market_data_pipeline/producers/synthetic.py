"""Synthetic market data: geometric Brownian motion per symbol.

Prices follow ``p <- p * exp(-sigma**2 * dt / 2 + sigma * sqrt(dt) * Z)`` with
``sigma = price_volatility`` per sqrt(day) (0.02 is
about 2 % a day) and ``dt`` the event-time step of one symbol. Events go round-robin over the
symbols; event ``i`` has ``src_ts = start + i / rate`` (ticks, quotes) or, for 1 s bars,
``start + round`` seconds, so event time never depends on how fast the bus accepts them.

``quote_ratio`` (kind ``tick`` only) mixes quotes with the trades: in each round of the symbols
(one event per symbol) all events are quotes or all are trades, round ``r`` being a quote round
when ``floor((r + 1) * ratio) > floor(r * ratio)``, so every symbol gets that share of quotes,
spread evenly; quotes and trades follow one price path per symbol. A ratio of 0 makes exactly
the trades-only stream.

With a ``seed`` the output is a pure function of (config, seed, kind, rate): the same events,
timestamps and ids on every run (``start`` is a fixed instant, ``ingest_ts`` is left unset).
Without one, ``start`` is the wall clock and ``ingest_ts`` is stamped when an event is made
(once per block of events made together, see :meth:`SyntheticProvider.wire_blocks`).

The generator makes events directly in wire form (the dicts ``event_to_dict`` would give, key
order included), so the paced hot path (:meth:`SyntheticProvider.wire_blocks` into
``Publisher.put_block``) builds no ``StreamEvent`` per event; :meth:`SyntheticProvider.generate`
and :meth:`SyntheticProvider.events` turn the same rows into ``StreamEvent`` objects.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

import msgspec
import numpy as np

from market_data_core.columnar import (
    OPTIONAL_BITS,
    SIDE_NAMES,
    EventColumns,
    decimal_strs,
    decimal_text,
    event_id_strs,
)
from market_data_core.config import SyntheticProducerConfig
from market_data_core.contracts import EventKind, StreamEvent
from market_data_core.protocols import routing_key
from market_data_core.timeutil import from_epoch_us, isoformat_us, to_epoch_us
from market_data_pipeline.producers.publisher import WireBlock, WireForm, WireRow

__all__ = ["SEEDED_START", "SyntheticProvider"]

SEEDED_START = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)
_SECONDS_PER_DAY = 86_400.0
_BAR_SUBSTEPS = 8
# Paced output wakes up at most this often and makes every event due by then in one block:
# fewer, larger wakeups cost less CPU than many small ones (at 20k events/s, 50 ms ticks cost
# ~10 % less CPU per event than 20 ms ones), and 50 ms of latency is far below a window
# (>= 500 ms).
_TICK_S = 0.05
# A block never holds more events than this, so an unpaced (or catching-up) source still
# lets the publisher run every few milliseconds. One tick's worth up to 40k events/s.
_MAX_BLOCK_EVENTS = 2000
# float(randint(1, 100)) by the draw (0..99) it comes from
_TRADE_SIZES = tuple(float(k + 1) for k in range(100))
# generate() makes its rows in blocks of this many events (ingest_ts stamped per block).
_GENERATE_BLOCK_EVENTS = 64
# the optional fields of a column row (market_data_core.columnar) of a tick and of a quote
_TICK_BITS = OPTIONAL_BITS["c"] | OPTIONAL_BITS["v"] | OPTIONAL_BITS["trade_id"]
_QUOTE_BITS = (
    OPTIONAL_BITS["bid"]
    | OPTIONAL_BITS["ask"]
    | OPTIONAL_BITS["bid_size"]
    | OPTIONAL_BITS["ask_size"]
)


class _SeededTickRow(msgspec.Struct, gc=False):
    """A tick without ``ingest_ts`` in msgpack wire form: msgspec encodes it as exactly the
    map ``event_to_dict`` gives (same keys in the same order), and a Struct costs a third of
    a dict to build. ``gc=False``: it holds only str/int/float, never a cycle."""

    c: float
    v: float
    trade_id: str
    side: str
    provider: str
    symbol: str
    kind: str
    src_ts: int
    seq: int
    ver: int
    event_id: str


class _TickRow(msgspec.Struct, gc=False):
    """:class:`_SeededTickRow` with ``ingest_ts`` (first, as in ``StreamEvent.__dict__``)."""

    ingest_ts: int
    c: float
    v: float
    trade_id: str
    side: str
    provider: str
    symbol: str
    kind: str
    src_ts: int
    seq: int
    ver: int
    event_id: str


def row_dict(row: WireRow) -> dict[str, Any]:
    """A wire row as the dict ``event_to_dict`` gives (a copy; key order kept)."""
    if isinstance(row, msgspec.Struct):
        return msgspec.structs.asdict(row)
    return dict(row)


class _Walk:
    """The state of one pass over the synthetic stream: makes the next events as wire rows.

    A row is exactly ``event_to_dict(event, codec=codec)`` (for msgpack ticks: a Struct that
    encodes as that dict, see :class:`_TickRow`) of the event
    ``StreamEvent.trusted`` would build from the same values, with the same key order (the
    order of ``StreamEvent.__dict__``: the optional fields in declaration order, then
    provider, symbol, kind, src_ts, seq, ver, event_id). Random draws happen in the same order
    as they always have, so a seed gives the same events as before this fast path existed.
    """

    def __init__(self, source: SyntheticProvider, codec: WireForm) -> None:
        cfg = source._config
        self.codec: WireForm = codec
        self.kind = source.kind
        self.quote_ratio = source.quote_ratio if source.kind == "tick" else 0.0
        self.provider = cfg.provider
        self.symbols = list(cfg.symbols)
        self.keys = [routing_key(cfg.provider, s) for s in self.symbols]
        self.id_prefixes = [f"{cfg.provider}|{s}|" for s in self.symbols]
        # by series index and side code, for a whole block at once (fancy indexing in C)
        self._symbol_names = np.array(self.symbols, dtype=object)
        self._side_names = np.array(["" if x is None else x for x in SIDE_NAMES], dtype=object)
        self.prices = [cfg.start_price] * len(self.symbols)
        self.seqs = [0] * len(self.symbols)
        self.rng = source._rng
        self.start_us = to_epoch_us(source.start)
        self.step_us = 1_000_000 / source.rate_per_s
        n_symbols = len(self.symbols)
        sigma = cfg.price_volatility
        if self.kind == "bar":
            dt_days = 1.0 / _BAR_SUBSTEPS / _SECONDS_PER_DAY
        else:
            dt_days = n_symbols / source.rate_per_s / _SECONDS_PER_DAY
        self.drift = -0.5 * sigma * sigma * dt_days
        self.shock = sigma * math.sqrt(dt_days)
        self.remaining: int | None = source.count
        self.i = 0
        self._second: int | None = None  # the epoch second _second_prefix is for
        self._second_prefix = ""
        # Unseeded trades and quotes for a columnar publisher are drawn with NumPy, a block at
        # a time (see make_columns); seeded ones keep the draws of the loop below, whatever
        # the form, so a seed gives the same events as ever.
        self.vectorised = (
            codec == "columns" and source.seed is None and self.kind in ("tick", "quote")
        )
        # unseeded trades in msgpack form: drawn as those columns, then written as rows
        self.vectorised_rows = (
            codec == "msgpack" and source.seed is None and self.kind == "tick"
        ) and not self.quote_ratio
        self.np_rng = np.random.default_rng() if self.vectorised or self.vectorised_rows else None

    def _iso_second(self, second: int) -> str:
        """``YYYY-MM-DDTHH:MM:SS.`` of an epoch second, as ``isoformat_us`` writes it."""
        if second != self._second:
            self._second = second
            self._second_prefix = isoformat_us(from_epoch_us(second * 1_000_000))[:-7]
        return self._second_prefix

    def make(self, n: int, ingest: int | str | None) -> tuple[list[str], list[WireRow]]:
        """The next ``min(n, remaining)`` events: (routing keys, wire rows). ``ingest`` is
        their ``ingest_ts`` in wire form (µs int for msgpack, ISO text for JSON) or None."""
        if self.remaining is not None:
            n = min(n, self.remaining)
            self.remaining -= n
        if n <= 0:
            return [], []
        if self.vectorised_rows:
            ingest_us = ingest if isinstance(ingest, int) else None
            rows = self._tick_rows(self._draw(n, ingest_us), ingest_us)
        elif self.kind == "tick":
            rows = self._mixed(n, ingest) if self.quote_ratio else self._ticks(n, ingest)
        elif self.kind == "quote":
            rows = self._quotes(n, ingest)
        else:
            rows = self._bars(n, ingest)
        n_symbols = len(self.symbols)
        first = (self.i - n) % n_symbols
        keys = self.keys[first:] + self.keys[:first]
        return (keys * (n // n_symbols + 1))[:n], rows

    def make_columns(self, n: int, ingest_us: int | None) -> EventColumns | None:
        """The next ``min(n, remaining)`` events as columns (None when there are none), for
        a columnar publisher of an unseeded source (:attr:`vectorised`): the same process as
        the loop (a GBM step per event and symbol, trades at cents, quotes a cent or two around
        the path, the same sizes, sides, times, sequence numbers and quote rounds), drawn with
        NumPy for the whole block."""
        if self.remaining is not None:
            n = min(n, self.remaining)
            self.remaining -= n
        if n <= 0:
            return None
        return self._draw(n, ingest_us)

    def _draw(self, n: int, ingest_us: int | None) -> EventColumns:
        """:meth:`make_columns` of exactly ``n`` events (``remaining`` already counted)."""
        assert self.np_rng is not None
        rng = self.np_rng
        n_symbols = len(self.symbols)
        i = np.arange(self.i, self.i + n, dtype=np.int64)
        j = (i % n_symbols).astype(np.int32)
        if self.kind == "quote":
            is_quote = np.ones(n, np.bool_)
        elif self.quote_ratio:
            r = i // n_symbols
            ratio = self.quote_ratio
            is_quote = np.floor((r + 1) * ratio) > np.floor(r * ratio)
        else:
            is_quote = np.zeros(n, np.bool_)
        steps = self.drift + self.shock * rng.standard_normal(n)
        path = np.empty(n)
        seq = np.empty(n, np.int64)
        for k in range(min(n, n_symbols)):
            mine = slice(k, n, n_symbols)  # round robin: every n_symbols-th event
            s = int(j[k])
            walk = self.prices[s] * np.exp(np.cumsum(steps[mine]))
            path[mine] = walk
            self.prices[s] = float(walk[-1])
            count = len(walk)
            seq[mine] = np.arange(self.seqs[s], self.seqs[s] + count)
            self.seqs[s] += count
        self.i += n
        step_whole = int(self.step_us) if self.step_us.is_integer() else 0
        ts = self.start_us + (i * step_whole if step_whole else np.rint(i * self.step_us))
        cents = np.maximum(np.rint(path * 100.0), 1.0)
        is_tick = ~is_quote
        bid_cents = np.maximum(cents - rng.integers(0, 3, n), 1.0)
        ask_cents = bid_cents + rng.integers(1, 4, n)
        zeros = np.zeros(n)
        ids, id_ends = decimal_text(seq[is_tick])
        id_len = np.zeros(n, np.int64)
        id_len[is_tick] = np.diff(id_ends, prepend=0)
        bits = np.where(is_tick, _TICK_BITS, _QUOTE_BITS).astype(np.uint16)
        if ingest_us is not None:
            bits |= np.uint16(OPTIONAL_BITS["ingest_ts"])
        return EventColumns(
            series=tuple((self.provider, sym) for sym in self.symbols),
            series_idx=j,
            intervals=(None,),
            interval_idx=np.zeros(n, np.int32),
            ver=np.ones(n, np.int64),
            kind=np.where(is_tick, 0, 2).astype(np.uint8),
            src_ts=ts.astype(np.int64),
            seq=seq,
            present=bits,
            floats={
                "o": zeros,
                "h": zeros,
                "l": zeros,
                "c": np.where(is_tick, cents / 100.0, 0.0),
                "v": np.where(is_tick, rng.integers(1, 101, n).astype(np.float64), 0.0),
                "bid": np.where(is_quote, bid_cents / 100.0, 0.0),
                "ask": np.where(is_quote, ask_cents / 100.0, 0.0),
                "bid_size": np.where(is_quote, rng.integers(1, 21, n) * 100.0, 0.0),
                "ask_size": np.where(is_quote, rng.integers(1, 21, n) * 100.0, 0.0),
            },
            ingest_ts=np.full(n, ingest_us or 0, np.int64),
            side=np.where(is_tick, np.where(rng.random(n) < 0.5, 1, 2), 0).astype(np.uint8),
            trade_id=ids,
            trade_id_end=np.cumsum(id_len),
        )

    def _tick_rows(self, cols: EventColumns, ingest_us: int | None) -> list[WireRow]:
        """Trades drawn as columns (:meth:`_draw`) as msgpack wire rows: what :meth:`_ticks`
        makes of the same values (the event id from the time's text and the sequence number,
        the trade id the sequence number). The texts are made for the whole block
        (:func:`event_id_strs`, :func:`decimal_strs`) and the rows by ``map`` over the
        columns' lists: no Python code runs per row."""
        n = cols.n
        seq_texts = decimal_strs(cols.seq)
        fields = (
            cols.floats["c"].tolist(),
            cols.floats["v"].tolist(),
            seq_texts,
            self._side_names[cols.side].tolist(),
            repeat(self.provider, n),
            self._symbol_names[cols.series_idx].tolist(),
            repeat("tick", n),
            cols.src_ts.tolist(),
            cols.seq.tolist(),
            repeat(1, n),
            event_id_strs(cols),
        )
        if ingest_us is None:
            return list(map(_SeededTickRow, *fields))
        return list(map(_TickRow, repeat(ingest_us, n), *fields))

    def _mixed(self, n: int, ingest: int | str | None) -> list[WireRow]:
        """Trades and quotes, a whole round of the symbols at a time (see the module doc)."""
        rows: list[WireRow] = []
        n_symbols = len(self.symbols)
        ratio = self.quote_ratio
        end = self.i + n
        while self.i < end:
            r = self.i // n_symbols
            k = min(end, (r + 1) * n_symbols) - self.i
            if math.floor((r + 1) * ratio) > math.floor(r * ratio):
                rows += self._quotes(k, ingest)
            else:
                rows += self._ticks(k, ingest)
        return rows

    def _ticks(self, n: int, ingest: int | str | None) -> list[WireRow]:
        # The hot loop of the synthetic producer: locals only, and Random.gauss and
        # Random.randint(1, 100) inlined draw for draw as Random does them (gauss: two normals
        # per two uniforms, the second kept in rng.gauss_next; randint: getrandbits(7) until
        # below 100), so a seed still gives the same events.
        rng = self.rng
        bits = rng.getrandbits
        uniform = rng.random
        exp, log, sqrt, cos, sin = math.exp, math.log, math.sqrt, math.cos, math.sin
        two_pi = 2.0 * math.pi
        spare = rng.gauss_next  # type: ignore[attr-defined]
        drift, shock = self.drift, self.shock
        symbols, prices, seqs, id_prefixes = self.symbols, self.prices, self.seqs, self.id_prefixes
        n_symbols = len(symbols)
        provider = self.provider
        start_us, step_us = self.start_us, self.step_us
        as_text = self.codec == "json"
        as_columns = self.codec == "columns"
        ingest_us = ingest if isinstance(ingest, int) else None
        tick_bits = _TICK_BITS if ingest_us is None else _TICK_BITS | OPTIONAL_BITS["ingest_ts"]
        trade_sizes = _TRADE_SIZES
        # i * step is exact when the step is a whole number of µs (round() of it is a no-op)
        step_whole_us = int(step_us) if step_us.is_integer() else 0
        prefix = self._second_prefix
        # the first µs past the second `prefix` is for (none yet: below any event time)
        next_second_us = -(2**63) if self._second is None else (self._second + 1) * 1_000_000
        rows: list[WireRow] = []
        append = rows.append
        first = self.i
        j = first % n_symbols
        for i in range(first, first + n):
            seq = seqs[j]
            seqs[j] = seq + 1
            if spare is None:
                x2pi = uniform() * two_pi
                g2rad = sqrt(-2.0 * log(1.0 - uniform()))
                z = cos(x2pi) * g2rad
                spare = sin(x2pi) * g2rad
            else:
                z = spare
                spare = None
            p = prices[j] * exp(drift + shock * z)
            prices[j] = p
            ts_us = start_us + (i * step_whole_us if step_whole_us else round(i * step_us))
            if as_columns:  # a column block implies the event id: no text to make
                iso = ""
            else:
                if ts_us >= next_second_us:
                    second = ts_us // 1_000_000
                    prefix = self._iso_second(second)
                    next_second_us = (second + 1) * 1_000_000
                # six zero-padded digits: cheaper than a :06d format spec
                iso = f"{prefix}{str(ts_us - next_second_us + 2_000_000)[1:]}Z"
            seq_text = str(seq)
            size = bits(7)
            while size >= 100:
                size = bits(7)
            # round(p, 2) at a third of its cost: the integer nearest p * 100 is the one
            # round() finds from p's exact decimal value unless p * 100 is within float
            # error of a tie (then round() decides), and k / 100.0 is correctly rounded,
            # as round() is.
            y = p * 100.0
            k = round(y)
            c = k / 100.0 if y < 1e9 and -0.49999 < y - k < 0.49999 else round(p, 2)
            if c < 0.01:  # max(c, 0.01), without the call
                c = 0.01
            side = "buy" if uniform() < 0.5 else "sell"
            row: WireRow
            if as_columns:
                row = (
                    provider,
                    symbols[j],
                    0,
                    ts_us,
                    seq,
                    tick_bits,
                    c,
                    trade_sizes[size],
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    1 if side == "buy" else 2,
                    seq_text,
                    ingest_us or 0,
                )
            elif as_text:
                row = {
                    "ingest_ts": ingest,
                    "c": c,
                    "v": trade_sizes[size],
                    "trade_id": seq_text,
                    "side": side,
                    "provider": provider,
                    "symbol": symbols[j],
                    "kind": "tick",
                    "src_ts": iso,
                    "seq": seq,
                    "ver": 1,
                    "event_id": f"{id_prefixes[j]}{iso}|{seq_text}",
                }
                if ingest is None:
                    del row["ingest_ts"]
            elif ingest_us is None:
                row = _SeededTickRow(
                    c,
                    trade_sizes[size],
                    seq_text,
                    side,
                    provider,
                    symbols[j],
                    "tick",
                    ts_us,
                    seq,
                    1,
                    f"{id_prefixes[j]}{iso}|{seq_text}",
                )
            else:
                row = _TickRow(
                    ingest_us,
                    c,
                    trade_sizes[size],
                    seq_text,
                    side,
                    provider,
                    symbols[j],
                    "tick",
                    ts_us,
                    seq,
                    1,
                    f"{id_prefixes[j]}{iso}|{seq_text}",
                )
            append(row)
            j += 1
            if j == n_symbols:
                j = 0
        self.i = first + n
        rng.gauss_next = spare  # type: ignore[attr-defined]
        return rows

    def _randint(self, a: int, b: int) -> int:
        # Random.randint(a, b) draw for draw (a + getrandbits(k) until below the width).
        width = b - a + 1
        k = width.bit_length()
        r = self.rng.getrandbits(k)
        while r >= width:
            r = self.rng.getrandbits(k)
        return a + r

    def _ts(self, ts_us: int) -> tuple[int | str, str]:
        """(src_ts in wire form, its ISO text for the event id)."""
        sec, frac_us = divmod(ts_us, 1_000_000)
        iso = f"{self._iso_second(sec)}{frac_us:06d}Z"
        return (iso if self.codec == "json" else ts_us), iso

    def _quotes(self, n: int, ingest: int | str | None) -> list[WireRow]:
        gauss = self.rng.gauss
        randint = self._randint
        symbols, prices, seqs = self.symbols, self.prices, self.seqs
        n_symbols = len(symbols)
        rows: list[WireRow] = []
        quote_bits = _QUOTE_BITS | (OPTIONAL_BITS["ingest_ts"] if isinstance(ingest, int) else 0)
        for i in range(self.i, self.i + n):
            j = i % n_symbols
            seq = seqs[j]
            seqs[j] = seq + 1
            p = prices[j] * math.exp(self.drift + self.shock * gauss(0.0, 1.0))
            prices[j] = p
            ts_us = self.start_us + round(i * self.step_us)
            bid = max(round(p - 0.01 * randint(0, 2), 2), 0.01)
            ask = round(bid + 0.01 * randint(1, 3), 2)
            if self.codec == "columns":
                bid_size = float(randint(1, 20) * 100)
                rows.append(
                    (
                        self.provider,
                        symbols[j],
                        2,
                        ts_us,
                        seq,
                        quote_bits,
                        0.0,
                        0.0,
                        bid,
                        ask,
                        bid_size,
                        float(randint(1, 20) * 100),
                        0,
                        "",
                        ingest if isinstance(ingest, int) else 0,
                    )
                )
                continue
            src_ts, iso = self._ts(ts_us)
            row = {
                "ingest_ts": ingest,
                "bid": bid,
                "ask": ask,
                "bid_size": float(randint(1, 20) * 100),
                "ask_size": float(randint(1, 20) * 100),
                "provider": self.provider,
                "symbol": symbols[j],
                "kind": "quote",
                "src_ts": src_ts,
                "seq": seq,
                "ver": 1,
                "event_id": f"{self.id_prefixes[j]}{iso}|{seq}",
            }
            if ingest is None:
                del row["ingest_ts"]
            rows.append(row)
        self.i += n
        return rows

    def _bars(self, n: int, ingest: int | str | None) -> list[WireRow]:
        gauss = self.rng.gauss
        symbols, prices, seqs = self.symbols, self.prices, self.seqs
        n_symbols = len(symbols)
        drift, shock = self.drift, self.shock
        rows: list[WireRow] = []
        for i in range(self.i, self.i + n):
            j = i % n_symbols
            seq = seqs[j]
            seqs[j] = seq + 1
            src_ts, iso = self._ts(self.start_us + (i // n_symbols) * 1_000_000)
            path = [prices[j]]
            for _ in range(_BAR_SUBSTEPS):
                path.append(path[-1] * math.exp(drift + shock * gauss(0.0, 1.0)))
            prices[j] = path[-1]
            o, c = round(path[0], 4), round(path[-1], 4)
            row = {
                "interval": "1s",
                "ingest_ts": ingest,
                "o": o,
                "h": max(round(max(path), 4), o, c),
                "l": min(round(min(path), 4), o, c),
                "c": c,
                "v": float(self._randint(1, 50) * 100),
                "provider": self.provider,
                "symbol": symbols[j],
                "kind": "bar",
                "src_ts": src_ts,
                "seq": seq,
                "ver": 1,
                "event_id": f"{self.id_prefixes[j]}{iso}|{seq}",
            }
            if ingest is None:
                del row["ingest_ts"]
            rows.append(row)
        self.i += n
        return rows


class SyntheticProvider:
    """GBM ticks, quotes or 1 s bars for ``config.symbols`` (see module doc).

    ``rate_per_s`` is the aggregate target (events/s over all symbols); default
    ``tick_rate * len(symbols)``. ``count`` ends the stream after that many events.
    ``quote_ratio`` (default ``config.quote_ratio``): the share of quotes among ticks.
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
        quote_ratio: float | None = None,
    ) -> None:
        if not config.symbols:
            raise ValueError("producers.synthetic.symbols is empty")
        self._config = config
        self.kind: EventKind = kind or config.kind
        self.quote_ratio = config.quote_ratio if quote_ratio is None else quote_ratio
        if not 0.0 <= self.quote_ratio <= 1.0:
            raise ValueError(f"quote_ratio must be between 0 and 1, got {self.quote_ratio}")
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
        # events handed out so far by wire_blocks/events (a stop must publish all of them)
        self.made = 0
        self._wakeup: asyncio.Future[None] | None = None
        # Events are built without per-event validation: check once here that the configured
        # names make valid events (a pydantic error is a ValueError).
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

    def _ingest(self, codec: WireForm) -> int | str | None:
        """``ingest_ts`` of events made now, in wire form (None when seeded)."""
        if self.seed is not None:
            return None
        now_us = time.time_ns() // 1000
        return isoformat_us(from_epoch_us(now_us)) if codec == "json" else now_us

    @staticmethod
    def _event(row: WireRow) -> StreamEvent:
        """The ``StreamEvent`` of a msgpack-form row (``event_to_dict`` of it gives the row)."""
        fields = row_dict(row)
        fields["src_ts"] = from_epoch_us(fields["src_ts"])
        ingest = fields.get("ingest_ts")
        if ingest is not None:
            fields["ingest_ts"] = from_epoch_us(ingest)
        return StreamEvent.trusted(**fields)

    def generate(self) -> Iterator[StreamEvent]:
        """Events as fast as they can be made (no pacing); ends after ``count`` if set."""
        walk = _Walk(self, "msgpack")
        while True:
            _keys, rows = walk.make(_GENERATE_BLOCK_EVENTS, self._ingest("msgpack"))
            if not rows:
                return
            for row in rows:
                yield self._event(row)

    async def wire_blocks(self, codec: WireForm = "msgpack") -> AsyncGenerator[WireBlock, None]:
        """The events of :meth:`generate` in wire form, paced at ``rate_per_s``: each wakeup
        (at most every ``_TICK_S``) makes every event due by then as one block (at most
        ``_MAX_BLOCK_EVENTS``). Ends after ``count`` events, or once :meth:`aclose` is
        called: then it wakes at once, makes the events due by that moment as a last block
        and ends (so a run of ``d`` seconds makes ``rate * d`` events, not one tick less).

        Pacing is a token bucket filled at ``rate_per_s``: it starts empty (no opening spike)
        and holds a quarter second of events, so the source catches up after the loop was
        busy for a while instead of losing that time, yet never floods after a long stall.
        """
        walk = _Walk(self, codec)
        rate = self.rate_per_s
        burst = max(1.0, rate / 4)
        clock = time.monotonic
        loop = asyncio.get_running_loop()
        tokens = 0.0
        last = clock()
        while True:
            closing = self._closed
            now = clock()
            tokens = min(burst, tokens + (now - last) * rate)
            last = now
            due = min(int(tokens), _MAX_BLOCK_EVENTS)
            if due > 0:
                if walk.vectorised:
                    stamp = self._ingest(codec)
                    cols = walk.make_columns(due, stamp if isinstance(stamp, int) else None)
                    if cols is None:
                        return
                    block = WireBlock(codec, [], [], cols)
                else:
                    keys, rows = walk.make(due, self._ingest(codec))
                    if not rows:
                        return
                    block = WireBlock(codec, keys, rows)
                tokens -= len(block)
                self.made += len(block)
                yield block
            if closing or walk.remaining == 0:
                return
            if tokens >= _MAX_BLOCK_EVENTS:
                await asyncio.sleep(0)  # behind (or unpaced): let the publisher run, go on
                continue
            # asyncio.sleep, but one that aclose() can cut short
            wakeup = self._wakeup = loop.create_future()
            timer = loop.call_later(max(_TICK_S, (1.0 - tokens) / rate), _resolve, wakeup)
            try:
                await wakeup
            finally:
                timer.cancel()
                self._wakeup = None

    async def events(self) -> AsyncIterator[StreamEvent]:
        """The same events as :meth:`generate`, paced at ``rate_per_s`` (see
        :meth:`wire_blocks`)."""
        async for block in self.wire_blocks("msgpack"):
            for row in block.rows:
                if self._closed:
                    return
                yield self._event(row)

    async def aclose(self) -> None:
        """Stop: ``events()`` ends at once; ``wire_blocks()`` hands over the events due by now
        in one last block, then ends."""
        self._closed = True
        if self._wakeup is not None:
            _resolve(self._wakeup)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
