"""Trades and quotes given in code -- a pandas DataFrame, or any iterable of mappings or
:class:`~market_data_core.contracts.StreamEvent` -- as a :class:`Provider`.

A record is one row: column name -> value. Field names (nautilus / pandas usage, then the wire
name):

========== ============================================= =====================================
record     meaning                                       StreamEvent field
========== ============================================= =====================================
``ts``     event time: an aware ``datetime``, a pandas   ``src_ts`` (naive values are UTC)
           ``Timestamp``, an ISO-8601 text, or epoch
           seconds (int/float)
``price``  trade price (> 0)                             ``c`` (trades)
``size``   trade size (>= 0)                             ``v`` (trades)
``bid``,   top of book (quotes; ``bid <= ask``)          ``bid``, ``ask``, ``bid_size``,
``ask``,                                                 ``ask_size``
sizes
``symbol`` the instrument, unless given for all          ``symbol``
``seq``    order among rows of one timestamp, and part   ``seq`` (default: the row's position
           of the event id                               in the input, from 0)
``side``   ``buy``/``sell`` (optional)                   ``side``
``trade_id`` the venue's id (optional)                   ``trade_id``
========== ============================================= =====================================

Any other StreamEvent field name (``c``, ``v``, ``src_ts``) is accepted as itself; unknown
columns are an error of the row. The same input yields the same ``event_id`` on every run
(``provider|symbol|ts|seq``), so feeding it twice changes no stored row.

A row that is not a valid event is not dropped: it becomes a
:class:`~market_data_pipeline.producers.datasets.RowError` (reason ``parse`` or
``validation``; its path ``<trades>`` or ``<quotes>``), kept in :attr:`RecordsProvider.errors`
and handed to ``on_error`` -- the API dead-letters it, as a dataset replay does with a bad line.

Trades and quotes of one symbol given as two inputs: :class:`MergedRecords` publishes them as
one stream interleaved by event time (each input in its own order), as a venue's feed would;
one input published whole before the other would put the other's rows behind the correction
horizon of their symbol, and they would be dead-lettered as late.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from market_data_core.codec import validation_reason
from market_data_core.contracts import StreamEvent
from market_data_pipeline.producers.datasets import RowError

__all__ = ["MergedRecords", "RecordKind", "RecordsProvider", "iter_records"]

RecordKind = Literal["tick", "quote"]

_ALIASES = {"ts": "src_ts", "price": "c", "size": "v"}
_FIELDS = frozenset(
    {"src_ts", "c", "v", "bid", "ask", "bid_size", "ask_size", "symbol", "seq", "side"}
    | {"trade_id", "provider", "o", "h", "l"}
)
_YIELD_EVERY = 1000


def iter_records(data: Any) -> Iterator[Mapping[str, Any] | StreamEvent]:
    """Rows of a pandas DataFrame (its index is ignored; a ``DatetimeIndex`` named ``ts`` is
    used as the ``ts`` column), or the items of any other iterable, as they are."""
    to_dict = getattr(data, "to_dict", None)
    columns = getattr(data, "columns", None)
    if to_dict is not None and columns is not None:
        frame = data
        index = getattr(frame, "index", None)
        if "ts" not in columns and getattr(index, "name", None) == "ts":
            frame = frame.reset_index()
        yield from frame.to_dict("records")
        return
    yield from data


def _timestamp(value: Any) -> datetime:
    to_pydatetime = getattr(value, "to_pydatetime", None)
    if to_pydatetime is not None:  # pandas Timestamp (ns: to µs, the contract's resolution)
        value = to_pydatetime(warn=False)
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return datetime.fromtimestamp(value, UTC)
    raise ValueError(f"cannot read the time {value!r} (a datetime, ISO-8601 text or epoch seconds)")


def _clean(value: Any) -> Any:
    """pandas' missing values (NaN in an optional column) are absent values."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    item = getattr(value, "item", None)  # numpy scalars -> Python
    return item() if item is not None and not isinstance(value, str | datetime) else value


