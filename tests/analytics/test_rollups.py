"""Rollups: equal to the aggregates of the raw rows, idempotent, late rows included on the
next pass, percentiles from histograms, and the charts read them instead of raw rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.analytics.models import (
    APIRequestLog,
    APIRequestMinute,
    DeviceMetrics,
    DeviceMetricsHour,
    DeviceMetricsMinute,
)
from homepot.analytics.rollups import (
    LATENCY_BOUNDS_MS,
    backfill_rollups,
    latency_percentile,
    merge_histograms,
    roll_up_new_rows,
)
from homepot.auth.models import Role
from homepot.db import Base, create_engine
from tests.helpers import auth_headers, create_device

# Straddles an hour: 10:58 to 11:02.
T0 = datetime(2026, 3, 2, 10, 58, 5, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def add(engine: AsyncEngine, rows: list[Base]) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        session.add_all(rows)


def samples() -> list[DeviceMetrics]:
    rows = []
    for i in range(16):  # every 15 s for 4 minutes, two devices, some metrics missing
        at = T0 + timedelta(seconds=15 * i)
        rows.append(
            DeviceMetrics(
                device_id="pos-a",
                timestamp=at,
                cpu_percent=10.0 + i,
                memory_percent=None if i % 3 else 50.0 + i,
                transaction_count=i % 4,
                error_rate=0.01 * i,
            )
        )
        rows.append(
            DeviceMetrics(device_id="pos-b", timestamp=at, cpu_percent=90.0 - i, source="simulated")
        )
    return rows


def expected_minutes(rows: list[DeviceMetrics]) -> dict[tuple[str, datetime, str], dict[str, Any]]:
    grouped: dict[tuple[str, datetime, str], list[DeviceMetrics]] = defaultdict(list)
    for row in rows:
        minute = row.timestamp.replace(second=0, microsecond=0)
        grouped[(row.device_id, minute, row.source or "device")].append(row)
    expected = {}
    for key, members in grouped.items():
        cpu = [m.cpu_percent for m in members if m.cpu_percent is not None]
        memory = [m.memory_percent for m in members if m.memory_percent is not None]
        expected[key] = {
            "samples": len(members),
            "cpu_percent_sum": sum(cpu),
            "cpu_percent_count": len(cpu),
            "cpu_percent_min": min(cpu),
            "cpu_percent_max": max(cpu),
            "memory_percent_count": len(memory),
            "memory_percent_max": max(memory) if memory else None,
        }
    return expected


async def stored(engine: AsyncEngine, model: type[Base]) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = (await connection.execute(select(model.__table__))).mappings().all()  # type: ignore[arg-type]
    return sorted((dict(row) for row in rows), key=lambda r: sorted(map(str, r.values())))


async def test_minute_and_hour_rollups_equal_the_raw_aggregates_and_are_idempotent(
    engine: AsyncEngine,
) -> None:
    rows = samples()
    await add(engine, rows)
    now = T0 + timedelta(minutes=10)

    first = await roll_up_new_rows(engine, now)
    minutes = await stored(engine, DeviceMetricsMinute)
    hours = await stored(engine, DeviceMetricsHour)
    second = await roll_up_new_rows(engine, now)

    assert first.rows["device_metrics"] == len(rows)
    assert second.rows["device_metrics"] == 0
    assert await stored(engine, DeviceMetricsMinute) == minutes
    assert await stored(engine, DeviceMetricsHour) == hours
    expected = expected_minutes(rows)
    assert len(minutes) == len(expected) == 8  # 4 minutes x 2 devices
    for row in minutes:
        want = expected[(row["device_id"], row["bucket"], row["source"])]
        assert {k: row[k] for k in want} == pytest.approx(want)
    # Hours add up the minutes: 10:58-10:59 and 11:00-11:02.
    by_hour = {(r["device_id"], r["bucket"].hour): r for r in hours}
    assert by_hour[("pos-a", 10)]["samples"] == 8
    assert by_hour[("pos-a", 11)]["samples"] == 8
    assert by_hour[("pos-a", 11)]["cpu_percent_max"] == 25.0
    assert by_hour[("pos-b", 10)]["cpu_percent_min"] == 83.0


async def test_a_late_row_updates_its_minute_and_hour_on_the_next_pass(
    engine: AsyncEngine,
) -> None:
    await add(engine, samples())
    now = T0 + timedelta(minutes=10)
    await roll_up_new_rows(engine, now)

    await add(engine, [DeviceMetrics(device_id="pos-a", timestamp=T0, cpu_percent=1000.0)])
    await roll_up_new_rows(engine, now + timedelta(hours=3))

    minutes = {(r["device_id"], r["bucket"]): r for r in await stored(engine, DeviceMetricsMinute)}
    first = minutes[("pos-a", T0.replace(second=0))]
    assert (first["samples"], first["cpu_percent_max"]) == (5, 1000.0)
    hours = {(r["device_id"], r["bucket"].hour): r for r in await stored(engine, DeviceMetricsHour)}
    assert (hours[("pos-a", 10)]["samples"], hours[("pos-a", 10)]["cpu_percent_max"]) == (
        9,
        1000.0,
    )


async def test_route_minutes_count_errors_and_give_percentiles_from_histograms(
    engine: AsyncEngine,
) -> None:
    latencies = [float(ms) for ms in range(1, 201)]  # 200 requests, 1..200 ms
    rows: list[Base] = [
        APIRequestLog(
            endpoint="/api/v1/sites/s1",
            route="/api/v1/sites/{site_id}",
            method="GET",
            status_code=500 if i % 50 == 0 else 404 if i % 20 == 0 else 200,
            response_time_ms=ms,
            timestamp=T0 + timedelta(seconds=i),
        )
        for i, ms in enumerate(latencies)
    ]
    rows.append(
        APIRequestLog(
            endpoint="/nowhere", method="GET", status_code=404, response_time_ms=0.5, timestamp=T0
        )
    )
    await add(engine, rows)

    await roll_up_new_rows(engine, T0 + timedelta(minutes=10))
    await roll_up_new_rows(engine, T0 + timedelta(minutes=10))

    minutes = await stored(engine, APIRequestMinute)
    route = [m for m in minutes if m["route"] == "/api/v1/sites/{site_id}"]
    assert sum(m["requests"] for m in route) == 200
    assert sum(m["server_errors"] for m in route) == 4
    assert sum(m["client_errors"] for m in route) == 8
    assert max(m["latency_max_ms"] for m in route) == 200.0
    assert sum(m["latency_sum_ms"] for m in route) == pytest.approx(sum(latencies))
    [unmatched] = [m for m in minutes if m["route"] == ""]
    assert (unmatched["requests"], unmatched["client_errors"]) == (1, 1)
    merged = merge_histograms([m["latency_histogram"] for m in route])
    assert sum(merged.values()) == 200
    p95 = latency_percentile(merged, 0.95)
    assert p95 is not None
    # The raw p95 is 190 ms; the estimate lies in the same histogram bucket (150-200 ms).
    assert LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.index(200) - 1] == 150
    assert 150.0 <= p95 < 200.0


async def test_the_device_chart_reads_the_rollups_not_raw_rows(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    device = await create_device(app)
    now = datetime.now(UTC)
    await add(
        app.state.engine,
        [
            DeviceMetrics(
                device_id=device,
                timestamp=now - timedelta(days=d, minutes=m),
                cpu_percent=float(10 * d + m),
                transaction_count=1,
            )
            for d in range(1, 7)
            for m in range(3)
        ],
    )
    params = {"since": (now - timedelta(days=7)).isoformat(), "until": now.isoformat()}
    path = f"/api/v1/devices/{device}/metrics"
    from_raw = (await client.get(path, params=params, headers=viewer)).json()

    await roll_up_new_rows(app.state.engine, now)
    async with app.state.session_factory() as session, session.begin():
        await session.execute(delete(DeviceMetrics))
    from_rollups = (await client.get(path, params=params, headers=viewer)).json()

    assert from_raw["bucket_seconds"] % 3600 == 0  # 7 days: hourly rollups fill the buckets
    assert sum(point["samples"] for point in from_raw["points"]) == 18
    assert from_rollups == from_raw


async def test_a_backfill_rebuilds_the_rollups_of_a_period(engine: AsyncEngine) -> None:
    rows = samples()
    await add(engine, rows)
    await roll_up_new_rows(engine, T0 + timedelta(minutes=10))
    incremental = await stored(engine, DeviceMetricsMinute)
    async with engine.begin() as connection:
        await connection.execute(delete(DeviceMetricsMinute))

    await backfill_rollups(engine, T0 - timedelta(hours=1), T0 + timedelta(hours=1))

    assert await stored(engine, DeviceMetricsMinute) == incremental


async def test_the_fleet_chart_reads_the_fleet_rollup_not_raw_rows(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    now = datetime.now(UTC)
    await add(
        app.state.engine,
        [
            DeviceMetrics(
                device_id=f"pos-{n}",
                # The same instant: "devices" is the most devices in any one hour of a bucket.
                timestamp=now - timedelta(days=d),
                cpu_percent=float(d + n),
                transaction_count=n,
            )
            for d in range(1, 7)
            for n in range(3)
        ],
    )
    params = {"hours": 168, "points": 56}  # 3-hour buckets
    from_raw = (await client.get("/api/v1/overview", params=params, headers=viewer)).json()

    await roll_up_new_rows(app.state.engine, now)
    async with app.state.session_factory() as session, session.begin():
        await session.execute(delete(DeviceMetrics))
    app.state.fleet_metrics_cache = None  # the next read starts from the database again
    from_rollups = (await client.get("/api/v1/overview", params=params, headers=viewer)).json()

    assert from_raw["metrics"]["bucket_seconds"] == 3 * 3600
    assert sum(p["samples"] for p in from_raw["metrics"]["points"]) == 18
    assert from_rollups["metrics"]["points"] == from_raw["metrics"]["points"]
