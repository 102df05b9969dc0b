"""A device's history for the dashboard: metric charts, state timeline, config changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.models import ConfigurationHistory, DeviceMetrics, DeviceStateHistory
from homepot.auth.models import Role
from tests.helpers import auth_headers, create_device, rows

START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


async def add_rows(app: FastAPI, *records: Any) -> None:
    async with app.state.session_factory() as session:
        session.add_all(records)
        await session.commit()


def sample(device_id: str, at: datetime, **fields: Any) -> DeviceMetrics:
    return DeviceMetrics(device_id=device_id, timestamp=at, **fields)


async def test_metrics_are_averaged_per_bucket_for_one_device(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    device = await create_device(app)
    other = await create_device(app)
    await add_rows(
        app,
        sample(device, START - timedelta(seconds=1), cpu_percent=99.0),  # before since
        sample(device, START + timedelta(seconds=10), cpu_percent=10.0, transaction_count=1),
        sample(device, START + timedelta(seconds=50), cpu_percent=30.0, transaction_count=2),
        sample(other, START + timedelta(seconds=20), cpu_percent=90.0, transaction_count=50),
        sample(
            device,
            START + timedelta(minutes=5),
            cpu_percent=50.0,
            memory_percent=40.0,
            disk_percent=70.0,
            network_latency_ms=25.5,
            transaction_count=3,
            error_rate=0.5,
        ),
        sample(device, START + timedelta(minutes=5, seconds=30), transaction_count=4),
        sample(device, START + timedelta(minutes=10), cpu_percent=99.0),  # at until: excluded
    )

    response = await client.get(
        f"/api/v1/devices/{device}/metrics",
        params={
            "since": START.isoformat(),
            "until": (START + timedelta(minutes=10)).isoformat(),
            "limit": 10,
        },
        headers=viewer,
    )

    assert response.status_code == 200, response.text
    series = response.json()
    assert series["device_id"] == device
    assert series["bucket_seconds"] == 60
    first, second = series["points"]
    assert first["timestamp"] == "2026-01-05T10:00:00Z"
    assert (first["samples"], first["devices"]) == (2, 1)
    assert first["cpu_percent"] == 20.0
    assert first["transaction_count"] == 3
    assert first["memory_percent"] is None
    assert second["timestamp"] == "2026-01-05T10:05:00Z"
    assert second["cpu_percent"] == 50.0
    assert second["memory_percent"] == 40.0
    assert second["disk_percent"] == 70.0
    assert second["network_latency_ms"] == 25.5
    assert second["transaction_count"] == 7
    assert second["error_rate"] == 0.5


async def test_metrics_default_to_the_last_six_hours(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    device = await create_device(app)
    now = datetime.now(UTC)
    await add_rows(
        app,
        sample(device, now - timedelta(minutes=30), cpu_percent=12.0),
        sample(device, now - timedelta(hours=7), cpu_percent=80.0),
    )

    series = (await client.get(f"/api/v1/devices/{device}/metrics", headers=viewer)).json()

    since = datetime.fromisoformat(series["since"])
    until = datetime.fromisoformat(series["until"])
    # Six hours, started at a whole bucket (whole minutes, so that rollups fill them).
    width = timedelta(seconds=series["bucket_seconds"])
    assert timedelta(hours=6) <= until - since < timedelta(hours=6) + width
    assert since.timestamp() % series["bucket_seconds"] == 0
    assert [point["cpu_percent"] for point in series["points"]] == [12.0]
    assert len(series["points"]) <= 120


async def test_metrics_refuse_an_empty_or_huge_span(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    device = await create_device(app)
    path = f"/api/v1/devices/{device}/metrics"

    backwards = await client.get(
        path,
        params={"since": "2026-01-05T11:00:00Z", "until": "2026-01-05T10:00:00Z"},
        headers=viewer,
    )
    huge = await client.get(
        path,
        params={"since": "2025-01-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        headers=viewer,
    )
    too_many = await client.get(path, params={"limit": 5000}, headers=viewer)

    assert backwards.status_code == 422
    [error] = backwards.json()["detail"]
    assert "must be before until" in error["msg"]
    assert huge.status_code == 422
    assert "31 days" in huge.json()["detail"][0]["msg"]
    assert too_many.status_code == 422


async def test_state_timeline_is_newest_first_and_pages(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    device = await create_device(app)
    other = await create_device(app)
    await add_rows(
        app,
        *[
            DeviceStateHistory(
                device_id=device,
                timestamp=START + timedelta(minutes=i),
                previous_state="offline" if i % 2 == 0 else "online",
                new_state="online" if i % 2 == 0 else "offline",
                reason=f"change {i}",
            )
            for i in range(3)
        ],
        DeviceStateHistory(device_id=other, timestamp=START, new_state="error"),
    )
    path = f"/api/v1/devices/{device}/states"

    first = await client.get(path, params={"limit": 2}, headers=viewer)
    cursor = first.json()["next_cursor"]
    second = await client.get(path, params={"limit": 2, "cursor": cursor}, headers=viewer)

    assert [row["reason"] for row in rows(first)] == ["change 2", "change 1"]
    assert [row["reason"] for row in rows(second)] == ["change 0"]
    assert second.json()["next_cursor"] is None
    assert {row["device_id"] for row in rows(first) + rows(second)} == {device}


async def test_config_history_lists_only_this_devices_changes(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    device = await create_device(app)
    await add_rows(
        app,
        ConfigurationHistory(
            entity_type="device",
            entity_id=device,
            parameter_name="volume",
            old_value={"value": 2},
            new_value={"value": 3},
            change_reason="louder",
            timestamp=START,
        ),
        ConfigurationHistory(
            entity_type="site", entity_id=device, parameter_name="name", timestamp=START
        ),
    )

    response = await client.get(f"/api/v1/devices/{device}/config-history", headers=viewer)

    [change] = rows(response)
    assert change["parameter_name"] == "volume"
    assert (change["old_value"], change["new_value"]) == ({"value": 2}, {"value": 3})
    assert change["change_reason"] == "louder"


async def test_history_needs_a_login_and_a_known_device(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    device = await create_device(app)

    for suffix in ("metrics", "states", "config-history"):
        anonymous = await client.get(f"/api/v1/devices/{device}/{suffix}")
        unknown = await client.get(f"/api/v1/devices/pos-terminal-nowhere/{suffix}", headers=viewer)
        assert anonymous.status_code == 401, suffix
        assert unknown.status_code == 404, suffix
        assert "pos-terminal-nowhere" in unknown.json()["detail"]


async def test_a_malformed_cursor_is_a_422_naming_it(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    device = await create_device(app)

    response = await client.get(
        f"/api/v1/devices/{device}/states", params={"cursor": "not-a-cursor"}, headers=viewer
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "cursor"]


async def test_buckets_start_at_whole_minutes(app: FastAPI, client: AsyncClient) -> None:
    """Buckets of a minute or more start on whole minutes, where the rollups' minutes do."""
    viewer = await auth_headers(app, client, Role.viewer)
    device = await create_device(app)
    since = START + timedelta(seconds=30)
    await add_rows(
        app,
        sample(device, START + timedelta(seconds=40), cpu_percent=10.0),
        sample(device, START + timedelta(seconds=155), cpu_percent=20.0),
    )

    series = (
        await client.get(
            f"/api/v1/devices/{device}/metrics",
            params={
                "since": since.isoformat(),
                "until": (since + timedelta(minutes=4)).isoformat(),
                "limit": 4,
            },
            headers=viewer,
        )
    ).json()

    # 60 s buckets from 10:00 would be five: the width doubles to keep at most four.
    assert (series["since"], series["bucket_seconds"]) == ("2026-01-05T10:00:00Z", 120)
    assert [(p["timestamp"], p["cpu_percent"]) for p in series["points"]] == [
        ("2026-01-05T10:00:00Z", 10.0),
        ("2026-01-05T10:02:00Z", 20.0),
    ]