class RecordsProvider:
    """Events from records given in code (see the module docstring), in input order.

    ``kind``: ``tick`` (trades) or ``quote``. ``provider`` and ``symbol`` apply to rows that do
    not carry their own. Raises nothing for a bad row (see :attr:`errors`)."""

    def __init__(
        self,
        data: Any,
        *,
        kind: RecordKind = "tick",
        provider: str = "user",
        symbol: str | None = None,
        on_error: Callable[[RowError], Awaitable[None]] | None = None,
    ) -> None:
        self._data = data
        self.kind: RecordKind = kind
        self._provider = provider
        self._symbol = symbol
        self._on_error = on_error
        self.errors: list[RowError] = []
        #: every (provider, symbol) an event was made for
        self.series: set[tuple[str, str]] = set()
        self.rows_read = 0
        self._closed = False

    @property
    def name(self) -> str:
        return self._provider

    def event(self, row: Mapping[str, Any] | StreamEvent, position: int) -> StreamEvent:
        """The event of one row; raises ``ValueError`` (incl. pydantic's) for a bad one."""
        if isinstance(row, StreamEvent):
            return row
        fields: dict[str, Any] = {"provider": self._provider, "kind": self.kind}
        if self._symbol is not None:
            fields["symbol"] = self._symbol
        for key, raw in row.items():
            name = _ALIASES.get(str(key), str(key))
            if name not in _FIELDS:
                raise ValueError(f"unknown column {key!r}")
            value = _clean(raw)
            if value is not None:
                fields[name] = value
        if "src_ts" not in fields:
            raise ValueError("no time: give a 'ts' column")
        fields["src_ts"] = _timestamp(fields["src_ts"])
        fields.setdefault("seq", position)
        if "symbol" not in fields:
            raise ValueError("no symbol: give a 'symbol' column or symbol=")
        return StreamEvent.create(**fields)

    async def events(self) -> AsyncIterator[StreamEvent]:
        for position, row in enumerate(iter_records(self._data)):
            if self._closed:
                return
            self.rows_read += 1
            if self.rows_read % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
            try:
                event = self.event(row, position)
            except ValidationError as exc:
                await self._bad(position, row, "validation", validation_reason(exc))
                continue
            except (ValueError, TypeError, OverflowError) as exc:
                await self._bad(position, row, "parse", str(exc))
                continue
            self.series.add((event.provider, event.symbol))
            yield event.model_copy(update={"ingest_ts": datetime.now(UTC)})

    async def _bad(
        self, position: int, row: Mapping[str, Any] | StreamEvent, reason: str, detail: str
    ) -> None:
        raw = json.dumps(dict(row) if isinstance(row, Mapping) else str(row), default=str)
        error = RowError(
            path="<trades>" if self.kind == "tick" else "<quotes>",
            line=position,
            reason=reason,  # type: ignore[arg-type]
            detail=f"row {position}: {detail}",
            cause=detail.split(":", 1)[0],
            raw=raw.encode(),
        )
        self.errors.append(error)
        if self._on_error is not None:
            await self._on_error(error)

    async def aclose(self) -> None:
        self._closed = True


class MergedRecords:
    """Several :class:`RecordsProvider` as one provider: their events interleaved by event
    time -- the input whose next event is earliest goes next (ties: the input given first) --
    each input's own order kept, so an input's unsorted rows stay as late as they were.
    ``errors`` and ``series`` are those of all inputs."""

    def __init__(self, parts: Sequence[RecordsProvider]) -> None:
        if not parts:
            raise ValueError("MergedRecords needs at least one input")
        self.parts = list(parts)

    @property
    def name(self) -> str:
        return self.parts[0].name

    @property
    def errors(self) -> list[RowError]:
        return [e for p in self.parts for e in p.errors]

    @property
    def series(self) -> set[tuple[str, str]]:
        return set().union(*(p.series for p in self.parts))

    async def events(self) -> AsyncIterator[StreamEvent]:
        inputs = [p.events() for p in self.parts]
        heads: list[tuple[datetime, int, StreamEvent]] = []
        for i, it in enumerate(inputs):
            first = await anext(it, None)
            if first is not None:
                heads.append((first.src_ts, i, first))
        heapq.heapify(heads)
        while heads:
            _, i, event = heads[0]
            yield event
            following = await anext(inputs[i], None)
            if following is None:
                heapq.heappop(heads)
            else:
                heapq.heapreplace(heads, (following.src_ts, i, following))

    async def aclose(self) -> None:
        for p in self.parts:
            await p.aclose()
