"""Store helpers that need no server: lock keys, partition days, error mapping."""

from __future__ import annotations

from datetime import date

import asyncpg
import pytest

from market_data_core.errors import ConfigError, StoreError, StoreUnavailableError
from market_data_store._base import series_lock_keys
from market_data_store._errors import classify, translate_errors
from market_data_store._timeseries import partition_ddl
from market_data_store.store_client import _bar_days


def test_series_lock_keys_sorted_unique_int4() -> None:
    keys = series_lock_keys([("p", "B"), ("p", "A"), ("p", "B"), ("q", "A")])
    assert keys == sorted(set(keys)) and len(keys) == 3
    assert all(-(2**31) <= k < 2**31 for k in keys)
    assert series_lock_keys([("p", "A")])[0] in keys  # stable across calls


def test_bar_days_cover_windows_that_start_the_day_before() -> None:
    d = date(2020, 2, 23)
    assert _bar_days({d}, 2000) == {d}  # 2 s divides a day: windows never straddle midnight
    # 7 s does not divide a day: the first ticks of the day belong to a window that
    # started the evening before.
    assert _bar_days({d}, 7000) == {d, date(2020, 2, 22)}


def test_partition_bounds_are_utc_midnights() -> None:
    ddl = partition_ddl("bars_ohlcv", date(2024, 12, 31))
    assert '"bars_ohlcv_p20241231" PARTITION OF "bars_ohlcv"' in ddl
    assert "FROM ('2024-12-31 00:00:00+00') TO ('2025-01-01 00:00:00+00')" in ddl


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
    ],
)
def test_transient_failures_are_unavailable(exc: Exception) -> None:
    err = classify(exc, "op")
    assert type(err) is StoreUnavailableError
    # the server's SQLSTATE when it answered (57P03 starting up, 53300 too many clients...)
    assert err.sqlstate == getattr(exc, "sqlstate", None)


def test_other_failures_are_store_errors_with_sqlstate() -> None:
    err = classify(asyncpg.exceptions.UndefinedTableError('relation "ticks" does not exist'), "op")
    assert type(err) is StoreError and "mdp db upgrade" in str(err)
    assert err.sqlstate == "42P01"
    err = classify(asyncpg.exceptions.NumericValueOutOfRangeError("out of range"), "op")
    assert type(err) is StoreError and err.sqlstate == "22003"
    # not from the server: no SQLSTATE
    assert classify(ValueError("unrelated"), "op").sqlstate is None


def test_translate_errors_looks_through_wrappers() -> None:
    with pytest.raises(StoreUnavailableError), translate_errors("op"):
        try:
            raise ConnectionResetError("reset by peer")
        except ConnectionResetError as inner:
            raise RuntimeError("wrapped by a library") from inner


def test_a_malformed_dsn_is_a_config_error() -> None:
    err = classify(asyncpg.ClientConfigurationError("`sslmode` parameter must be one of: ..."), "c")
    assert type(err) is ConfigError and "malformed PostgreSQL DSN: `sslmode`" in str(err)
    refused = asyncpg.exceptions.UndefinedObjectError('unrecognized configuration parameter "x"')
    assert type(classify(refused, "connect")) is ConfigError
    # the same SQLSTATE from anything but a refused setting stays a store error
    other = asyncpg.exceptions.UndefinedObjectError('type "nope" does not exist')
    assert type(classify(other, "op")) is StoreError
    # a ValueError is bad configuration only when asyncpg's DSN parser raised it
    assert type(classify(ValueError("unrelated"), "op")) is StoreError


def test_messages_are_one_line_without_sqlalchemy_hints() -> None:
    from sqlalchemy.exc import InterfaceError

    inner = asyncpg.exceptions.InternalServerError("boom\nDETAIL: more")
    wrapped = InterfaceError("SELECT 1", {}, inner)
    err = classify(wrapped, "migrate")
    assert str(err).count("\n") == 0 and "Background on this error" not in str(err)
    assert str(err) == "migrate: InternalServerError: boom"
