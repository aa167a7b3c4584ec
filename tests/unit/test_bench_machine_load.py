"""`mdp bench` says how loaded the whole machine was over the run's steady part (the kernel's
CPU time counters), so a run on a shared or busy machine is told from one on a quiet one."""

from __future__ import annotations

from collections import namedtuple

import psutil

from market_data_pipeline.bench import result_record
from market_data_pipeline.bench.full_path import FullPath, load_between
from market_data_pipeline.bench.report import result_rows

# psutil.cpu_times() on Linux: seconds summed over the CPUs, /proc/stat's columns
Times = namedtuple(
    "Times",
    "user nice system idle iowait irq softirq steal guest guest_nice",
)


def _times(**kw: float) -> Times:
    return Times(**{name: kw.get(name, 0.0) for name in Times._fields})


def test_load_splits_busy_cores_into_the_run_and_the_rest_and_reads_steal() -> None:
    # 10 s on 2 CPUs = 20 CPU seconds: 13 running (of which 0.5 s of a guest, already in
    # user), 5 idle, 1 waiting on I/O, 1 stolen by the hypervisor
    first = _times(user=100.0, system=50.0, idle=500.0, guest=3.0)
    last = _times(
        user=110.0,
        system=51.5,
        irq=0.5,
        softirq=1.0,
        idle=505.0,
        iowait=1.0,
        steal=1.0,
        guest=3.5,
    )
    load = load_between(first, last, ours_cpu_s=11.0, cpus=2)
    assert load is not None
    assert load.busy_cores == 1.3  # 13 CPU s over 10 s
    assert load.ours_cores == 1.1
    assert load.other_cores == 0.2
    assert load.steal_pct == 5.0  # 1 of 20
    assert load.contended


def test_a_quiet_machine_is_not_contended_and_no_time_gives_no_load() -> None:
    first = _times(user=10.0, idle=10.0)
    last = _times(user=19.96, idle=20.04)  # 20 CPU s: 9.96 busy, all the run's
    load = load_between(first, last, ours_cpu_s=9.96, cpus=2)
    assert load is not None and not load.contended
    assert (load.other_cores, load.steal_pct) == (0.0, 0.0)
    assert load_between(first, first, ours_cpu_s=0.0, cpus=2) is None


def test_the_machine_line_is_printed_and_recorded() -> None:
    load = load_between(_times(user=0.0, idle=0.0), _times(user=16.0, idle=2.0, steal=2.0), 12.0, 2)
    full = FullPath(sustained_per_s=1.0, machine_load=load)
    rows = dict(result_rows(None, full, 2000, 1000.0, 1, "1 producer"))
    line = rows["machine (steady part)"]
    assert "1.60 of 2 cores busy: this run 1.20, other processes 0.40; steal 10.0 %" in line
    assert "contended" in line
    record = result_record("run", {}, 2000, None, full)
    assert record["full_path"]["machine_load"] == {
        "cpus": 2,
        "busy_cores": 1.6,
        "ours_cores": 1.2,
        "other_cores": 0.4,
        "steal_pct": 10.0,
    }
    quiet = FullPath(sustained_per_s=1.0)
    assert "machine (steady part)" not in dict(result_rows(None, quiet, 2000, 1.0, 1, "x"))


def test_this_machines_counters_have_the_fields_the_load_reads() -> None:
    now = psutil.cpu_times()
    assert {"user", "system", "idle"} <= set(now._fields)
    assert load_between(now, now, 0.0, psutil.cpu_count() or 1) is None
