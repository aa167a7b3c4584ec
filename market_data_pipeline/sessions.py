"""Trading calendars and the rollup plan (``micro_batch.rollups``).

A symbol trades on the calendar ``micro_batch.rollups.calendars`` names for it, else 24/7 (its
sessions are UTC days). A named calendar's sessions come from ``exchange_calendars`` (the
``calendars`` extra): open and close in UTC with holidays, early closes and daylight saving as
the library knows them, from 1990 to about a year past the library's release. Lunch breaks
(``break_start``/``break_end``) are inside the session.

- :func:`load_sessions`: a calendar's sessions (cached per process).
- :func:`rollup_plan`: the :class:`~market_data_core.protocols.RollupPlan` the micro-batcher
  hands to the store: the levels, each one's source level, the symbols' calendars.
- :class:`SessionCalendar`: which session a bar is in, for the session VWAP feature.
"""

from __future__ import annotations

import bisect
import functools
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime

from market_data_core.config import MicroBatchConfig
from market_data_core.errors import ConfigError
from market_data_core.protocols import RollupPlan, TradingSession
from market_data_core.timeutil import format_duration_ms, parse_duration_ms, to_epoch_us

__all__ = [
    "SESSIONS_FROM",
    "SessionCalendar",
    "load_sessions",
    "rollup_plan",
    "session_calendars",
]

SESSIONS_FROM = date(1990, 1, 1)
"""The first day whose sessions are loaded (and stored in ``trading_sessions``)."""

_CALENDARS_KEY = "micro_batch.rollups.calendars"
_DAY_MS = 86_400_000
_PANDAS_VALUES_WARNING = "Series.values returning an ndarray that drops timezone"


@functools.cache
def _sessions(name: str) -> tuple[TradingSession, ...]:
    try:
        import exchange_calendars as xcals
    except ImportError:
        raise ConfigError(
            f"trading calendar {name!r} needs exchange_calendars: "
            "pip install 'mdp-streaming[calendars]'",
            key_path=_CALENDARS_KEY,
        ) from None
    try:
        with warnings.catch_warnings():
            # exchange_calendars 4.13 reads Series.values of tz-aware columns, which pandas
            # 3.1 deprecates (the values it reads are the same)
            warnings.filterwarnings("ignore", message=_PANDAS_VALUES_WARNING)
            calendar = xcals.get_calendar(name, start=SESSIONS_FROM.isoformat())
            schedule = calendar.schedule
    except xcals.errors.InvalidCalendarName:
        raise ConfigError(
            f"unknown trading calendar {name!r} (exchange_calendars names such as XNYS, XLON, "
            "XTKS; every symbol not listed trades 24/7)",
            key_path=_CALENDARS_KEY,
        ) from None
    return tuple(
        TradingSession(
            session=label.date(),
            open=o.to_pydatetime().astimezone(UTC),
            close=c.to_pydatetime().astimezone(UTC),
        )
        for label, o, c in zip(schedule.index, schedule["open"], schedule["close"], strict=True)
    )


def load_sessions(name: str) -> Sequence[TradingSession]:
    """The sessions of an ``exchange_calendars`` calendar since :data:`SESSIONS_FROM`, oldest
    first. Raises :class:`ConfigError` for an unknown name or without the library."""
    return _sessions(name)


def session_calendars(rollups_calendars: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """symbol -> calendar name, from the config's calendar -> symbols."""
    return {s: name for name, symbols in rollups_calendars.items() for s in symbols}


def _nests(level_ms: int, lower_ms: int) -> bool:
    return level_ms % lower_ms == 0


def _divides_sessions(lower_ms: int, sessions: Sequence[TradingSession]) -> bool:
    unit = lower_ms * 1000
    return all(
        to_epoch_us(s.open) % unit == 0 and to_epoch_us(s.close) % unit == 0 for s in sessions
    )


def rollup_plan(
    micro_batch: MicroBatchConfig, *, window_ms: int | None = None
) -> RollupPlan | None:
    """The store's plan for ``micro_batch.rollups`` (``None`` when there is nothing to do).

    Each level is built from the coarsest lower level (the micro-bars of ``window_ms`` at
    worst) whose epoch-aligned buckets nest in its own; a calendar's ``1d`` level from the
    coarsest lower level on whose boundaries every session opens and closes (XNYS opens at
    9:30: 30 m nests, 1 h does not). Raises :class:`ConfigError` for a level that is not a
    multiple of the window, or a calendar that cannot be loaded."""
    rollups = micro_batch.rollups
    window = window_ms or micro_batch.window_ms
    if not rollups.intervals and rollups.empty_intervals == "none":
        return None
    levels = [parse_duration_ms(i) for i in rollups.intervals]
    for ms in levels:
        if ms <= window or ms % window:
            raise ConfigError(
                f"{format_duration_ms(ms)} is not a multiple of the micro-batch window "
                f"({format_duration_ms(window)}) greater than it",
                key_path="micro_batch.rollups.intervals",
            )
    if rollups.calendars and 60_000 % window:
        raise ConfigError(
            f"trading calendars need a micro-batch window that divides a minute (got "
            f"{format_duration_ms(window)})",
            key_path=_CALENDARS_KEY,
        )
    sources: dict[tuple[str | None, str], str] = {}
    for i, ms in enumerate(levels):
        lower = [window, *levels[:i]]
        level = format_duration_ms(ms)
        sources[(None, level)] = format_duration_ms(max(x for x in lower if _nests(ms, x)))
        if ms == _DAY_MS:
            for name in rollups.calendars:
                sessions = load_sessions(name)
                fits = [x for x in lower if _divides_sessions(x, sessions)]
                sources[(name, level)] = format_duration_ms(max(fits))
    for name in rollups.calendars:
        load_sessions(name)  # an unknown name is a config error even without a 1d level
    return RollupPlan(
        intervals=tuple(format_duration_ms(ms) for ms in levels),
        calendars=session_calendars(rollups.calendars),
        sources=sources,
        empty_intervals=rollups.empty_intervals,
    )


class SessionCalendar:
    """Which trading session an instant is in, per symbol: the symbol's calendar's session
    ``[open, close)`` (``None`` outside every session), or for 24/7 symbols the UTC day."""

    def __init__(self, calendars: Mapping[str, str]) -> None:
        self._calendars = dict(calendars)
        self._opens: dict[str, list[int]] = {}
        self._sessions: dict[str, Sequence[TradingSession]] = {}
        for name in set(self._calendars.values()):
            sessions = load_sessions(name)
            self._sessions[name] = sessions
            self._opens[name] = [to_epoch_us(s.open) for s in sessions]

    @classmethod
    def from_config(cls, micro_batch: MicroBatchConfig) -> SessionCalendar:
        return cls(session_calendars(micro_batch.rollups.calendars))

    def calendar_of(self, symbol: str) -> str | None:
        return self._calendars.get(symbol)

    def session_of(self, symbol: str, ts: datetime) -> date | None:
        """The label of the session holding ``ts`` (UTC): ``None`` outside every session of
        the symbol's calendar; the UTC date for a 24/7 symbol."""
        name = self._calendars.get(symbol)
        if name is None:
            return ts.astimezone(UTC).date()
        us = to_epoch_us(ts)
        i = bisect.bisect_right(self._opens[name], us) - 1
        if i < 0:
            return None
        session = self._sessions[name][i]
        return session.session if us < to_epoch_us(session.close) else None
