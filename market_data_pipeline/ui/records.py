"""What ``mdp stream tail``, ``dlq list`` and ``status`` show: decoded events (quotes with bid /
ask and sizes), bars and quote bars, signals,
dead letters, stream status and job runs as table rows (:mod:`market_data_pipeline.ui.tables`)
and as JSON.

An entry that cannot be decoded is one row saying why (``<decode: ...>``), never skipped; an
entry written by another producer without mdp's ``data`` field shows the fields it has.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from market_data_core.codec import (
    decode_events,
    decode_signal,
    decode_window,
    encode_bar,
    event_to_dict,
)
from market_data_core.config import AppConfig
from market_data_core.contracts import QuoteBar, StreamEvent, WindowBar
from market_data_core.errors import ContractError
from market_data_core.protocols import BusRecord, DeadLetter, JobRun, StreamStatus
from market_data_core.timeutil import isoformat_us

__all__ = [
    "BAR_HEADER",
    "JOB_RUN_HEADER",
    "LETTER_HEADER",
    "STATUS_HEADER",
    "Rendered",
    "age_text",
    "entry_key",
    "event_row",
    "job_run_json",
    "job_run_row",
    "letter_json",
    "letter_row",
    "render_records",
    "short_number",
    "status_json",
    "status_row",
    "window_row",
]

Rendered = tuple[list[str], list[list[str]], list[str]]
"""``(header, table rows, JSON lines)``."""

LETTER_HEADER = ["ID", "TIME (UTC)", "COMPONENT", "REASON", "DETAIL", "SOURCE"]
STATUS_HEADER = [
    "STREAM",
    "GROUP",
    "LENGTH",
    "LAG",
    "PENDING",
    "CONSUMERS",
    "OLDEST PENDING",
    "OWNER",
]
JOB_RUN_HEADER = [
    "JOB RUN",
    "JOB",
    "STATUS",
    "STARTED (UTC)",
    "LAST HEARTBEAT",
    "EVENTS IN",
    "ERRORS",
]
_DETAIL_CHARS = 60


def short_number(value: float | None) -> str:
    """Shortest exact text of a number (``9682``, ``0.132``, ``2300413.7295``)."""
    if value is None:
        return ""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="backslashreplace")


def event_row(ev: StreamEvent) -> list[str]:
    """time, symbol, kind, prices, volume, id."""
    s = short_number
    if ev.kind == "quote":
        prices = f"{s(ev.bid)} / {s(ev.ask)}"
        volume = (
            f"{s(ev.bid_size)} / {s(ev.ask_size)}"
            if ev.bid_size is not None or ev.ask_size is not None
            else ""
        )
    elif ev.kind == "bar":
        prices = f"o {s(ev.o)} h {s(ev.h)} l {s(ev.l)} c {s(ev.c)}"
        volume = s(ev.v)
    else:
        prices = s(ev.c)
        volume = s(ev.v) + (f" {ev.side}" if ev.side else "")
    kind = ev.kind if ev.interval is None else f"{ev.kind} {ev.interval}"
    return [isoformat_us(ev.src_ts), ev.symbol, kind, prices, volume, ev.event_id]


BAR_HEADER = [
    "time",
    "symbol",
    "interval",
    "kind",
    "prices",
    "volume",
    "spread bps",
    "imbalance",
    "revision",
]


def _fixed(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def window_row(window: WindowBar) -> list[str]:
    """A row under :data:`BAR_HEADER`: a trade bar (its window's time-weighted spread and
    imbalance beside it, empty without a book) or a quote bar alone (bid/ask at close, the
    quote count)."""
    s = short_number
    quote = window if isinstance(window, QuoteBar) else window.quote
    spread = "" if quote is None else _fixed(quote.spread_bps, 3)
    imbalance = "" if quote is None else _fixed(quote.imbalance, 3)
    if isinstance(window, QuoteBar):
        kind, revision = "quote bar", str(window.revision)
        prices = f"bid {s(window.bid)} ask {s(window.ask)}"
        volume = f"{window.quote_count} quotes"
    else:
        kind, revision = "bar", str(window.revision)
        prices = f"o {s(window.o)} h {s(window.h)} l {s(window.l)} c {s(window.c)}"
        volume = s(window.v)
    return [
        isoformat_us(window.ts),
        f"{window.provider}|{window.symbol}",
        window.interval,
        kind,
        prices,
        volume,
        spread,
        imbalance,
        revision,
    ]


def _problem(rec: BusRecord, reason: str, detail: str) -> tuple[str, dict[str, Any]]:
    """The cell and the JSON object of an entry that cannot be shown decoded."""
    out: dict[str, Any] = {"entry_id": rec.entry_id, "error": f"{reason}: {detail}"}
    if not rec.payload and rec.extra_fields:
        names = ", ".join(name for name, _ in rec.extra_fields)
        out["fields"] = {name: _text(value) for name, value in rec.extra_fields}
        return f"<no data field; the entry has: {names}>", out
    return f"<{reason}: {detail[:80]}>", out


def render_records(cfg: AppConfig, topic: str, records: Sequence[BusRecord]) -> Rendered:
    """Rows and JSON lines for records of ``topic`` (the config's signals or bars topic, or
    events for any other); an undecodable entry is one row with the reason."""
    rows: list[list[str]] = []
    out_json: list[str] = []
    if topic == cfg.bus.signals_topic:
        header = ["time", "symbol", "name", "value", "score", "adapter", "id"]
        for rec in records:
            try:
                sig = decode_signal(rec.payload)
            except ContractError as exc:
                cell, obj = _problem(rec, exc.reason, exc.detail)
                rows.append(["?", "?", cell, "", "", "", rec.entry_id])
                out_json.append(json.dumps(obj))
                continue
            rows.append(
                [
                    isoformat_us(sig.ts),
                    sig.symbol,
                    sig.name,
                    short_number(sig.value),
                    short_number(sig.score),
                    sig.adapter,
                    sig.signal_id,
                ]
            )
            d = sig.model_dump()
            d["ts"] = isoformat_us(sig.ts)
            out_json.append(json.dumps(d))
        return header, rows, out_json
    if topic == cfg.bus.bars_topic:
        header = BAR_HEADER
        for rec in records:
            try:
                window = decode_window(rec.payload)
            except ContractError as exc:
                cell, obj = _problem(rec, exc.reason, exc.detail)
                rows.append(["?", "?", "?", "?", cell, "", "", "", rec.entry_id])
                out_json.append(json.dumps(obj))
                continue
            rows.append(window_row(window))
            out_json.append(json.dumps(json.loads(encode_bar(window, "json"))))
        return header, rows, out_json
    header = ["time", "symbol", "kind", "prices", "volume", "id"]
    for rec in records:
        batch = decode_events(rec.payload)
        for ev in batch.events:
            rows.append(event_row(ev))
            out_json.append(json.dumps(event_to_dict(ev, codec="json")))
        for err in batch.errors:
            cell, obj = _problem(rec, err.reason, err.detail)
            rows.append(["?", "?", "?", cell, "", rec.entry_id])
            out_json.append(json.dumps(obj))
    return header, rows, out_json


def letter_row(letter: DeadLetter) -> list[str]:
    """A row under :data:`LETTER_HEADER` (the detail cut to 60 characters)."""
    detail = letter.detail
    if len(detail) > _DETAIL_CHARS:
        detail = detail[: _DETAIL_CHARS - 3] + "..."
    return [
        letter.entry_id,
        letter.ts.strftime("%Y-%m-%d %H:%M:%S"),
        letter.component,
        letter.reason,
        detail,
        f"{letter.source_topic}:{letter.source_shard}/{letter.source_id}",
    ]


def letter_json(letter: DeadLetter) -> dict[str, Any]:
    """Every part of a dead letter; ``payload`` and the original entry's other fields
    (``source_fields``) as text (undecodable bytes as ``\\xNN``)."""
    return {
        "id": letter.entry_id,
        "ts": letter.ts.isoformat(),
        "component": letter.component,
        "reason": letter.reason,
        "detail": letter.detail,
        "source": f"{letter.source_topic}:{letter.source_shard}/{letter.source_id}",
        "source_topic": letter.source_topic,
        "source_shard": letter.source_shard,
        "source_id": letter.source_id,
        "deliveries": letter.deliveries,
        "payload_bytes": len(letter.payload),
        "payload": _text(letter.payload),
        "source_fields": {name: _text(value) for name, value in letter.source_fields},
    }


def entry_key(entry_id: str) -> tuple[int, ...]:
    """Order of entry ids within one shard: Redis ``ms-seq`` or a Kafka offset."""
    try:
        return tuple(int(part) for part in entry_id.split("-"))
    except ValueError:
        return (0,)


def age_text(ms: int | None) -> str:
    """``850ms``, ``12.5s``, ``3.2m``, ``1.5h`` (``-`` for none)."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f}s"
    if ms < 7_200_000:
        return f"{ms / 60_000:.1f}m"
    return f"{ms / 3_600_000:.1f}h"


