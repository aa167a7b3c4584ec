"""Naive wall-clock times of a time zone -> UTC, with explicit daylight-saving policies.

The semantics are pandas' ``Series.dt.tz_localize(zone, ambiguous=..., nonexistent=...)``:

- A wall time that happens twice (the fall-back hour, 01:00-01:59 on 2020-11-01 in
  America/New_York) is **ambiguous**. ``ambiguous``: ``raise`` (pandas' default: the value is
  refused), ``earliest`` (the first occurrence, daylight time: pandas ``ambiguous=True``),
  ``latest`` (the second, standard time: ``ambiguous=False``), or ``infer`` (pandas
  ``ambiguous='infer'``): within each run of consecutive ambiguous values, in the order given,
  the values before the one place where the wall clock goes back are the first occurrence and
  the values from there on the second. pandas counts an unchanged wall time as going back too;
  here it does only when no value goes back (hourly bars: 01:00, 01:00), so that trades sharing
  a timestamp within one occurrence are not taken for the switch. A run that never goes back
  (no repeated times) or goes back more than once cannot be placed and is refused.
- A wall time skipped by the clocks (02:00-02:59 on 2020-03-08 in New York) **does not exist**.
  ``nonexistent``: ``raise`` (refused) or ``shift_forward`` (the first instant after the gap,
  03:00 local: pandas ``nonexistent='shift_forward'``).

A refused value is a :class:`~market_data_core.errors.LocalTimeError` (a ``LocalTimeError``) with
reason ``ambiguous_time`` or ``nonexistent_time``, the wall time, zone and rule as attributes,
and a detail naming the local time, the zone, the clock change and the rule, so that a
dead-lettered row says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Literal
from zoneinfo import ZoneInfo

from market_data_core.errors import LocalTimeError

__all__ = [
    "AmbiguousPolicy",
    "NonexistentPolicy",
    "is_ambiguous",
    "localize",
    "to_utc",
]

AmbiguousPolicy = Literal["raise", "earliest", "latest", "infer"]
NonexistentPolicy = Literal["raise", "shift_forward"]

_US = timedelta(microseconds=1)


def _offsets(wall: datetime, zone: ZoneInfo) -> tuple[timedelta, timedelta]:
    """UTC offsets of ``wall`` read as its first (fold 0) and second (fold 1) occurrence.

    PEP 495: equal for an ordinary time; first > second in a fall-back overlap; first < second
    in a spring-forward gap (fold 0 then uses the offset from before the change).
    """
    first = wall.replace(tzinfo=zone, fold=0).utcoffset()
    second = wall.replace(tzinfo=zone, fold=1).utcoffset()
    assert first is not None and second is not None  # a ZoneInfo always has an offset
    return first, second


def is_ambiguous(wall: datetime, zone: ZoneInfo) -> bool:
    """True when the naive ``wall`` happens twice in ``zone`` (a fall-back overlap)."""
    first, second = _offsets(wall, zone)
    return first > second


def _hhmm(wall: datetime) -> str:
    return wall.strftime("%H:%M") if not wall.second else wall.strftime("%H:%M:%S")


def _gap_end(wall: datetime, zone: ZoneInfo, before: timedelta, after: timedelta) -> datetime:
    """The first UTC instant after the clock change that skips ``wall``.

    ``wall - after`` is before the change and ``wall - before`` after it; bisect to the µs.
    """
    lo = (wall - after).replace(tzinfo=UTC)
    hi = (wall - before).replace(tzinfo=UTC)
    while hi - lo > _US:
        mid = lo + (hi - lo) // 2
        if mid.astimezone(zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return hi


def _ambiguous_error(wall: datetime, zone: ZoneInfo, rule: str, why: str = "") -> LocalTimeError:
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    detail = (
        f"ambiguous local time {wall.isoformat(sep=' ')} in {zone.key}: it happens twice, "
        f"as {first.tzname()} (UTC{first.isoformat()[-6:]}) and then as {second.tzname()} "
        f"(UTC{second.isoformat()[-6:]}); rule ambiguous: {rule}"
    )
    if why:
        detail += f" ({why})"
    if rule == "raise":
        detail += " -- set timestamp.ambiguous to earliest, latest or infer"
    return LocalTimeError(
        "ambiguous_time", detail, wall=wall, zone=zone.key, rule=f"ambiguous: {rule}"
    )


def _nonexistent_error(
    wall: datetime, zone: ZoneInfo, before: timedelta, after: timedelta
) -> LocalTimeError:
    change = _gap_end(wall, zone, before, after)
    starts = (change + before).replace(tzinfo=None)
    ends = (change + after).replace(tzinfo=None)
    return LocalTimeError(
        "nonexistent_time",
        f"local time {wall.isoformat(sep=' ')} does not exist in {zone.key}: on "
        f"{starts.date().isoformat()} the clocks jump from {_hhmm(starts)} to {_hhmm(ends)}; "
        "rule nonexistent: raise -- set timestamp.nonexistent: shift_forward to move such "
        f"times to {_hhmm(ends)}",
        wall=wall,
        zone=zone.key,
        rule="nonexistent: raise",
    )


def to_utc(
    wall: datetime,
    zone: ZoneInfo,
    *,
    ambiguous: Literal["raise", "earliest", "latest"] = "raise",
    nonexistent: NonexistentPolicy = "raise",
) -> datetime:
    """The aware UTC instant of the naive ``wall`` in ``zone`` under the policies (module doc).

    Raises ``LocalTimeError`` (``ambiguous_time``/``nonexistent_time``) for a value the
    policies refuse. ``infer`` needs the neighbouring values: use :func:`localize`.
    """
    first, second = _offsets(wall, zone)
    if first == second:
        return (wall - first).replace(tzinfo=UTC)
    if first > second:
        if ambiguous == "earliest":
            return (wall - first).replace(tzinfo=UTC)
        if ambiguous == "latest":
            return (wall - second).replace(tzinfo=UTC)
        raise _ambiguous_error(wall, zone, ambiguous)
    if nonexistent == "shift_forward":
        return _gap_end(wall, zone, first, second)
    raise _nonexistent_error(wall, zone, first, second)


def _infer_run(walls: Sequence[datetime], zone: ZoneInfo) -> list[datetime] | LocalTimeError:
    """UTC instants of one run of consecutive ambiguous wall times (module doc: ``infer``)."""
    steps = [b - a for a, b in pairwise(walls)]
    back = [i for i, step in enumerate(steps) if step < timedelta(0)]
    if not back:
        back = [i for i, step in enumerate(steps) if step == timedelta(0)]
        if len(back) > 1:
            return _ambiguous_error(
                walls[0],
                zone,
                "infer",
                f"the wall clock never goes back in this run of {len(walls)} and repeats "
                f"{len(back)} times: cannot tell where the second occurrence starts",
            )
    if not back:
        return _ambiguous_error(
            walls[0], zone, "infer", "cannot infer: the run has no repeated times"
        )
    if len(back) > 1:
        return _ambiguous_error(
            walls[0],
            zone,
            "infer",
            f"the wall clock goes back {len(back)} times in this run; there is one switch",
        )
    switch = back[0] + 1
    out = []
    for i, wall in enumerate(walls):
        first, second = _offsets(wall, zone)
        out.append((wall - (first if i < switch else second)).replace(tzinfo=UTC))
    return out


def localize(
    walls: Sequence[datetime],
    zone: ZoneInfo,
    *,
    ambiguous: AmbiguousPolicy = "raise",
    nonexistent: NonexistentPolicy = "raise",
) -> list[datetime | LocalTimeError]:
    """Each naive wall time of ``walls`` (in the order given) as an aware UTC instant, or the
    ``LocalTimeError`` that refuses it: pandas' ``tz_localize`` on an array, except that a
    refused value fails alone (pandas fails the whole array) -- with ``infer``, every value of
    a run that cannot be placed."""
    out: list[datetime | LocalTimeError] = []
    run: list[datetime] = []

    def close_run() -> None:
        if not run:
            return
        placed = _infer_run(run, zone)
        out.extend([placed] * len(run) if isinstance(placed, LocalTimeError) else placed)
        run.clear()

    for wall in walls:
        if ambiguous == "infer" and is_ambiguous(wall, zone):
            run.append(wall)
            continue
        close_run()
        try:
            out.append(
                to_utc(
                    wall,
                    zone,
                    ambiguous="raise" if ambiguous == "infer" else ambiguous,
                    nonexistent=nonexistent,
                )
            )
        except LocalTimeError as exc:
            out.append(exc)
    close_run()
    return out
