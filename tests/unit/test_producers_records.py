"""``MergedRecords``: trades and quotes given apart, published as one stream interleaved by
event time, each input in its own order (an unsorted row stays where its input put it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from market_data_core.contracts import StreamEvent
from market_data_pipeline.producers.records import MergedRecords, RecordsProvider

T0 = datetime(2024, 1, 2, 9, 30, tzinfo=UTC)


def _s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def _all(provider: MergedRecords) -> list[StreamEvent]:
    return [e async for e in provider.events()]


async def test_interleaved_by_event_time_each_input_in_its_own_order() -> None:
    trades = RecordsProvider(
        [
            {"ts": _s(1), "price": 10.0, "size": 1.0},
            {"ts": _s(4), "price": 11.0, "size": 1.0},
            {"ts": _s(2), "price": 12.0, "size": 1.0},  # out of order: stays after 4 s
            {"ts": _s(6), "price": -1.0, "size": 1.0},  # not a price: an error, not an event
        ],
        symbol="X",
    )
    quotes = RecordsProvider(
        [
            {"ts": _s(0), "bid": 9.9, "ask": 10.1},
            {"ts": _s(1), "bid": 9.8, "ask": 10.2},  # ties with the trade at 1 s: after it
            {"ts": _s(3), "bid": 9.7, "ask": 10.3},
            {"ts": _s(9), "bid": 9.6, "ask": 10.4},
        ],
        kind="quote",
        symbol="X",
    )
    merged = MergedRecords([trades, quotes])
    events = await _all(merged)
    assert [(e.kind, (e.src_ts - T0).seconds) for e in events] == [
        ("quote", 0),
        ("tick", 1),
        ("quote", 1),
        ("quote", 3),
        ("tick", 4),
        ("tick", 2),
        ("quote", 9),
    ]
    assert merged.series == {("user", "X")}
    assert [(e.path, e.line, e.reason) for e in merged.errors] == [("<trades>", 3, "validation")]
    assert merged.name == "user"
