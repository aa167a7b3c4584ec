"""What ``mdp bench`` prints and records: the goal lines (issue 21's targets) with ok/MISSED
beside the figures and the bare ceilings of the same run, and the JSON record."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from market_data_pipeline.bench.ceiling import Ceiling
from market_data_pipeline.bench.full_path import FullPath, machine_facts

if TYPE_CHECKING:
    from market_data_pipeline.wiring import StatementStat

__all__ = [
    "TARGET_CPU_US_PER_EVENT",
    "TARGET_EVENTS_PER_S",
    "TARGET_LAG_OVER_WINDOW",
    "TARGET_P95_OVER_WINDOW",
    "TARGET_PEAK_RSS_MIB",
    "result_record",
    "result_rows",
    "rss_flat",
    "statement_rows",
]

# Targets from the issues (21: packed, columnar), printed beside the figures.
TARGET_EVENTS_PER_S = 200_000
TARGET_P95_OVER_WINDOW = 1.2
TARGET_LAG_OVER_WINDOW = 2.0
TARGET_CPU_US_PER_EVENT = 9.0
TARGET_PEAK_RSS_MIB = 600.0
# "flat": over the last RSS_FLAT_S of the run (the last 80 % of a shorter one), the mean of
# the last 30 samples is at most this much above the mean of the first 30 (5 %, +20 MiB)
RSS_FLAT_S = 240.0
RSS_FLAT_GROWTH = 0.05
RSS_FLAT_SLACK_MIB = 20.0


def rss_flat(samples: list[tuple[float, float]]) -> tuple[bool, float, float]:
    """Whether RSS stayed flat over the last ``RSS_FLAT_S`` of the run (its last 80 % when
    shorter): ``(flat, mean of the first 30 samples of that span, of the last 30)``."""
    if len(samples) < 10:
        return False, 0.0, 0.0
    end = samples[-1][0]
    span = min(RSS_FLAT_S, 0.8 * end)
    tail = [mb for t, mb in samples if t >= end - span]
    k = max(1, min(30, len(tail) // 3))
    first, last = sum(tail[:k]) / k, sum(tail[-k:]) / k
    return last <= first * (1 + RSS_FLAT_GROWTH) + RSS_FLAT_SLACK_MIB, first, last


def _rss_row(f: FullPath) -> tuple[str, str]:
    flat, first, last = rss_flat(f.rss_samples)
    span = min(RSS_FLAT_S, 0.8 * (f.rss_samples[-1][0] if f.rss_samples else 0.0))
    return (
        "peak RSS (bench + producers + workers)",
        f"{f.peak_rss_mb:,.0f} MiB (target <= {TARGET_PEAK_RSS_MIB:,.0f}: "
        f"{_ok(f.peak_rss_mb <= TARGET_PEAK_RSS_MIB)}; peaks "
        + ", ".join(f"{role} {mb:,.0f}" for role, mb in f.peak_rss_mb_by_role.items())
        + f"); over the last {span:,.0f} s {first:,.0f} -> {last:,.0f} MiB (flat: {_ok(flat)})",
    )


def _ok(flag: bool) -> str:
    return "ok" if flag else "MISSED"


def _per_event(seconds: float, events: int) -> str:
    return f"{seconds * 1e6 / events:.2f}" if events else "n/a"


def result_rows(
    c: Ceiling | None,
    f: FullPath,
    window_ms: int,
    rate: float,
    pack: int,
    procs: str,
    quote_ratio: float = 0.0,
    pack_as: str = "rows",
) -> list[tuple[str, str]]:
    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:,.0f} ms"

    p95_target = TARGET_P95_OVER_WINDOW * window_ms
    # one event per entry is a msgpack map whatever producers.pack_as says (it applies to packs)
    wire = (
        "msgpack maps"
        if pack == 1
        else "column blocks"
        if pack_as == "columns"
        else "msgpack arrays"
    )
    rows = [
        (
            "mode",
            f"{'packed ' + str(pack) + ' events/entry' if pack > 1 else '1 event/entry'} "
            f"({wire}), "
            f"window {window_ms} ms, requested {rate:,.0f} ev/s "
            f"({f'{quote_ratio:.0%} quotes' if quote_ratio else 'trades only'}), {procs}",
        ),
        (
            "full path: sustained",
            f"{f.sustained_per_s:,.0f} ev/s  (target >= {TARGET_EVENTS_PER_S:,}: "
            f"{_ok(f.sustained_per_s >= TARGET_EVENTS_PER_S)})",
        ),
        (
            "window latency p50/p95/p99",
            f"{ms(f.latency_p50_ms)} / {ms(f.latency_p95_ms)} / "
            f"{ms(f.latency_p99_ms)}  (p95 target <= {p95_target:,.0f} ms: "
            f"{_ok(f.latency_p95_ms is not None and f.latency_p95_ms <= p95_target)})",
        ),
        (
            "  of it: end -> taken p50/p95",
            f"{ms(f.close_p50_ms)} / {ms(f.close_p95_ms)}  (watermark or flush timeout, "
            "then a commit in flight; the rest is the window's own commit)",
        ),
        (
            "consumer lag p95 / max",
            f"{f.lag_ms_p95:,.0f} / {f.lag_ms_max:,.0f} ms  (target < "
            f"{TARGET_LAG_OVER_WINDOW * window_ms:,.0f} ms: "
            f"{_ok(f.lag_ms_p95 < TARGET_LAG_OVER_WINDOW * window_ms)})",
        ),
        (
            "unread+pending entries (first/max/last)",
            f"{(f.pending_samples or [0])[0]:,} / {max(f.pending_samples, default=0):,} / "
            f"{(f.pending_samples or [0])[-1]:,}",
        ),
        _rss_row(f),
        (
            "exact",
            f"{f.published:,} published = {f.events_in:,} consumed = {f.ticks_inserted:,} "
            f"ticks + {f.quotes_inserted:,} quotes stored = {f.bars_trade_count:,} in bars + "
            f"{f.quote_bars_quote_count:,} in quote bars, {f.dead_letters} dead letters: "
            f"{_ok(f.exact)}"
            + (
                f" ({f.trimmed_unread:,} entries trimmed before the group read them: "
                "bus.maxlen is shorter than the backlog)"
                if f.trimmed_unread
                else ""
            )
            + f"; signals = reference ({f.reference_signals:,} signals over "
            f"{f.reference_bars:,} final bars): {_ok(f.signals_reference)}",
        ),
        *(
            [
                (
                    "rollups",
                    f"{f.rollup_bars_written:,} rollup windows written; trades in the bars of "
                    + ", ".join(f"{k}: {v:,}" for k, v in f.rollup_trade_counts.items())
                    + f" (= {f.ticks_inserted:,} ticks: "
                    f"{_ok(all(v == f.ticks_inserted for v in f.rollup_trade_counts.values()))})",
                )
            ]
            if f.rollup_trade_counts
            else []
        ),
        (
            "bars -> features -> inference",
            f"{f.bars_written:,} bars and {f.quote_bars_written:,} quote bars written; "
            f"{f.bars_scored:,} windows scored, {f.signals:,} signals",
        ),
        (
            "outbox relay (workers)",
            f"{f.bars_relayed:,} bar changes in {f.relay_calls:,} relay calls, "
            f"{f.relay_s:.2f} s of wall time in them (waits for a store connection and the "
            f"bus included) = {_per_event(f.relay_s, f.events_in)} µs per event",
        ),
        (
            "scoring and re-scoring (inference)",
            f"{f.rescore_s:.2f} s of wall time (store round trips included) = "
            f"{_per_event(f.rescore_s, f.events_in)} µs per event; "
            f"{f.bars_replayed:,} bars replayed, {f.resumes:,} series resumed, "
            f"{f.retracted:,} signals retracted",
        ),
    ]
    if f.cpu_us_per_event:
        total = sum(f.cpu_us_per_event.values())
        rows.append(
            (
                "CPU per event (steady part)",
                ", ".join(f"{role} {us:.1f}" for role, us in f.cpu_us_per_event.items())
                + f" = {total:.1f} µs ({total * f.sustained_per_s / 1e6:.2f} cores busy)  "
                f"(target <= {TARGET_CPU_US_PER_EVENT:g} µs: "
                f"{_ok(total <= TARGET_CPU_US_PER_EVENT)})",
            )
        )
    m = f.machine_load
    if m is not None:
        rows.append(
            (
                "machine (steady part)",
                f"{m.busy_cores:.2f} of {m.cpus} cores busy: this run {m.ours_cores:.2f}, "
                f"other processes {m.other_cores:.2f}; steal {m.steal_pct:.1f} %  "
                + (
                    "(contended: not a quiet machine's figures)"
                    if m.contended
                    else "(quiet: no other load)"
                ),
            )
        )
    if c is not None:
        rows += [
            (
                "bare ceiling: XADD",
                f"{c.xadd_per_s:,.0f} ev/s (1 event/entry)"
                + (f", {c.packed_xadd_per_s:,.0f} ev/s packed" if c.packed_xadd_per_s else "")
                + f"  ({c.publish_method}, as the producers publish)",
            ),
            ("bare ceiling: XREADGROUP+XACK", f"{c.read_ack_per_s:,.0f} ev/s"),
            ("bare ceiling: COPY", f"{c.copy_per_s:,.0f} rows/s"),
            (
                "bare ceiling: whole path",
                f"{c.path_per_s:,.0f} ev/s, 1 event/entry, publish as above"
                + (
                    f", median of {c.repeats} rounds ({min(c.path_samples):,.0f}-"
                    f"{max(c.path_samples):,.0f})"
                    if c.repeats > 1 and c.path_samples
                    else ""
                )
                + f"  (full path = "
                f"{f.sustained_per_s / c.path_per_s:.0%} of it; goal past it: "
                f"{_ok(f.sustained_per_s > c.path_per_s)})",
            ),
        ]
    return rows


def result_record(
    run_id: str, params: dict[str, Any], window_ms: int, c: Ceiling | None, f: FullPath
) -> dict[str, Any]:
    """The JSON record of a run (``benchmarks/results/bench-<run>.json``)."""
    return {
        "run": run_id,
        "machine": machine_facts(),
        "params": params,
        "targets": {
            "events_per_s": TARGET_EVENTS_PER_S,
            "cpu_us_per_event": TARGET_CPU_US_PER_EVENT,
            "peak_rss_mib": TARGET_PEAK_RSS_MIB,
            "p95_latency_ms": TARGET_P95_OVER_WINDOW * window_ms,
            "lag_ms": TARGET_LAG_OVER_WINDOW * window_ms,
        },
        "full_path": asdict(f),
        "ceiling": None if c is None else asdict(c),
    }


_QUERY_CHARS = 120


def statement_rows(
    stats: Sequence[StatementStat], events: int
) -> tuple[list[str], list[list[str]]]:
    """``mdp bench --pg-stats``: a header and a row per statement (``pg_stat_statements``,
    most execution time first): calls, rows, total ms of execution, µs per event
    (``total_ms`` over ``events``, the events consumed in the run), ms per call, how many
    times it was planned and the ms that took ("off" when the server does not count
    planning), and the normalised query cut to ``_QUERY_CHARS`` characters."""
    header = ["calls", "rows", "total ms", "µs/event", "ms/call", "plans", "plan ms", "statement"]
    rows = []
    for st in stats:
        query = st.query if len(st.query) <= _QUERY_CHARS else st.query[: _QUERY_CHARS - 3] + "..."
        rows.append(
            [
                f"{st.calls:,}",
                f"{st.rows:,}",
                f"{st.total_ms:,.0f}",
                f"{st.total_ms * 1000 / events:.2f}" if events else "n/a",
                f"{st.total_ms / st.calls:.2f}" if st.calls else "n/a",
                "off" if st.plans is None else f"{st.plans:,}",
                "off" if st.plan_ms is None else f"{st.plan_ms:,.0f}",
                query,
            ]
        )
    return header, rows
