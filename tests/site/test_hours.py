"""A site's opening hours, readable by every role (changing them stays admin-only)."""

from __future__ import annotations

from fastapi import FastAPI
from httpx import AsyncClient

from homepot.auth.models import Role
from tests.helpers import auth_headers, create_site

WEEK = [
    {
        "day_of_week": 0,
        "open_time": "08:00",
        "close_time": "20:00",
        "peak_hours_start": "12:00",
        "peak_hours_end": "14:00",
    },
    {"day_of_week": 6, "is_closed": True, "is_maintenance_window": True},
]


async def test_viewers_read_the_hours_an_admin_set(app: FastAPI, client: AsyncClient) -> None:
    admin = await auth_headers(app, client, Role.admin)
    viewer = await auth_headers(app, client, Role.viewer)
    site = await create_site(app, timezone="Europe/London")
    saved = await client.put(f"/api/v1/sites/{site}/schedules", json=WEEK, headers=admin)
    assert saved.status_code == 200, saved.text

    response = await client.get(f"/api/v1/sites/{site}/hours", headers=viewer)

    assert response.status_code == 200, response.text
    week = response.json()
    assert week["timezone"] == "Europe/London"
    monday, sunday = week["days"]
    assert (monday["open_time"], monday["close_time"]) == ("08:00:00", "20:00:00")
    assert (monday["peak_hours_start"], monday["peak_hours_end"]) == ("12:00:00", "14:00:00")
    assert sunday["is_closed"] is True
    assert sunday["is_maintenance_window"] is True


async def test_viewers_still_cannot_change_the_hours(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    site = await create_site(app)

    refused = await client.put(f"/api/v1/sites/{site}/schedules", json=WEEK, headers=viewer)

    assert refused.status_code == 403
    assert (await client.get(f"/api/v1/sites/{site}/hours", headers=viewer)).json()["days"] == []


async def test_hours_need_a_login_and_a_known_site(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    site = await create_site(app)

    assert (await client.get(f"/api/v1/sites/{site}/hours")).status_code == 401
    unknown = await client.get("/api/v1/sites/site-nowhere/hours", headers=viewer)
    assert unknown.status_code == 404
    assert "site-nowhere" in unknown.json()["detail"]
