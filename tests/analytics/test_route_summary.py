"""API traffic per route: read from the route rollups (and raw rows for what they do not
cover), it equals the same figures counted from the raw rows in Python."""

from __future__ import annotations

import bisect
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import delete, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from homepot.analytics.models import APIRequestLog, RollupProgress
from homepot.analytics.rollups import LATENCY_BOUNDS_MS, latency_percentile, roll_up_new_rows
from homepot.analytics.route_summary import route_traffic
from homepot.auth.models import Role
from homepot.db import create_engine
from tests.helpers import auth_headers

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
ROUTES = (("GET", "/api/v1/devices"), ("POST", "/api/v1/jobs"), ("GET", None))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


async def _requests(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Three days of requests with latencies on and around every histogram edge."""
    rng = random.Random(5)
    edges = [0.4, *LATENCY_BOUNDS_MS, 70_000.0]
    rows = []
    for _ in range(3_000):
        method, route = rng.choice(ROUTES)
        edge = float(rng.choice(edges))
        rows.append(
            {
                "timestamp": NOW - timedelta(seconds=rng.uniform(0, 3 * 86_400)),
                "endpoint": route or "/nowhere",
                "route": route,
                "method": method,
                "status_code": rng.choice([200, 201, 404, 429, 500, 503]),
                "response_time_ms": round(rng.choice([edge, edge - 0.25, edge + 0.5]), 3),
                "source": rng.choice(["device", "simulated"]),
            }
        )
    async with AsyncSession(engine) as session:
        await session.execute(insert(APIRequestLog), rows)
        await session.commit()
    return rows


def _expected(
    rows: list[dict[str, Any]], since: datetime, until: datetime, source: str | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    """The figures counted from the raw rows in Python."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if not since <= row["timestamp"] < until or source not in (None, row["source"]):
            continue
        key = (row["method"], row["route"] or "")
        figures = found.setdefault(
            key, {"requests": 0, "client": 0, "server": 0, "sum": 0.0, "max": 0.0, "hist": {}}
        )
        latency, status = row["response_time_ms"], row["status_code"]
        figures["requests"] += 1
        figures["client"] += 400 <= status < 500
        figures["server"] += status >= 500
        figures["sum"] += latency
        figures["max"] = max(figures["max"], latency)
        index = str(bisect.bisect_right(LATENCY_BOUNDS_MS, latency))
        figures["hist"][index] = figures["hist"].get(index, 0) + 1
    return found


async def _assert_equal(
    engine: AsyncEngine,
    rows: list[dict[str, Any]],
    since: datetime,
    until: datetime,
    source: str | None = None,
) -> None:
    expected = _expected(rows, since, until, source)
    async with AsyncSession(engine) as session:
        found = await route_traffic(session, since, until, source)
    assert {(t.method, t.route) for t in found} == set(expected)
    for traffic in found:
        figures = expected[(traffic.method, traffic.route)]
        assert traffic.requests == figures["requests"]
        assert traffic.client_errors == figures["client"]
        assert traffic.server_errors == figures["server"]
        assert traffic.latency_sum_ms == pytest.approx(figures["sum"], rel=1e-9)
        assert traffic.latency_max_ms == pytest.approx(figures["max"])
        assert traffic.histogram == figures["hist"]
        for fraction in (0.5, 0.95, 0.99):
            assert traffic.percentile(fraction) == latency_percentile(figures["hist"], fraction)
    assert [t.requests for t in found] == sorted((t.requests for t in found), reverse=True)


async def test_route_traffic_equals_the_raw_rows_from_rollups_raw_rows_or_both(
    engine: AsyncEngine,
) -> None:
    rows = await _requests(engine)
    # Not minute-aligned, so that the first partial minute comes from raw rows.
    week = (NOW - timedelta(days=7, seconds=17), NOW)
    day = (NOW - timedelta(hours=30, seconds=41), NOW - timedelta(hours=2, seconds=3))

    await _assert_equal(engine, rows, *week)  # no rollups yet: raw rows only
    await roll_up_new_rows(engine, now=NOW + timedelta(minutes=5))
    for span in (week, day):
        await _assert_equal(engine, rows, *span)
        await _assert_equal(engine, rows, *span, source="simulated")

    # Rollups up to the middle of the day, raw rows after.
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(
            update(RollupProgress).values(covered_until=NOW - timedelta(hours=20))
        )
    await _assert_equal(engine, rows, *day)

    # Whole minutes the rollups cover are read from them alone: without the raw rows the
    # figures stay, and only the partial first minute is lost.
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(update(RollupProgress).values(covered_until=NOW))
        await session.execute(delete(APIRequestLog))
    since = NOW - timedelta(days=7)
    await _assert_equal(engine, rows, since, NOW)


async def test_the_endpoint_answers_per_route_for_admins(
    engine: AsyncEngine, app: FastAPI, client: AsyncClient
) -> None:
    rows = await _requests(engine)
    await roll_up_new_rows(engine, now=NOW + timedelta(minutes=5))
    admin = await auth_headers(app, client, Role.admin)
    since = NOW - timedelta(days=2)

    response = await client.get(
        "/api/v1/analytics/requests/routes",
        params={"since": since.isoformat(), "until": NOW.isoformat()},
        headers=admin,
    )

    assert response.status_code == 200, response.text
    answer = response.json()["routes"]
    expected = _expected(rows, since, NOW)
    assert {(r["method"], r["route"]) for r in answer} == set(expected)
    jobs = next(r for r in answer if r["route"] == "/api/v1/jobs")
    figures = expected[("POST", "/api/v1/jobs")]
    assert jobs["requests"] == figures["requests"]
    assert jobs["server_error_percent"] == round(100.0 * figures["server"] / figures["requests"], 3)
    assert jobs["latency_p95_ms"] == latency_percentile(figures["hist"], 0.95)
    too_long = await client.get(
        "/api/v1/analytics/requests/routes",
        params={"since": (NOW - timedelta(days=93)).isoformat(), "until": NOW.isoformat()},
        headers=admin,
    )
    assert too_long.status_code == 422
