"""Recommended maintenance windows: when a site's terminals lose the fewest sales to a job.

The declared schedule says when a store is open; the terminals say when it actually sells.
For each weekday, :func:`recommend_windows` finds the contiguous window of the requested
length that overlaps the fewest transactions observed on that weekday (summed from
``device_metrics.transaction_count`` of the site's devices, in 15-minute slots of the site's
local time, averaged over the days observed), kept inside the day's closed hours when the
site declares any. Each recommendation is compared with the site's declared maintenance window
(:mod:`homepot.site.windows`): how many transactions a job of the same length would disturb if
it started where the declared window starts.

A weekday with no observed traffic still gets a window from its declared hours alone, marked
``basis_days = 0``. Windows stay within one local day (00:00 to 24:00).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import column, func, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.models import DeviceMetrics
from homepot.kit.timebuckets import Buckets
from homepot.site.windows import ScheduleDay

SLOT_MINUTES = 15
SLOTS_PER_DAY = 24 * 60 // SLOT_MINUTES
DEFAULT_DURATION_MINUTES = 60
DEFAULT_LOOKBACK_DAYS = 28

# The devices table by name only (devices sit above sites; see site/service.py).
_devices = table("devices", column("device_id"), column("site_id"))


@dataclass(frozen=True)
class WeekdayTraffic:
    """Observed transactions per local 15-minute slot, summed per weekday, and the days seen."""

    totals: tuple[tuple[float, ...], ...]  # [weekday][slot], summed over the observed days
    days: tuple[int, ...]  # [weekday]: how many local dates of that weekday had any sample

    def expected(self, weekday: int, slot: int) -> float:
        """Average transactions in ``slot`` on one ``weekday`` (0 when never observed)."""
        days = self.days[weekday]
        return self.totals[weekday][slot] / days if days else 0.0

    @classmethod
    def empty(cls) -> WeekdayTraffic:
        return cls(totals=tuple((0.0,) * SLOTS_PER_DAY for _ in range(7)), days=(0,) * 7)


@dataclass(frozen=True)
class Window:
    weekday: int
    start_slot: int
    slots: int
    expected_transactions: float

    @property
    def start(self) -> time:
        return _slot_time(self.start_slot)

    @property
    def end(self) -> time:
        return _slot_time((self.start_slot + self.slots) % SLOTS_PER_DAY)


@dataclass(frozen=True)
class Recommendation:
    weekday: int
    window: Window | None  # None: no window of this length fits in the day's closed hours
    basis_days: int
    inside_closed_hours: bool
    declared: Window | None  # a job of the same length at the declared window's start

    @property
    def transactions_saved(self) -> float | None:
        if self.window is None or self.declared is None:
            return None
        return round(self.declared.expected_transactions - self.window.expected_transactions, 2)


def _slot_time(slot: int) -> time:
    minutes = slot * SLOT_MINUTES
    return time(minutes // 60, minutes % 60)


def _slot_of(moment: time) -> int:
    return (moment.hour * 60 + moment.minute) // SLOT_MINUTES


def slots_for(duration_minutes: int) -> int:
    """Slots a window of ``duration_minutes`` covers (rounded up to whole slots)."""
    if duration_minutes < 1:
        raise ValueError("duration_minutes must be at least 1")
    return math.ceil(duration_minutes / SLOT_MINUTES)


async def observed_traffic(
    session: AsyncSession, site_id: str, timezone: str, since: datetime, until: datetime
) -> WeekdayTraffic:
    """The site's transactions over ``[since, until)`` folded onto a local week."""
    buckets = Buckets(since=since, until=until, seconds=SLOT_MINUTES * 60).aligned()
    bucket = buckets.start_of(DeviceMetrics.timestamp).label("bucket")
    statement = (
        select(bucket, func.coalesce(func.sum(DeviceMetrics.transaction_count), 0))
        .where(
            DeviceMetrics.device_id.in_(
                select(_devices.c.device_id).where(_devices.c.site_id == site_id)
            ),
            DeviceMetrics.timestamp >= since,
            DeviceMetrics.timestamp < until,
        )
        .group_by(bucket)
    )
    zone = ZoneInfo(timezone)
    totals = [[0.0] * SLOTS_PER_DAY for _ in range(7)]
    dates: defaultdict[int, set[date]] = defaultdict(set)
    for start, transactions in (await session.execute(statement)).all():
        local = buckets.moment(start).astimezone(zone)
        weekday = local.weekday()
        totals[weekday][(local.hour * 60 + local.minute) // SLOT_MINUTES] += float(transactions)
        dates[weekday].add(local.date())
    return WeekdayTraffic(
        totals=tuple(tuple(day) for day in totals),
        days=tuple(len(dates[weekday]) for weekday in range(7)),
    )


def _open_slots(day: ScheduleDay | None) -> set[int] | None:
    """The slots the site is open on this day; None when the day has no closed hours."""
    if day is None:
        return None
    if day.is_closed or day.open_time is None or day.close_time is None:
        return set()
    opening = _slot_of(day.open_time)
    closing = math.ceil((day.close_time.hour * 60 + day.close_time.minute) / SLOT_MINUTES)
    if closing <= opening:
        return None  # not a valid day (or open past midnight): no closed hours to respect
    return set(range(opening, closing))


def _cheapest(
    traffic: WeekdayTraffic, weekday: int, slots: int, allowed: set[int]
) -> Window | None:
    best: tuple[float, int] | None = None
    for start in range(SLOTS_PER_DAY - slots + 1):
        span = range(start, start + slots)
        if any(slot not in allowed for slot in span):
            continue
        expected = sum(traffic.expected(weekday, slot) for slot in span)
        # Fewest transactions; among equals the latest start: a job after closing leaves the
        # night to recover before opening, one at 00:00 does not gain anything over it.
        key = (round(expected, 6), -start)
        if best is None or key < best:
            best = key
    if best is None:
        return None
    start = -best[1]
    expected = sum(traffic.expected(weekday, slot) for slot in range(start, start + slots))
    return Window(weekday, start, slots, round(expected, 2))


def _declared_start(schedules: Sequence[ScheduleDay], weekday: int) -> int | None:
    """The slot at which the declared rules (site/windows.py) open a window on ``weekday``."""
    by_weekday = {day.day_of_week: day for day in schedules}
    day = by_weekday.get(weekday)
    marked = any(entry.is_maintenance_window for entry in schedules)
    has_closed_day = any(
        entry.is_closed or entry.open_time is None or entry.close_time is None
        for entry in schedules
    )
    if not schedules:
        return None
    if marked and (day is None or not day.is_maintenance_window):
        return None
    open_slots = _open_slots(day)
    if not marked and has_closed_day and open_slots != set():
        return None
    if open_slots is None:
        return None
    free = [slot for slot in range(SLOTS_PER_DAY) if slot not in open_slots]
    return free[0] if free else None


def recommend_windows(
    traffic: WeekdayTraffic,
    schedules: Sequence[ScheduleDay],
    duration_minutes: int = DEFAULT_DURATION_MINUTES,
) -> list[Recommendation]:
    """One recommendation per weekday (Monday first)."""
    slots = slots_for(duration_minutes)
    if slots > SLOTS_PER_DAY:
        raise ValueError("a maintenance window is at most 24 hours long")
    by_weekday = {day.day_of_week: day for day in schedules}
    result = []
    for weekday in range(7):
        open_slots = _open_slots(by_weekday.get(weekday))
        inside_closed = open_slots is not None
        allowed = set(range(SLOTS_PER_DAY)) - (open_slots or set())
        window = _cheapest(traffic, weekday, slots, allowed)
        declared_start = _declared_start(schedules, weekday)
        declared = None
        if declared_start is not None and declared_start + slots <= SLOTS_PER_DAY:
            span = range(declared_start, declared_start + slots)
            expected = sum(traffic.expected(weekday, slot) for slot in span)
            declared = Window(weekday, declared_start, slots, round(expected, 2))
        result.append(
            Recommendation(
                weekday=weekday,
                window=window,
                basis_days=traffic.days[weekday],
                inside_closed_hours=inside_closed,
                declared=declared,
            )
        )
    return result


def next_recommended_start(
    recommendations: Sequence[Recommendation], timezone: str, after: datetime
) -> datetime | None:
    """The first start (UTC) of a recommended window at or after ``after``; None if none."""
    zone = ZoneInfo(timezone)
    local_day = after.astimezone(zone).date()
    by_weekday = {rec.weekday: rec for rec in recommendations if rec.window is not None}
    for offset in range(8):
        day = local_day + timedelta(days=offset)
        rec = by_weekday.get(day.weekday())
        if rec is None or rec.window is None:
            continue
        start = datetime.combine(day, rec.window.start, tzinfo=zone).astimezone(UTC)
        end = start + timedelta(minutes=rec.window.slots * SLOT_MINUTES)
        if end > after:
            return max(start, after)
    return None


async def site_recommendations(
    session: AsyncSession,
    *,
    site_id: str,
    timezone: str,
    schedules: Sequence[ScheduleDay],
    now: datetime,
    duration_minutes: int = DEFAULT_DURATION_MINUTES,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
) -> list[Recommendation]:
    """Recommendations for one site from the last ``lookback_days`` of its traffic."""
    slots_for(duration_minutes)  # refuse a bad duration before reading anything
    traffic = await observed_traffic(
        session, site_id, timezone, now - timedelta(days=lookback_days), now
    )
    return recommend_windows(traffic, schedules, duration_minutes)
