"""The dataset registry (``configs/datasets.yaml``) and the row reader behind ``replay``.

A registry maps a name to a file (CSV or Parquet; a relative ``path`` is resolved against the
registry file's folder), how to read its timestamp (``epoch_s|epoch_ms|epoch_us|epoch_ns|iso``
or a ``strptime`` format, and the ``zone`` of naive values), which column feeds which
StreamEvent field (``columns: {c: price, v: amount, seq: id}``), and the ``provider``,
``symbol`` (or a ``symbol`` column), ``kind`` and bar ``interval`` of its events.

``seq`` comes from the mapped column, or else is 0 for bars (one bar per key and start time:
the same id as that bar replayed from the store) and the row's line number in the file for
ticks and quotes; either way the same row yields the same ``event_id`` on every replay. Rows
that share a timestamp are emitted in ``seq`` order (real trade files carry several trades per
microsecond).

A bad row never stops a replay: it becomes a :class:`RowError` (file, line, reason ``parse``
or ``validation``, detail, the raw line) for the caller to report and dead-letter.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from market_data_core.codec import validation_reason
from market_data_core.contracts import EventKind, StreamEvent
from market_data_core.errors import ConfigError
from market_data_core.timeutil import EPOCH

__all__ = [
    "DatasetSpec",
    "RowError",
    "TimestampSpec",
    "count_rows",
    "load_registry",
    "lookup",
    "read_dataset",
]

_NUMERIC_FIELDS = ("o", "h", "l", "c", "v", "bid", "ask", "bid_size", "ask_size")
_MAPPABLE = frozenset((*_NUMERIC_FIELDS, "seq", "trade_id", "side", "symbol"))
_EPOCH_DIVISORS = {"epoch_s": 1e-6, "epoch_ms": 1e-3, "epoch_us": 1.0, "epoch_ns": 1e3}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TimestampSpec(_Model):
    """Where the event time is and how to read it."""

    column: str
    format: str = "iso"
    zone: str = "UTC"

    @field_validator("zone")
    @classmethod
    def _zone_ok(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v


class DatasetSpec(_Model):
    """One registered dataset (see module doc)."""

    name: str = ""
    path: Path
    format: Literal["csv", "parquet"] = "csv"
    header: bool = True
    names: list[str] | None = None
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    provider: str
    symbol: str | None = None
    kind: EventKind
    interval: str | None = None
    timestamp: TimestampSpec
    columns: dict[str, str]
    description: str = ""
    source: str = ""
    license: str = ""

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - _MAPPABLE)
        if unknown:
            raise ValueError(
                f"unknown event field(s) {', '.join(unknown)} "
                f"(mappable: {', '.join(sorted(_MAPPABLE))})"
            )
        return v

    @model_validator(mode="after")
    def _complete(self) -> DatasetSpec:
        if self.symbol is None and "symbol" not in self.columns:
            raise ValueError("give 'symbol' or map a 'symbol' column")
        if not self.header and not self.names:
            raise ValueError("a file without a header needs 'names' (its column names)")
        needed = {
            "tick": ("c", "v"),
            "quote": ("bid", "ask"),
            "bar": ("o", "h", "l", "c", "v"),
        }[self.kind]
        missing = [f for f in needed if f not in self.columns]
        if missing:
            raise ValueError(f"kind {self.kind} needs columns for {', '.join(missing)}")
        if self.kind == "bar" and not self.interval:
            raise ValueError("kind bar needs an interval (e.g. '1m')")
        return self


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that could not become an event: where, why, and the raw row."""

    path: str
    line: int
    reason: Literal["parse", "validation"]
    detail: str
    raw: bytes

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}: {self.detail}"


