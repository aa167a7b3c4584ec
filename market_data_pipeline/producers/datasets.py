"""The dataset registry (``configs/datasets.yaml``) and the row reader behind ``replay``.

Names are looked up in a list of registries, first match wins (:func:`find_dataset`): the
user's (``--datasets`` or ``producers.replay.datasets_file``), then the one shipped with mdp.

A registry maps a name to a file (CSV or Parquet, plain or compressed: see
:mod:`~market_data_pipeline.producers.files`; a relative ``path`` is resolved against the
registry file's folder), how to read its timestamp (``epoch_s|epoch_ms|epoch_us|epoch_ns|iso``
or a ``strptime`` format, the ``zone`` of naive values and what to do with local times that
daylight saving makes ambiguous or skips: :mod:`market_data_core.localtime`), which column feeds
which StreamEvent field (``columns: {c: price, v: amount, seq: id}``, or per field
``{column: NAME, map: {FILE VALUE: VALUE}, scale: FACTOR}``), and the ``provider``, ``symbol``
(or a ``symbol`` column), ``kind`` and bar ``interval`` of its events.

``map`` replaces a column's values before they are read (``is_buyer_maker`` ``true``/``false`` ->
``side`` ``sell``/``buy``); keys match case-insensitively and a value missing from the map is a
bad row. ``scale`` multiplies a price or size exactly (decimal arithmetic, then the nearest
float): ``scale: 1e-9`` reads integer nanodollars as dollars.

``seq`` comes from the mapped column, or else is 0 for bars (one bar per key and start time:
the same id as that bar replayed from the store) and the row's line number in the file for
ticks and quotes; either way the same row yields the same ``event_id`` on every replay. Rows
that share a timestamp are emitted in ``seq`` order (real trade files carry several trades per
microsecond). Provider bars may come without volume (``v`` not mapped): they carry ``v=None``.

A bad row never stops a replay: it becomes a :class:`RowError` (file, line, reason ``parse``,
``validation``, ``ambiguous_time`` or ``nonexistent_time``, detail, a value-free ``cause`` for
summaries, the raw line) for the caller to report and dead-letter. A file that cannot be read
at all is one ``ConfigError``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from market_data_core.codec import validation_reason
from market_data_core.contracts import EventKind, StreamEvent
from market_data_core.errors import ConfigError, LocalTimeError
from market_data_core.localtime import AmbiguousPolicy, NonexistentPolicy, is_ambiguous, localize
from market_data_core.timeutil import EPOCH
from market_data_pipeline.producers.files import Compression, open_binary, unreadable

__all__ = [
    "ColumnSpec",
    "DatasetSpec",
    "RowError",
    "TimestampSpec",
    "count_rows",
    "find_dataset",
    "load_registry",
    "lookup",
    "read_dataset",
]

_NUMERIC_FIELDS = ("o", "h", "l", "c", "v", "bid", "ask", "bid_size", "ask_size")
_MAPPABLE = frozenset((*_NUMERIC_FIELDS, "seq", "trade_id", "side", "symbol"))
_EPOCH_DIVISORS = {"epoch_s": 1e-6, "epoch_ms": 1e-3, "epoch_us": 1.0, "epoch_ns": 1e3}
RowReason = Literal["parse", "validation", "ambiguous_time", "nonexistent_time"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _map_key(value: Any) -> str:
    """How a file value (CSV text, a Parquet/YAML scalar) is looked up in a ``map``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip().casefold()


