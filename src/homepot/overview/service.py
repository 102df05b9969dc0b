"""Counts and recent rows across the fleet, each a bounded query however large the fleet."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics.models import ErrorLog, JobOutcome
from homepot.db import utcnow
from homepot.device.models import Device, DeviceStatus
from homepot.device.schemas import MetricSeries
from homepot.insights.models import Anomaly, AnomalySeverity, AnomalyStatus
from homepot.job.models import Job
from homepot.job.schemas import JobRead
from homepot.kit.timebuckets import Buckets
from homepot.overview.cache import FleetMetricsCache
from homepot.overview.schemas import (
    DeviceCounts,
    ErrorSummary,
    FleetOverview,
    JobOutcomeCounts,
)

RECENT_ROWS = 10


async def device_counts(session: AsyncSession) -> DeviceCounts:
    rows = (
        await session.execute(select(Device.status, func.count()).group_by(Device.status))
    ).all()
    by_status = {DeviceStatus(status).value: int(count) for status, count in rows}
    return DeviceCounts(
        total=sum(by_status.values()),
        **{status.value: by_status.get(status.value, 0) for status in DeviceStatus},
    )


async def job_outcome_counts(session: AsyncSession, since_hours: int) -> JobOutcomeCounts:
    since = utcnow() - timedelta(hours=since_hours)
    rows = (
        await session.execute(
            select(JobOutcome.status, func.count())
            .where(JobOutcome.timestamp >= since)
            .group_by(JobOutcome.status)
        )
    ).all()
    known = set(JobOutcomeCounts.model_fields)
    return JobOutcomeCounts(**{status: int(n) for status, n in rows if status in known})


async def critical_anomaly_count(session: AsyncSession) -> int:
    """Critical episodes nobody has taken on yet: the Insights page's
    ``status=active&severity=critical&maintenance=exclude`` list, counted."""
    count = await session.scalar(
        select(func.count())
        .select_from(Anomaly)
        .where(
            Anomaly.status == AnomalyStatus.active.value,
            Anomaly.severity == AnomalySeverity.critical.value,
            Anomaly.expected_maintenance.is_(False),
        )
    )
    return int(count or 0)


def success_rate(outcomes: JobOutcomeCounts) -> float | None:
    finished = outcomes.success + outcomes.failed + outcomes.timeout
    return round(outcomes.success / finished, 4) if finished else None


async def fleet_overview(
    session: AsyncSession, cache: FleetMetricsCache, hours: int, points: int
) -> FleetOverview:
    now = utcnow()
    buckets = Buckets.whole_minutes(now - timedelta(hours=hours), now, points, at_most=False)
    recent_errors = (
        await session.scalars(
            select(ErrorLog)
            .order_by(ErrorLog.timestamp.desc(), ErrorLog.id.desc())
            .limit(RECENT_ROWS)
        )
    ).all()
    unresolved = await session.scalar(
        select(func.count()).select_from(ErrorLog).where(ErrorLog.resolved.is_(False))
    )
    recent_jobs = (
        await session.scalars(
            select(Job).order_by(Job.created_at.desc(), Job.job_id.desc()).limit(RECENT_ROWS)
        )
    ).all()
    outcomes = await job_outcome_counts(session, hours)
    return FleetOverview(
        generated_at=now,
        hours=hours,
        devices=await device_counts(session),
        unresolved_errors=int(unresolved or 0),
        critical_anomalies=await critical_anomaly_count(session),
        recent_errors=[ErrorSummary.model_validate(error) for error in recent_errors],
        recent_jobs=[JobRead.model_validate(job) for job in recent_jobs],
        job_outcomes=outcomes,
        job_success_rate=success_rate(outcomes),
        metrics=MetricSeries(
            since=buckets.since,
            until=buckets.until,
            bucket_seconds=buckets.seconds,
            points=await cache.points(session, buckets, now),
        ),
    )
