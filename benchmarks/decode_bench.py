"""Decode benchmark: CPU µs per event of ``decode_events`` (what a consumer pays per event to
turn bus payloads into validated ``StreamEvent``s), pydantic path vs the plain-Python fast path.

Payloads are ticks as the synthetic producer writes them (ver, provider, symbol, kind, src_ts,
ingest_ts, c, v, seq, event_id, trade_id, side), packed 50 per entry or one per entry, in
msgpack and JSON, each with its own ingest_ts (as live feeds stamp them) or, in one case, one
ingest_ts per entry (as the synthetic producer stamps them); plus packed quotes and bars. Each
figure is the best of ``--repeats`` timed runs of about ``--run-s`` seconds (the least disturbed
by other processes on the machine).

    .venv/bin/python benchmarks/decode_bench.py                 # ~15 s
    PYTHONPATH=/path/to/old/checkout .venv/bin/python benchmarks/decode_bench.py --no-save

"pydantic" forces every item through ``StreamEvent.model_validate`` (the fast paths disabled),
"dict" is the per-item plain-Python fast path alone (msgpack.unpackb to dicts, then
``validate_event_fast``: the shipped path before the typed msgspec stage), "fast" is the shipped
path (msgpack payloads first through the typed msgspec stage,
``codec._typed_msgpack_events``); a checkout without the fast path (put first on ``PYTHONPATH``) is
timed "as-is", which gives the figures from before this work. Also times ``encode_events`` (the
producer side). Appends its figures to ``benchmarks/results/decode-<utc time>.json`` unless
``--no-save``.

Instructions per event, steadier than times on a busy machine: the difference of two runs,

    perf stat -e instructions .venv/bin/python benchmarks/decode_bench.py --just-decode 100000
    perf stat -e instructions .venv/bin/python benchmarks/decode_bench.py --just-decode 0

divided by 100000 (add ``--mode pydantic``, ``--case 'json 50 ticks/entry'``...).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

from market_data_core import codec
from market_data_core.codec import CodecName, decode_events, encode_event, encode_events
from market_data_core.contracts import StreamEvent

RESULTS = Path(__file__).parent / "results"
CODECS: tuple[CodecName, ...] = ("msgpack", "json")
START = datetime(2025, 10, 24, 14, 2, 1, tzinfo=UTC)


def ticks(n: int, *, one_ingest_ts: bool = False) -> list[StreamEvent]:
    """``n`` ticks, each with its own ``ingest_ts`` or (as the synthetic producer stamps them,
    per block) all with the same."""
    return [
        StreamEvent.create(
            provider="synthetic",
            symbol="AAPL",
            kind="tick",
            src_ts=START + timedelta(microseconds=i * 20_000),
            ingest_ts=START + timedelta(microseconds=(0 if one_ingest_ts else i * 20_000) + 1_500),
            c=round(227.5 + 0.01 * (i % 17), 2),
            v=float(1 + i % 100),
            seq=1_000 + i,
            trade_id=str(1_000 + i),
            side="buy" if i % 2 else "sell",
        )
        for i in range(n)
    ]


def quotes(n: int) -> list[StreamEvent]:
    return [
        StreamEvent.create(
            provider="synthetic",
            symbol="EUR/USD",
            kind="quote",
            src_ts=START + timedelta(microseconds=i * 20_000),
            ingest_ts=START + timedelta(microseconds=i * 20_000 + 1_500),
            bid=1.1612 + 0.0001 * (i % 7),
            ask=1.1615 + 0.0001 * (i % 7),
            bid_size=1e6,
            ask_size=2e6,
            seq=i,
        )
        for i in range(n)
    ]


def bars(n: int) -> list[StreamEvent]:
    return [
        StreamEvent.create(
            provider="synthetic",
            symbol="AAPL",
            kind="bar",
            interval="1s",
            src_ts=START + timedelta(seconds=i),
            ingest_ts=START + timedelta(seconds=i + 1),
            o=227.5,
            h=227.9,
            l=227.1,
            c=227.6,
            v=1500.0,
            seq=i,
        )
        for i in range(n)
    ]


@contextmanager
def decode_mode(mode: str) -> Iterator[None]:
    """ "pydantic": no fast path at all; "dict": the per-item fast path only (msgpack.unpackb to
    dicts + validate_event_fast, no typed msgspec stage); "fast" (or "as-is"): as shipped."""
    with contextlib.ExitStack() as stack:
        if mode in ("pydantic", "dict") and hasattr(codec, "_typed_msgpack_events"):
            stack.enter_context(
                mock.patch.object(codec, "_typed_msgpack_events", lambda payload: None)
            )
        if mode == "pydantic":
            stack.enter_context(mock.patch.object(codec, "_fast_event", lambda item: None))
        yield


def us_per_event(fn: Callable[[], object], events: int, run_s: float, repeats: int) -> float:
    """Best-of-``repeats`` CPU time per event of ``fn`` (which handles ``events`` events)."""
    calls = 1
    while True:  # calibrate: enough calls for about run_s
        t0 = time.process_time()
        for _ in range(calls):
            fn()
        if time.process_time() - t0 >= run_s / 4 or calls >= 1 << 20:
            break
        calls *= 2
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(calls * 4):
            fn()
        best = min(best, (time.process_time() - t0) / (calls * 4))
    return best / events * 1e6


def _decode_all(payloads: list[bytes]) -> None:
    for payload in payloads:
        decode_events(payload)


def cases() -> list[tuple[str, list[bytes], int]]:
    """(name, payloads decoded per call, events per call)."""
    out: list[tuple[str, list[bytes], int]] = []
    t50 = ticks(50)
    for name in CODECS:
        out.append((f"{name} 50 ticks/entry", [encode_events(t50, name)], 50))
        out.append((f"{name} 1 tick/entry", [encode_event(e, name) for e in t50], 50))
    shared = encode_events(ticks(50, one_ingest_ts=True), "msgpack")
    out.append(("msgpack 50 ticks, 1 ingest_ts", [shared], 50))
    out.append(("msgpack 50 quotes/entry", [encode_events(quotes(50), "msgpack")], 50))
    out.append(("msgpack 50 bars/entry", [encode_events(bars(50), "msgpack")], 50))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-s", type=float, default=0.25, help="seconds per timed run")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument(
        "--just-decode",
        type=int,
        metavar="N",
        help="only decode about N events of --case in --mode, untimed (for perf stat)",
    )
    parser.add_argument("--case", default="msgpack 50 ticks/entry")
    parser.add_argument("--mode", choices=["pydantic", "dict", "fast"], default="fast")
    args = parser.parse_args()
    if hasattr(codec, "_typed_msgpack_events"):
        modes = ["pydantic", "dict", "fast"]
    else:
        modes = ["pydantic", "fast"] if hasattr(codec, "_fast_event") else ["as-is"]
    if args.just_decode is not None:
        payloads, n_events = next((p, n) for name, p, n in cases() if name == args.case)
        with decode_mode(args.mode if "fast" in modes else "as-is"):
            for _ in range(args.just_decode // n_events):
                _decode_all(payloads)
        return
    rows: list[dict[str, Any]] = []
    print(f"{'case':30s}" + "".join(f"{m + ' µs/ev':>16s}" for m in modes) + "   speed-up")
    for name, payloads, n_events in cases():
        for payload in payloads:  # the payloads must decode cleanly, or the figures mean nothing
            assert not decode_events(payload).errors
        row: dict[str, Any] = {"case": name}
        for mode in modes:
            with decode_mode(mode):
                decode_all = functools.partial(_decode_all, payloads)
                row[mode] = us_per_event(decode_all, n_events, args.run_s, args.repeats)
        gain = f"{row['pydantic'] / row['fast']:9.2f}x" if "fast" in row else ""
        if "dict" in row:
            gain += f"  (fast - dict: {row['fast'] - row['dict']:+.2f} µs/ev)"
        print(f"{name:30s}" + "".join(f"{row[m]:16.2f}" for m in modes) + "   " + gain)
        rows.append(row)
    t50 = ticks(50)
    for name in CODECS:
        encode = functools.partial(encode_events, t50, name)
        cost = us_per_event(encode, 50, args.run_s, args.repeats)
        print(f"encode_events {name} 50 ticks: {cost:.2f} µs/event")
        rows.append({"case": f"encode_events {name} 50 ticks", "as-is": cost})
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"decode-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        result = {
            "bench": "decode",
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "load_avg": os.getloadavg(),
            "repeats": args.repeats,
            "run_s": args.run_s,
            "unit": "CPU µs per event (process_time), best of repeats",
            "rows": rows,
        }
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
