"""Synthetic GBM producer: determinism, shapes of ticks/quotes/bars, pacing."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from market_data_core.codec import (
    CodecName,
    decode_events,
    encode_event,
    encode_events,
    event_to_dict,
)
from market_data_core.columnar import EventColumns, is_block
from market_data_core.config import SyntheticProducerConfig
from market_data_core.contracts import StreamEvent
from market_data_core.protocols import routing_key
from market_data_core.timeutil import from_epoch_us, to_epoch_us
from market_data_pipeline.producers.publisher import _blocks_of_columns, encode_batch, encode_rows
from market_data_pipeline.producers.synthetic import (
    SEEDED_START,
    SyntheticProvider,
    _Walk,
    row_dict,
)

CFG = SyntheticProducerConfig(symbols=["SPY", "AAPL", "MSFT"], tick_rate=2.0, price_volatility=0.3)


@pytest.mark.parametrize("kind", ["tick", "quote", "bar"])
def test_same_seed_same_events(kind: str) -> None:
    a = list(SyntheticProvider(CFG, seed=42, kind=kind, count=300).generate())  # type: ignore[arg-type]
    b = list(SyntheticProvider(CFG, seed=42, kind=kind, count=300).generate())  # type: ignore[arg-type]
    assert a == b
    assert [encode_event(e) for e in a] == [encode_event(e) for e in b]
    c = list(SyntheticProvider(CFG, seed=43, kind=kind, count=300).generate())  # type: ignore[arg-type]
    assert [e.event_id for e in a] == [e.event_id for e in c]  # same clock, same ids
    assert a != c  # different prices


def test_ticks_round_robin_with_event_time_from_rate() -> None:
    evs = list(SyntheticProvider(CFG, seed=1, rate_per_s=1000, count=9).generate())
    assert [e.symbol for e in evs] == ["SPY", "AAPL", "MSFT"] * 3
    assert evs[0].src_ts == SEEDED_START
    assert evs[5].src_ts - evs[0].src_ts == timedelta(milliseconds=5)
    assert [e.seq for e in evs if e.symbol == "SPY"] == [0, 1, 2]
    assert all(e.kind == "tick" and e.c and e.v and e.side in ("buy", "sell") for e in evs)
    assert all(e.ingest_ts is None for e in evs)
    assert len({e.event_id for e in evs}) == 9


def test_quotes_are_never_crossed() -> None:
    evs = list(SyntheticProvider(CFG, seed=5, kind="quote", count=3000).generate())
    assert all(e.bid is not None and e.ask is not None and e.bid < e.ask for e in evs)


def test_bars_are_one_second_and_consistent() -> None:
    evs = list(SyntheticProvider(CFG, seed=9, kind="bar", count=30).generate())
    spy = [e for e in evs if e.symbol == "SPY"]
    assert len(spy) == 10
    assert all(e.interval == "1s" and e.src_ts.microsecond == 0 for e in evs)
    assert [(b.src_ts - spy[0].src_ts).total_seconds() for b in spy] == list(range(10))
    for prev, cur in itertools.pairwise(spy):
        assert cur.o == prev.c  # GBM path continues across bars
    for e in evs:
        assert e.l <= min(e.o, e.c) <= max(e.o, e.c) <= e.h  # type: ignore[operator]


def test_prices_follow_the_volatility() -> None:
    flat = SyntheticProducerConfig(symbols=["X"], price_volatility=0.0, start_price=50.0)
    evs = list(SyntheticProvider(flat, seed=1, count=100).generate())
    assert {e.c for e in evs} == {50.0}
    wild = SyntheticProducerConfig(symbols=["X"], price_volatility=5.0, tick_rate=0.01)
    prices = {e.c for e in SyntheticProvider(wild, seed=1, count=100).generate()}
    assert len(prices) > 50


def test_unseeded_uses_wall_clock_and_stamps_ingest() -> None:
    ev = next(SyntheticProvider(CFG, count=1).generate())
    assert ev.ingest_ts is not None
    assert abs((ev.ingest_ts - ev.src_ts).total_seconds()) < 5


def test_events_round_trip_the_codec() -> None:
    for kind in ("tick", "quote", "bar"):
        for ev in SyntheticProvider(CFG, seed=2, kind=kind, count=20).generate():  # type: ignore[arg-type]
            assert decode_events(encode_event(ev)).events == [ev]


async def test_events_are_paced_at_the_requested_rate() -> None:
    provider = SyntheticProvider(CFG, seed=3, rate_per_s=2000, count=1000)
    started = time.monotonic()
    got = [e async for e in provider.events()]
    elapsed = time.monotonic() - started
    assert len(got) == 1000
    assert 0.4 <= elapsed < 1.5  # 1000 events at 2000/s


async def test_aclose_ends_the_stream() -> None:
    provider = SyntheticProvider(CFG, seed=3, rate_per_s=100_000)
    n = 0
    async for _ in provider.events():
        n += 1
        if n == 10:
            await provider.aclose()
    assert 10 <= n < 1000


def test_rejects_empty_symbols() -> None:
    with pytest.raises(ValueError, match="symbols"):
        SyntheticProvider(SyntheticProducerConfig(symbols=[]))


@pytest.mark.parametrize("kind", ["tick", "quote", "bar"])
def test_events_built_without_validation_pass_validation(kind: str) -> None:
    """The generator skips per-event validation (StreamEvent.trusted); what it makes must be
    exactly what validation would have accepted."""
    from market_data_core.config import SyntheticProducerConfig
    from market_data_core.contracts import StreamEvent
    from market_data_pipeline.producers.synthetic import SyntheticProvider

    cfg = SyntheticProducerConfig(symbols=["SPY", "BRK.B", "EUR/USD"], price_volatility=0.5)
    gen = SyntheticProvider(cfg, seed=3, kind=kind, rate_per_s=1000.0, count=3000).generate()  # type: ignore[arg-type]
    for ev in gen:
        assert StreamEvent.model_validate(ev.model_dump()) == ev


def test_bad_symbol_in_config_is_refused_up_front() -> None:
    from market_data_core.config import SyntheticProducerConfig
    from market_data_pipeline.producers.synthetic import SyntheticProvider

    with pytest.raises(ValueError, match="malformed symbol"):
        SyntheticProvider(SyntheticProducerConfig(symbols=["SP|Y"]), seed=1)


# --- the wire-form fast path -------------------------------------------------------------


def reference_events(
    cfg: SyntheticProducerConfig,
    *,
    seed: int,
    kind: str = "tick",
    rate_per_s: float | None = None,
    count: int,
    start: datetime = SEEDED_START,
) -> list[StreamEvent]:
    """The generator as it was before the wire-form fast path (one validated-by-construction
    StreamEvent per event): the fast path must make exactly these events, byte for byte."""
    rate = rate_per_s or cfg.tick_rate * len(cfg.symbols)
    if kind == "bar":
        start = start.replace(microsecond=0)
    symbols = list(cfg.symbols)
    n_symbols = len(symbols)
    rng = random.Random(seed)
    sigma = cfg.price_volatility
    prices = dict.fromkeys(symbols, cfg.start_price)
    seqs = dict.fromkeys(symbols, 0)
    start_us = to_epoch_us(start)
    step_us = 1_000_000 / rate
    dt_days = (1.0 / 8 if kind == "bar" else n_symbols / rate) / 86_400.0
    drift = -0.5 * sigma * sigma * dt_days
    shock = sigma * math.sqrt(dt_days)
    out: list[StreamEvent] = []
    for i in range(count):
        symbol = symbols[i % n_symbols]
        seq = seqs[symbol]
        seqs[symbol] = seq + 1
        p = prices[symbol]
        if kind == "bar":
            src_ts = from_epoch_us(start_us + (i // n_symbols) * 1_000_000)
            path = [p]
            for _ in range(8):
                path.append(path[-1] * math.exp(drift + shock * rng.gauss(0.0, 1.0)))
            prices[symbol] = path[-1]
            o, c = round(path[0], 4), round(path[-1], 4)
            ev = StreamEvent.trusted(
                provider=cfg.provider,
                symbol=symbol,
                kind="bar",
                interval="1s",
                src_ts=src_ts,
                ingest_ts=None,
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
            if kind == "tick":
                ev = StreamEvent.trusted(
                    provider=cfg.provider,
                    symbol=symbol,
                    kind="tick",
                    src_ts=src_ts,
                    ingest_ts=None,
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
                    ingest_ts=None,
                    bid=bid,
                    ask=ask,
                    bid_size=float(rng.randint(1, 20) * 100),
                    ask_size=float(rng.randint(1, 20) * 100),
                    seq=seq,
                )
        out.append(ev)
    return out


REF_CFG = SyntheticProducerConfig(
    provider="ref_p", symbols=["SPY", "BRK.B", "EUR/USD", "X"], price_volatility=0.4
)


@pytest.mark.parametrize("kind", ["tick", "quote", "bar"])
@pytest.mark.parametrize("rate", [0.5, 3.0, 1000.0, 20_000.0, 77_777.7])
def test_generate_makes_the_reference_events_byte_for_byte(kind: str, rate: float) -> None:
    for seed in range(8):
        want = reference_events(REF_CFG, seed=seed, kind=kind, rate_per_s=rate, count=700)
        got = list(
            SyntheticProvider(
                REF_CFG,
                seed=seed,
                kind=kind,  # type: ignore[arg-type]
                rate_per_s=rate,
                count=700,
            ).generate()
        )
        assert got == want
        assert encode_events(got) == encode_events(want)
        assert encode_events(got, "json") == encode_events(want, "json")


def _wire(
    cfg: SyntheticProducerConfig, codec: CodecName, **kw: Any
) -> tuple[list[str], list[dict[str, Any]]]:
    walk = _Walk(SyntheticProvider(cfg, **kw), codec)
    keys: list[str] = []
    rows: list[dict[str, Any]] = []
    # uneven block sizes: the walk's state (symbol, seq, spare normal) carries across blocks
    sizes = itertools.cycle([1, 7, 64, 333, 2])
    while True:
        k, r = walk.make(next(sizes), None)
        if not r:
            return keys, rows
        keys += k
        rows += [row_dict(row) for row in r]


@pytest.mark.parametrize("kind", ["tick", "quote", "bar"])
@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_wire_rows_publish_the_same_bytes_as_the_events(kind: str, codec: CodecName) -> None:
    for seed, rate in itertools.product(range(6), [5.0, 20_000.0]):
        want = reference_events(REF_CFG, seed=seed, kind=kind, rate_per_s=rate, count=1000)
        walk = _Walk(
            SyntheticProvider(REF_CFG, seed=seed, kind=kind, rate_per_s=rate, count=1000),  # type: ignore[arg-type]
            codec,
        )
        keys, raw_rows = walk.make(1000, None)  # as the publisher gets them (Structs or dicts)
        rows = [row_dict(r) for r in raw_rows]
        assert rows == [event_to_dict(e, codec=codec) for e in want]
        assert [list(r) for r in rows] == [list(event_to_dict(e, codec=codec)) for e in want]
        assert keys == [routing_key(e.provider, e.symbol) for e in want]
        pairs = list(zip(keys, raw_rows, strict=True))
        for pack in (1, 50):
            for start in range(0, 1000, 500):  # the publisher encodes batches of 500
                items, per_provider = encode_rows(pairs[start : start + 500], codec, pack)
                assert items == encode_batch(want[start : start + 500], codec, pack)
                assert per_provider == {"ref_p": 500}


@pytest.mark.parametrize("kind", ["tick", "quote", "bar"])
def test_unseeded_wire_rows_carry_ingest_ts(kind: str) -> None:
    provider = SyntheticProvider(CFG, kind=kind, rate_per_s=1000.0)  # type: ignore[arg-type]
    before_us = time.time_ns() // 1000
    _keys, raw_rows = _Walk(provider, "msgpack").make(10, provider._ingest("msgpack"))
    rows = [row_dict(r) for r in raw_rows]
    after_us = time.time_ns() // 1000
    assert all(before_us <= r["ingest_ts"] <= after_us for r in rows)
    for row in rows:  # the row of the event, key order included
        ev = SyntheticProvider._event(row)
        assert list(event_to_dict(ev, codec="msgpack").items()) == list(row.items())
        assert StreamEvent.model_validate(ev.model_dump()) == ev
    items, _ = encode_rows([("k", r) for r in raw_rows], "msgpack", 50)
    assert items == [("k", encode_events([SyntheticProvider._event(r) for r in raw_rows]))]
    _keys, text_rows = _Walk(provider, "json").make(3, provider._ingest("json"))
    for r in text_rows:
        assert decode_events(json.dumps(r).encode()).events[0].ingest_ts is not None


async def test_wire_blocks_are_paced_in_ticks_not_per_event() -> None:
    provider = SyntheticProvider(CFG, seed=3, rate_per_s=20_000, count=10_000)
    started = time.monotonic()
    blocks = [b async for b in provider.wire_blocks("msgpack")]
    elapsed = time.monotonic() - started
    assert sum(len(b) for b in blocks) == 10_000
    assert 0.4 <= elapsed < 1.0  # 10k events at 20k/s
    # one block per wakeup of >= 20 ms, not one per event or per few events
    assert len(blocks) <= 0.6 / 0.02
    rows = [row_dict(r) for b in blocks for r in b.rows]
    want = reference_events(CFG, seed=3, rate_per_s=20_000, count=10_000)
    assert rows == [event_to_dict(e, codec="msgpack") for e in want]


async def test_wire_blocks_low_rate_wake_only_when_an_event_is_due() -> None:
    provider = SyntheticProvider(CFG, seed=3, rate_per_s=10, count=4)
    started = time.monotonic()
    blocks = [b async for b in provider.wire_blocks("json")]
    elapsed = time.monotonic() - started
    assert [len(b) for b in blocks] == [1, 1, 1, 1]
    assert 0.3 <= elapsed < 0.8
    assert all(b.codec == "json" for b in blocks)


async def test_wire_blocks_end_on_aclose_with_the_events_due_by_then() -> None:
    provider = SyntheticProvider(CFG, seed=3, rate_per_s=10_000)
    blocks = provider.wire_blocks("msgpack")
    first = await anext(blocks)
    started = time.monotonic()
    asyncio.get_running_loop().call_later(0.03, lambda: asyncio.ensure_future(provider.aclose()))
    rest = [b async for b in blocks]
    assert time.monotonic() - started < 0.045  # woken by aclose, not at the end of its tick
    assert len(rest) == 1  # one last block: the events due when it was closed
    assert 250 <= len(rest[0]) <= 450  # ~30 ms at 10k/s
    assert provider.made == len(first) + len(rest[0])


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_tick_prices_round_like_round_even_next_to_a_tie(codec: CodecName) -> None:
    """Ticks round prices to cents without calling round(p, 2) in the common case; next to a
    tie (and on one) the result must still be round()'s."""
    for cents in (1, 2, 5, 12, 1005, 123_456, 99_999_999):
        for tie in ((cents + 0.5) / 100.0, cents / 100.0 + 0.005):
            for p in (math.nextafter(tie, 0.0), tie, math.nextafter(tie, math.inf)):
                cfg = SyntheticProducerConfig(symbols=["X"], price_volatility=0.0, start_price=p)
                want = reference_events(cfg, seed=1, rate_per_s=10.0, count=3)
                _keys, rows = _wire(cfg, codec, seed=1, rate_per_s=10.0, count=3)
                assert [r["c"] for r in rows] == [e.c for e in want] == [max(round(p, 2), 0.01)] * 3


