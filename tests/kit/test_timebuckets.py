from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from sqlalchemy import func, select

from homepot.analytics.models import DeviceMetrics
from homepot.kit.timebuckets import epoch_bin


async def test_samples_of_one_bin_share_its_number_on_every_backend(app: FastAPI) -> None:
    # Three samples in one 5-minute bin and one in the next: the bins are whole numbers, so
    # a GROUP BY makes two groups (a true division made a group of every sample on SQLite).
    start = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    moments = [start, start + timedelta(seconds=30), start + timedelta(seconds=299.5)]
    async with app.state.session_factory() as session:
        session.add_all(
            DeviceMetrics(device_id="pos-bin", timestamp=moment, cpu_percent=float(number))
            for number, moment in enumerate([*moments, start + timedelta(minutes=5)])
        )
        await session.commit()
        bucket = epoch_bin(DeviceMetrics.timestamp, 300).label("bucket")
        rows = (
            await session.execute(
                select(bucket, func.count(), func.avg(DeviceMetrics.cpu_percent))
                .group_by(bucket)
                .order_by(bucket)
            )
        ).all()
    first = int(start.timestamp()) // 300
    assert [(row[0], row[1], float(row[2])) for row in rows] == [
        (first, 3, 1.0),
        (first + 1, 1, 3.0),
    ]
