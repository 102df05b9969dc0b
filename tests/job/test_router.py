from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from homepot.audit.models import AuditLog
from homepot.auth.models import Role
from homepot.job.models import Job
from tests.helpers import (
    auth_headers,
    create_device,
    create_site,
    create_user,
    db_rows,
    login,
    rows,
)

JOBS = "/api/v1/jobs"


async def user_and_headers(
    app: FastAPI, client: AsyncClient, role: Role
) -> tuple[str, dict[str, str]]:
    user = await create_user(app, role=role)
    return user["id"], await login(client, user["email"], user["password"])


async def test_operator_creates_a_pending_job_and_reads_it_back(
    app: FastAPI, client: AsyncClient
) -> None:
    device_id = await create_device(app)
    operator_id, operator = await user_and_headers(app, client, Role.operator)

    created = await client.post(
        JOBS,
        json={
            "job_type": "firmware_update",
            "target_type": "device",
            "target_id": device_id,
            "payload": {"firmware_version": "2.6.0"},
            "schedule": "maintenance_window",
            "priority": 8,
            "description": "Roll out 2.6.0",
        },
        headers=operator,
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert re.fullmatch(r"job-[0-9a-f]{12}", job["job_id"])
    assert job["status"] == "pending"
    assert job["created_by"] == operator_id
    assert job["payload"] == {"firmware_version": "2.6.0"}
    assert job["schedule"] == "maintenance_window"
    assert (job["priority"], job["timeout_seconds"], job["max_retries"]) == (8, 300, 2)
    assert job["started_at"] is None

    read = await client.get(f"{JOBS}/{job['job_id']}", headers=operator)
    assert read.status_code == 200
    assert read.json() == job
    missing = await client.get(f"{JOBS}/job-000000000000", headers=operator)
    assert missing.status_code == 404
    assert missing.json()["detail"] == "job 'job-000000000000' does not exist"


async def test_jobs_are_created_by_operators_and_admins_and_read_by_anyone_logged_in(
    app: FastAPI, client: AsyncClient
) -> None:
    site_id = await create_site(app)
    body = {"job_type": "health_check", "target_type": "site", "target_id": site_id}
    viewer = await auth_headers(app, client, Role.viewer)
    admin = await auth_headers(app, client, Role.admin)

    assert (await client.post(JOBS, json=body)).status_code == 401
    assert (await client.get(JOBS)).status_code == 401
    refused = await client.post(JOBS, json=body, headers=viewer)
    assert refused.status_code == 403
    created = await client.post(JOBS, json=body, headers=admin)
    assert created.status_code == 201
    listed = await client.get(JOBS, headers=viewer)
    assert [j["job_id"] for j in rows(listed)] == [created.json()["job_id"]]
    assert (
        await client.get(f"{JOBS}/{created.json()['job_id']}", headers=viewer)
    ).status_code == 200


@pytest.mark.parametrize("target_type", ["device", "site"])
async def test_a_device_or_site_target_must_exist(
    app: FastAPI, client: AsyncClient, target_type: str
) -> None:
    operator = await auth_headers(app, client, Role.operator)
    response = await client.post(
        JOBS,
        json={"job_type": "restart", "target_type": target_type, "target_id": "ghost-1"},
        headers=operator,
    )
    assert response.status_code == 422
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", "target_id"]
    assert error["msg"] == f"the target {target_type} 'ghost-1' does not exist"
    assert await db_rows(app, Job) == []


async def test_a_device_type_target_needs_no_existing_device(
    app: FastAPI, client: AsyncClient
) -> None:
    operator = await auth_headers(app, client, Role.operator)
    response = await client.post(
        JOBS,
        json={"job_type": "restart", "target_type": "device_type", "target_id": "kiosk"},
        headers=operator,
    )
    assert response.status_code == 201
    assert response.json()["target_type"] == "device_type"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"job_type": "reboot_everything"}, "job_type"),
        ({"target_type": "planet"}, "target_type"),
        ({"schedule": "tomorrow"}, "schedule"),
        ({"priority": 0}, "priority"),
        ({"priority": 11}, "priority"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"max_retries": -1}, "max_retries"),
        ({"payload": "restart please"}, "payload"),
        ({"target_id": ""}, "target_id"),
    ],
)
async def test_invalid_job_fields_are_422_naming_the_field(
    app: FastAPI, client: AsyncClient, changes: dict[str, Any], field: str
) -> None:
    device_id = await create_device(app)
    operator = await auth_headers(app, client, Role.operator)
    body = {"job_type": "restart", "target_type": "device", "target_id": device_id, **changes}
    response = await client.post(JOBS, json=body, headers=operator)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


async def test_list_jobs_is_newest_first_filtered_and_paginated(
    app: FastAPI, client: AsyncClient
) -> None:
    first_device, second_device = await create_device(app), await create_device(app)
    operator = await auth_headers(app, client, Role.operator)
    created: list[str] = []
    for job_type, target in [
        ("restart", first_device),
        ("config_change", second_device),
        ("restart", second_device),
    ]:
        response = await client.post(
            JOBS,
            json={"job_type": job_type, "target_type": "device", "target_id": target},
            headers=operator,
        )
        created.append(response.json()["job_id"])
    async with app.state.session_factory() as session:
        job = await session.get(Job, created[2])
        assert job is not None
        job.status = "completed"
        await session.commit()

    async def ids(**params: Any) -> list[str]:
        return [j["job_id"] for j in rows(await client.get(JOBS, params=params, headers=operator))]

    assert await ids() == created[::-1]
    assert await ids(job_type="restart") == [created[2], created[0]]
    assert await ids(target_id=second_device) == [created[2], created[1]]
    assert await ids(status="pending") == [created[1], created[0]]
    assert await ids(status="completed", job_type="restart") == [created[2]]
    assert await ids(limit=1, offset=1) == [created[1]]
    page = await client.get(JOBS, params={"limit": 2}, headers=operator)
    assert (page.json()["total"], page.json()["limit"], page.json()["offset"]) == (3, 2, 0)

    for params in [{"status": "done"}, {"job_type": "reboot"}]:
        bad = await client.get(JOBS, params=params, headers=operator)
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["query", next(iter(params))]


async def test_creating_a_job_writes_an_audit_row(app: FastAPI, client: AsyncClient) -> None:
    device_id = await create_device(app)
    operator_id, operator = await user_and_headers(app, client, Role.operator)
    response = await client.post(
        JOBS,
        json={
            "job_type": "config_change",
            "target_type": "device",
            "target_id": device_id,
            "payload": {"config": {"api_key": "canary-job-secret", "volume": 3}},
        },
        headers=operator,
    )
    job_id = response.json()["job_id"]
    audits = await db_rows(app, AuditLog, resource_id=job_id)
    assert len(audits) == 1
    audit = audits[0]
    assert (audit.action, audit.resource_type, audit.user_id) == ("job.create", "job", operator_id)
    assert audit.ip_address == "203.0.113.7"
    assert audit.details["target_id"] == device_id
    assert audit.details["payload"] == {"config": {"api_key": "[REDACTED]", "volume": 3}}