async def test_unpaced_wire_blocks_stay_bounded_through_aclose() -> None:
    """At a rate far above what can be made (the unpaced benchmark), the bucket holds
    millions of due events: blocks, the last one at aclose included, stay small."""
    provider = SyntheticProvider(CFG, seed=3, rate_per_s=1e9)
    sizes = []
    async for block in provider.wire_blocks("msgpack"):
        sizes.append(len(block))
        if len(sizes) == 3:
            await provider.aclose()
    assert len(sizes) == 4
    assert max(sizes) <= 2000


@pytest.mark.parametrize("kind", ["tick", "quote", "bar"])
@pytest.mark.parametrize("rate", [7.0, 20_000.0])
@pytest.mark.parametrize("start_us", [999_999, 500_000])
def test_event_times_and_ids_are_right_across_the_epoch(
    kind: str, rate: float, start_us: int
) -> None:
    """Second boundaries (the cached ISO prefix) also before 1970 (negative epoch µs), the
    first event in second -1 included."""
    start = datetime(1969, 12, 31, 23, 59, 58 if start_us == 999_999 else 59, start_us, tzinfo=UTC)
    n = 100 if rate < 100 else 60_000
    want = reference_events(REF_CFG, seed=2, kind=kind, rate_per_s=rate, count=n, start=start)
    provider = SyntheticProvider(REF_CFG, seed=2, kind=kind, rate_per_s=rate, count=n, start=start)  # type: ignore[arg-type]
    got = list(provider.generate())
    assert got == want
    assert encode_events(got, "json") == encode_events(want, "json")


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_quote_ratio_mixes_quotes_with_trades(ratio: float, codec: CodecName) -> None:
    """issue 15: ``quote_ratio`` makes that share of each symbol's events quotes, in whole
    rounds of the symbols, on one price path; the wire rows are the events' own dicts
    whatever the block sizes, and a ratio of 0 is the trades-only stream."""
    n = 4000
    evs = list(SyntheticProvider(REF_CFG, seed=3, rate_per_s=2000.0, count=n,
                                 quote_ratio=ratio).generate())  # fmt: skip
    for symbol in REF_CFG.symbols:
        mine = [e for e in evs if e.symbol == symbol]
        assert sum(e.kind == "quote" for e in mine) == int(len(mine) * ratio)
        assert [e.seq for e in mine] == list(range(len(mine)))
    assert all(e.bid is not None and e.ask is not None and e.bid < e.ask
               for e in evs if e.kind == "quote")  # fmt: skip
    _keys, rows = _wire(REF_CFG, codec, seed=3, rate_per_s=2000.0, count=n, quote_ratio=ratio)
    assert rows == [event_to_dict(e, codec=codec) for e in evs]
    plain = list(SyntheticProvider(REF_CFG, seed=3, count=500).generate())
    assert list(SyntheticProvider(REF_CFG, seed=3, count=500, quote_ratio=0.0).generate()) == plain
    with pytest.raises(ValueError, match="quote_ratio"):
        SyntheticProvider(REF_CFG, quote_ratio=1.5)


