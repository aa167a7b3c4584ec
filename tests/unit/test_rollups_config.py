"""``micro_batch.rollups`` and the ``session_vwap`` feature in the config (issue 20): levels
sorted, nested in the window and the day; calendars known to exchange_calendars; each level's
source; config errors name the key."""

from __future__ import annotations

import pytest

from market_data_core.config import MicroBatchConfig, RollupsConfig, parse_config
from market_data_core.errors import ConfigError
from market_data_pipeline.features import FeatureEngine
from market_data_pipeline.sessions import SessionCalendar, rollup_plan


def test_levels_are_sorted_and_each_built_from_the_coarsest_level_that_nests() -> None:
    cfg = parse_config({"micro_batch": {"rollups": {"intervals": ["1d", "1h", "5m", "1m", "3m"]}}})
    assert cfg.micro_batch.rollups.intervals == ["1m", "3m", "5m", "1h", "1d"]
    plan = rollup_plan(cfg.micro_batch)
    assert plan is not None
    assert [plan.source_of(None, x) for x in plan.intervals] == ["2s", "1m", "1m", "5m", "1h"]
    assert rollup_plan(MicroBatchConfig()) is None


@pytest.mark.parametrize(
    ("rollups", "window_ms", "message"),
    [
        ({"intervals": ["7m"]}, 2000, "must divide a day"),
        ({"intervals": ["2d"]}, 2000, "must divide a day"),
        ({"intervals": ["1m", "60s"]}, 2000, "are the same"),
        ({"intervals": ["1s"]}, 2000, "not a multiple of the micro-batch window"),
        ({"intervals": ["5s"]}, 2000, "not a multiple of the micro-batch window"),
        ({"calendars": {"XNYS": ["SPY"], "XLON": ["SPY"]}}, 2000, "on two calendars"),
        ({"calendars": {"24/7": ["BTC"]}}, 2000, "every symbol's calendar"),
        ({"empty_intervals": "zero"}, 2000, "Input should be 'none' or 'flat'"),
    ],
)
def test_bad_rollups_are_config_errors(
    rollups: dict[str, object], window_ms: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config({"micro_batch": {"window_ms": window_ms, "rollups": rollups}})
    assert str(info.value).startswith("<config>: micro_batch")


def test_an_unknown_calendar_is_a_config_error_naming_the_key() -> None:
    mb = MicroBatchConfig(rollups=RollupsConfig(intervals=["1d"], calendars={"XNOPE": ["SPY"]}))
    with pytest.raises(ConfigError, match="unknown trading calendar 'XNOPE'") as info:
        rollup_plan(mb)
    assert info.value.key_path == "micro_batch.rollups.calendars"


def test_session_vwap_takes_no_extent() -> None:
    ok = parse_config({"features": {"windows": [{"name": "session_vwap"}, {"name": "svwap_rth"}]}})
    assert len(FeatureEngine(ok.features.windows, timed=False).specs) == 2
    with pytest.raises(ConfigError, match="neither 'horizon' nor 'periods'"):
        parse_config({"features": {"windows": [{"name": "session_vwap", "periods": 3}]}})
    with pytest.raises(ConfigError, match="exactly one of 'horizon'"):
        parse_config({"features": {"windows": [{"name": "vwap_x"}]}})


def test_session_of_follows_the_calendar_and_utc_days_for_24_7() -> None:
    from datetime import UTC, date, datetime

    cal = SessionCalendar({"SPY": "XNYS"})
    assert cal.session_of("SPY", datetime(2020, 11, 27, 17, 59, tzinfo=UTC)) == date(2020, 11, 27)
    assert cal.session_of("SPY", datetime(2020, 11, 27, 18, 0, tzinfo=UTC)) is None  # half day
    assert cal.session_of("SPY", datetime(2020, 11, 26, 15, 0, tzinfo=UTC)) is None  # holiday
    assert cal.session_of("SPY", datetime(2020, 3, 9, 13, 30, tzinfo=UTC)) == date(2020, 3, 9)
    assert cal.session_of("SPY", datetime(2020, 3, 6, 14, 29, tzinfo=UTC)) is None
    assert cal.session_of("BTC", datetime(2020, 3, 8, 23, 59, tzinfo=UTC)) == date(2020, 3, 8)
