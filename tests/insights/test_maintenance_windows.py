"""Recommended maintenance windows: the hour that disturbs the fewest observed sales."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.models import DeviceMetrics, SiteOperatingSchedule
from homepot.auth.models import Role
from homepot.job.models import JobExecution
from homepot.site.recommended import (
    SLOTS_PER_DAY,
    WeekdayTraffic,
    next_recommended_start,
    recommend_windows,
)
from tests.helpers import auth_headers, create_device, create_site, db_rows

WINDOWS = "/api/v1/insights/maintenance-windows"
ZONE = "America/New_York"


@dataclass
class Day:
    day_of_week: int
    open_time: time | None
    close_time: time | None
    is_closed: bool = False
    is_maintenance_window: bool = False


def _slot(hour: int, minute: int = 0) -> int:
    return (hour * 60 + minute) // 15


def _traffic(per_weekday: dict[int, dict[int, float]], days: int = 4) -> WeekdayTraffic:
    """Average transactions per slot (given), as if observed on ``days`` days of each weekday."""
    totals = []
    for weekday in range(7):
        slots = [0.0] * SLOTS_PER_DAY
        for slot, average in per_weekday.get(weekday, {}).items():
            slots[slot] = average * days
        totals.append(tuple(slots))
    observed = tuple(days if weekday in per_weekday else 0 for weekday in range(7))
    return WeekdayTraffic(totals=tuple(totals), days=observed)


def test_the_window_follows_observed_sales_not_only_the_declared_hours() -> None:
    # Declared 08:00-21:00, but the store keeps selling until 23:00 and nothing after.
    sales = {slot: 10.0 for slot in range(_slot(8), _slot(23))}
    traffic = _traffic({0: sales})
    schedules = [Day(0, time(8), time(21))]

    (monday, *_) = recommend_windows(traffic, schedules, duration_minutes=60)

    assert monday.window is not None
    assert (monday.window.start, monday.window.end) == (time(23), time(0))
    assert monday.window.expected_transactions == 0
    assert monday.inside_closed_hours
    assert monday.basis_days == 4


def test_the_window_stays_inside_closed_hours_even_when_a_quiet_hour_is_open() -> None:
    # 13:00-14:00 is dead during opening hours, but the night has a little traffic too
    # (a cleaning crew's test sales): the window must still avoid opening hours.
    sales = {slot: 10.0 for slot in range(_slot(8), _slot(21)) if not _slot(13) <= slot < _slot(14)}
    sales |= {slot: 0.5 for slot in range(_slot(21), SLOTS_PER_DAY)}
    sales |= {slot: 0.25 for slot in range(0, _slot(8))}
    traffic = _traffic({2: sales})
    schedules = [Day(2, time(8), time(21))]

    wednesday = recommend_windows(traffic, schedules, duration_minutes=60)[2]

    assert wednesday.window is not None
    assert wednesday.window.start < time(8)
    assert wednesday.window.expected_transactions == 1.0


def test_it_compares_with_the_declared_window_and_counts_what_is_saved() -> None:
    # Sunday is the declared maintenance day; its window starts at 00:00, when a night
    # shift still sells; the quietest hour is after closing.
    night = {slot: 6.0 for slot in range(0, _slot(2))}
    day = {slot: 8.0 for slot in range(_slot(10), _slot(17))}
    traffic = _traffic({6: night | day})
    schedules = [Day(0, time(8), time(21)), Day(6, time(10), time(17), is_maintenance_window=True)]

    advice = recommend_windows(traffic, schedules, duration_minutes=60)

    sunday = advice[6]
    assert sunday.declared is not None
    assert (sunday.declared.start, sunday.declared.expected_transactions) == (time(0), 24.0)
    assert sunday.window is not None
    assert sunday.window.expected_transactions == 0
    assert sunday.transactions_saved == 24.0
    assert advice[0].declared is None  # Monday is not a declared maintenance day


def test_a_day_without_telemetry_still_gets_a_window_from_its_declared_hours() -> None:
    advice = recommend_windows(WeekdayTraffic.empty(), [Day(4, time(7), time(22))], 120)

    friday = advice[4]
    assert friday.basis_days == 0
    assert friday.window is not None
    assert (friday.window.start, friday.window.end) == (time(22), time(0))


def test_a_window_longer_than_the_closed_hours_is_not_invented() -> None:
    advice = recommend_windows(WeekdayTraffic.empty(), [Day(1, time(1), time(23))], 180)
    assert advice[1].window is None
    assert advice[1].inside_closed_hours


def test_the_next_start_is_in_the_sites_time_zone() -> None:
    traffic = _traffic({weekday: {_slot(9): 5.0} for weekday in range(7)})
    week = [Day(weekday, time(8), time(21)) for weekday in range(7)]
    advice = recommend_windows(traffic, week, 60)
    # Monday 2026-11-30 12:00 in New York; the next recommended hour is 23:00 local the same day.
    after = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)

    start = next_recommended_start(advice, ZONE, after)

    assert start == datetime(2026, 11, 30, 23, 0, tzinfo=ZoneInfo(ZONE)).astimezone(UTC)


# --- through the API, on both databases ---------------------------------------------------


async def _site_with_history(app: FastAPI, today: date) -> tuple[str, str]:
    """A New York store, declared 08:00-21:00 every day with Sunday as maintenance day, whose
    terminal sells 08:00-23:00 (past the declared closing) for the last 14 days."""
    site_id = await create_site(app, timezone=ZONE)
    device_id = await create_device(app, site_id=site_id)
    zone = ZoneInfo(ZONE)
    async with app.state.session_factory() as session:
        for weekday in range(7):
            session.add(
                SiteOperatingSchedule(
                    site_id=site_id,
                    day_of_week=weekday,
                    open_time=time(8),
                    close_time=time(21),
                    is_maintenance_window=weekday == 6,
                )
            )
        for days_ago in range(1, 15):
            day = today - timedelta(days=days_ago)
            for hour in range(24):
                local = datetime.combine(day, time(hour, 30), tzinfo=zone)
                session.add(
                    DeviceMetrics(
                        device_id=device_id,
                        timestamp=local.astimezone(UTC),
                        transaction_count=12 if 8 <= hour < 23 else 0,
                    )
                )
        await session.commit()
    return site_id, device_id


async def test_the_endpoint_recommends_a_window_per_weekday(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id, _ = await _site_with_history(app, datetime.now(UTC).date())
    viewer = await auth_headers(app, client, Role.viewer)

    response = await client.get(WINDOWS, params={"site_id": site_id}, headers=viewer)

    assert response.status_code == 200, response.text
    advice = response.json()
    assert (advice["site_id"], advice["timezone"], advice["duration_minutes"]) == (
        site_id,
        ZONE,
        60,
    )
    assert [item["day_name"] for item in advice["items"]][:2] == ["Monday", "Tuesday"]
    for item in advice["items"]:
        assert item["basis_days"] == 2
        assert item["recommended"]["start"] == "23:00:00"
        assert item["recommended"]["expected_transactions"] == 0
    sunday = advice["items"][6]
    assert sunday["declared"]["start"] == "00:00:00"
    assert sunday["transactions_saved"] == 0  # midnight is quiet too: nothing to gain
    assert advice["items"][0]["declared"] is None


async def test_the_endpoint_refuses_what_it_cannot_answer(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    viewer = await auth_headers(app, client, Role.viewer)

    assert (await client.get(WINDOWS, params={"site_id": site_id})).status_code == 401
    missing = await client.get(WINDOWS, params={"site_id": "no-such-site"}, headers=viewer)
    assert missing.status_code == 404
    assert "no-such-site" in missing.text
    for bad in (
        {},
        {"site_id": site_id, "duration_minutes": 10},
        {"site_id": site_id, "duration_minutes": 1441},
        {"site_id": site_id, "lookback_days": 0},
        {"site_id": site_id, "durration_minutes": 60},
    ):
        response = await client.get(WINDOWS, params=bad, headers=viewer)
        assert response.status_code == 422, (bad, response.text)


async def test_a_job_scheduled_for_the_recommended_window_waits_for_it(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id, device_id = await _site_with_history(app, datetime.now(UTC).date())
    operator = await auth_headers(app, client, Role.operator)

    created = await client.post(
        "/api/v1/jobs",
        json={
            "job_type": "restart",
            "target_type": "site",
            "target_id": site_id,
            "schedule": "recommended_window",
        },
        headers=operator,
    )

    assert created.status_code == 201, created.text
    (execution,) = await db_rows(app, JobExecution, device_id=device_id)
    local = execution.not_before.astimezone(ZoneInfo(ZONE))
    now_local = datetime.now(UTC).astimezone(ZoneInfo(ZONE))
    if now_local.hour == 23:
        assert execution.not_before <= datetime.now(UTC)  # inside the window: at once
    else:
        assert (local.hour, local.minute) == (23, 0)
        assert timedelta(0) < execution.not_before - datetime.now(UTC) <= timedelta(days=1)
    assert created.json()["schedule"] == "recommended_window"


@pytest.mark.parametrize("duration", [15, 24 * 60])
async def test_any_length_from_a_slot_to_a_day_is_answered(
    app: FastAPI, client: AsyncClient, duration: int
) -> None:
    site_id, _ = await _site_with_history(app, datetime.now(UTC).date())
    viewer = await auth_headers(app, client, Role.viewer)
    response = await client.get(
        WINDOWS, params={"site_id": site_id, "duration_minutes": duration}, headers=viewer
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    if duration == 15:
        assert all(item["recommended"]["start"] == "23:45:00" for item in items)
    else:
        # A whole day cannot fit inside the closed hours of a day that opens at all.
        assert all(item["recommended"] is None for item in items)