class TimestampSpec(_Model):
    """Where the event time is and how to read it.

    ``zone`` applies to naive values (an epoch number is UTC, an ISO text with an offset
    keeps it). ``ambiguous`` and ``nonexistent`` say what a wall time of ``zone`` that daylight
    saving repeats or skips becomes (pandas ``tz_localize`` semantics; see
    :mod:`market_data_core.localtime`); the default refuses it (the row is dead-lettered).
    """

    column: str
    format: str = "iso"
    zone: str = "UTC"
    ambiguous: AmbiguousPolicy = "raise"
    nonexistent: NonexistentPolicy = "raise"

    @field_validator("zone")
    @classmethod
    def _zone_ok(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v


class ColumnSpec(_Model):
    """The file column behind one event field, with an optional value ``map`` and ``scale``."""

    column: str
    map: dict[str, str | None] | None = None
    scale: Decimal | None = None

    @field_validator("map", mode="before")
    @classmethod
    def _map_keys(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out: dict[str, str | None] = {}
        for key, value in v.items():
            name = _map_key(key)
            if name in out:
                raise ValueError(f"map key {key!r} given twice (keys match case-insensitively)")
            if isinstance(value, dict | list):
                raise ValueError(f"map value for {key!r} must be a single value")
            out[name] = (
                None
                if value is None
                else _map_key(value)
                if isinstance(value, bool)
                else str(value)
            )
        return out

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_exact(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("scale must be a number such as 1e-9")
        if isinstance(v, float):
            return repr(v)  # the decimal the YAML author wrote, not its binary neighbour
        return v

    @field_validator("scale")
    @classmethod
    def _scale_ok(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and not (v.is_finite() and v > 0):
            raise ValueError(f"scale must be a finite number > 0, got {v}")
        return v


class DatasetSpec(_Model):
    """One registered dataset (see module doc)."""

    name: str = ""
    path: Path
    format: Literal["csv", "parquet"] = "csv"
    compression: Compression = "auto"
    header: bool = True
    names: list[str] | None = None
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    provider: str
    symbol: str | None = None
    kind: EventKind
    interval: str | None = None
    timestamp: TimestampSpec
    columns: dict[str, ColumnSpec]
    description: str = ""
    source: str = ""
    license: str = ""

    @field_validator("columns", mode="before")
    @classmethod
    def _column_names(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        return {field: {"column": c} if isinstance(c, str) else c for field, c in v.items()}

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, v: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
        unknown = sorted(set(v) - _MAPPABLE)
        if unknown:
            raise ValueError(
                f"unknown event field(s) {', '.join(unknown)} "
                f"(mappable: {', '.join(sorted(_MAPPABLE))})"
            )
        scaled = sorted(f for f, c in v.items() if c.scale is not None and f not in _NUMERIC_FIELDS)
        if scaled:
            raise ValueError(
                f"scale applies to prices and sizes ({', '.join(_NUMERIC_FIELDS)}), "
                f"not {', '.join(scaled)}"
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
            "bar": ("o", "h", "l", "c"),  # v is optional: FX bid bars carry none
        }[self.kind]
        missing = [f for f in needed if f not in self.columns]
        if missing:
            raise ValueError(f"kind {self.kind} needs columns for {', '.join(missing)}")
        if self.kind == "bar" and not self.interval:
            raise ValueError("kind bar needs an interval (e.g. '1m')")
        return self

    @property
    def has_volume(self) -> bool:
        """Whether its events carry a size (``v``): bars without a volume column do not."""
        return "v" in self.columns


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that could not become an event: where, why, and the raw row.

    ``detail`` says exactly what is wrong with this row (values included); ``cause`` is the
    same without the row's values, so that rows failing alike can be counted together.
    """

    path: str
    line: int
    reason: RowReason
    detail: str
    raw: bytes
    cause: str = ""

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
    if isinstance(data, dict) and data.get("datasets", {}) is None:
        data["datasets"] = {}  # `datasets:` with every entry commented out: none yet
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


def find_dataset(name: str, registries: Sequence[Path]) -> DatasetSpec:
    """The dataset called ``name`` in the first of ``registries`` that defines it (a registry
    listed twice is read once). ``ConfigError`` when a registry cannot be read, or when none
    defines ``name`` (the message lists the names of each)."""
    seen: list[Path] = []
    known: list[str] = []
    for path in registries:
        if path.resolve() in seen:
            continue
        seen.append(path.resolve())
        registry = load_registry(path)
        if name in registry:
            return registry[name]
        known.append(f"{', '.join(sorted(registry)) or 'none'} ({path})")
    raise ConfigError(
        f"unknown dataset {name!r}; registered: {'; '.join(known) or 'none'}", source="--dataset"
    )


class _RowParse(Exception):
    """A row that cannot be parsed (caught inside this module only): ``detail`` with the
    row's values, ``cause`` without."""

    def __init__(self, detail: str, cause: str) -> None:
        super().__init__(detail)
        self.cause = cause


_PARENTHESISED = re.compile(r"\s\([^()]*\)")
_GOT = re.compile(r",? got .*$")
_QUOTED = re.compile(r"'[^']*'")


def _validation_cause(exc: ValidationError) -> str:
    """A pydantic error without the row's values: ``c must be > 0``, ``crossed quote: bid > ask``,
    ``side: Input should be 'buy' or 'sell'``."""
    parts = []
    for err in exc.errors(include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "value_error":  # our own messages quote the offending values
            msg = _QUOTED.sub("...", _GOT.sub("", _PARENTHESISED.sub("", msg)))
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _zone(spec: DatasetSpec) -> ZoneInfo | None:
    return None if spec.timestamp.zone == "UTC" else ZoneInfo(spec.timestamp.zone)


def _bad_epoch(value: Any, spec: TimestampSpec) -> _RowParse:
    return _RowParse(
        f"bad {spec.format} timestamp {value!r}",
        f"bad {spec.format} timestamp in column {spec.column!r}",
    )


def _parse_ts(value: Any, spec: TimestampSpec) -> datetime:
    """The row's time: aware (UTC) when the value says where it is (an epoch number, an
    offset), else the naive wall time for the caller to place in ``spec.zone``."""
    if value is None or value == "":
        raise _RowParse(
            f"missing timestamp in column {spec.column!r}",
            f"missing timestamp in column {spec.column!r}",
        )
    if isinstance(value, datetime):
        ts = value
    elif spec.format in _EPOCH_DIVISORS:
        try:
            number = int(value) if not isinstance(value, float) else value
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                raise _bad_epoch(value, spec) from None
        if isinstance(number, float) and not math.isfinite(number):
            raise _bad_epoch(value, spec)
        divisor = _EPOCH_DIVISORS[spec.format]
        us = number // 1000 if spec.format == "epoch_ns" and isinstance(number, int) else None
        try:
            if us is None:
                us = round(number / divisor)
            return EPOCH + timedelta(microseconds=int(us))
        except OverflowError:
            raise _RowParse(
                f"timestamp {value!r} is out of range", "timestamp out of range"
            ) from None
    else:
        text = str(value).strip()
        try:
            if spec.format == "iso":
                ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
            else:
                ts = datetime.strptime(text, spec.format)
        except ValueError:
            raise _RowParse(
                f"bad timestamp {text!r} (expected {spec.format})",
                f"bad timestamp in column {spec.column!r} (expected {spec.format})",
            ) from None
    if ts.tzinfo is None:
        return ts
    return ts.astimezone(UTC)


class _Column:
    """Reads one event field from a row: the column's value through its map and scale."""

    __slots__ = ("column", "field", "map", "scale")

    def __init__(self, field: str, spec: ColumnSpec) -> None:
        self.field = field
        self.column = spec.column
        self.map = spec.map
        self.scale = spec.scale

    def raw(self, row: Mapping[str, Any]) -> Any:
        value = row.get(self.column)
        if self.map is None:
            return value
        key = _map_key(value)
        try:
            return self.map[key]
        except KeyError:
            known = ", ".join(repr(k) for k in self.map)
            raise _RowParse(
                f"value {value!r} in column {self.column!r} ({self.field}) is not in its map "
                f"({known})",
                f"value not in the map of column {self.column!r} ({self.field})",
            ) from None

    def number(self, row: Mapping[str, Any]) -> float:
        value = row.get(self.column) if self.map is None else self.raw(row)
        if value is None or value == "":
            raise _RowParse(
                f"missing value in column {self.column!r} ({self.field})",
                f"missing value in column {self.column!r} ({self.field})",
            )
        if self.scale is None:
            try:
                return float(value)
            except (TypeError, ValueError):
                raise self._bad_number(value) from None
        try:
            exact = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
        except InvalidOperation:
            raise self._bad_number(value) from None
        return float(exact * self.scale)  # exact product, then the nearest float

    def _bad_number(self, value: Any) -> _RowParse:
        return _RowParse(
            f"bad number in column {self.column!r} ({self.field}): {value!r}",
            f"bad number in column {self.column!r} ({self.field})",
        )


class _RowMapper:
    """Turns one row (column name -> value) into an event, per a DatasetSpec."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self.numeric = [_Column(f, spec.columns[f]) for f in _NUMERIC_FIELDS if f in spec.columns]
        self.others = {
            f: _Column(f, spec.columns[f])
            for f in ("seq", "trade_id", "side", "symbol")
            if f in spec.columns
        }

    def timestamp(self, row: Mapping[str, Any]) -> datetime:
        """The row's time (aware UTC, or a naive wall time of ``spec.timestamp.zone``)."""
        return _parse_ts(row.get(self.spec.timestamp.column), self.spec.timestamp)

    def event(self, row: Mapping[str, Any], line: int, src_ts: datetime) -> StreamEvent:
        """The row's event at ``src_ts`` (aware UTC)."""
        spec = self.spec
        fields: dict[str, Any] = {
            "provider": spec.provider,
            "kind": spec.kind,
            "src_ts": src_ts,
        }
        if spec.interval is not None:
            fields["interval"] = spec.interval
        for column in self.numeric:
            fields[column.field] = column.number(row)
        others = self.others
        seq = others.get("seq")
        if seq is None:
            fields["seq"] = 0 if spec.kind == "bar" else line
        else:
            raw_seq = seq.raw(row)
            try:
                fields["seq"] = int(str(raw_seq).strip())
            except ValueError:
                raise _RowParse(
                    f"bad integer in column {seq.column!r} (seq): {raw_seq!r}",
                    f"bad integer in column {seq.column!r} (seq)",
                ) from None
        if "trade_id" in others:
            trade_id = others["trade_id"].raw(row)
            fields["trade_id"] = None if trade_id in (None, "") else str(trade_id)
        if "side" in others:
            side = str(others["side"].raw(row) or "").strip().lower()
            fields["side"] = {"b": "buy", "s": "sell", "": None}.get(side, side)
        symbol = others.get("symbol")
        fields["symbol"] = str(symbol.raw(row) or "") if symbol is not None else spec.symbol
        return StreamEvent.create(**fields)


Row = Mapping[str, Any]


def _csv_rows(spec: DatasetSpec, f: Any) -> Iterator[tuple[int, Row | str, bytes]]:
    """``(line, row, raw)`` per non-blank line of the open file ``f``; ``row`` is an error
    text for a wrong column count or a line that is not UTF-8."""
    names = spec.names
    line = 0
    if spec.header:
        first = f.readline()
        line = 1
        try:
            head = first.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise unreadable(spec.path, exc) from None
        header = next(csv.reader([head], delimiter=spec.delimiter), [])
        names = names or [h.strip() for h in header]
    assert names is not None
    width = len(names)
    for raw in f:
        line += 1
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            if line == 1:  # a first line that is not text: the file is not a CSV file
                raise unreadable(spec.path, exc) from None
            yield line, f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", raw.rstrip(b"\r\n")
            continue
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


def _pyarrow_parquet(spec: DatasetSpec) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "reading Parquet needs pyarrow: pip install 'mdp-streaming[parquet]'",
            source=str(spec.path),
        ) from None
    return pq


def _parquet_table(spec: DatasetSpec, f: Any) -> Any:
    """The whole table (Parquet needs a seekable file: a compressed one is read into memory)."""
    import io

    import pyarrow as pa

    pq = _pyarrow_parquet(spec)
    source = f if f.seekable() else io.BytesIO(f.read())
    try:
        return pq.read_table(source)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"cannot read dataset file {spec.path}: not Parquet ({exc})") from None


def _parquet_rows(spec: DatasetSpec, f: Any) -> Iterator[tuple[int, Row | str, bytes]]:
    table = _parquet_table(spec, f)
    for i, row in enumerate(table.to_pylist(), start=1):
        raw = json.dumps(row, default=str).encode()
        yield i, row, raw


def count_rows(spec: DatasetSpec) -> int:
    """Data rows in the file (for progress ETAs). Reads (and decompresses) the whole file, so
    a file that cannot be read fails here, before anything is published: ``ConfigError``."""
    with open_binary(spec.path, spec.compression) as f:
        if spec.format == "parquet":
            if f.seekable():
                pq = _pyarrow_parquet(spec)
                try:
                    return int(pq.ParquetFile(f).metadata.num_rows)
                except Exception as exc:  # pyarrow's errors: the file is not Parquet
                    raise ConfigError(
                        f"cannot read dataset file {spec.path}: not Parquet ({exc})"
                    ) from None
            return int(_parquet_table(spec, f).num_rows)
        first = f.readline()
        try:
            first.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise unreadable(spec.path, exc) from None
        lines = (1 if first.strip() else 0) + sum(1 for raw in f if raw.strip())
    return max(0, lines - (1 if spec.header else 0))


@dataclass(slots=True)
class _Timed:
    """A row whose time is known (aware UTC)."""

    line: int
    row: Row
    raw: bytes
    src_ts: datetime


def _row_error(line: int, raw: bytes, where: str, exc: Exception) -> RowError:
    if isinstance(exc, _RowParse):
        return RowError(where, line, "parse", str(exc), raw, exc.cause)
    if isinstance(exc, LocalTimeError):
        reason: RowReason = (
            "ambiguous_time" if exc.reason == "ambiguous_time" else "nonexistent_time"
        )
        what = "ambiguous" if reason == "ambiguous_time" else "nonexistent"
        return RowError(
            where, line, reason, exc.detail, raw, f"{what} local time (rule {exc.rule})"
        )
    assert isinstance(exc, ValidationError)
    return RowError(where, line, "validation", validation_reason(exc), raw, _validation_cause(exc))


def _timed_rows(
    spec: DatasetSpec, mapper: _RowMapper, rows: Iterator[tuple[int, Row | str, bytes]]
) -> Iterator[_Timed | RowError]:
    """Rows with their UTC time, in file order except that a run of ambiguous wall times
    under ``ambiguous: infer`` is held until it ends (its placement needs the whole run)."""
    where = str(spec.path)
    zone = _zone(spec)
    policy = spec.timestamp
    run: list[tuple[int, Row, bytes, datetime]] = []

    def close_run() -> Iterator[_Timed | RowError]:
        if not run:
            return
        assert zone is not None
        placed = localize([r[3] for r in run], zone, ambiguous="infer")
        for (line, row, raw, _), at in zip(run, placed, strict=True):
            if isinstance(at, LocalTimeError):
                yield _row_error(line, raw, where, at)
            else:
                yield _Timed(line, row, raw, at)
        run.clear()

    for line, row, raw in rows:
        if isinstance(row, str):
            yield RowError(where, line, "parse", row, raw, _QUOTED.sub("...", row.split(" (")[0]))
            continue
        try:
            ts = mapper.timestamp(row)
        except _RowParse as exc:
            yield _row_error(line, raw, where, exc)
            continue
        if ts.tzinfo is None and zone is None:
            ts = ts.replace(tzinfo=UTC)
        elif ts.tzinfo is None:
            assert zone is not None
            if policy.ambiguous == "infer" and is_ambiguous(ts, zone):
                run.append((line, row, raw, ts))
                continue
            yield from close_run()
            [at] = localize([ts], zone, ambiguous=policy.ambiguous, nonexistent=policy.nonexistent)
            if isinstance(at, LocalTimeError):
                yield _row_error(line, raw, where, at)
                continue
            ts = at
        else:
            yield from close_run()
        yield _Timed(line, row, raw, ts)
    yield from close_run()


def read_dataset(
    spec: DatasetSpec, start: datetime | None = None, end: datetime | None = None
) -> Iterator[StreamEvent | RowError]:
    """Events of ``spec`` with ``start <= src_ts < end``, in file order except that rows with
    the same timestamp come in ``seq`` order; bad rows come as :class:`RowError` (a row outside
    the window is skipped unless its timestamp itself cannot be read or placed).

    Raises ``ConfigError`` when the file cannot be opened (before yielding anything) or turns
    out unreadable while being read (a corrupt or truncated compressed stream).
    """
    mapper = _RowMapper(spec)
    where = str(spec.path)
    same_ts: list[StreamEvent] = []
    with open_binary(spec.path, spec.compression) as f:
        rows = _parquet_rows(spec, f) if spec.format == "parquet" else _csv_rows(spec, f)
        for item in _timed_rows(spec, mapper, rows):
            if isinstance(item, RowError):
                yield item
                continue
            src_ts = item.src_ts
            # a row at another time ends the run of rows at one time, in the window or not:
            # else the window's last run would wait for the end of the file
            if same_ts and same_ts[0].src_ts != src_ts:
                same_ts.sort(key=lambda e: e.seq)
                yield from same_ts
                same_ts.clear()
            if (start is not None and src_ts < start) or (end is not None and src_ts >= end):
                continue
            try:
                ev = mapper.event(item.row, item.line, src_ts)
            except (_RowParse, ValidationError) as exc:
                yield _row_error(item.line, item.raw, where, exc)
                continue
            same_ts.append(ev)
    same_ts.sort(key=lambda e: e.seq)
    yield from same_ts
