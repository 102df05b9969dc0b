"""A device's past, for charts and timelines: metrics by time bucket, states, config changes.

Reads only. Metrics are averaged per bucket in the database so that a chart over hours of
samples costs one grouped query and returns at most a few hundred points. Buckets of whole
minutes (whole hours) before the rollups' ``covered_until`` are read from the per-minute
(per-hour) rollups (homepot.analytics.rollups), newer ones from raw samples: a 7-day chart
reads 168 hourly rows per device, never its raw samples. Both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.analytics import queries, rollups
from homepot.analytics.models import (
    DeviceMetrics,
    DeviceMetricsHour,
    DeviceMetricsMinute,
    FleetMetricsHour,
)
from homepot.analytics.schemas import (
    ConfigHistoryQuery,
    ConfigurationHistoryRead,
    DeviceStateHistoryRead,
    DeviceStateQuery,
)
from homepot.db import utcnow
from homepot.device.schemas import MetricPoint
from homepot.kit import streams
from homepot.kit.pagination import CursorPage, Position
from homepot.kit.timebuckets import Buckets

DEFAULT_SPAN = timedelta(hours=6)
MAX_SPAN = timedelta(days=31)


class InvalidTimeSpan(ValueError):
    pass


def chart_buckets(since: datetime | None, until: datetime | None, points: int) -> Buckets:
    """Buckets from ``since`` to ``until`` (default: the last six hours up to now)."""
    until = _aware(until) if until is not None else utcnow()
    since = _aware(since) if since is not None else until - DEFAULT_SPAN
    if since >= until:
        raise InvalidTimeSpan(
            f"since ({since.isoformat()}) must be before until ({until.isoformat()})"
        )
    if until - since > MAX_SPAN:
        raise InvalidTimeSpan(f"since to until spans more than {MAX_SPAN.days} days")
    return Buckets.whole_minutes(since, until, points)


def _aware(moment: datetime) -> datetime:
    # A time without an offset is UTC, as everywhere in the API.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def bucketed_metrics(
    session: AsyncSession, buckets: Buckets, device_id: str | None = None
) -> list[MetricPoint]:
    """Metric averages per bucket (transactions summed), of one device or of the whole fleet.

    From the rollups where they cover whole buckets, from raw samples after that.
    """
    minute_aligned = buckets.seconds % 60 == 0 and buckets.since.timestamp() % 60 == 0
    if not minute_aligned:
        return await _raw_metrics(session, buckets, device_id)
    covered = await rollups.covered_until(session, rollups.DEVICE_METRICS)
    if covered is None or covered <= buckets.since:
        return await _raw_metrics(session, buckets, device_id)
    # The first bucket boundary at or before ``covered``, counted from ``since``.
    whole = int((min(covered, buckets.until) - buckets.since).total_seconds()) // buckets.seconds
    split = buckets.since + timedelta(seconds=whole * buckets.seconds)
    if split <= buckets.since:
        return await _raw_metrics(session, buckets, device_id)
    hourly = buckets.seconds % 3600 == 0 and buckets.since.timestamp() % 3600 == 0
    settled = Buckets(since=buckets.since, until=split, seconds=buckets.seconds)
    if hourly and device_id is None:
        rolled = await _fleet_rollup_metrics(session, settled)
    else:
        model = DeviceMetricsHour if hourly else DeviceMetricsMinute
        rolled = await _rollup_metrics(session, settled, model, device_id)
    if split >= buckets.until:
        return rolled
    fresh = await _raw_metrics(
        session, Buckets(since=split, until=buckets.until, seconds=buckets.seconds), device_id
    )
    return rolled + fresh


async def _rollup_metrics(
    session: AsyncSession,
    buckets: Buckets,
    model: type[DeviceMetricsMinute] | type[DeviceMetricsHour],
    device_id: str | None,
) -> list[MetricPoint]:
    start = buckets.start_of(model.bucket).label("bucket")

    def average(metric: str) -> ColumnElement[Any]:
        total = func.sum(getattr(model, f"{metric}_sum"))
        return total / func.nullif(func.sum(getattr(model, f"{metric}_count")), 0)

    statement = (
        select(
            start,
            func.sum(model.samples),
            average("cpu_percent"),
            average("memory_percent"),
            average("disk_percent"),
            average("network_latency_ms"),
            func.sum(model.transaction_count_sum),
            average("error_rate"),
            func.count(func.distinct(model.device_id)),
        )
        .where(model.bucket >= buckets.since, model.bucket < buckets.until)
        .group_by(start)
        .order_by(start)
    )
    if device_id is not None:
        statement = statement.where(model.device_id == device_id)
    return _points(buckets, (await session.execute(statement)).all())


async def _fleet_rollup_metrics(session: AsyncSession, buckets: Buckets) -> list[MetricPoint]:
    """The fleet's points from its hourly rollup. ``devices`` of a bucket is the most devices
    that reported in any one of its hours (every terminal reports every hour, so that is the
    terminals the bucket saw, short of one that went silent as another joined)."""
    hour = FleetMetricsHour
    sums = [
        func.sum(getattr(hour, f"{metric}_{part}")).label(f"{metric}_{part}")
        for metric in (
            "cpu_percent",
            "memory_percent",
            "disk_percent",
            "network_latency_ms",
            "transaction_count",
            "error_rate",
        )
        for part in ("sum", "count")
    ]
    per_hour = (
        select(
            hour.bucket,
            func.sum(hour.samples).label("samples"),
            func.sum(hour.devices).label("devices"),
            *sums,
        )
        .where(hour.bucket >= buckets.since, hour.bucket < buckets.until)
        .group_by(hour.bucket)
        .subquery()
    )
    start = buckets.start_of(per_hour.c.bucket).label("bucket")

    def average(metric: str) -> ColumnElement[Any]:
        total = func.sum(per_hour.c[f"{metric}_sum"])
        return total / func.nullif(func.sum(per_hour.c[f"{metric}_count"]), 0)

    statement = (
        select(
            start,
            func.sum(per_hour.c.samples),
            average("cpu_percent"),
            average("memory_percent"),
            average("disk_percent"),
            average("network_latency_ms"),
            func.sum(per_hour.c.transaction_count_sum),
            average("error_rate"),
            func.max(per_hour.c.devices),
        )
        .group_by(start)
        .order_by(start)
    )
    return _points(buckets, (await session.execute(statement)).all())


async def _raw_metrics(
    session: AsyncSession, buckets: Buckets, device_id: str | None
) -> list[MetricPoint]:
    start = buckets.start_of(DeviceMetrics.timestamp).label("bucket")
    statement = (
        select(
            start,
            func.count(DeviceMetrics.id),
            func.avg(DeviceMetrics.cpu_percent),
            func.avg(DeviceMetrics.memory_percent),
            func.avg(DeviceMetrics.disk_percent),
            func.avg(DeviceMetrics.network_latency_ms),
            func.sum(DeviceMetrics.transaction_count),
            func.avg(DeviceMetrics.error_rate),
            func.count(func.distinct(DeviceMetrics.device_id)),
        )
        .where(DeviceMetrics.timestamp >= buckets.since, DeviceMetrics.timestamp < buckets.until)
        .group_by(start)
        .order_by(start)
    )
    if device_id is not None:
        statement = statement.where(DeviceMetrics.device_id == device_id)
    return _points(buckets, (await session.execute(statement)).all())


def _points(buckets: Buckets, rows: Sequence[Any]) -> list[MetricPoint]:
    return [
        MetricPoint(
            timestamp=buckets.moment(bucket),
            samples=int(samples),
            devices=devices,
            cpu_percent=_number(cpu),
            memory_percent=_number(memory),
            disk_percent=_number(disk),
            network_latency_ms=_number(latency),
            transaction_count=round(transactions) if transactions is not None else None,
            error_rate=_number(error_rate),
        )
        for bucket, samples, cpu, memory, disk, latency, transactions, error_rate, devices in rows
    ]


def _number(value: object) -> float | None:
    # PostgreSQL averages come back as Decimal; JSON wants floats.
    return None if value is None else round(float(value), 3)  # type: ignore[arg-type]


async def state_history(
    session: AsyncSession, device_id: str, limit: int, cursor: Position | None
) -> CursorPage[DeviceStateHistoryRead]:
    """The device's state changes, newest first."""
    params = DeviceStateQuery(device_id=device_id, limit=limit, cursor=cursor)
    return await streams.read_page(session, queries.DEVICE_STATES, params)


async def config_history(
    session: AsyncSession, device_id: str, limit: int, cursor: Position | None
) -> CursorPage[ConfigurationHistoryRead]:
    """Changes to the device's configuration, newest first."""
    params = ConfigHistoryQuery(
        entity_type="device", entity_id=device_id, limit=limit, cursor=cursor
    )
    return await streams.read_page(session, queries.CONFIG_HISTORY, params)
