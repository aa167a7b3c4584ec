"""Local wall times -> UTC across daylight-saving changes, against pandas' ``tz_localize``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from market_data_core.errors import LocalTimeError
from market_data_core.localtime import is_ambiguous, localize, to_utc

NY = ZoneInfo("America/New_York")

# issue 16: rows in time order across the New York fall-back of 2020-11-01
FALL_BACK = [
    datetime(2020, 11, 1, 1, 30),  # EDT
    datetime(2020, 11, 1, 1, 59, 58),  # EDT
    datetime(2020, 11, 1, 1, 0),  # EST
    datetime(2020, 11, 1, 1, 30),  # EST
    datetime(2020, 11, 1, 2, 0),  # EST
]
SPRING_FORWARD = [
    datetime(2020, 3, 8, 1, 59, 59),
    datetime(2020, 3, 8, 2, 0),  # does not exist
    datetime(2020, 3, 8, 2, 30),  # does not exist
    datetime(2020, 3, 8, 3, 0),
]


def pandas_utc(walls: list[datetime], zone: str, **policy: object) -> list[datetime]:
    """pandas' answer, as aware UTC datetimes."""
    localized = pd.Series(pd.to_datetime(walls)).dt.tz_localize(zone, **policy)  # type: ignore[arg-type]
    return [ts.to_pydatetime() for ts in localized.dt.tz_convert("UTC")]


def test_fall_back_infer_matches_pandas() -> None:
    ours = localize(FALL_BACK, NY, ambiguous="infer")
    assert ours == pandas_utc(FALL_BACK, "America/New_York", ambiguous="infer")
    assert ours == [
        datetime(2020, 11, 1, 5, 30, tzinfo=UTC),
        datetime(2020, 11, 1, 5, 59, 58, tzinfo=UTC),
        datetime(2020, 11, 1, 6, 0, tzinfo=UTC),  # read as EDT before the fix: 05:00
        datetime(2020, 11, 1, 6, 30, tzinfo=UTC),  # read as EDT before the fix: 05:30
        datetime(2020, 11, 1, 7, 0, tzinfo=UTC),
    ]


@pytest.mark.parametrize(("policy", "dst"), [("earliest", True), ("latest", False)])
def test_fall_back_earliest_and_latest_match_pandas(policy: str, dst: bool) -> None:
    ours = localize(FALL_BACK, NY, ambiguous=policy)  # type: ignore[arg-type]
    assert ours == pandas_utc(FALL_BACK, "America/New_York", ambiguous=[dst] * len(FALL_BACK))


def test_fall_back_raise_refuses_each_ambiguous_time_naming_it_and_the_rule() -> None:
    with pytest.raises(ValueError, match=r"Cannot infer dst time"):
        pandas_utc(FALL_BACK, "America/New_York")  # pandas raises by default too
    ours = localize(FALL_BACK, NY)
    errors = ours[:4]
    assert all(isinstance(e, LocalTimeError) and e.reason == "ambiguous_time" for e in errors)
    detail = str(errors[2])
    assert "ambiguous local time 2020-11-01 01:00:00 in America/New_York" in detail
    assert "EDT (UTC-04:00)" in detail and "EST (UTC-05:00)" in detail
    assert "rule ambiguous: raise" in detail
    assert (errors[2].wall, errors[2].zone, errors[2].rule) == (
        datetime(2020, 11, 1, 1, 0),
        "America/New_York",
        "ambiguous: raise",
    )
    assert ours[4] == datetime(2020, 11, 1, 7, 0, tzinfo=UTC)  # 02:00 happens once


def test_spring_forward_shift_forward_matches_pandas() -> None:
    ours = localize(SPRING_FORWARD, NY, nonexistent="shift_forward")
    assert ours == pandas_utc(SPRING_FORWARD, "America/New_York", nonexistent="shift_forward")
    assert ours[2] == datetime(2020, 3, 8, 7, 0, tzinfo=UTC)  # 03:00 EDT, the first valid time


