"""Rows written straight into the analytics tables, as a collector would have left them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from homepot.analytics.models import (
    APIRequestLog,
    ConfigurationHistory,
    DeviceMetrics,
    DeviceStateHistory,
    ErrorLog,
    JobOutcome,
    SiteOperatingSchedule,
    UserActivity,
)
from homepot.db import Base, create_engine, create_session_factory, utcnow


def metric(device_id: str, at: datetime, **fields: Any) -> DeviceMetrics:
    values: dict[str, Any] = {
        "cpu_percent": 40.0,
        "memory_percent": 60.0,
        "disk_percent": 30.0,
        "network_latency_ms": 20.0,
        "transaction_count": 5,
        "error_rate": 0.5,
        "collection_interval_seconds": 60.0,
        **fields,
    }
    return DeviceMetrics(device_id=device_id, timestamp=at, **values)


def clean_rows(count: int, now: datetime | None = None) -> list[Base]:
    """``count`` valid, recent rows in each of the eight analytics tables."""
    now = now or utcnow()
    rows: list[Base] = []
    for number in range(count):
        at = now - timedelta(minutes=number + 1)
        rows += [
            APIRequestLog(
                timestamp=at,
                request_id=f"req-{number}",
                endpoint="/api/v1/sites",
                route="/api/v1/sites",
                method="GET",
                status_code=200,
                response_time_ms=12.5,
            ),
            DeviceStateHistory(
                timestamp=at, device_id="pos-1", previous_state="online", new_state="offline"
            ),
            JobOutcome(
                timestamp=at,
                job_id=f"job-{number}",
                job_type="restart",
                status="success",
                duration_ms=1200,
                device_id="pos-1",
            ),  # fmt: skip
            ErrorLog(
                timestamp=at,
                category="api",
                severity="error",
                error_message="boom",
                error_code="E_TEST",
            ),  # fmt: skip
            UserActivity(timestamp=at, user_id="u1", activity_type="page_view", duration_ms=5),
            metric("pos-1", at),
            ConfigurationHistory(
                timestamp=at,
                entity_type="device",
                entity_id="pos-1",
                parameter_name="volume",
                old_value={"value": number},
                new_value={"value": number + 1},
            ),  # fmt: skip
            SiteOperatingSchedule(site_id=f"site-{number // 7}", day_of_week=number % 7),
        ]
    return rows


async def insert(database_url: str, rows: list[Base]) -> None:
    engine = create_engine(database_url)
    try:
        factory: async_sessionmaker[Any] = create_session_factory(engine)
        async with factory() as session, session.begin():
            session.add_all(rows)
    finally:
        await engine.dispose()
