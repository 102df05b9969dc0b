"""Rows stored before the JSON limits existed are still served.

A row whose free-form JSON is nested hundreds of levels deep is written straight to the
database (as an older version accepted it), then read through every endpoint that shows it:
each answers 200 with the row, its JSON cut at a depth every reader can handle.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.models import DeviceMetrics, ErrorLog
from homepot.auth.models import Role
from homepot.kit.jsonlimits import CLIPPED
from tests.helpers import auth_headers, create_device

API = "/api/v1"


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "x"}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def depth_of(value: Any) -> tuple[int, Any]:
    """How many levels of {"a": ...} there are, and what the innermost holds."""
    depth = 0
    while isinstance(value, dict) and "a" in value:
        value = value["a"]
        depth += 1
    return depth, value


@pytest.mark.parametrize("depth", [260, 800])
async def test_a_deeply_nested_stored_row_is_served_by_every_reader(
    app: FastAPI, client: AsyncClient, depth: int
) -> None:
    device = await create_device(app)
    now = datetime.now(UTC)
    async with app.state.session_factory() as session:
        session.add_all(
            [
                ErrorLog(
                    timestamp=now - timedelta(minutes=1),
                    category="external_service",
                    severity="error",
                    error_code="POISON",
                    error_message="stored before the limits",
                    device_id=device,
                    context=nested(depth),
                ),
                ErrorLog(
                    timestamp=now - timedelta(minutes=2),
                    category="api",
                    severity="warning",
                    error_code="ORDINARY",
                    error_message="an ordinary neighbour on the same page",
                    context={"attempt": 2},
                ),
                DeviceMetrics(
                    timestamp=now - timedelta(minutes=1),
                    device_id=device,
                    cpu_percent=10.0,
                    collection_interval_seconds=30,
                    extra_metrics=nested(depth),
                ),
            ]
        )
        await session.commit()
    admin = await auth_headers(app, client, Role.admin)

    for path in ("/errors", "/analytics/errors"):
        response = await client.get(f"{API}{path}", headers=admin)
        assert response.status_code == 200, f"{path}: {response.text[:300]}"
        by_code = {row["error_code"]: row for row in response.json()["items"]}
        assert by_code["ORDINARY"]["context"] == {"attempt": 2}
        shown, innermost = depth_of(by_code["POISON"]["context"])
        assert innermost == CLIPPED
        assert 32 <= shown < depth

    response = await client.get(f"{API}/analytics/device-metrics", headers=admin)
    assert response.status_code == 200, response.text[:300]
    [row] = response.json()["items"]
    assert row["cpu_percent"] == 10.0
    assert depth_of(row["extra_metrics"])[1] == CLIPPED

    exported = await client.get(f"{API}/devices/{device}/metrics", headers=admin)
    assert exported.status_code == 200, exported.text[:300]
