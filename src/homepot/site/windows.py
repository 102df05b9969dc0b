"""When a site's next maintenance window starts, from its weekly schedule and its time zone.

Rules, applied in the site's IANA zone (so daylight-saving changes are respected):

1. Days marked ``is_maintenance_window``: the window is the part of such a day outside the
   opening hours (before opening or after closing), or the whole day when the site is
   closed that day.
2. No day marked, but the site has closed days: the next closed day, all day.
3. No day marked and no closed day: the next moment outside opening hours.
4. No schedule at all (or no moment outside opening hours): now, i.e. ``after``.

A weekday without a schedule row counts as open all day: without its hours nobody can say
when trading stops, so it is never chosen for maintenance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

Interval = tuple[datetime, datetime]  # [start, end) in UTC

# A weekly pattern repeats after 7 days; one day more covers a window that is already open.
_HORIZON_DAYS = 8


class ScheduleDay(Protocol):
    """What the rules read from a ``site_operating_schedules`` row."""

    day_of_week: int  # 0 = Monday ... 6 = Sunday
    open_time: time | None
    close_time: time | None
    is_closed: bool
    is_maintenance_window: bool


def _is_closed(day: ScheduleDay) -> bool:
    return day.is_closed or day.open_time is None or day.close_time is None


def _at(day: date, moment: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, moment, tzinfo=zone).astimezone(UTC)


def _whole_day(day: date, zone: ZoneInfo) -> Interval:
    return _at(day, time(0), zone), _at(day + timedelta(days=1), time(0), zone)


def _opening_hours(day: date, schedule: ScheduleDay | None, zone: ZoneInfo) -> Interval | None:
    if schedule is None:
        return _whole_day(day, zone)
    if _is_closed(schedule):
        return None
    assert schedule.open_time is not None
    assert schedule.close_time is not None
    if schedule.close_time <= schedule.open_time:  # not a valid day: never disturb it
        return _whole_day(day, zone)
    return _at(day, schedule.open_time, zone), _at(day, schedule.close_time, zone)


def _minus(interval: Interval, cut: Interval | None) -> list[Interval]:
    start, end = interval
    if cut is None or cut[1] <= start or cut[0] >= end:
        return [interval]
    pieces = []
    if cut[0] > start:
        pieces.append((start, cut[0]))
    if cut[1] < end:
        pieces.append((cut[1], end))
    return pieces


def _first_start(intervals: Iterable[Interval], after: datetime) -> datetime | None:
    starts = [max(start, after) for start, end in intervals if end > after]
    return min(starts, default=None)


def next_maintenance_window(
    schedules: Sequence[ScheduleDay], timezone: str, after: datetime
) -> datetime:
    """The start (UTC) of the site's first maintenance window at or after ``after`` (UTC).

    Returns ``after`` itself when a window is open at that moment.
    """
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware (UTC)")
    after = after.astimezone(UTC)
    if not schedules:
        return after
    zone = ZoneInfo(timezone)
    by_weekday = {schedule.day_of_week: schedule for schedule in schedules}
    marked = any(schedule.is_maintenance_window for schedule in schedules)
    has_closed_day = any(_is_closed(schedule) for schedule in schedules)

    first_day = after.astimezone(zone).date() - timedelta(days=1)
    candidates: list[Interval] = []
    for offset in range(_HORIZON_DAYS + 1):
        day = first_day + timedelta(days=offset)
        schedule = by_weekday.get(day.weekday())
        if marked and (schedule is None or not schedule.is_maintenance_window):
            continue
        if not marked and has_closed_day and (schedule is None or not _is_closed(schedule)):
            continue
        candidates.extend(_minus(_whole_day(day, zone), _opening_hours(day, schedule, zone)))
    start = _first_start(candidates, after)
    return start if start is not None else after


def _local_days(timezone: str, start: datetime, end: datetime) -> tuple[ZoneInfo, list[date]]:
    zone = ZoneInfo(timezone)
    first = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date() + timedelta(days=1)
    return zone, [first + timedelta(days=n) for n in range((last - first).days + 1)]


def _clipped(intervals: Iterable[Interval], start: datetime, end: datetime) -> list[Interval]:
    """Inside [start, end), in order, touching intervals joined (days open all day)."""
    joined: list[Interval] = []
    for a, b in sorted((max(a, start), min(b, end)) for a, b in intervals if b > start and a < end):
        if joined and a <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(b, joined[-1][1]))
        else:
            joined.append((a, b))
    return joined


def opening_intervals(
    schedules: Sequence[ScheduleDay], timezone: str, start: datetime, end: datetime
) -> list[Interval]:
    """The site's opening hours between ``start`` and ``end`` (UTC), in order.

    A weekday without a schedule row is open all day; so is every day of a site without any
    schedule (nobody can say when it trades, so it is never taken for closed).
    """
    zone, days = _local_days(timezone, start, end)
    by_weekday = {schedule.day_of_week: schedule for schedule in schedules}
    hours = (_opening_hours(day, by_weekday.get(day.weekday()), zone) for day in days)
    return _clipped((interval for interval in hours if interval is not None), start, end)


def maintenance_intervals(
    schedules: Sequence[ScheduleDay], timezone: str, start: datetime, end: datetime
) -> list[Interval]:
    """The site's maintenance windows between ``start`` and ``end`` (UTC), by rules 1 to 3
    of this module; none for a site without a schedule (rule 4 names no window)."""
    if not schedules:
        return []
    zone, days = _local_days(timezone, start, end)
    by_weekday = {schedule.day_of_week: schedule for schedule in schedules}
    marked = any(schedule.is_maintenance_window for schedule in schedules)
    has_closed_day = any(_is_closed(schedule) for schedule in schedules)
    windows: list[Interval] = []
    for day in days:
        schedule = by_weekday.get(day.weekday())
        if marked and (schedule is None or not schedule.is_maintenance_window):
            continue
        if not marked and has_closed_day and (schedule is None or not _is_closed(schedule)):
            continue
        windows.extend(_minus(_whole_day(day, zone), _opening_hours(day, schedule, zone)))
    return _clipped(windows, start, end)