def test_spring_forward_raise_names_the_gap_and_the_rule() -> None:
    with pytest.raises(ValueError, match=r"2020-03-08 02:00:00"):
        pandas_utc(SPRING_FORWARD, "America/New_York")
    ours = localize(SPRING_FORWARD, NY)
    assert ours[0] == datetime(2020, 3, 8, 6, 59, 59, tzinfo=UTC)
    assert ours[3] == datetime(2020, 3, 8, 7, 0, tzinfo=UTC)
    err = ours[2]
    assert isinstance(err, LocalTimeError) and err.reason == "nonexistent_time"
    assert "local time 2020-03-08 02:30:00 does not exist in America/New_York" in err.detail
    assert "the clocks jump from 02:00 to 03:00" in err.detail
    assert "rule nonexistent: raise" in err.detail
    # before the fix 02:30 silently became 07:30 UTC
    with pytest.raises(LocalTimeError):
        to_utc(datetime(2020, 3, 8, 2, 30), NY)


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("America/New_York", datetime(2021, 11, 7)),
        ("Europe/London", datetime(2021, 10, 31)),
        ("Europe/Berlin", datetime(2021, 10, 31)),
        ("Australia/Sydney", datetime(2021, 4, 4)),  # southern hemisphere: fall-back in April
        ("Australia/Lord_Howe", datetime(2021, 4, 4)),  # a 30-minute change
    ],
)
def test_a_day_of_minute_bars_and_of_trades_matches_pandas(zone: str, day: datetime) -> None:
    """Every minute of a fall-back day (the repeated hour appears twice, in order), with
    ``infer``; and the same as trades, several per timestamp, where pandas' infer fails on the
    equal times but the placement it would give for distinct times still holds."""
    z = ZoneInfo(zone)
    instants = [
        (day - timedelta(hours=12)).replace(tzinfo=z).astimezone(UTC) + timedelta(minutes=m)
        for m in range(36 * 60)
    ]
    walls = [t.astimezone(z).replace(tzinfo=None) for t in instants]
    assert sum(is_ambiguous(w, z) for w in walls) >= 60
    ours = localize(walls, z, ambiguous="infer")
    assert ours == pandas_utc(walls, zone, ambiguous="infer") == instants
    trades = [w for w in walls for _ in range(3)]
    assert localize(trades, z, ambiguous="infer") == [t for t in instants for _ in range(3)]


def test_hourly_bars_repeating_the_hour_match_pandas() -> None:
    """Hourly bars: 01:00 EDT then 01:00 EST -- the wall clock does not move; pandas takes
    that as the switch, and so do we when nothing goes back."""
    walls = [datetime(2020, 11, 1, h) for h in (0, 1, 1, 2, 3)]
    ours = localize(walls, NY, ambiguous="infer")
    assert ours == pandas_utc(walls, "America/New_York", ambiguous="infer")
    assert ours[1:3] == [
        datetime(2020, 11, 1, 5, 0, tzinfo=UTC),
        datetime(2020, 11, 1, 6, 0, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("walls", "why"),
    [
        ([datetime(2020, 11, 1, 1, 10), datetime(2020, 11, 1, 1, 20)], "no repeated times"),
        (
            [datetime(2020, 11, 1, 1, m) for m in (10, 5, 20, 15)],
            "goes back 2 times",
        ),
        (
            [datetime(2020, 11, 1, 1, m) for m in (10, 10, 20, 20)],
            "repeats 2 times",
        ),
    ],
)
def test_infer_refuses_a_run_it_cannot_place(walls: list[datetime], why: str) -> None:
    with pytest.raises(ValueError):
        pandas_utc(walls, "America/New_York", ambiguous="infer")
    out = localize([datetime(2020, 11, 1, 0, 59), *walls], NY, ambiguous="infer")
    assert out[0] == datetime(2020, 11, 1, 4, 59, tzinfo=UTC)
    assert all(isinstance(e, LocalTimeError) for e in out[1:])
    assert why in str(out[1]) and "rule ambiguous: infer" in str(out[1])


def test_ordinary_times_and_utc() -> None:
    assert to_utc(datetime(2020, 7, 1, 12), NY) == datetime(2020, 7, 1, 16, tzinfo=UTC)
    assert localize([datetime(2020, 11, 1, 1, 30)], ZoneInfo("UTC")) == [
        datetime(2020, 11, 1, 1, 30, tzinfo=UTC)
    ]