@pytest.mark.parametrize("kind", ["tick", "quote", "bar", "mixed"])
@pytest.mark.parametrize("ingest", [False, True])
def test_column_blocks_carry_the_events_of_the_rows(kind: str, ingest: bool) -> None:
    """``pack_as="columns"``: each entry a block of up to ``pack`` events of its key, and the
    blocks decode (through the consumer's validation) to exactly the events of the rows, be
    they msgpack-form rows or the column rows a columnar publisher takes from the walk (the
    same draws: the same events)."""
    stamp = 1_767_000_000_000_000 if ingest else None
    options: dict[str, Any] = (
        {"kind": "tick", "quote_ratio": 0.5} if kind == "mixed" else {"kind": kind}
    )
    for seed in range(3):

        def provider(seed: int = seed) -> SyntheticProvider:
            return SyntheticProvider(REF_CFG, seed=seed, rate_per_s=2000.0, count=1000, **options)

        keys, raw_rows = _Walk(provider(), "msgpack").make(1000, stamp)
        want = [SyntheticProvider._event(r) for r in raw_rows]
        column_keys, column_rows = _Walk(provider(), "columns").make(1000, stamp)
        assert column_keys == keys
        assert kind == "bar" or all(type(r) is tuple for r in column_rows)
        for rows in (raw_rows, column_rows):
            pairs = list(zip(keys, rows, strict=True))
            for pack in (1, 7, 50):
                items, per_provider = encode_rows(pairs, "msgpack", pack, "columns")
                assert per_provider == {"ref_p": 1000}
                assert all(is_block(payload) for _key, payload in items)
                got: dict[str, list[StreamEvent]] = {}
                for key, payload in items:
                    batch = decode_events(payload)
                    assert not batch.errors and 1 <= len(batch.events) <= pack
                    assert {routing_key(e.provider, e.symbol) for e in batch.events} == {key}
                    got.setdefault(key, []).extend(batch.events)
                for key in set(keys):
                    mine = [e for k, e in zip(keys, want, strict=True) if k == key]
                    assert [e.__dict__ for e in got[key]] == [e.__dict__ for e in mine]


