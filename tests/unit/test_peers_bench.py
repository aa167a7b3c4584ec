"""benchmarks/peers_bench.py reads the peer scripts' output right (issue 21): the result lines
among their logs, two Quix consumers' figures read together, the Bytewax figures and its
reference check, and the trades each Quix shard must wait for. The output lines are ones the
peer scripts of ../shared/bench-peers printed in real runs."""

from __future__ import annotations

import importlib.util
import sys
from collections import namedtuple
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "peers_bench", ROOT / "benchmarks" / "peers_bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["peers_bench"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


pb = _load()

QUIX_LOG = """\
/venv/lib/python3.11/site-packages/authlib/integrations/httpx_client/assertion_client.py:5: AuthlibDeprecationWarning
[2026-11-30 17:28:24,285] [INFO] [quixstreams] : Starting the Application with the config: {'bootstrap.servers': '127.0.0.1:17802'}
{not json
["a", "list"]
"""
QUIX_A = (
    '{"system": "quixstreams", "n": 100000, "t_first_unix": 1796059651.764953, '
    '"t_last_unix": 1796059681.3785083, "bars": 50, "events": 100000, "run_wall_s": 34.03, '
    '"run_cpu_s": 3.03, "wall_s": 29.614, "cpu_s": 2.99, "events_per_s": 3377, '
    '"cpu_us_per_event": 29.9, "cores": 0.1}'
)
QUIX_B = (
    '{"system": "quixstreams", "n": 100000, "t_first_unix": 1796059650.294211, '
    '"t_last_unix": 1796059681.4863493, "bars": 50, "events": 100000, "run_wall_s": 35.72, '
    '"run_cpu_s": 3.09, "wall_s": 31.192, "cpu_s": 3.04, "events_per_s": 3206, '
    '"cpu_us_per_event": 30.4, "cores": 0.1}'
)
BYTEWAX_RUN = (
    '{"system": "bytewax-durable", "n": 200000, "wall_s": 1.26, "events_per_s": 158875, '
    '"cpu_us_per_event": {"flow": 4.95, "redis": 0.05, "postgres": 2.55, "total": 7.55}, '
    '"cores": 1.2, "ticks_in_pg": 200000, "bars_in_pg": 100, "bars_trade_count": 200000}'
)
CHECK = (
    '{"events": 200000, "ref_bars": 100, "peer_bars": 100, "same_keys": true, "o_exact": true, '
    '"h_exact": true, "l_exact": true, "c_exact": true, "n_exact": true, '
    '"v_max_rel_diff": 2.3e-15, "vwap_max_rel_diff": 4.6e-15, "ok": true}'
)


def test_json_lines_keeps_the_result_objects_in_order_and_skips_the_logs() -> None:
    objs = pb.json_lines(QUIX_LOG + QUIX_A + "\n  " + QUIX_B + "\n")
    assert [o["t_first_unix"] for o in objs] == [1796059651.764953, 1796059650.294211]


def test_two_quix_consumers_span_from_the_first_message_to_the_last_window() -> None:
    lines = [pb.json_lines(QUIX_A)[0], pb.json_lines(QUIX_B)[0]]
    fig = pb.quix_figures(lines, broker_cpu_s=0.23)
    # 1796059681.4863493 (B's last window) - 1796059650.294211 (B's first message)
    assert fig["wall_s"] == 31.192
    assert fig["events"] == 200_000
    assert fig["events_per_s"] == round(200_000 / (1796059681.4863493 - 1796059650.294211))
    assert fig["events_per_s"] == 6412
    assert fig["cpu_us_per_event"] == {"consumers": 30.15, "broker": 1.15, "total": 31.3}
    assert fig["cores"] == round(6.03 / 31.192, 2)
    assert fig["bars"] == 100


def test_one_quix_consumer_gives_the_figures_it_printed() -> None:
    fig = pb.quix_figures(pb.json_lines(QUIX_A), broker_cpu_s=0.0)
    assert (fig["wall_s"], fig["events_per_s"]) == (29.614, 3377)
    assert fig["cpu_us_per_event"]["consumers"] == 29.9


def test_bytewax_figures_and_its_reference_check() -> None:
    objs = pb.json_lines(f"{BYTEWAX_RUN}\n{CHECK}\n")
    fig = pb.bytewax_figures(objs)
    assert fig["events_per_s"] == 158_875
    assert fig["cpu_us_per_event"] == {"flow": 4.95, "redis": 0.05, "postgres": 2.55, "total": 7.55}
    assert fig["stored"] == {"ticks": 200_000, "bars": 100, "trade_count": 200_000}
    assert pb.one(objs, "check", lambda o: "ok" in o)["ref_bars"] == 100


def test_a_missing_result_line_is_an_error_not_a_zero() -> None:
    with pytest.raises(pb.PeerError, match="found 0"):
        pb.bytewax_figures(pb.json_lines(QUIX_LOG + CHECK))
    with pytest.raises(pb.PeerError, match="found 2"):
        pb.one(pb.json_lines(f"{QUIX_A}\n{QUIX_B}"), "quix", lambda o: "t_first_unix" in o)


@pytest.mark.parametrize("n", [20, 21, 39, 4_999, 2_000_003])
@pytest.mark.parametrize("m", [1, 2, 3, 7])
def test_shard_events_counts_what_quix_produce_writes(n: int, m: int) -> None:
    # quix_bars.py produce --shard k/m keeps trade i when i % 20 % m == k; a consumer told a
    # count other than its shard's waits forever (or stops early)
    want = [sum(len(range(j, n, 20)) for j in range(20) if j % m == k) for k in range(m)]
    if n < 5_000:
        assert want == [sum(1 for i in range(n) if i % 20 % m == k) for k in range(m)]
    assert [pb.shard_events(n, k, m) for k in range(m)] == want
    assert sum(want) == n


def test_a_missing_peers_folder_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        pb.parse_args(["--peers-dir", str(tmp_path / "nowhere")])
    assert exc.value.code == 2
    assert "--peers-dir" in capsys.readouterr().err


def test_each_run_reads_the_steal_share_and_the_report_marks_a_contended_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    times = namedtuple("times", "user system idle steal")
    # 20 CPU seconds on 2 CPUs around a run, 0.4 of them stolen by other guests: 2 %
    share = pb.steal_pct(times(0, 0, 0, 0), times(12.0, 1.0, 6.6, 0.4), 2)
    assert share == 2.0
    assert pb.steal_pct(times(1, 1, 1, 1), times(1, 1, 1, 1), 2) is None
    assert pb.steal_cell({"steal_pct": 2.0}) == "2.0 % contended"
    assert pb.steal_cell({"steal_pct": 0.3}) == "0.3 %"
    assert pb.steal_cell({}) == ""
    run = {
        "peer": "bytewax-durable",
        "run": 1,
        "load_start": (0.5, 0, 0),
        "load_end": (1.5, 0, 0),
        "steal_pct": 2.0,
        **pb.bytewax_figures(pb.json_lines(BYTEWAX_RUN)),
    }
    record = {
        "runs": [run],
        "params": {"n": 200_000},
        "load_avg_start": (0.5, 0, 0),
        "summary": pb.summary([run]),
    }
    pb.report(record)
    out = capsys.readouterr().out
    assert "steal" in out and "2.0 % contended" in out
