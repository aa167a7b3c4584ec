from __future__ import annotations

from datetime import UTC, datetime

import pytest

from market_data_core.timeutil import (
    format_duration_ms,
    from_epoch_us,
    isoformat_us,
    parse_duration_ms,
    parse_timestamp,
    to_epoch_us,
    window_start_us,
)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("500ms", 500), ("2s", 2000), ("1.5s", 1500), ("5m", 300_000), ("1h", 3_600_000), (750, 750)],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "2", "fast", "-1s", "1.0001ms"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(text)


def test_format_duration() -> None:
    assert [format_duration_ms(x) for x in (500, 1000, 2000, 5000, 60_000, 1500)] == [
        "500ms",
        "1s",
        "2s",
        "5s",
        "1m",
        "1500ms",
    ]


def test_epoch_us_round_trip_exact() -> None:
    ts = datetime(2020, 2, 22, 0, 0, 2, 111000, tzinfo=UTC)
    assert to_epoch_us(ts) == 1582329602111000
    assert from_epoch_us(1582329602111000) == ts
    assert isoformat_us(ts) == "2020-02-22T00:00:02.111000Z"


def test_parse_timestamp_requires_zone() -> None:
    assert parse_timestamp("2020-01-01T00:00:00Z") == datetime(2020, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="naive"):
        parse_timestamp("2020-01-01T00:00:00")


@pytest.mark.parametrize(
    ("ts_us", "w_ms", "start"),
    [
        (0, 2000, 0),
        (1_999_999, 2000, 0),
        (2_000_000, 2000, 2_000_000),
        (1_582_329_602_111_000, 500, 1_582_329_602_000_000),
    ],
)
def test_window_alignment(ts_us: int, w_ms: int, start: int) -> None:
    assert window_start_us(ts_us, w_ms) == start
