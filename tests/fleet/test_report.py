"""POST /api/v1/agent/report: heartbeat, samples and errors in one request, answered with jobs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.analytics.models import DeviceMetrics, ErrorLog
from homepot.auth.models import Role
from homepot.config import Settings
from homepot.device.models import Device, HealthCheck
from homepot.job.orchestrator import run_pass
from tests.helpers import auth_headers, create_registered_device, db_rows, flush
from tests.job.orchestration import RecordingChannel, create_job, manual_orchestrator

REPORT = "/api/v1/agent/report"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return manual_orchestrator(settings)


def sample(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "timestamp": datetime.now(UTC).isoformat(),
        "collection_interval_seconds": 30,
        "cpu_percent": 42.5,
        "transaction_count": 12,
        **fields,
    }


def report_body(samples: int = 2, errors: int = 1, **fields: Any) -> dict[str, Any]:
    return {
        "report_id": str(uuid.uuid4()),
        "heartbeat": {"status": "ok", "firmware_version": "4.3.0", "uptime_seconds": 120},
        "samples": [sample() for _ in range(samples)],
        "errors": [
            {
                "severity": "critical",
                "error_code": "PAYMENT_GATEWAY_TIMEOUT",
                "message": f"gateway-eu did not answer ({n})",
                "context": {"gateway": "gateway-eu"},
            }
            for n in range(errors)
        ],
        **fields,
    }


async def test_one_report_stores_all_three_kinds_and_answers_with_the_waiting_jobs(
    app: FastAPI, client: AsyncClient
) -> None:
    app.state.push_channel = RecordingChannel(fail=True)  # no push: the job waits for a poll
    device_id, device = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    await create_job(client, operator, target_id=device_id)
    await run_pass(app)

    response = await client.post(REPORT, json=report_body(samples=3, errors=1), headers=device)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["device_id"], answer["status"], answer["duplicate"]) == (
        device_id,
        "online",
        False,
    )
    assert answer["samples_accepted"] == 3
    assert [job["job_type"] for job in answer["jobs"]] == ["restart"]
    await flush(app)
    assert len(await db_rows(app, HealthCheck, device_id=device_id)) == 1
    assert len(await db_rows(app, DeviceMetrics, device_id=device_id)) == 3
    (error,) = await db_rows(app, ErrorLog, error_code="PAYMENT_GATEWAY_TIMEOUT")
    assert (error.error_code, error.event_id) == (
        "PAYMENT_GATEWAY_TIMEOUT",
        answer["error_event_ids"][0],
    )
    (row,) = await db_rows(app, Device, device_id=device_id)
    assert row.firmware_version == "4.3.0"
    assert row.last_seen_at is not None

    # jobs_limit 0: the report does not look for jobs.
    quiet = await client.post(REPORT, json=report_body(0, 0, jobs_limit=0), headers=device)
    assert quiet.json()["jobs"] == []


async def test_a_resent_report_stores_nothing_twice(app: FastAPI, client: AsyncClient) -> None:
    device_id, device = await create_registered_device(app, client)
    body = report_body(samples=4, errors=2)

    first = await client.post(REPORT, json=body, headers=device)
    again = await client.post(REPORT, json=body, headers=device)

    assert first.status_code == again.status_code == 200, again.text
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert again.json()["error_event_ids"] == first.json()["error_event_ids"]
    await flush(app)
    assert len(await db_rows(app, HealthCheck, device_id=device_id)) == 1
    assert len(await db_rows(app, DeviceMetrics, device_id=device_id)) == 4
    assert len(await db_rows(app, ErrorLog, device_id=device_id)) == 2
    # A new report is a new heartbeat.
    await client.post(REPORT, json=report_body(0, 0), headers=device)
    assert len(await db_rows(app, HealthCheck, device_id=device_id)) == 2


async def test_bad_reports_are_refused_with_a_reason_and_store_nothing(
    app: FastAPI, client: AsyncClient, settings: Settings
) -> None:
    device_id, device = await create_registered_device(app, client)
    other_id, _other = await create_registered_device(app, client)

    missing = await client.post(REPORT, json=report_body())
    assert missing.status_code == 401
    wrong = await client.post(
        REPORT, json=report_body(), headers={"Authorization": "Bearer hpd_not-a-key"}
    )
    assert wrong.status_code == 401

    for body in (
        report_body(device_id=other_id),
        report_body(heartbeat={"device_id": other_id, "status": "ok"}),
    ):
        forbidden = await client.post(REPORT, json=body, headers=device)
        assert forbidden.status_code == 403
        assert f"cannot act for {other_id}" in forbidden.json()["detail"]

    hot = await client.post(
        REPORT, json=report_body(samples=0) | {"samples": [sample(cpu_percent=150)]}, headers=device
    )
    assert hot.status_code == 422
    assert hot.json()["detail"][0]["loc"][-1] == "cpu_percent"
    chatty = await client.post(REPORT, json=report_body(errors=21), headers=device)
    assert chatty.status_code == 422
    assert chatty.json()["detail"][0]["loc"][-1] == "errors"
    no_id = await client.post(
        REPORT, json={k: v for k, v in report_body().items() if k != "report_id"}, headers=device
    )
    assert no_id.status_code == 422

    limit = settings.limits.max_telemetry_body_bytes
    huge = report_body(samples=0) | {"padding": "x" * (limit + 1)}
    too_large = await client.post(REPORT, json=huge, headers=device)
    assert too_large.status_code == 413

    await flush(app)
    assert await db_rows(app, HealthCheck, device_id=device_id) == []
    assert await db_rows(app, DeviceMetrics, device_id=device_id) == []


async def test_a_rotated_or_revoked_key_stops_working_at_once(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id, device = await create_registered_device(app, client)
    admin = await auth_headers(app, client, Role.admin)
    # Twice, so that the key is in the key cache when it is rotated.
    for _ in range(2):
        assert (
            await client.post(REPORT, json=report_body(0, 0), headers=device)
        ).status_code == 200

    rotated = await client.post(f"/api/v1/devices/{device_id}/key", headers=admin)
    assert rotated.status_code == 201, rotated.text
    old = await client.post(REPORT, json=report_body(0, 0), headers=device)
    assert old.status_code == 401
    new = {"Authorization": f"Bearer {rotated.json()['api_key']}"}
    assert (await client.post(REPORT, json=report_body(0, 0), headers=new)).status_code == 200

    revoked = await client.delete(f"/api/v1/devices/{device_id}/key", headers=admin)
    assert revoked.status_code == 204
    assert (await client.post(REPORT, json=report_body(0, 0), headers=new)).status_code == 401


async def test_jobs_are_looked_for_as_a_poll_would_even_when_none_were_waiting(
    app: FastAPI, client: AsyncClient
) -> None:
    """The report skips the poll when, in its own lookup of the device, no job waits; a job
    created afterwards comes with the next report, and a pushed one only once its
    acknowledgement is overdue (the same rules as GET /jobs)."""
    device_id, device = await create_registered_device(app, client)
    operator = await auth_headers(app, client, Role.operator)
    first = await client.post(REPORT, json=report_body(0, 0), headers=device)
    assert first.status_code == 200
    assert first.json()["jobs"] == []

    app.state.push_channel = RecordingChannel()  # pushed: not the poll's until overdue
    await create_job(client, operator, target_id=device_id)
    await run_pass(app)
    pushed = await client.post(REPORT, json=report_body(0, 0), headers=device)
    assert pushed.json()["jobs"] == []

    app.state.settings.fleet.ack_timeout_seconds = 0
    overdue = await client.post(REPORT, json=report_body(0, 0), headers=device)
    assert [job["job_type"] for job in overdue.json()["jobs"]] == ["restart"]
    again = await client.post(REPORT, json=report_body(0, 0) | {"jobs_limit": 0}, headers=device)
    assert again.json()["jobs"] == []
