"""The fleet overview and the error list, as every signed-in role sees them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.models import DeviceMetrics, ErrorLog, JobOutcome
from homepot.auth.models import Role
from homepot.insights.models import Anomaly
from homepot.job.models import Job, JobStatus, JobTargetType
from tests.helpers import auth_headers, create_device, create_site, rows


async def add_rows(app: FastAPI, *records: Any) -> None:
    async with app.state.session_factory() as session:
        session.add_all(records)
        await session.commit()


def error(minutes_ago: float, **fields: Any) -> ErrorLog:
    values: dict[str, Any] = {
        "category": "api",
        "severity": "error",
        "error_message": "something broke",
        "timestamp": datetime.now(UTC) - timedelta(minutes=minutes_ago),
        **fields,
    }
    return ErrorLog(**values)


def outcome(status: str, hours_ago: float = 0.5) -> JobOutcome:
    return JobOutcome(
        job_id=f"job-{uuid.uuid4().hex[:8]}",
        job_type="restart",
        status=status,
        timestamp=datetime.now(UTC) - timedelta(hours=hours_ago),
    )


async def test_an_empty_fleet_has_zero_counts_and_no_rate(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)

    response = await client.get("/api/v1/overview", headers=viewer)

    assert response.status_code == 200, response.text
    overview = response.json()
    assert overview["devices"] == {
        "total": 0,
        "online": 0,
        "offline": 0,
        "error": 0,
        "maintenance": 0,
        "updating": 0,
    }
    assert overview["recent_errors"] == []
    assert overview["recent_jobs"] == []
    assert overview["job_success_rate"] is None
    assert overview["metrics"]["points"] == []


async def test_overview_counts_devices_by_status(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    site = await create_site(app)
    for status in ("online", "online", "offline", "error", "maintenance"):
        await create_device(app, site_id=site, status=status)

    devices = (await client.get("/api/v1/overview", headers=viewer)).json()["devices"]

    assert devices == {
        "total": 5,
        "online": 2,
        "offline": 1,
        "error": 1,
        "maintenance": 1,
        "updating": 0,
    }


async def test_overview_shows_newest_errors_and_counts_open_ones(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    await add_rows(
        app,
        *[error(minutes_ago=i, error_message=f"error {i}") for i in range(12)],
        error(minutes_ago=30, resolved=True, error_message="fixed"),
    )

    overview = (await client.get("/api/v1/overview", headers=viewer)).json()

    assert [e["error_message"] for e in overview["recent_errors"]] == [
        f"error {i}" for i in range(10)
    ]
    assert overview["unresolved_errors"] == 12


def anomaly(device_id: str, score: int, **fields: Any) -> Anomaly:
    started = datetime.now(UTC) - timedelta(minutes=30)
    values: dict[str, Any] = {
        "subject": device_id,
        "device_id": device_id,
        "site_id": "site-1",
        "metric": "memory",
        "detector": "level",
        "started_at": started,
        "last_seen_at": started + timedelta(minutes=25),
        "score": score,
        "severity": "critical" if score >= 75 else "warning",
        "explanation": "memory 90 % vs a usual 50 %",
        "status": "active",
        "expected_maintenance": False,
        **fields,
    }
    return Anomaly(**values)


async def test_overview_counts_critical_anomalies_nobody_has_taken_on(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    assert (await client.get("/api/v1/overview", headers=viewer)).json()["critical_anomalies"] == 0
    await add_rows(
        app,
        anomaly("pos-1", 90),
        anomaly("pos-2", 75, metric="disk"),
        anomaly("pos-3", 74),  # a warning
        anomaly("pos-4", 95, status="acknowledged"),
        anomaly("pos-5", 95, status="resolved"),
        anomaly("pos-6", 99, expected_maintenance=True),
    )

    overview = (await client.get("/api/v1/overview", headers=viewer)).json()

    assert overview["critical_anomalies"] == 2


async def test_job_success_rate_counts_finished_outcomes_in_the_window(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    await add_rows(
        app,
        outcome("success"),
        outcome("success"),
        outcome("success"),
        outcome("failed"),
        outcome("cancelled"),
        outcome("timeout", hours_ago=10),  # outside a six-hour window
    )

    six_hours = (await client.get("/api/v1/overview", headers=viewer)).json()
    day = (await client.get("/api/v1/overview", params={"hours": 24}, headers=viewer)).json()

    assert six_hours["job_outcomes"] == {"success": 3, "failed": 1, "timeout": 0, "cancelled": 1}
    assert six_hours["job_success_rate"] == 0.75
    assert day["job_outcomes"]["timeout"] == 1
    assert day["job_success_rate"] == 0.6


async def test_overview_lists_the_newest_jobs(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    now = datetime.now(UTC)
    await add_rows(
        app,
        *[
            Job(
                job_id=f"job-overview-{i:02d}",
                job_type="restart",
                target_type=JobTargetType.device_type,
                target_id="pos_terminal",
                status=JobStatus.completed,
                created_at=now - timedelta(minutes=i),
            )
            for i in range(12)
        ],
    )

    jobs = (await client.get("/api/v1/overview", headers=viewer)).json()["recent_jobs"]

    assert [job["job_id"] for job in jobs] == [f"job-overview-{i:02d}" for i in range(10)]
    assert jobs[0]["status"] == "completed"


async def test_fleet_metrics_average_every_device(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    at = datetime.now(UTC) - timedelta(minutes=20)
    await add_rows(
        app,
        DeviceMetrics(device_id="pos-a", timestamp=at, cpu_percent=20.0, transaction_count=4),
        DeviceMetrics(device_id="pos-b", timestamp=at, cpu_percent=40.0, transaction_count=6),
        DeviceMetrics(device_id="pos-a", timestamp=at - timedelta(hours=5), cpu_percent=5.0),
    )

    metrics = (
        await client.get("/api/v1/overview", params={"hours": 1, "points": 1}, headers=viewer)
    ).json()["metrics"]

    assert metrics["bucket_seconds"] == 3600
    # Buckets start on whole multiples of their width, so the window starts at an hour.
    assert datetime.fromisoformat(metrics["since"]).minute == 0
    [point] = metrics["points"]
    assert point["devices"] == 2
    assert point["cpu_percent"] == 30.0
    assert point["transaction_count"] == 10


async def test_fleet_metrics_show_new_samples_on_the_next_refresh(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    now = datetime.now(UTC)
    await add_rows(
        app,
        DeviceMetrics(device_id="pos-a", timestamp=now - timedelta(minutes=30), cpu_percent=10.0),
    )
    query = {"hours": 1, "points": 60}

    before = (await client.get("/api/v1/overview", params=query, headers=viewer)).json()
    await add_rows(app, DeviceMetrics(device_id="pos-b", timestamp=now, cpu_percent=70.0))
    after = (await client.get("/api/v1/overview", params=query, headers=viewer)).json()

    assert [p["cpu_percent"] for p in before["metrics"]["points"]] == [10.0]
    assert [p["cpu_percent"] for p in after["metrics"]["points"]] == [10.0, 70.0]


async def test_overview_needs_a_login_and_sane_parameters(
    app: FastAPI, client: AsyncClient
) -> None:
    viewer = await auth_headers(app, client, Role.viewer)

    assert (await client.get("/api/v1/overview")).status_code == 401
    too_long = await client.get("/api/v1/overview", params={"hours": 1000}, headers=viewer)
    assert too_long.status_code == 422


async def test_viewers_read_the_error_list_with_filters(app: FastAPI, client: AsyncClient) -> None:
    viewer = await auth_headers(app, client, Role.viewer)
    await add_rows(
        app,
        error(1, severity="critical", category="database", error_message="pool exhausted"),
        error(2, severity="warning", category="api", error_message="slow"),
        error(3, severity="critical", category="database", resolved=True, error_message="old"),
    )

    open_critical = await client.get(
        "/api/v1/errors", params={"severity": "critical", "resolved": "false"}, headers=viewer
    )
    everything = await client.get("/api/v1/errors", params={"limit": 2}, headers=viewer)

    assert [e["error_message"] for e in rows(open_critical)] == ["pool exhausted"]
    assert [e["error_message"] for e in rows(everything)] == ["pool exhausted", "slow"]
    assert everything.json()["next_cursor"] is not None


async def test_error_list_needs_a_login_and_refuses_unknown_filters(
    app: FastAPI, client: AsyncClient
) -> None:
    operator = await auth_headers(app, client, Role.operator)

    assert (await client.get("/api/v1/errors")).status_code == 401
    mistyped = await client.get("/api/v1/errors", params={"severty": "critical"}, headers=operator)
    assert mistyped.status_code == 422
    assert "severty" in mistyped.text


async def test_resolving_stays_admin_only(app: FastAPI, client: AsyncClient) -> None:
    operator = await auth_headers(app, client, Role.operator)
    admin = await auth_headers(app, client, Role.admin)
    await add_rows(app, error(1))
    [open_error] = rows(await client.get("/api/v1/errors", headers=operator))
    path = f"/api/v1/analytics/errors/{open_error['id']}"

    refused = await client.patch(path, json={"resolved": True}, headers=operator)
    resolved = await client.patch(path, json={"resolved": True}, headers=admin)

    assert refused.status_code == 403
    assert resolved.status_code == 200
    [shown] = rows(await client.get("/api/v1/errors", headers=operator))
    assert shown["resolved"] is True
