"""What the detectors tell apart: a site-wide busy day is not one terminal's anomaly, and a
disk filling in steps is flagged with its projected crossing before it is full."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.db import create_engine
from homepot.insights.models import Anomaly
from homepot.insights.service import scan
from tests.insights.fleetdata import SCAN_DAY, Sample, add_history, create_site_with_hours

HISTORY_START = SCAN_DAY - timedelta(days=14)
DAY_END = SCAN_DAY + timedelta(days=1)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def episodes(engine: AsyncEngine, **filters: object) -> list[Anomaly]:
    async with AsyncSession(engine) as session:
        statement = select(Anomaly).filter_by(**filters).order_by(Anomaly.started_at)
        return list(await session.scalars(statement))


def at(hours: float) -> datetime:
    return SCAN_DAY + timedelta(hours=hours)


async def test_a_busy_day_for_the_whole_site_raises_no_alert_on_any_terminal(
    engine: AsyncEngine,
) -> None:
    """A promotion keeps every terminal of the site 25 CPU points and 6 memory points above
    its usual afternoon: each is far from its own normal, none is far from its peers."""

    def promotion(moment: datetime, sample: Sample) -> Sample | None:
        if at(12) <= moment < at(18):
            sample["cpu_percent"] = min(100.0, sample["cpu_percent"] + 25)
            sample["memory_percent"] = sample["memory_percent"] + 6
        return sample

    terminals = [f"pos-busy-{number}" for number in range(5)]
    await create_site_with_hours(engine, "site-busy", terminals)
    for number, device_id in enumerate(terminals):
        await add_history(engine, device_id, HISTORY_START, DAY_END, seed=number, tweak=promotion)

    await scan(engine, SCAN_DAY, DAY_END)

    assert [(row.device_id, row.metric, row.explanation) for row in await episodes(engine)] == []


async def test_a_disk_filling_in_steps_is_flagged_with_its_crossing_before_it_is_full(
    engine: AsyncEngine,
) -> None:
    """A journal export, then cache downloads: 41 % -> 53 % -> 67 % -> 82 %, two hours apart."""
    steps = ((at(10), 53.0), (at(12), 67.0), (at(14), 82.0), (at(16), 99.2))

    def filling(moment: datetime, sample: Sample) -> Sample | None:
        for since, level in steps:
            if moment >= since:
                sample["disk_percent"] = level
        return sample

    await create_site_with_hours(engine, "site-disk", ["pos-disk", "pos-ok"])
    await add_history(engine, "pos-disk", HISTORY_START, DAY_END, tweak=filling)
    await add_history(engine, "pos-ok", HISTORY_START, DAY_END)

    await scan(engine, SCAN_DAY, at(14.5))  # an hour and a half before it is full

    disk = await episodes(engine, device_id="pos-disk", metric="disk")
    assert disk, "the filling disk went unnoticed"
    assert disk[0].started_at <= at(10.25)  # from the first step on
    projected = [row for row in disk if re.search(r"reaches 99 % in ~\S+", row.explanation or "")]
    assert projected, [row.explanation for row in disk]
    assert all(row.started_at < at(14.5) for row in projected)
    assert await episodes(engine, device_id="pos-ok") == []


def _sawtooth(moment: datetime, *, base: float, growth: float, rotation_minute: int) -> float:
    """An old terminal's disk: its logs grow ``growth`` points an hour and the daily
    rotation (at ``rotation_minute`` after midnight) compresses them back to ``base``."""
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    rotation = day + timedelta(minutes=rotation_minute)
    if moment < rotation:
        rotation -= timedelta(days=1)
    return round(base + growth * (moment - rotation).total_seconds() / 3600, 1)


def _switched_off_at_night(moment: datetime) -> bool:
    return not 8 <= moment.hour < 20


async def test_a_disk_filling_in_small_steps_is_flagged_against_its_own_normal(
    engine: AsyncEngine,
) -> None:
    """An old terminal whose logs swing its disk 5 points a day (62 -> 67 %, rotated at
    13:25) and that is switched off at night fills in steps of 3-5 points: the first is
    within a day's swing of its disk, but 4 points above its normal at that hour."""
    floors = ((at(9), 70.0), (at(11), 73.0), (at(13), 77.0), (at(14.5), 82.0))

    def old_terminal(moment: datetime, sample: Sample) -> Sample | None:
        if _switched_off_at_night(moment):
            return None
        sample["disk_percent"] = _sawtooth(moment, base=62, growth=0.2, rotation_minute=805)
        return sample

    def filling(moment: datetime, sample: Sample) -> Sample | None:
        if old_terminal(moment, sample) is None:
            return None
        for since, floor in floors:
            if moment >= since:
                sample["disk_percent"] = max(sample["disk_percent"], floor)
        return sample

    await create_site_with_hours(engine, "site-old", ["pos-fill", "pos-old"])
    await add_history(engine, "pos-fill", HISTORY_START, DAY_END, tweak=filling)
    await add_history(engine, "pos-old", HISTORY_START, DAY_END, tweak=old_terminal)

    await scan(engine, SCAN_DAY, at(15.5))  # hours before it is full

    disk = await episodes(engine, device_id="pos-fill", metric="disk")
    assert disk, "the filling disk went unnoticed"
    # 70 % at 09:00: 4 points above its usual 66 % then (or at 10:00), from the first step.
    assert disk[0].started_at <= at(9.25), [(row.started_at, row.explanation) for row in disk]
    newest = disk[-1]
    assert newest.ended_at is None  # still filling at the end of the scan
    crossing = re.search(r"reaches 99 % in ~[^(]+\(around (\S+ \S+) UTC\)", newest.explanation)
    assert crossing, newest.explanation
    when = datetime.fromisoformat(crossing.group(1)).replace(tzinfo=SCAN_DAY.tzinfo)
    assert at(15.5) < when < at(15.5) + timedelta(hours=48)
    assert await episodes(engine, device_id="pos-old") == []


async def test_a_daily_log_rotation_that_runs_late_raises_no_alert(engine: AsyncEngine) -> None:
    """The rotation drops the disk by the day's logs, a few minutes later or earlier each
    day; on the scanned day it runs 40 minutes late, after a busier morning: never an alert."""

    def rotating(moment: datetime, sample: Sample) -> Sample | None:
        day = (moment - HISTORY_START).days
        minute = 805 + (day * 7) % 11 - 5 + (40 if moment >= SCAN_DAY else 0)
        growth = 0.25 if moment < at(8) or moment >= DAY_END else 0.3
        sample["disk_percent"] = _sawtooth(moment, base=58, growth=growth, rotation_minute=minute)
        return sample

    terminals = ["pos-rotate", "pos-rotate-2"]
    await create_site_with_hours(engine, "site-rotate", terminals)
    for number, device_id in enumerate(terminals):
        await add_history(engine, device_id, HISTORY_START, DAY_END, seed=number, tweak=rotating)

    await scan(engine, SCAN_DAY, DAY_END)

    assert [(row.device_id, row.explanation) for row in await episodes(engine, metric="disk")] == []