@pytest.mark.parametrize(
    "options", [{"kind": "tick"}, {"kind": "quote"}, {"kind": "tick", "quote_ratio": 0.5}]
)
def test_unseeded_columns_are_valid_events_of_the_same_process(options: dict[str, Any]) -> None:
    """An unseeded columnar walk draws a block at a time with NumPy: every event valid
    (through the consumer's decode), trades at cents, quotes a cent or two apart, times
    ``start + i * step``, per-symbol sequence numbers from 0, quote rounds as the loop's."""
    provider = SyntheticProvider(REF_CFG, rate_per_s=2000.0, count=2410, **options)
    walk = _Walk(provider, "columns")
    assert walk.vectorised
    stamp = 1_767_000_000_000_000
    parts = []
    for size in (1, 7, 64, 333, 2000, 5):
        cols = walk.make_columns(size, stamp)
        assert cols is not None
        parts.append(cols)
    assert walk.make_columns(10, stamp) is None  # count reached
    events: list[StreamEvent] = []
    items, _ = _blocks_of_columns(EventColumns.concat(parts), 50)
    for _key, payload in items:
        batch = decode_events(payload)
        assert not batch.errors
        events += batch.events
    assert len(events) == 2410
    by_symbol: dict[str, list[StreamEvent]] = {}
    for e in events:
        by_symbol.setdefault(e.symbol, []).append(e)
    n_symbols = len(REF_CFG.symbols)
    for k, symbol in enumerate(REF_CFG.symbols):
        mine = by_symbol[symbol]
        assert [e.seq for e in mine] == list(range(len(mine)))
        for r, e in enumerate(mine):
            i = r * n_symbols + k
            assert e.src_ts == provider.start + timedelta(microseconds=round(i * 500))
            assert e.ingest_ts == from_epoch_us(stamp)
            quote_round = options.get("kind") == "quote" or (
                "quote_ratio" in options
                and math.floor((i // n_symbols + 1) * 0.5) > math.floor((i // n_symbols) * 0.5)
            )
            assert e.kind == ("quote" if quote_round else "tick")
            if e.kind == "tick":
                assert e.c is not None and round(e.c, 2) == e.c and e.c >= 0.01
                assert e.v in {float(x) for x in range(1, 101)} and e.trade_id == str(e.seq)
                assert e.side in ("buy", "sell")
            else:
                assert e.bid is not None and e.ask is not None
                assert 1 <= round((e.ask - e.bid) * 100) <= 3 and e.bid >= 0.01
                assert e.bid_size in {100.0 * x for x in range(1, 21)}


def test_unseeded_msgpack_trades_are_drawn_as_columns_and_written_as_the_loops_rows() -> None:
    """Unseeded trades in msgpack form are drawn a block at a time with NumPy and written as
    the loop's wire rows: each row is exactly ``event_to_dict`` of its event (keys in order),
    every event valid through the consumer's decode, per-symbol sequence numbers from 0, times
    ``start + i * step``, trades at cents, the trade id the sequence number."""
    provider = SyntheticProvider(REF_CFG, rate_per_s=2000.0, count=2410)
    walk = _Walk(provider, "msgpack")
    assert walk.vectorised_rows and not walk.vectorised
    stamp = 1_767_000_000_000_000
    keys: list[str] = []
    rows: list[Any] = []
    for size in (1, 7, 64, 333, 2000, 5):
        k, r = walk.make(size, stamp)
        keys += k
        rows += r
    assert walk.make(10, stamp) == ([], [])  # count reached
    assert len(rows) == 2410
    events = [SyntheticProvider._event(row_dict(r)) for r in rows]
    for key, row, ev in zip(keys, rows, events, strict=True):
        assert list(event_to_dict(ev, codec="msgpack").items()) == list(row_dict(row).items())
        assert key == routing_key(ev.provider, ev.symbol)
    items, _ = encode_rows(list(zip(keys, rows, strict=True)), "msgpack", 1)
    decoded = [decode_events(payload) for _key, payload in items]
    assert all(not b.errors for b in decoded)
    assert [b.events[0] for b in decoded] == events
    n_symbols = len(REF_CFG.symbols)
    for k, symbol in enumerate(REF_CFG.symbols):
        mine = [e for e in events if e.symbol == symbol]
        assert [e.seq for e in mine] == list(range(len(mine)))
        for r, e in enumerate(mine):
            i = r * n_symbols + k
            assert e.src_ts == provider.start + timedelta(microseconds=round(i * 500))
            assert e.ingest_ts == from_epoch_us(stamp) and e.kind == "tick"
            assert e.c is not None and round(e.c, 2) == e.c and e.c >= 0.01
            assert e.v in {float(x) for x in range(1, 101)} and e.trade_id == str(e.seq)
            assert e.side in ("buy", "sell")
    # a seed keeps the loop's draws; quotes in the mix keep the loop too
    assert not _Walk(SyntheticProvider(REF_CFG, seed=1), "msgpack").vectorised_rows
    assert not _Walk(SyntheticProvider(REF_CFG, quote_ratio=0.5), "msgpack").vectorised_rows