def status_row(s: StreamStatus) -> list[str]:
    """A row under :data:`STATUS_HEADER`."""
    return [
        s.stream,
        s.group or "-",
        str(s.length),
        "-" if s.lag is None else str(s.lag),
        str(s.pending),
        str(s.consumers),
        age_text(s.oldest_pending_ms),
        s.owner or "-",
    ]


def status_json(s: StreamStatus) -> dict[str, Any]:
    return {
        "stream": s.stream,
        "group": s.group,
        "length": s.length,
        "lag": s.lag,
        "pending": s.pending,
        "consumers": s.consumers,
        "oldest_pending_ms": s.oldest_pending_ms,
        "owner": s.owner,
    }


def job_run_row(run: JobRun, now: datetime) -> list[str]:
    """A row under :data:`JOB_RUN_HEADER`: the heartbeat as an age at ``now``."""
    return [
        str(run.id),
        run.job,
        run.status,
        run.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        f"{age_text(int((now - run.heartbeat_at).total_seconds() * 1000))} ago",
        f"{run.events_in:,}",
        f"{run.errors:,}",
    ]


def job_run_json(run: JobRun, now: datetime) -> dict[str, Any]:
    return {
        "id": run.id,
        "job": run.job,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "heartbeat_at": run.heartbeat_at.isoformat(),
        "heartbeat_age_s": round((now - run.heartbeat_at).total_seconds(), 3),
        "events_in": run.events_in,
        "rows_written": run.rows_written,
        "errors": run.errors,
        "detail": run.detail,
    }
