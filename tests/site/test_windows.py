"""The next maintenance window of a site, in its own time zone (UTC in, UTC out)."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from homepot.analytics.models import SiteOperatingSchedule
from homepot.site.windows import (
    maintenance_intervals,
    next_maintenance_window,
    opening_intervals,
)

SUNDAY = 6


def day(
    day_of_week: int,
    hours: tuple[int, int] | None = None,
    *,
    maintenance: bool = False,
) -> SiteOperatingSchedule:
    """A schedule row: open ``hours`` (local, whole hours), or closed when None."""
    return SiteOperatingSchedule(
        site_id="site-x",
        day_of_week=day_of_week,
        open_time=time(hours[0]) if hours else None,
        close_time=time(hours[1]) if hours else None,
        is_closed=hours is None,
        is_maintenance_window=maintenance,
    )


def week(
    hours: tuple[int, int], *, sunday: tuple[int, int] | None, sunday_marked: bool
) -> list[SiteOperatingSchedule]:
    return [day(d, hours) for d in range(6)] + [day(SUNDAY, sunday, maintenance=sunday_marked)]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


NEW_YORK = week((7, 23), sunday=(10, 18), sunday_marked=True)
SYDNEY = week((8, 22), sunday=None, sunday_marked=True)


def test_no_schedule_means_now() -> None:
    after = utc("2026-12-02T15:00:00")
    assert next_maintenance_window([], "America/New_York", after) == after


def test_the_same_moment_gives_each_site_its_own_local_window() -> None:
    # Wednesday 2026-12-02 15:00 UTC is 10:00 in New York and 02:00 Thursday in Sydney.
    after = utc("2026-12-02T15:00:00")
    # New York: Sunday is the marked day; it opens at 10:00, so the window starts at
    # Sunday 00:00 EST (UTC-5).
    assert next_maintenance_window(NEW_YORK, "America/New_York", after) == utc(
        "2026-12-06T05:00:00"
    )
    # Sydney is closed on its marked Sunday: Sunday 00:00 AEDT (UTC+11) = Saturday 13:00 UTC.
    assert next_maintenance_window(SYDNEY, "Australia/Sydney", after) == utc("2026-12-05T13:00:00")


def test_inside_a_window_it_is_now_and_during_opening_hours_it_is_closing_time() -> None:
    # Sunday 08:00 in New York: before opening on the marked day, so the window is open.
    before_opening = utc("2026-12-06T13:00:00")
    assert next_maintenance_window(NEW_YORK, "America/New_York", before_opening) == (before_opening)
    # Sunday 12:00 in New York: open until 18:00 EST = 23:00 UTC.
    trading = utc("2026-12-06T17:00:00")
    assert next_maintenance_window(NEW_YORK, "America/New_York", trading) == utc(
        "2026-12-06T23:00:00"
    )
    # Sunday 01:00 in Sydney (Saturday 14:00 UTC), closed all day: now.
    closed = utc("2026-12-05T14:00:00")
    assert next_maintenance_window(SYDNEY, "Australia/Sydney", closed) == closed


def test_without_a_marked_day_the_next_closed_day_is_used() -> None:
    london = week((8, 22), sunday=None, sunday_marked=False)
    monday_noon = utc("2026-11-30T12:00:00")
    assert next_maintenance_window(london, "Europe/London", monday_noon) == utc(
        "2026-12-06T00:00:00"
    )


def test_without_a_marked_or_closed_day_the_next_closing_time_is_used() -> None:
    always_open_days = week((7, 23), sunday=(10, 18), sunday_marked=False)
    # Monday 10:00 in New York: it closes at 23:00 EST = Tuesday 04:00 UTC.
    monday = utc("2026-11-30T15:00:00")
    assert next_maintenance_window(always_open_days, "America/New_York", monday) == utc(
        "2026-12-01T04:00:00"
    )
    # Monday 05:00 in New York, before opening: now.
    early = utc("2026-11-30T10:00:00")
    assert next_maintenance_window(always_open_days, "America/New_York", early) == early


def test_a_day_without_a_schedule_is_never_chosen() -> None:
    only_monday = [day(0, (8, 22), maintenance=True)]
    tuesday = utc("2026-12-01T12:00:00")
    assert next_maintenance_window(only_monday, "UTC", tuesday) == utc("2026-12-07T00:00:00")
    # Monday during opening hours: the window is after closing.
    assert next_maintenance_window(only_monday, "UTC", utc("2026-11-30T12:00:00")) == utc(
        "2026-11-30T22:00:00"
    )


def test_new_york_windows_follow_the_end_of_daylight_saving_time() -> None:
    # Sunday 2026-11-01: clocks go back from EDT (UTC-4) to EST (UTC-5) at 02:00.
    saturday = utc("2026-10-31T12:00:00")
    assert next_maintenance_window(NEW_YORK, "America/New_York", saturday) == utc(
        "2026-11-01T04:00:00"  # 00:00 EDT
    )
    # 10:30 EST on that Sunday: open until 18:00 EST, which is 23:00 UTC (not 22:00).
    trading = utc("2026-11-01T15:30:00")
    assert next_maintenance_window(NEW_YORK, "America/New_York", trading) == utc(
        "2026-11-01T23:00:00"
    )


def test_sydney_windows_follow_the_start_of_daylight_saving_time() -> None:
    # Sunday 2026-10-04 in Sydney lasts 23 hours: AEST (UTC+10) until 02:00, then AEDT (+11).
    late_sunday = utc("2026-10-04T12:30:00")  # 23:30 AEDT, still the closed Sunday
    assert next_maintenance_window(SYDNEY, "Australia/Sydney", late_sunday) == late_sunday
    monday = utc("2026-10-04T13:30:00")  # 00:30 AEDT on Monday
    assert next_maintenance_window(SYDNEY, "Australia/Sydney", monday) == utc(
        "2026-10-10T13:00:00"  # the next Sunday, 00:00 AEDT
    )


def test_a_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_maintenance_window(NEW_YORK, "America/New_York", datetime(2026, 12, 2, 15))


def test_opening_intervals_are_local_hours_in_utc_and_closed_days_are_absent() -> None:
    berlin = [day(d, (8, 20)) for d in range(6)] + [day(SUNDAY, None)]
    # Saturday 2026-12-05 to Monday 2026-12-07 (CET, UTC+1).
    hours = opening_intervals(
        berlin, "Europe/Berlin", utc("2026-12-05T00:00:00"), utc("2026-12-08T00:00:00")
    )
    assert hours == [
        (utc("2026-12-05T07:00:00"), utc("2026-12-05T19:00:00")),
        (utc("2026-12-07T07:00:00"), utc("2026-12-07T19:00:00")),
    ]
    # No schedule at all: open all the time, never taken for closed.
    start, end = utc("2026-12-05T00:00:00"), utc("2026-12-06T00:00:00")
    assert opening_intervals([], "Europe/Berlin", start, end) == [(start, end)]


def test_maintenance_intervals_follow_the_marked_days() -> None:
    start, end = utc("2026-12-05T00:00:00"), utc("2026-12-08T00:00:00")
    # Sydney's Sunday is closed and marked: that whole local day (AEDT, UTC+11).
    assert maintenance_intervals(SYDNEY, "Australia/Sydney", start, end) == [
        (utc("2026-12-05T13:00:00"), utc("2026-12-06T13:00:00"))
    ]
    # New York's marked Sunday is open 10-18: the window is the rest of that day (EST).
    assert maintenance_intervals(NEW_YORK, "America/New_York", start, end) == [
        (utc("2026-12-06T05:00:00"), utc("2026-12-06T15:00:00")),
        (utc("2026-12-06T23:00:00"), utc("2026-12-07T05:00:00")),
    ]
    assert maintenance_intervals([], "UTC", start, end) == []
