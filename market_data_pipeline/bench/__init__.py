"""``mdp bench`` as a Python API: the full path on real servers beside the bare ceiling of the
same run, and the goal lines it is judged by.

    from market_data_pipeline.bench import measure_ceiling, result_rows, run_full_path

:func:`run_full_path` -> :class:`FullPath` (throughput, latency, lag, RSS and CPU per role,
exactness); :func:`measure_ceiling` -> :class:`Ceiling`; :func:`result_rows` the printed lines,
:func:`result_record` the JSON, :func:`statement_rows` PostgreSQL's top statements
(``--pg-stats``); :func:`in_child` runs set-up work (migration, ceiling) in a process of its
own. The CLI command (``cli/cmd_bench.py``) parses flags and calls
these.
"""

from market_data_pipeline.bench.ceiling import Ceiling, measure_ceiling
from market_data_pipeline.bench.child import in_child
from market_data_pipeline.bench.full_path import FullPath, machine_facts, run_full_path
from market_data_pipeline.bench.report import (
    result_record,
    result_rows,
    rss_flat,
    statement_rows,
)

__all__ = [
    "Ceiling",
    "FullPath",
    "in_child",
    "machine_facts",
    "measure_ceiling",
    "result_record",
    "result_rows",
    "rss_flat",
    "run_full_path",
    "statement_rows",
]
