"""Noisy terminal histories for the insights tests: a daily load cycle, noise, and events.

The samples are 5 minutes apart, like a backfill. ``load`` is 0 while the store is closed
(before 08:00 and from 20:00, UTC) and peaks at lunchtime, and drives CPU, memory, latency
and transactions as the simulator's terminals do.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.analytics.models import DeviceMetrics, SiteOperatingSchedule
from homepot.device.models import Device, DeviceStatus
from homepot.site.models import Site

STEP = timedelta(minutes=5)
OPEN, CLOSE = time(8), time(20)
# A Monday: the day the tests scan, after two weeks of history.
SCAN_DAY = datetime(2026, 11, 16, tzinfo=UTC)

Sample = dict[str, Any]
Tweak = Callable[[datetime, Sample], Sample | None]


def load_at(moment: datetime) -> float:
    hour = moment.hour + moment.minute / 60
    if not 8 <= hour < 20:
        return 0.0
    return 0.3 + 0.7 * math.sin(math.pi * (hour - 8) / 12)


def normal_sample(rng: random.Random, moment: datetime, device_id: str) -> Sample:
    load = load_at(moment)
    return {
        "device_id": device_id,
        "timestamp": moment,
        "cpu_percent": round(8 + 50 * load + rng.gauss(0, 3), 1),
        "memory_percent": round(45 + 12 * load + rng.gauss(0, 1.5), 1),
        "disk_percent": 41.0,
        "network_latency_ms": round(30 * (1 + 0.6 * load) * rng.lognormvariate(0, 0.15), 1),
        "error_rate": round(0.4 + abs(rng.gauss(0, 0.2)), 2),
        "transaction_count": max(0, round(rng.gauss(12 * load, math.sqrt(12 * load + 0.01)))),
        "collection_interval_seconds": 300.0,
        "event_id": f"{device_id}-{moment.timestamp():.0f}",
    }


async def create_site_with_hours(engine: AsyncEngine, site_id: str, devices: list[str]) -> None:
    """A site open 08:00-20:00 every day, its nights marked as maintenance windows."""
    async with AsyncSession(engine) as session, session.begin():
        session.add(Site(site_id=site_id, name=site_id, timezone="UTC"))
        await session.flush()
        for day in range(7):
            session.add(
                SiteOperatingSchedule(
                    site_id=site_id,
                    day_of_week=day,
                    open_time=OPEN,
                    close_time=CLOSE,
                    is_maintenance_window=True,
                )
            )
        for device_id in devices:
            session.add(
                Device(
                    device_id=device_id,
                    site_id=site_id,
                    name=device_id,
                    status=DeviceStatus.online,
                )
            )


async def add_history(
    engine: AsyncEngine,
    device_id: str,
    start: datetime,
    end: datetime,
    *,
    seed: int = 1,
    tweak: Tweak | None = None,
) -> None:
    """Samples every 5 minutes in [start, end); ``tweak`` may change one or drop it (None)."""
    rng = random.Random(f"{device_id}-{seed}")
    rows: list[Sample] = []
    moment = start
    while moment < end:
        sample: Sample | None = normal_sample(rng, moment, device_id)
        if tweak is not None and sample is not None:
            sample = tweak(moment, sample)
        if sample is not None:
            rows.append(sample)
        moment += STEP
    async with AsyncSession(engine) as session, session.begin():
        for offset in range(0, len(rows), 2000):
            await session.execute(insert(DeviceMetrics), rows[offset : offset + 2000])
