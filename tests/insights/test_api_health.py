"""API health: a route that starts failing (or slowing) gets an episode, a steady one none."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.analytics.models import APIRequestLog, RollupProgress
from homepot.analytics.rollups import LATENCY_BOUNDS_MS, roll_up_new_rows
from homepot.auth.models import Role
from homepot.db import create_engine
from homepot.insights import api_health
from homepot.insights import detectors as det
from homepot.insights.api_health import RouteBins
from homepot.insights.models import Anomaly
from homepot.insights.service import ScanState, scan
from tests.helpers import auth_headers

TROUBLE = datetime(2026, 11, 10, 14, 0, tzinfo=UTC)
STEADY = ("GET", "/api/v1/devices")
FAILING = ("POST", "/api/v1/jobs")
SLOWING = ("GET", "/api/v1/sites/{site_id}")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def _requests(engine: AsyncEngine) -> None:
    """Twelve hours of 8 requests per 5 minutes on three routes; from TROUBLE on, for an
    hour, the jobs route answers 500 to half of them and the site route takes ~900 ms."""
    rng = random.Random(3)
    rows: list[dict[str, Any]] = []
    start = TROUBLE - timedelta(hours=12)
    for step in range(13 * 12):
        bin_start = start + timedelta(minutes=5 * step)
        trouble = TROUBLE <= bin_start < TROUBLE + timedelta(hours=1)
        for request in range(8):
            for method, route in (STEADY, FAILING, SLOWING):
                failing = trouble and route == FAILING[1] and request % 2 == 0
                slow = trouble and route == SLOWING[1]
                rows.append(
                    {
                        "timestamp": bin_start + timedelta(seconds=30 * request + 5),
                        "endpoint": route.replace("{site_id}", "site-1"),
                        "route": route,
                        "method": method,
                        "status_code": 500 if failing else (404 if request == 7 else 200),
                        "response_time_ms": rng.uniform(700, 1100) if slow else rng.uniform(20, 60),
                    }
                )
    async with AsyncSession(engine) as session:
        await session.execute(insert(APIRequestLog), rows)
        await session.commit()


async def _episodes(engine: AsyncEngine) -> list[Anomaly]:
    async with AsyncSession(engine) as session:
        return list(await session.scalars(select(Anomaly).order_by(Anomaly.detector)))


async def test_a_failing_route_gets_an_episode_and_a_steady_one_none(
    engine: AsyncEngine, app: FastAPI, client: AsyncClient
) -> None:
    await _requests(engine)

    report = await scan(engine, TROUBLE - timedelta(minutes=30), TROUBLE + timedelta(hours=2))

    assert report.skipped is None
    found = await _episodes(engine)
    assert [(row.subject, row.metric, row.detector) for row in found] == [
        ("api:POST /api/v1/jobs", "api:/api/v1/jobs", "api_error_rate"),
        ("api:GET /api/v1/sites/{site_id}", "api:/api/v1/sites/{site_id}", "api_p95_latency"),
    ]
    errors, latency = found
    assert errors.device_id is None
    assert errors.site_id is None
    assert errors.started_at == TROUBLE
    assert errors.ended_at == TROUBLE + timedelta(hours=1)  # back to normal after the hour
    assert errors.observed == 50.0
    assert "server errors 50 %" in errors.explanation
    assert latency.started_at == TROUBLE
    assert latency.observed is not None
    assert latency.observed >= 700

    # Scanning the same range again, or an overlapping one, stores nothing twice.
    await scan(engine, TROUBLE - timedelta(minutes=30), TROUBLE + timedelta(hours=2))
    await scan(engine, TROUBLE + timedelta(minutes=20), TROUBLE + timedelta(minutes=50))
    assert [row.id for row in await _episodes(engine)] == [errors.id, latency.id]

    # The anomalies API shows the route's episodes like any other.
    viewer = await auth_headers(app, client, Role.viewer)
    response = await client.get(
        "/api/v1/insights/anomalies", params={"metric": "api:/api/v1/jobs"}, headers=viewer
    )
    assert response.status_code == 200, response.text
    assert [item["id"] for item in response.json()["items"]] == [errors.id]
    bad = await client.get(
        "/api/v1/insights/anomalies", params={"metric": "api:jobs"}, headers=viewer
    )
    assert bad.status_code == 422


async def test_the_servers_passes_read_only_new_bins_and_find_the_same_episode(
    engine: AsyncEngine,
) -> None:
    await _requests(engine)
    state = ScanState(baseline_refresh_devices=250)  # as the server keeps it between passes

    moment = TROUBLE - timedelta(minutes=30)
    while moment < TROUBLE + timedelta(hours=2):
        await scan(
            engine, moment - timedelta(minutes=15), moment + timedelta(minutes=10), state=state
        )
        moment += timedelta(minutes=10)

    assert state.api_routes.recent is not None  # the passes kept their bins
    found = await _episodes(engine)
    assert [(row.detector, row.started_at, row.ended_at) for row in found] == [
        ("api_error_rate", TROUBLE, TROUBLE + timedelta(hours=1)),
        ("api_p95_latency", TROUBLE, TROUBLE + timedelta(hours=1)),
    ]


# --- read from the route rollups -------------------------------------------------------------


def _same_bins(left: RouteBins, right: RouteBins) -> None:
    np = det.numpy()
    assert left.routes == right.routes
    assert left.first_bin == right.first_bin
    np.testing.assert_array_equal(left.requests, right.requests)
    for name, values in left.values.items():
        np.testing.assert_array_equal(values, right.values[name])


async def _latencies_across_every_bucket(engine: AsyncEngine) -> None:
    """Requests whose latencies fall on and around every histogram edge, some unrouted."""
    rng = random.Random(11)
    edges = [0.5, *LATENCY_BOUNDS_MS, 61_000.0]
    rows = []
    for step in range(12 * 12):  # 12 hours of 5-minute bins before TROUBLE
        at = TROUBLE - timedelta(hours=12) + timedelta(minutes=5 * step)
        for _ in range(rng.randint(0, 12)):
            edge = float(rng.choice(edges))
            rows.append(
                {
                    "timestamp": at + timedelta(seconds=rng.uniform(0, 299)),
                    "endpoint": "/x",
                    "route": rng.choice([STEADY[1], FAILING[1], None]),
                    "method": rng.choice(["GET", "POST"]),
                    "status_code": rng.choice([200, 200, 404, 500, 503]),
                    "response_time_ms": rng.choice([edge, edge - 0.001, edge + 0.4]),
                }
            )
    async with AsyncSession(engine) as session:
        await session.execute(insert(APIRequestLog), rows)
        await session.commit()


async def test_bins_read_from_the_rollups_equal_those_counted_from_raw_rows(
    engine: AsyncEngine,
) -> None:
    await _latencies_across_every_bucket(engine)
    first_bin = int((TROUBLE - timedelta(hours=12)).timestamp()) // det.BIN_SECONDS
    end_bin = int(TROUBLE.timestamp()) // det.BIN_SECONDS
    async with AsyncSession(engine) as session:
        raw = api_health._route_bins(
            await api_health.raw_bins(session, first_bin, end_bin), first_bin, end_bin
        )
        before_rollups = await api_health.load_route_bins(session, first_bin, end_bin)
    _same_bins(before_rollups, raw)  # no rollups yet: all from raw rows
    assert raw.requests.sum() > 500
    assert not det.numpy().isnan(raw.values["api_p95_latency"]).all()

    await roll_up_new_rows(engine, now=TROUBLE + timedelta(hours=1))
    async with AsyncSession(engine) as session:
        rolled = await api_health.load_route_bins(session, first_bin, end_bin)
    _same_bins(rolled, raw)

    # Rollups up to the middle of the range, raw rows after: the same again.
    middle = TROUBLE - timedelta(hours=5, minutes=3)
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(update(RollupProgress).values(covered_until=middle))
    async with AsyncSession(engine) as session:
        mixed = await api_health.load_route_bins(session, first_bin, end_bin)
    _same_bins(mixed, raw)

    # And the covered bins really come from the rollups: without the raw rows they stay.
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(update(RollupProgress).values(covered_until=TROUBLE))
        await session.execute(delete(APIRequestLog))
    async with AsyncSession(engine) as session:
        rolled_alone = await api_health.load_route_bins(session, first_bin, end_bin)
    _same_bins(rolled_alone, raw)