def load_registry(path: str | Path) -> dict[str, DatasetSpec]:
    """Read a registry file; relative dataset paths resolve against its folder.

    Raises ``ConfigError`` (one line: file, key path, what is wrong).
    """
    source = str(path)
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("dataset registry not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read dataset registry ({exc})", source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML syntax error: {str(exc).splitlines()[0]}", source=source) from None
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise ConfigError("expected a mapping with a 'datasets' mapping", source=source)
    unknown = sorted(set(data) - {"version", "datasets"})
    if unknown:
        raise ConfigError("unknown key", source=source, key_path=unknown[0])
    out: dict[str, DatasetSpec] = {}
    for name, body in data["datasets"].items():
        if not isinstance(body, dict):
            raise ConfigError("expected a mapping", source=source, key_path=f"datasets.{name}")
        try:
            spec = DatasetSpec.model_validate({**body, "name": str(name)})
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(x) for x in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise ConfigError(
                msg.removeprefix("Value error, "),
                source=source,
                key_path=f"datasets.{name}" + (f".{loc}" if loc else ""),
            ) from None
        if not spec.path.is_absolute():
            spec = spec.model_copy(update={"path": (p.parent / spec.path).resolve()})
        out[str(name)] = spec
    return out


def lookup(registry: Mapping[str, DatasetSpec], name: str, source: str) -> DatasetSpec:
    """The dataset called ``name``; ``ConfigError`` listing the registered names otherwise."""
    try:
        return registry[name]
    except KeyError:
        names = ", ".join(sorted(registry)) or "none"
        raise ConfigError(
            f"unknown dataset {name!r}; registered in {source}: {names}", source="--dataset"
        ) from None


class _RowParse(Exception):
    """A row that cannot be parsed (caught inside this module only)."""


def _zone(spec: DatasetSpec) -> ZoneInfo | None:
    return None if spec.timestamp.zone == "UTC" else ZoneInfo(spec.timestamp.zone)


def _parse_ts(value: Any, spec: TimestampSpec, zone: ZoneInfo | None) -> datetime:
    if value is None or value == "":
        raise _RowParse(f"missing timestamp in column {spec.column!r}")
    if isinstance(value, datetime):
        ts = value
    elif spec.format in _EPOCH_DIVISORS:
        try:
            number = int(value) if not isinstance(value, float) else value
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                raise _RowParse(f"bad {spec.format} timestamp {value!r}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise _RowParse(f"bad {spec.format} timestamp {value!r}")
        divisor = _EPOCH_DIVISORS[spec.format]
        us = number // 1000 if spec.format == "epoch_ns" and isinstance(number, int) else None
        try:
            if us is None:
                us = round(number / divisor)
            return EPOCH + timedelta(microseconds=int(us))
        except OverflowError:
            raise _RowParse(f"timestamp {value!r} is out of range") from None
    else:
        text = str(value).strip()
        try:
            if spec.format == "iso":
                ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
            else:
                ts = datetime.strptime(text, spec.format)
        except ValueError:
            raise _RowParse(f"bad timestamp {text!r} (expected {spec.format})") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=zone or UTC)
    return ts.astimezone(UTC)


def _number(field: str, column: str, value: Any) -> float:
    if value is None or value == "":
        raise _RowParse(f"missing value in column {column!r} ({field})")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _RowParse(f"bad number in column {column!r} ({field}): {value!r}") from None


class _RowMapper:
    """Turns one row (column name -> value) into an event, per a DatasetSpec."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self.zone = _zone(spec)
        self.numeric = [(f, spec.columns[f]) for f in _NUMERIC_FIELDS if f in spec.columns]
        self.seq_column = spec.columns.get("seq")

    def event(
        self,
        row: Mapping[str, Any],
        line: int,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> StreamEvent | None:
        """The row's event, or None when its time is outside ``[start, end)`` (checked before
        anything else is parsed, so skipping rows is cheap)."""
        spec = self.spec
        src_ts = _parse_ts(row.get(spec.timestamp.column), spec.timestamp, self.zone)
        if (start is not None and src_ts < start) or (end is not None and src_ts >= end):
            return None
        fields: dict[str, Any] = {
            "provider": spec.provider,
            "kind": spec.kind,
            "src_ts": src_ts,
        }
        if spec.interval is not None:
            fields["interval"] = spec.interval
        for field, column in self.numeric:
            fields[field] = _number(field, column, row.get(column))
        if self.seq_column is None:
            fields["seq"] = 0 if spec.kind == "bar" else line
        else:
            raw_seq = row.get(self.seq_column)
            try:
                fields["seq"] = int(str(raw_seq).strip())
            except ValueError:
                raise _RowParse(
                    f"bad integer in column {self.seq_column!r} (seq): {raw_seq!r}"
                ) from None
        if "trade_id" in spec.columns:
            trade_id = row.get(spec.columns["trade_id"])
            fields["trade_id"] = None if trade_id in (None, "") else str(trade_id)
        if "side" in spec.columns:
            side = str(row.get(spec.columns["side"]) or "").strip().lower()
            fields["side"] = {"b": "buy", "s": "sell", "": None}.get(side, side)
        symbol_col = spec.columns.get("symbol")
        fields["symbol"] = str(row.get(symbol_col) or "") if symbol_col else spec.symbol
        return StreamEvent.create(**fields)


def _csv_rows(spec: DatasetSpec) -> Iterator[tuple[int, dict[str, str] | str, bytes]]:
    """``(line, row, raw)`` per non-blank line; ``row`` is an error text for a wrong column
    count."""
    with spec.path.open("rb") as f:
        names = spec.names
        line = 0
        if spec.header:
            first = f.readline()
            line = 1
            header = next(csv.reader([first.decode("utf-8-sig")], delimiter=spec.delimiter), [])
            names = names or [h.strip() for h in header]
        assert names is not None
        width = len(names)
        for raw in f:
            line += 1
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not text.strip():
                continue
            if '"' in text:
                values = next(csv.reader([text], delimiter=spec.delimiter), [])
            else:
                values = text.split(spec.delimiter)
            if len(values) != width:
                detail = f"expected {width} columns, got {len(values)}"
                yield line, detail, raw.rstrip(b"\r\n")
                continue
            yield line, dict(zip(names, values, strict=True)), raw.rstrip(b"\r\n")


def _parquet_rows(spec: DatasetSpec) -> Iterator[tuple[int, dict[str, Any] | str, bytes]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "reading Parquet needs pyarrow: pip install 'mdp[parquet]'", source=str(spec.path)
        ) from None
    table = pq.read_table(spec.path)
    for i, row in enumerate(table.to_pylist(), start=1):
        raw = json.dumps(row, default=str).encode()
        yield i, row, raw


def _open_check(spec: DatasetSpec) -> None:
    try:
        with spec.path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read dataset file {spec.path}: {reason}") from None


def count_rows(spec: DatasetSpec) -> int:
    """Data rows in the file (for progress ETAs); raises ``ConfigError`` if unreadable."""
    _open_check(spec)
    if spec.format == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return 0
        return int(pq.ParquetFile(spec.path).metadata.num_rows)
    with spec.path.open("rb") as f:
        lines = sum(1 for raw in f if raw.strip())
    return max(0, lines - (1 if spec.header else 0))


def read_dataset(
    spec: DatasetSpec, start: datetime | None = None, end: datetime | None = None
) -> Iterator[StreamEvent | RowError]:
    """Events of ``spec`` with ``start <= src_ts < end``, in file order except that rows with
    the same timestamp come in ``seq`` order; bad rows come as :class:`RowError` (a row outside
    the window is skipped unless its timestamp itself cannot be read).

    Raises ``ConfigError`` when the file cannot be opened (before yielding anything).
    """
    _open_check(spec)
    mapper = _RowMapper(spec)
    rows = _parquet_rows(spec) if spec.format == "parquet" else _csv_rows(spec)
    where = str(spec.path)
    same_ts: list[StreamEvent] = []
    try:
        for line, row, raw in rows:
            if isinstance(row, str):
                yield RowError(where, line, "parse", row, raw)
                continue
            try:
                ev = mapper.event(row, line, start, end)
            except _RowParse as exc:
                yield RowError(where, line, "parse", str(exc), raw)
                continue
            except ValidationError as exc:
                yield RowError(where, line, "validation", validation_reason(exc), raw)
                continue
            if ev is None:
                continue
            if same_ts and same_ts[0].src_ts != ev.src_ts:
                same_ts.sort(key=lambda e: e.seq)
                yield from same_ts
                same_ts.clear()
            same_ts.append(ev)
    except OSError as exc:
        raise ConfigError(f"cannot read dataset file {spec.path}: {exc}") from None
    same_ts.sort(key=lambda e: e.seq)
    yield from same_ts
