"""Rollups for charts: device metrics per device per minute and per hour (and the whole
fleet's per hour), requests per route per minute, kept up to date by a periodic pass and
rebuilt for any period by a backfill.

Charts over days read these instead of raw rows (homepot.device.history, the overview): a
7-day chart of a device is 168 hourly rows, not 20,000 samples; the fleet's 7-day chart
168 rows, not 100 million.

**Exact, not estimated.** A device rollup keeps per metric the sum and the count of the
samples that carried it, the minimum and the maximum, so an average over any set of minutes
or hours equals the average of the raw samples. A route's minute keeps its request count,
4xx and 5xx counts, latency sum and maximum, and a latency histogram over
``LATENCY_BOUNDS_MS``: histograms add, so a p95 over an hour comes from 60 minutes' worth,
within one bucket's width (about 1.4x) of the raw percentile.

**Incremental and idempotent.** A pass reads the raw rows whose id is above the last one it
rolled up (``rollup_progress``), finds the minutes they fall in, and recomputes those
minutes from all their raw rows (and the hours holding them from their minutes), replacing
what was stored. Re-running a pass, or a backfill over rolled-up days, therefore adds
nothing twice; a late row (a terminal replaying its outbox hours later) gets its minute and
hour recomputed on the next pass. Each pass also recomputes the last ``SETTLE`` of minutes,
for rows written by a transaction that committed after a newer one (several server
processes). Raw ids come from one sequence, so "above the last id" is a cheap index scan on
every partition.

``covered_until`` (also in ``rollup_progress``) is the minute up to which a chart may trust
the rollups; readers take newer buckets from raw rows.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from fastapi import FastAPI
from sqlalchemy import bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from homepot.analytics.error_logger import failed_pass_logger
from homepot.analytics.models import CHART_METRICS, RollupProgress
from homepot.config import Settings
from homepot.db import UTCDateTime, utcnow
from homepot.kit.periodic import run_periodically

logger = logging.getLogger(__name__)

MINUTE: Final = timedelta(minutes=1)
HOUR: Final = timedelta(hours=1)
# Recomputed on every pass whatever the ids say (see the module's docstring).
SETTLE: Final = timedelta(minutes=2)
# Raw ids read per transaction: bounds a pass's work after a long pause or a big import.
CHUNK_IDS: Final = 200_000
# Upper bounds (exclusive) of the latency histogram's buckets, in ms; the last bucket holds
# everything from 60 s up.
LATENCY_BOUNDS_MS: Final = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700,
    1000, 1500, 2000, 3000, 5000, 7000, 10000, 15000, 30000, 60000,
)  # fmt: skip

DEVICE_METRICS: Final = "device_metrics"
API_REQUESTS: Final = "api_request_logs"


def _floor(column: str, unit: str, dialect: str) -> str:
    """SQL for the start of the UTC minute or hour holding ``column``."""
    if dialect == "postgresql":
        return f"date_bin('1 {unit}', {column}, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
    # SQLite stores UTC as 'YYYY-MM-DD HH:MM:SS.ffffff' (homepot.db.UTCDateTime).
    pattern = "%Y-%m-%d %H:%M:00.000000" if unit == "minute" else "%Y-%m-%d %H:00:00.000000"
    return f"strftime('{pattern}', {column})"


def _floor_minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# Each chart metric is rolled up as four columns: <metric>_sum, _count, _min and _max.
_PART_COLUMNS = ", ".join(f"{m}_sum, {m}_count, {m}_min, {m}_max" for m in CHART_METRICS)
_PART_UPDATES = ", ".join(
    f"{m}_{part} = excluded.{m}_{part}"
    for m in CHART_METRICS
    for part in ("sum", "count", "min", "max")
)
# The four columns of a coarser rollup from those of a finer one.
_ROLLED_UP_AGAIN = ", ".join(
    f"sum({m}_sum), sum({m}_count), min({m}_min), max({m}_max)" for m in CHART_METRICS
)


def _device_minute_sql(dialect: str) -> str:
    aggregates = ", ".join(f"sum({m}), count({m}), min({m}), max({m})" for m in CHART_METRICS)
    return (
        f"INSERT INTO device_metrics_minute (device_id, bucket, source, samples, {_PART_COLUMNS}) "
        f"SELECT device_id, {_floor('timestamp', 'minute', dialect)}, source, count(*), "
        f"{aggregates} FROM device_metrics "
        'WHERE "timestamp" >= :lo AND "timestamp" < :hi GROUP BY 1, 2, 3 '
        "ON CONFLICT (device_id, bucket, source) DO UPDATE SET samples = excluded.samples, "
        f"{_PART_UPDATES}"
    )


def _device_hour_sql(dialect: str) -> str:
    return (
        f"INSERT INTO device_metrics_hour (device_id, bucket, source, samples, {_PART_COLUMNS}) "
        f"SELECT device_id, {_floor('bucket', 'hour', dialect)}, source, sum(samples), "
        f"{_ROLLED_UP_AGAIN} FROM device_metrics_minute "
        "WHERE bucket >= :lo AND bucket < :hi GROUP BY 1, 2, 3 "
        "ON CONFLICT (device_id, bucket, source) DO UPDATE SET samples = excluded.samples, "
        f"{_PART_UPDATES}"
    )


def _fleet_hour_sql() -> str:
    return (
        f"INSERT INTO fleet_metrics_hour (bucket, source, devices, samples, {_PART_COLUMNS}) "
        f"SELECT bucket, source, count(*), sum(samples), {_ROLLED_UP_AGAIN} "
        "FROM device_metrics_hour WHERE bucket >= :lo AND bucket < :hi GROUP BY 1, 2 "
        "ON CONFLICT (bucket, source) DO UPDATE SET devices = excluded.devices, "
        f"samples = excluded.samples, {_PART_UPDATES}"
    )


def _latency_index_sql() -> str:
    cases = " ".join(
        f"WHEN response_time_ms < {bound} THEN {index}"
        for index, bound in enumerate(LATENCY_BOUNDS_MS)
    )
    return f"CASE {cases} ELSE {len(LATENCY_BOUNDS_MS)} END"


def _request_minute_sql(dialect: str) -> str:
    histogram = (
        "jsonb_object_agg(latency_index::text, n)"
        if dialect == "postgresql"
        else "json_group_object(CAST(latency_index AS TEXT), n)"
    )
    return (
        "INSERT INTO api_request_minute (route, method, bucket, source, requests, "
        "client_errors, server_errors, latency_sum_ms, latency_max_ms, latency_histogram) "
        "SELECT route, method, bucket, source, sum(n), sum(client_errors), "
        f"sum(server_errors), sum(latency_sum), max(latency_max), {histogram} FROM ("
        "SELECT coalesce(route, '') AS route, method, "
        f"{_floor('timestamp', 'minute', dialect)} AS bucket, source, "
        f"{_latency_index_sql()} AS latency_index, count(*) AS n, "
        "sum(CASE WHEN status_code >= 400 AND status_code < 500 THEN 1 ELSE 0 END) "
        "AS client_errors, "
        "sum(CASE WHEN status_code >= 500 THEN 1 ELSE 0 END) AS server_errors, "
        "sum(response_time_ms) AS latency_sum, max(response_time_ms) AS latency_max "
        'FROM api_request_logs WHERE "timestamp" >= :lo AND "timestamp" < :hi '
        "GROUP BY 1, 2, 3, 4, 5) AS per_latency "
        "GROUP BY route, method, bucket, source "
        "ON CONFLICT (route, method, bucket, source) DO UPDATE SET "
        "requests = excluded.requests, client_errors = excluded.client_errors, "
        "server_errors = excluded.server_errors, latency_sum_ms = excluded.latency_sum_ms, "
        "latency_max_ms = excluded.latency_max_ms, "
        "latency_histogram = excluded.latency_histogram"
    )


def _range_params(statement: str) -> Any:
    return text(statement).bindparams(
        bindparam("lo", type_=UTCDateTime()), bindparam("hi", type_=UTCDateTime())
    )


async def _roll_up_range(
    connection: AsyncConnection, source: str, start: datetime, end: datetime
) -> None:
    """Recompute the minutes from ``start`` to ``end`` (and for device metrics the hours
    holding them) from the raw rows."""
    dialect = connection.dialect.name
    if source == DEVICE_METRICS:
        await connection.execute(
            _range_params(_device_minute_sql(dialect)), {"lo": start, "hi": end}
        )
        hours = {
            "lo": _floor_hour(start),
            "hi": _floor_hour(end - timedelta(microseconds=1)) + HOUR,
        }
        await connection.execute(_range_params(_device_hour_sql(dialect)), hours)
        await connection.execute(_range_params(_fleet_hour_sql()), hours)
    else:
        await connection.execute(
            _range_params(_request_minute_sql(dialect)), {"lo": start, "hi": end}
        )


def _ranges(minutes: Sequence[datetime]) -> list[tuple[datetime, datetime]]:
    """Contiguous runs of minutes as [start, end) ranges."""
    ranges: list[tuple[datetime, datetime]] = []
    for minute in sorted(set(minutes)):
        if ranges and ranges[-1][1] == minute:
            ranges[-1] = (ranges[-1][0], minute + MINUTE)
        else:
            ranges.append((minute, minute + MINUTE))
    return ranges


def _as_minute(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite's strftime
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return _floor_minute(value if value.tzinfo else value.replace(tzinfo=UTC))


async def _progress(connection: AsyncConnection, name: str) -> int:
    last = await connection.scalar(
        select(RollupProgress.last_id).where(RollupProgress.name == name)
    )
    return int(last or 0)


async def _save_progress(
    connection: AsyncConnection, name: str, last_id: int, covered_until: datetime | None
) -> None:
    table = RollupProgress.__table__
    values: dict[str, Any] = {"last_id": last_id, "updated_at": utcnow()}
    if covered_until is not None:
        values["covered_until"] = covered_until
    updated = await connection.execute(
        table.update().where(table.c.name == name).values(**values)  # type: ignore[attr-defined]
    )
    if not updated.rowcount:
        await connection.execute(
            table.insert().values(name=name, **{"covered_until": covered_until, **values})  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class RollupReport:
    """What a pass did per raw table: raw ids read and minute ranges recomputed."""

    rows: dict[str, int]
    ranges: dict[str, int]


async def roll_up_new_rows(
    engine: AsyncEngine, now: datetime | None = None, max_chunks: int = 50
) -> RollupReport:
    """One incremental pass over both raw tables (see the module's docstring)."""
    now = now or utcnow()
    settled_from = _floor_minute(now) - SETTLE
    rows: dict[str, int] = {}
    ranges: dict[str, int] = {}
    for source in (DEVICE_METRICS, API_REQUESTS):
        rows[source] = ranges[source] = 0
        minute = _floor("timestamp", "minute", engine.dialect.name)
        for chunk in range(max_chunks):
            async with engine.begin() as connection:
                last_id = await _progress(connection, source)
                top = int(await connection.scalar(text(f"SELECT max(id) FROM {source}")) or 0)
                upto = min(top, last_id + CHUNK_IDS)
                minutes = [
                    _as_minute(value)
                    for value in (
                        await connection.scalars(
                            text(
                                f"SELECT DISTINCT {minute} FROM {source} "
                                "WHERE id > :lo AND id <= :hi"
                            ),
                            {"lo": last_id, "hi": upto},
                        )
                    ).all()
                ]
                if chunk == 0:
                    minutes += [settled_from + i * MINUTE for i in range(int(SETTLE / MINUTE) + 1)]
                for start, end in _ranges(minutes):
                    await _roll_up_range(connection, source, start, end)
                    ranges[source] += 1
                caught_up = upto >= top
                await _save_progress(
                    connection, source, upto, _floor_minute(now) if caught_up else None
                )
                rows[source] += upto - last_id
            if caught_up:
                break
    return RollupReport(rows=rows, ranges=ranges)


async def backfill_rollups(
    engine: AsyncEngine, since: datetime, until: datetime, step: timedelta = timedelta(hours=6)
) -> int:
    """Recompute every rollup from ``since`` to ``until`` (whole minutes) from the raw rows,
    ``step`` a transaction; returns how many steps ran. Idempotent: what exists is replaced.

    For rows imported outside the recorder (a restore, a bulk load); the next incremental
    pass then starts after the newest raw row.
    """
    start = _floor_hour(since)
    end = _floor_minute(until) + (MINUTE if until != _floor_minute(until) else timedelta())
    steps = 0
    while start < end:
        stop = min(start + step, end)
        async with engine.begin() as connection:
            for source in (DEVICE_METRICS, API_REQUESTS):
                await _roll_up_range(connection, source, start, stop)
        start = stop
        steps += 1
    async with engine.begin() as connection:
        for source in (DEVICE_METRICS, API_REQUESTS):
            top = int(await connection.scalar(text(f"SELECT max(id) FROM {source}")) or 0)
            if top > await _progress(connection, source):
                await _save_progress(connection, source, top, _floor_minute(utcnow()))
    return steps


async def covered_until(connection: AsyncConnection | Any, source: str) -> datetime | None:
    """The minute up to which the rollups of ``source`` are complete; None before any pass."""
    value = await connection.scalar(
        select(RollupProgress.covered_until).where(RollupProgress.name == source)
    )
    return value if isinstance(value, datetime) else None


def latency_percentile(histogram: dict[str, int], fraction: float) -> float | None:
    """The latency (ms) below which ``fraction`` of the requests of ``histogram`` fall,
    interpolated within its bucket; None for no requests."""
    counts = {int(index): int(count) for index, count in histogram.items()}
    total = sum(counts.values())
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index in sorted(counts):
        count = counts[index]
        if seen + count >= rank:
            low = 0.0 if index == 0 else float(LATENCY_BOUNDS_MS[index - 1])
            high = float(LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else 2 * low)
            within = (rank - seen) / count if count else 1.0
            return round(low + (high - low) * within, 3)
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])


def merge_histograms(histograms: Sequence[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for histogram in histograms:
        for index, count in histogram.items():
            merged[str(index)] = merged.get(str(index), 0) + int(count)
    return merged


@asynccontextmanager
async def run_rollups(app: FastAPI) -> AsyncIterator[None]:
    """Background service: an incremental rollup pass every ``HOMEPOT_ROLLUPS__INTERVAL_SECONDS``
    (the first one interval after start), unless ``HOMEPOT_ROLLUPS__ENABLED`` is false. A
    failed pass is logged to ``error_logs`` (database / ROLLUP_PASS_FAILED)."""
    settings: Settings = app.state.settings
    if not settings.rollups.enabled:
        yield
        return

    async def rollup_pass() -> None:
        await roll_up_new_rows(app.state.engine)

    async with run_periodically(
        "homepot-rollups",
        settings.rollups.interval_seconds,
        rollup_pass,
        failed_pass_logger(app.state.recorder, "ROLLUP_PASS_FAILED", "rollup pass"),
    ):
        yield
