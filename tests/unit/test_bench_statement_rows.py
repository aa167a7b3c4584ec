"""``mdp bench --pg-stats``'s statement table: execution and planning side by side, and
"off" where the server does not count planning."""

from __future__ import annotations

from market_data_pipeline.bench.report import statement_rows
from market_data_store.bench import StatementStat


def test_rows_give_execution_per_event_and_planning() -> None:
    stats = [
        StatementStat(
            query="WITH win AS (SELECT 1)", calls=4, rows=8, total_ms=20.0, plans=2, plan_ms=140.0
        ),
        StatementStat(
            query='COPY "ticks" FROM STDIN',
            calls=2,
            rows=10_000,
            total_ms=30.0,
            plans=0,
            plan_ms=0.0,
        ),
    ]
    header, rows = statement_rows(stats, 10_000)
    assert header == [
        "calls",
        "rows",
        "total ms",
        "µs/event",
        "ms/call",
        "plans",
        "plan ms",
        "statement",
    ]
    # µs per event is execution alone: 20 ms over 10,000 events = 2.00 µs
    assert rows[0] == ["4", "8", "20", "2.00", "5.00", "2", "140", "WITH win AS (SELECT 1)"]
    assert rows[1][5:7] == ["0", "0"]


def test_planning_not_counted_reads_off_and_long_queries_are_cut() -> None:
    query = "SELECT " + "x, " * 100
    (row,) = statement_rows([StatementStat(query=query, calls=0, rows=0, total_ms=0.0)], 0)[1]
    assert row[3:7] == ["n/a", "n/a", "off", "off"]
    assert len(row[7]) == 120 and row[7].endswith("...")
