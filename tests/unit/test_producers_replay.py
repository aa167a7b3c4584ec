"""Replay providers without servers: speed pacing, bad-row callback, store paging."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from market_data_core.contracts import Bar, StreamEvent
from market_data_core.protocols import TickIngestResult, UpsertResult
from market_data_pipeline.producers import datasets
from market_data_pipeline.producers.datasets import DatasetSpec, RowError, load_registry
from market_data_pipeline.producers.replay import (
    DatasetReplayProvider,
    StoreBarsReplayProvider,
    bar_to_event,
)
from tests.conftest import SHIPPED_REGISTRY

REGISTRY = SHIPPED_REGISTRY


async def test_speed_replays_event_time_faster_than_wall_time() -> None:
    spec = load_registry(REGISTRY)["ftx_btc_perp_1m"]
    start = datetime(2022, 1, 3, tzinfo=UTC)
    provider = DatasetReplayProvider(
        spec, start=start, end=start + timedelta(minutes=11), speed=1200
    )
    got, seen_at = [], []
    async for e in provider.events():
        got.append(e)
        seen_at.append(time.monotonic())
    assert len(got) == 11
    elapsed = seen_at[-1] - seen_at[0]  # from the first event: skipping earlier rows is free
    assert 0.45 <= elapsed < 1.2  # 10 minutes of event time at 1200x = 0.5 s
    assert all(e.ingest_ts is not None for e in got)


def _csv_trades(folder: Path, text: str) -> DatasetSpec:
    """A dataset of trades (columns t in epoch seconds, price p, size q) in ``folder``."""
    (folder / "t.csv").write_text(text)
    (folder / "d.yaml").write_text(
        "datasets:\n  t:\n    path: t.csv\n    provider: p\n    symbol: S\n    kind: tick\n"
        "    timestamp: {column: t, format: epoch_s}\n    columns: {c: p, v: q}\n"
    )
    return load_registry(folder / "d.yaml")["t"]


async def test_bad_rows_reach_the_callback_and_the_replay_goes_on(tmp_path: Path) -> None:
    spec = _csv_trades(tmp_path, "t,p,q\n1,10,1\n2,x,1\n3,11,-1\n4,12,1\n")
    seen: list[RowError] = []

    async def on_error(err: RowError) -> None:
        seen.append(err)

    provider = DatasetReplayProvider(spec, on_error=on_error)
    got = [e async for e in provider.events()]
    assert [e.c for e in got] == [10.0, 12.0]
    assert [(e.line, e.reason) for e in seen] == [(3, "parse"), (4, "validation")]
    assert provider.errors == seen
    assert provider.rows_read == 4


def test_the_windows_last_events_come_without_reading_the_rest_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run of rows at the window's last time ends at the first row past it, not at the
    end of the file (a short replay of a large file waited for the whole file to be parsed:
    ~1 s for ``ftx_btc_perp_1m`` on a slow machine)."""
    spec = _csv_trades(tmp_path, "t,p,q\n1,10,1\n2,11,1\n2,12,1\n3,13,1\n4,14,1\n5,15,1\n")
    read: list[int] = []
    csv_rows = datasets._csv_rows

    def counted(*args: Any) -> Iterator[Any]:
        for row in csv_rows(*args):
            read.append(row[0])
            yield row

    monkeypatch.setattr(datasets, "_csv_rows", counted)
    events = datasets.read_dataset(spec, end=datetime.fromtimestamp(3, UTC))
    got = []
    for item in events:
        assert isinstance(item, StreamEvent)
        got.append((item.c, len(read)))
    # the two rows at t=2 come once the row at t=3 is read, before the rows at 4 and 5
    assert got == [(10.0, 2), (11.0, 4), (12.0, 4)]
    assert len(read) == 6


async def test_aclose_stops_a_replay() -> None:
    spec = load_registry(REGISTRY)["binance_btcusdt_trades"]
    provider = DatasetReplayProvider(spec)
    n = 0
    async for _ in provider.events():
        n += 1
        if n == 100:
            await provider.aclose()
    assert n == 100


class PagedStore:
    """A StoreClient holding bars in memory; records the ranges asked for."""

    def __init__(self, bars: list[Bar]) -> None:
        self.bars = bars
        self.calls: list[tuple[datetime, datetime]] = []

    async def upsert_bars(self, bars: Sequence[Bar]) -> UpsertResult:
        raise NotImplementedError

    async def ingest_ticks(
        self, ticks: Sequence[StreamEvent], *, interval: str
    ) -> TickIngestResult:
        raise NotImplementedError

    async def bars_range(
        self, provider: str, symbol: str, interval: str, start: datetime, end: datetime
    ) -> list[Bar]:
        self.calls.append((start, end))
        return [
            b
            for b in self.bars
            if (b.provider, b.symbol, b.interval) == (provider, symbol, interval)
            and start <= b.ts < end
        ]

    async def latest_bars(self, interval: str, limit: int) -> dict[tuple[str, str], list[Bar]]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


async def test_store_replay_pages_by_day_and_keeps_order() -> None:
    t0 = datetime(2024, 3, 1, 23, tzinfo=UTC)
    bars = [
        Bar("p", "S", "1h", t0 + timedelta(hours=i), 10.0, 11.0, 9.0, 10.5, 100.0)
        for i in range(50)
    ]
    store = PagedStore([*bars, Bar("p", "OTHER", "1h", t0, 1.0, 1.0, 1.0, 1.0, 1.0)])
    provider = StoreBarsReplayProvider(
        store, provider="p", symbol="S", interval="1h", start=t0, end=t0 + timedelta(hours=30)
    )
    got = [e async for e in provider.events()]
    assert [e.src_ts for e in got] == [b.ts for b in bars[:30]]
    assert got[0] == bar_to_event(bars[0])
    assert got[0].event_id == "p|S|2024-03-01T23:00:00.000000Z|0"
    assert len(store.calls) == 2  # 30 hours in day-sized pages
