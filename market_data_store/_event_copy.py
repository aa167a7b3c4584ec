"""Binary COPY streams of raw ticks and quotes, built from :class:`EventColumns`.

The rows are exactly what the record path wrote: ``price``/``size`` the numeric of
``Decimal(repr(x))`` (see :class:`~market_data_store.binary_copy.NumericColumn`), quotes'
prices and sizes the float8 values themselves; no ``event_id`` (the key's text: not stored);
``series_key`` each row's series' key as :class:`~market_data_store._series.SeriesRegistry`
learnt it from PostgreSQL (the tables' ``CHECK`` refuses any other).
Fixed-width columns come first (cheapest to lay out); every column list names the table's
columns, so the order on the wire is ours to choose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from market_data_core.columnar import EventColumns
from market_data_core.errors import StoreError
from market_data_store.binary_copy import (
    Column,
    Float8Column,
    Int8Column,
    NumericColumn,
    TextColumn,
    TimestamptzColumn,
    encode_copy,
)

__all__ = ["QUOTES", "TICKS", "RawTable"]

_SIDES = (None, "buy", "sell")


@dataclass(frozen=True, slots=True)
class RawTable:
    """How one raw event table is written: its name, its staging table, and its columns."""

    table: str
    stage: str
    columns: tuple[str, ...]

    def copy(
        self, cols: EventColumns, keys: Mapping[tuple[str, str], int], *, ingest_ts: bool = True
    ) -> bytes:
        """All rows of ``cols`` (one kind) as a COPY stream of :attr:`columns`, or of all
        but ``ingest_ts`` (rows the table's default ``now()`` stamps). ``keys``: the
        ``series_key`` of each series with rows in ``cols`` (a series without rows may be
        missing). Raises ``StoreError`` if one with rows is missing."""
        columns = self._columns(cols, keys)
        if not ingest_ts:
            del columns["ingest_ts"]
        return encode_copy(list(columns.values()), cols.n)

    def column_names(self, *, ingest_ts: bool = True) -> tuple[str, ...]:
        return self.columns if ingest_ts else tuple(c for c in self.columns if c != "ingest_ts")

    def _columns(
        self, cols: EventColumns, keys: Mapping[tuple[str, str], int]
    ) -> dict[str, Column]:
        has_ingest = cols.has("ingest_ts")
        of_series = np.zeros(len(cols.series), np.int64)
        for i in np.unique(cols.series_idx).tolist():  # a series without rows may be unknown
            try:
                of_series[i] = keys[cols.series[i]]
            except KeyError:
                provider, symbol = cols.series[i]
                raise StoreError(f"series {provider}/{symbol} is not registered") from None
        out: dict[str, Column] = {
            "ts": TimestamptzColumn(cols.src_ts),
            "seq": Int8Column(cols.seq),
            "series_key": Int8Column(of_series[cols.series_idx]),
        }
        if self.table == "ticks":
            out["price"] = NumericColumn(cols.floats["c"])
            out["size"] = NumericColumn(cols.floats["v"])
        else:
            out["bid"] = Float8Column(cols.floats["bid"])
            out["ask"] = Float8Column(cols.floats["ask"])
            out["bid_size"] = Float8Column(cols.floats["bid_size"], ~cols.has("bid_size"))
            out["ask_size"] = Float8Column(cols.floats["ask_size"], ~cols.has("ask_size"))
        out["ingest_ts"] = TimestamptzColumn(
            cols.ingest_ts, None if has_ingest.all() else ~has_ingest
        )
        out["provider"] = TextColumn.coded([p for p, _s in cols.series], cols.series_idx)
        out["symbol"] = TextColumn.coded([s for _p, s in cols.series], cols.series_idx)
        if self.table == "ticks":
            out["side"] = TextColumn.coded(_SIDES, cols.side)
            out["trade_id"] = TextColumn(cols.trade_id, cols.trade_id_end, ~cols.has("trade_id"))
        assert tuple(out) == self.columns
        return out


TICKS = RawTable(
    "ticks",
    "mdp_stage_ticks",
    (
        "ts",
        "seq",
        "series_key",
        "price",
        "size",
        "ingest_ts",
        "provider",
        "symbol",
        "side",
        "trade_id",
    ),
)
QUOTES = RawTable(
    "quotes",
    "mdp_stage_quotes",
    (
        "ts",
        "seq",
        "series_key",
        "bid",
        "ask",
        "bid_size",
        "ask_size",
        "ingest_ts",
        "provider",
        "symbol",
    ),
)
